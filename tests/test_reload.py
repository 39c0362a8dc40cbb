"""Live reload and tool switches through the embedding API: every call answered, the next under the new config."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from actors.results import CallOutcome
from actors.tool import Restart
from supervisor import Runtime
from supervisor.config import ConfigError
from tests.fakes.install import install_fake
from tests.helpers import process_alive, wait_until
from tests.runtimes import fake_config, scan_calls


def running(binary: Path) -> int:
    """Runs of the fake at `binary` that started and have not ended."""
    return sum(1 for call in scan_calls(binary) if call.get("end") is None)


def blocking(release: Path, **limits: Any) -> dict[str, Any]:
    """A fake's settings that hold each run until `release` exists."""
    return {"scenario": {"mode": "block", "release_file": str(release)}, **limits}


def error_type(outcome: CallOutcome) -> str | None:
    return outcome.error.error_type.value if outcome.error is not None else None


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return tmp_path / "release"


def start(config: dict[str, Any]) -> Runtime:
    return Runtime.start(config)


def test_a_reload_under_a_hundred_calls_answers_every_one_and_the_next_run_under_the_new_config(tmp_path, release):
    config = fake_config(
        tmp_path,
        tools={
            "nmap": blocking(release, concurrency=2, max_queue=200),
            "gobuster": blocking(release, concurrency=2, max_queue=200),
        },
        reload={"drain_sec": 60},
    )
    new_gobuster = install_fake(tmp_path / "new", "gobuster")
    reloaded = copy.deepcopy(config)
    reloaded["policy"]["allowed_networks"] = ["10.0.0.0/8", "192.168.56.0/24"]  # 172.16/12 is gone
    reloaded["tools"]["nmap"]["concurrency"] = 6  # a limit: a message to the serving actor
    reloaded["tools"]["gobuster"]["binary"] = str(new_gobuster)  # a new incarnation

    async def scenario(runtime: Runtime) -> None:
        old_gobuster = Path(config["tools"]["gobuster"]["binary"])
        nmap = Path(config["tools"]["nmap"]["binary"])
        starts = []
        for index in range(100):
            if index % 2:
                starts.append(runtime.astart("nmap", {"target": "172.16.0.5", "ports": "22"}))
            else:
                starts.append(runtime.astart("gobuster", {"target": "10.0.0.7"}))
        started = await asyncio.gather(*starts)
        await asyncio.to_thread(wait_until, lambda: running(nmap) == 2 and running(old_gobuster) == 2)

        attempt = await asyncio.to_thread(runtime.reload, reloaded, by="test")
        assert attempt.ok and attempt.tools == {"nmap": "limits", "gobuster": "replace"}
        assert "policy.allowed_networks" in attempt.changed and "tools.nmap.concurrency" in attempt.changed
        # nmap's raised limit starts queued calls at once. gobuster's retired incarnation finishes its two
        # runs and hands its queue to the new one, which runs two more at once.
        await asyncio.to_thread(wait_until, lambda: running(nmap) == 6 and running(old_gobuster) == 4)

        after = await runtime.acall("nmap", {"target": "172.16.0.5", "ports": "22"})
        assert error_type(after) == "validation" and "172.16.0.5" in after.error.message
        new_call = await runtime.astart("gobuster", {"target": "10.0.0.7"})  # behind those admitted before it

        release.touch()
        outcomes = await asyncio.gather(*(scan.outcome for scan in started))
        assert [error_type(o) for o in outcomes] == [None] * 100
        assert (await new_call.outcome).ok
        # Calls admitted before the reload ran the binary they were admitted with; the next one the new.
        assert len(scan_calls(old_gobuster)) == 50 and len(scan_calls(new_gobuster)) == 1
        assert runtime.status().tools["gobuster"].incarnation == 2

    with start(config) as runtime:
        asyncio.run(scenario(runtime))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"policy": {"allowed_networks": ["10.0.0.0/33"]}}, "policy.allowed_networks"),
        ({"policy": {"no_such_key": 1}}, "policy.no_such_key"),
        ({"tools": {"nmap": {"concurrency": "many"}}}, "tools.nmap.concurrency"),
    ],
)
def test_an_invalid_config_changes_nothing_and_names_its_key(tmp_path, change, key):
    config = fake_config(tmp_path)
    path = tmp_path / "labrecon.toml"
    path.write_text(toml_of(config))
    with Runtime.start(path) as runtime:
        digest = runtime.status().config.digest
        bad = copy.deepcopy(config)
        for section, values in change.items():
            for name, value in values.items():
                target = bad[section].setdefault(name, {}) if isinstance(value, dict) else bad[section]
                target.update(value) if isinstance(value, dict) else target.__setitem__(name, value)
        path.write_text(toml_of(bad))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            runtime.reload(by="test")
        status = runtime.status()
        assert status.config.digest == digest and status.config.reloads == 0
        assert status.config.last_failure is not None and key in (status.config.last_failure.error or "")
        assert status.config.last_failure.by == "test"
        assert runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"}).ok


def test_disabling_answers_the_queue_lets_the_running_call_finish_and_enabling_brings_it_back(tmp_path, release):
    config = fake_config(tmp_path, tools={"nmap": blocking(release, concurrency=1)})
    nmap = Path(config["tools"]["nmap"]["binary"])
    changes = threading.Semaphore(0)

    async def scenario(runtime: Runtime) -> None:
        runtime.on_tools_changed(changes.release)
        first = await runtime.astart("nmap", {"target": "10.0.0.7", "ports": "22"})
        await asyncio.to_thread(wait_until, lambda: running(nmap) == 1)
        queued = [await runtime.astart("nmap", {"target": "10.0.0.7", "ports": "22"}) for _ in range(3)]

        told = await asyncio.to_thread(runtime.disable_tool, "nmap", "maintenance window", by="ops")
        assert "disabled" in told
        for scan in queued:
            outcome = await scan.outcome
            assert error_type(outcome) == "tool_disabled" and "maintenance window" in outcome.error.message
        assert changes.acquire(timeout=10)
        assert "nmap" not in [info.name for info in runtime.list_tools()]
        refused = await runtime.acall("nmap", {"target": "10.0.0.7", "ports": "22"})
        assert error_type(refused) == "tool_disabled" and "by ops: maintenance window" in refused.error.message
        status = runtime.status().tools["nmap"]
        assert status.state == "disabled" and "maintenance window" in (status.disabled_reason or "")
        assert status.disabled_since is not None and status.retiring == 1
        assert runtime.status().health.ready  # other tools serve

        release.touch()
        assert (await first.outcome).ok
        await asyncio.to_thread(wait_until, lambda: runtime.status().tools["nmap"].retiring == 0)

        assert await asyncio.to_thread(runtime.enable_tool, "nmap", by="ops") == "nmap enabled"
        assert changes.acquire(timeout=10)
        assert "nmap" in [info.name for info in runtime.list_tools()]
        assert (await runtime.acall("nmap", {"target": "10.0.0.7", "ports": "22"})).ok
        assert runtime.status().tools["nmap"].state == "running"

    with start(config) as runtime:
        asyncio.run(scenario(runtime))


def test_an_operator_disable_outlives_a_reload_and_the_config_can_disable_too(tmp_path):
    config = fake_config(tmp_path)
    with start(config) as runtime:
        runtime.disable_tool("masscan", "no raw sockets here")
        assert runtime.reload(config).tools == {}
        assert "masscan" not in [info.name for info in runtime.list_tools()]

        off = copy.deepcopy(config)
        off["tools"]["gobuster"]["enabled"] = False
        assert runtime.reload(off).tools == {"gobuster": "disable"}
        outcome = runtime.call("gobuster", {"target": "10.0.0.7"})
        assert error_type(outcome) == "tool_disabled" and "enabled = false" in outcome.error.message
        # An operator's enable cannot override the config.
        assert "enabled = false" in runtime.enable_tool("gobuster")
        assert runtime.reload(config).tools == {"gobuster": "enable"}
        assert runtime.call("gobuster", {"target": "10.0.0.7"}).ok


def test_a_replaced_tool_that_outlives_drain_sec_is_cancelled_and_answered(tmp_path, release):
    config = fake_config(tmp_path, tools={"nmap": blocking(release)}, reload={"drain_sec": 0.3})
    nmap = Path(config["tools"]["nmap"]["binary"])
    reloaded = copy.deepcopy(config)
    reloaded["tools"]["nmap"]["binary"] = str(install_fake(tmp_path / "new", "nmap"))
    with start(config) as runtime:
        answered: list[CallOutcome] = []
        done = threading.Event()

        def call() -> None:
            answered.append(runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"}))
            done.set()

        threading.Thread(target=call).start()
        wait_until(lambda: running(nmap) == 1)
        runtime.reload(reloaded)
        assert done.wait(20)
        assert error_type(answered[0]) == "cancelled" and "replaced by a reload" in answered[0].error.message
        killed = scan_calls(nmap)[0]["pid"]
        wait_until(lambda: not process_alive(killed), what="the old run's process ended")
        assert runtime.status().tools["nmap"].in_flight == 0
        assert runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"}).ok


def test_keys_that_cannot_change_live_are_reported_and_kept(tmp_path):
    config = fake_config(tmp_path)
    with start(config) as runtime:
        before = runtime.settings
        changed = copy.deepcopy(config)
        changed["http"] = {"port": 9999}
        changed["scans"] = {"path": str(tmp_path / "elsewhere.sqlite3")}
        changed["scans"]["inline_wait_sec"] = 5.0
        attempt = runtime.reload(changed)
        assert attempt.needs_restart == ["http.port", "scans.path"]
        assert attempt.changed == ["scans.inline_wait_sec"]
        assert runtime.settings.http.port == before.http.port and runtime.settings.scans.path == before.scans.path
        assert runtime.settings.scans.inline_wait_sec == 5.0
        assert runtime.status().config.needs_restart == ["http.port", "scans.path"]
        assert attempt.new_digest == runtime.status().config.digest != attempt.old_digest


def test_every_reload_and_switch_is_an_audit_line_naming_keys_not_values(tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = fake_config(tmp_path, logging={"audit_path": str(audit)}, auth={"token": "first-secret-token-0123456789"})
    with start(config) as runtime:
        rotated = copy.deepcopy(config)
        rotated["auth"]["token"] = "second-secret-token-0123456789"
        runtime.reload(rotated, by="alice")
        with pytest.raises(ConfigError):
            runtime.reload({**rotated, "policy": {"allowed_networks": ["nope"]}}, by="bob")
        runtime.disable_tool("nmap", "patching", by="carol")
        runtime.enable_tool("nmap", by="carol")
    text = audit.read_text()
    assert "secret-token" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    reload_lines = [line for line in lines if line["event"].startswith("config_reload")]
    assert [(line["event"], line["by"]) for line in reload_lines] == [
        ("config_reloaded", "alice"), ("config_reload_refused", "bob")
    ]
    assert reload_lines[0]["changed"] == ["auth.token"] and reload_lines[0]["old_digest"]
    assert "policy.allowed_networks" in reload_lines[1]["error"]
    switches = [(line["event"], line["by"], line["reason"]) for line in lines if line["event"].startswith("tool_")]
    assert switches == [("tool_disabled", "carol", "patching"), ("tool_enabled", "carol", None)]


def test_a_runtime_started_from_settings_needs_them_to_reload(tmp_path):
    with start(fake_config(tmp_path)) as runtime, pytest.raises(ConfigError, match="pass the new settings"):
        runtime.reload()


def toml_of(config: dict[str, Any]) -> str:
    """A TOML file for a fake config (tables of scalars, lists and one level of nesting)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(key)} = {json.dumps(value)}" for key, value in scalars.items())
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{json.dumps(key) if '.' in key else key}", value)

    for section, values in config.items():
        if isinstance(values, dict):
            table(section, values)
    return "\n".join(lines) + "\n"



def test_a_changed_cap_or_wordlist_directory_changes_the_listed_schema_and_tells_listeners(tmp_path):
    wordlists = tmp_path / "wordlists"
    wordlists.mkdir()
    (wordlists / "small.txt").write_text("admin\n")
    config = fake_config(tmp_path, tools={"masscan": {"max_rate": 500}, "gobuster": {"wordlist_dir": str(wordlists)}})
    with start(config) as runtime:
        told = threading.Event()
        runtime.on_tools_changed(told.set)

        def schema(tool: str) -> dict[str, Any]:
            return next(info.input_schema for info in runtime.list_tools() if info.name == tool)

        assert schema("masscan")["properties"]["rate"]["maximum"] == 500
        assert "Offered: small.txt." in schema("gobuster")["properties"]["wordlist"]["description"]
        (wordlists / "large.txt").write_text("admin\nlogin\n")
        raised = copy.deepcopy(config)
        raised["tools"]["masscan"]["max_rate"] = 2000
        runtime.reload(raised)
        assert told.is_set()
        assert schema("masscan")["properties"]["rate"]["maximum"] == 2000
        assert "Offered: large.txt, small.txt." in schema("gobuster")["properties"]["wordlist"]["description"]
        outcome = runtime.call("masscan", {"target": "10.0.0.7", "ports": "80", "rate": 1500})
        assert outcome.ok, outcome.error

        told.clear()
        runtime.reload(raised)  # nothing changed: nobody is told
        assert not told.is_set()


def test_new_retention_limits_apply_from_the_next_sweep(tmp_path):
    now = [1_000_000.0]
    config = fake_config(tmp_path, scans={"path": ":memory:", "retention_days": 7, "max_scans": 10})
    with Runtime.start(config, clock=lambda: now[0]) as runtime:
        for _ in range(4):
            now[0] += 1
            assert runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"}).ok
        assert runtime.scans.expire() == 0
        fewer = copy.deepcopy(config)
        fewer["scans"]["max_scans"] = 1
        assert runtime.reload(fewer).changed == ["scans.max_scans"]
        assert runtime.scans.expire() == 3


def test_a_retired_incarnation_that_crashes_answers_what_it_ran_and_the_call_is_retried_on_its_successor(
    tmp_path, release
):
    config = fake_config(tmp_path, tools={"gobuster": blocking(release, concurrency=1)})
    old = Path(config["tools"]["gobuster"]["binary"])
    reloaded = copy.deepcopy(config)
    reloaded["tools"]["gobuster"]["binary"] = str(install_fake(tmp_path / "new", "gobuster"))

    async def scenario(runtime: Runtime) -> None:
        first = await runtime.astart("gobuster", {"target": "10.0.0.7"})
        await asyncio.to_thread(wait_until, lambda: running(old) == 1)
        await asyncio.to_thread(runtime.reload, reloaded)
        # Nothing a caller does reaches a retired incarnation; make it fail the way a bug would, on its thread.
        (retiring,) = runtime.supervisor.slots["gobuster"].retiring.values()
        retiring.ref.tell(Restart("a fault while it drains"))
        await asyncio.to_thread(wait_until, lambda: running(old) == 2)  # retried on the successor
        release.touch()
        outcome = await first.outcome
        assert outcome.ok and outcome.attempts == 2, outcome
        assert [earlier.error_type for earlier in outcome.retried] == ["actor_restarted"]
        status = runtime.status().tools["gobuster"]
        assert status.retiring == 0 and status.incarnation == 2 and status.restarts == 0 and status.in_flight == 0

    with start(config) as runtime:
        asyncio.run(scenario(runtime))


def test_a_replaced_incarnation_hands_its_queue_to_its_successor(tmp_path, release):
    config = fake_config(tmp_path, tools={"nmap": blocking(release, concurrency=1)})
    old = Path(config["tools"]["nmap"]["binary"])
    reloaded = copy.deepcopy(config)
    reloaded["tools"]["nmap"]["binary"] = str(install_fake(tmp_path / "new", "nmap"))

    async def scenario(runtime: Runtime) -> None:
        first = await runtime.astart("nmap", {"target": "10.0.0.7", "ports": "22"})
        await asyncio.to_thread(wait_until, lambda: running(old) == 1)
        queued = await runtime.astart("nmap", {"target": "10.0.0.7", "ports": "22"})
        await asyncio.to_thread(runtime.reload, reloaded)
        # The queued call starts on the successor while the first still runs on the retired incarnation
        # (with the binary it was admitted with), instead of waiting for it.
        await asyncio.to_thread(wait_until, lambda: running(old) == 2)
        release.touch()
        assert (await first.outcome).ok and (await queued.outcome).ok

    with start(config) as runtime:
        asyncio.run(scenario(runtime))


def test_a_new_binary_starts_with_a_closed_circuit(tmp_path):
    config = fake_config(
        tmp_path, tools={"nmap": {"scenario": {"mode": "fail"}, "breaker": {"failure_threshold": 1, "open_sec": 600}}}
    )
    reloaded = copy.deepcopy(config)
    reloaded["tools"]["nmap"]["binary"] = str(install_fake(tmp_path / "fixed", "nmap"))
    with start(config) as runtime:
        assert error_type(runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"})) == "execution"
        assert error_type(runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"})) == "circuit_open"
        assert runtime.reload(reloaded).tools == {"nmap": "replace"}
        assert runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"}).ok
        assert runtime.status().tools["nmap"].breaker.state == "closed"


def test_a_call_to_a_disabled_tool_looks_nothing_up(tmp_path):
    asked: list[str] = []

    def resolver(name: str) -> list[Any]:
        asked.append(name)
        return [ipaddress.ip_address("10.0.0.9")]

    config = fake_config(tmp_path, policy={"dns": True})
    with Runtime.start(config, resolver=resolver) as runtime:
        runtime.disable_tool("nmap", "patching")
        refused = asyncio.run(runtime.acall("nmap", {"target": "db.lab.internal", "ports": "22"}))
        assert error_type(refused) == "tool_disabled" and asked == []
        assert asyncio.run(runtime.acall("gobuster", {"target": "db.lab.internal"})).ok
        assert asked == ["db.lab.internal"]
