"""Which labrecon builds a benchmark runs side by side: this checkout's, and any named with `--compare`.

A variant is a name and the command that starts that labrecon; the benchmark
appends `serve --config ...`. `before=/tmp/before/.venv/bin/labrecon` runs
another checkout's build, `orjson=.venv/bin/python bench/labrecon_orjson.py`
this one with orjson doing the JSON-RPC text. Names are unique, and `sdk`
(the reference server) is never one of them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

OWN = "labrecon"
REFERENCE = "sdk"
LABRECON = [str(Path(sys.executable).with_name("labrecon"))]


def variant(text: str) -> tuple[str, list[str]]:
    """`NAME=COMMAND` from the command line, the command split as a shell would."""
    name, sep, command = text.partition("=")
    argv = shlex.split(command)
    if not sep or not name.isidentifier() or not argv:
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
    return name, argv


def variants(compare: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """This checkout's labrecon first, then each compared one, by name."""
    commands = {OWN: LABRECON}
    for name, argv in compare:
        if name in commands or name == REFERENCE:
            raise SystemExit(f"--compare: the name {name!r} is taken")
        commands[name] = argv
    return commands


def add_compare_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compare",
        type=variant,
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another labrecon to run in the same rounds (repeatable), e.g. before=/tmp/before/.venv/bin/labrecon",
    )
