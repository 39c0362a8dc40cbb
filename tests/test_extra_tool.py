"""A tool registered by an embedder is served like the built-in ones, with no other file changed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import tools
from supervisor.config import ConfigError, load_settings
from supervisor.runtime import Runtime
from supervisor.status import CheckResult
from tests.extra_tool import HELLO, HELLO_VERSION, HelloSettings, write_hello
from tests.helpers import wait_until
from tests.http_support import HANDLE_TOOLS, running_daemon, sdk_client
from transports.cli import main


@pytest.fixture
def hello() -> Iterator[None]:
    tools.register(HELLO)
    try:
        yield
    finally:
        tools.unregister(HELLO.name)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LABRECON_CONFIG", "LABRECON_TOOLS__HELLO__MAX_REPEAT"):
        monkeypatch.delenv(key, raising=False)


def binary_check(runtime: Runtime, name: str) -> CheckResult | None:
    checks = {check.name: check for check in runtime.status().health.checks}
    check = checks[f"binary:{name}"]
    return check if check.data.get("probed") else None


@pytest.mark.usefixtures("hello")
def test_a_registered_tool_is_listed_called_counted_and_checked_over_mcp(make_runtime, tmp_path):
    runtime = make_runtime(tools={"hello": {"binary": str(write_hello(tmp_path / "bin")), "max_repeat": 2}})
    with running_daemon(runtime) as daemon:

        async def scenario() -> None:
            async with sdk_client("auto", daemon.url) as client:
                listing = {tool.name: tool for tool in (await client.list_tools()).tools}
                assert list(listing) == ["nmap", "masscan", "gobuster", "hello", *HANDLE_TOOLS]
                assert listing["hello"].input_schema["properties"]["repeat"]["maximum"] == 10
                result = await client.call_tool("hello", {"target": "10.0.0.5", "repeat": 2})
                assert not result.is_error, result
                assert result.structured_content["result"]["greetings"] == ["hello 10.0.0.5"] * 2
                refused = await client.call_tool("hello", {"target": "10.0.0.5", "repeat": 3})
                assert refused.is_error and refused.structured_content["error"]["error_type"] == "validation"
                outside = await client.call_tool("hello", {"target": "8.8.8.8"})
                assert outside.is_error and outside.structured_content["error"]["error_type"] == "validation"

        asyncio.run(scenario())

    status = runtime.status()
    assert status.tools["hello"].state == "running"
    probed = wait_until(lambda: binary_check(runtime, "hello"))
    assert probed is not None and probed.detail == HELLO_VERSION
    metrics = runtime.metrics_text()
    assert 'labrecon_tool_calls_total{outcome="ok",pool="local",tool="hello"} 1.0' in metrics
    assert 'labrecon_tool_up{pool="local",tool="hello"} 1.0' in metrics


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.usefixtures("hello")
def test_labrecon_check_reports_a_registered_tool(tmp_path, capsys):
    hello = write_hello(tmp_path / "bin")
    config = write_config(tmp_path / "labrecon.toml", f'[tools.hello]\nbinary = "{hello}"\nmax_repeat = 5\n')
    assert main(["check", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["tools"]["hello"]
    assert report["found"] and report["version"] == HELLO_VERSION
    assert report["limits"]["max_repeat"] == 5


@pytest.mark.usefixtures("hello")
def test_a_registered_tool_has_its_own_config_table_and_environment_keys(tmp_path, monkeypatch):
    defaults = load_settings().tools.hello
    assert isinstance(defaults, HelloSettings) and defaults.max_repeat == 3
    monkeypatch.setenv("LABRECON_TOOLS__HELLO__MAX_REPEAT", "7")
    from_env = load_settings().tools.hello
    assert isinstance(from_env, HelloSettings) and from_env.max_repeat == 7
    bad = write_config(tmp_path / "bad.toml", "[tools.hello]\nmax_repeat = 0\ngreeting = 'hi'\n")
    monkeypatch.delenv("LABRECON_TOOLS__HELLO__MAX_REPEAT")
    with pytest.raises(ConfigError) as refused:
        load_settings(bad)
    assert "tools.hello.max_repeat: Input should be greater than or equal to 1" in str(refused.value)
    assert "tools.hello.greeting: unknown key" in str(refused.value)


def test_an_unregistered_tool_is_an_unknown_key(tmp_path):
    config = write_config(tmp_path / "labrecon.toml", "[tools.hello]\nmax_repeat = 2\n")
    with pytest.raises(ConfigError, match=r"tools\.hello: unknown key"):
        load_settings(config)
    assert "hello" not in tools.TOOL_SPECS


def test_a_tool_name_must_be_new_and_usable_as_a_config_key():
    with pytest.raises(ValueError, match="registered already"):
        tools.register(dataclasses.replace(HELLO, name="nmap"))
    with pytest.raises(ValueError, match="lower case"):
        tools.register(dataclasses.replace(HELLO, name="Hello-World"))
    with pytest.raises(TypeError):
        tools.register("hello")  # type: ignore[arg-type]
    assert list(tools.TOOL_SPECS) == ["nmap", "masscan", "gobuster"]
