"""Building real runtimes whose tools are the fake scanners, for tests that go through the public API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.policy import Resolver
from actors.tools import TOOL_SPECS
from supervisor import Runtime
from supervisor.tracing import CallTracer
from tests.fakes.install import install_fake, read_calls

LAB_HOSTS = {"web.lab.internal": "10.0.0.7", "meta.lab.internal": "169.254.169.254"}


def fake_config(directory: Path, *, tools: dict[str, dict[str, Any]] | None = None, **sections: Any) -> dict[str, Any]:
    """A config dict for every registered tool, run by a fake in `directory`; `tools` adds keys and scenarios.

    `tools={"nmap": {"concurrency": 1, "scenario": {"mode": "fail"}}}` sets nmap's
    limits and the fake's behaviour in one place. A tool given a `binary` runs that instead.
    """
    tools = tools or {}
    config: dict[str, Any] = {
        "policy": {"dns": False, "hosts": dict(LAB_HOSTS)},
        "tools": {},
        "supervisor": {"backoff_initial_sec": 0},
    }
    for name in TOOL_SPECS:
        extra = dict(tools.get(name, {}))
        scenario = extra.pop("scenario", {})
        if "binary" not in extra:
            extra["binary"] = str(install_fake(directory, name, **scenario))
        config["tools"][name] = extra
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@contextmanager
def fake_runtime(
    directory: Path, *, resolver: Resolver | None = None, tracer: CallTracer | None = None, **kwargs: Any
) -> Iterator[Runtime]:
    """A started runtime on fakes (`kwargs` as for `fake_config`); `resolver` answers its look-ups, `tracer` traces."""
    runtime = Runtime.start(fake_config(directory, **kwargs), resolver=resolver, tracer=tracer)
    try:
        yield runtime
    finally:
        runtime.stop(grace=2.0)


VERSION_QUERIES = (["--version"], ["version"], ["-V"])


def scan_calls(binary: Path | str) -> list[dict[str, Any]]:
    """The fake's recorded calls, less the version queries the health check makes at start."""
    return [call for call in read_calls(binary) if call["argv"] not in VERSION_QUERIES]
