"""Putting a fake scanner where a test wants it, and reading back what it was asked to do."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .scenario import CALLS_SUFFIX, SCENARIO_SUFFIX

FAKES_DIR = Path(__file__).resolve().parent
TOOLS = ("nmap", "masscan", "gobuster")


def install_fake(directory: Path, tool: str, **scenario: Any) -> Path:
    """Link the fake ``tool`` into ``directory`` with ``scenario``; returns the path to run.

    Each directory holds its own scenario and call records, so a test that
    installs into its own ``tmp_path`` never sees another test's calls.
    """
    if tool not in TOOLS:
        raise ValueError(f"no fake for {tool!r}; fakes exist for {', '.join(TOOLS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / tool
    if not binary.is_symlink():
        binary.symlink_to(FAKES_DIR / tool)
    set_scenario(binary, **scenario)
    return binary


def set_scenario(binary: Path | str, **scenario: Any) -> None:
    """Replace the scenario of an installed fake; later calls follow the new one."""
    path = Path(str(binary) + SCENARIO_SUFFIX)
    if scenario:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(scenario), encoding="utf-8")
        temporary.replace(path)  # a fake starting meanwhile reads the old or the new one, never half
    else:
        path.unlink(missing_ok=True)


def calls_path(binary: Path | str) -> Path:
    text = str(binary)
    return Path(text if text.endswith(CALLS_SUFFIX) else text + CALLS_SUFFIX)


def read_calls(path: Path | str) -> list[dict[str, Any]]:
    """One dict per call of the fake at ``path`` (or of that calls file), oldest first.

    Each has ``argv``, ``pid``, ``ppid``, ``time``/``mono`` (when it started),
    ``mode``, ``env`` (its HOME and NMAPDIR), ``ray_node`` (the Ray node it ran on, None outside Ray: see
    scenario.py), ``child_pid`` where it forked, ``detached_pid`` where it detached a
    process, and ``end``/``end_mono`` and ``exit_code`` once it exited by itself
    (None while running or if killed).
    """
    try:
        lines = calls_path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    calls: list[dict[str, Any]] = []
    by_pid: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if entry.pop("event") == "start":
            entry.update(end=None, end_mono=None, exit_code=None)
            calls.append(entry)
            by_pid[entry["pid"]] = entry
        elif entry["pid"] in by_pid:
            by_pid[entry["pid"]].update(end=entry["time"], end_mono=entry["mono"], exit_code=entry["exit_code"])
    return calls


def running(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls that have started and not yet exited by themselves."""
    return [call for call in calls if call["end_mono"] is None]


def max_concurrency(calls: Iterable[dict[str, Any]]) -> int:
    """The most calls that were running at the same moment (a call not ended counts as running)."""
    edges = []
    for call in calls:
        edges.append((call["mono"], 1))
        if call["end_mono"] is not None:
            edges.append((call["end_mono"], -1))
    peak = level = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        level += step
        peak = max(peak, level)
    return peak
