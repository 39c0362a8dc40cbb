"""A tool labrecon does not ship, written the way an embedder would: one spec in one file.

`hello` greets its target a number of times. Its binary is a tiny script
(`write_hello`) that only prints: it sends nothing anywhere.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import Field

from actors.policy import ResolvedTarget
from actors.results import InvalidCall
from actors.settings import ToolSettings
from actors.tools import ToolSpec
from actors.tools.base import ParsedResult, ToolArguments

HELLO_VERSION = "hello 1.2.3"


class HelloSettings(ToolSettings):
    binary: str = "hello"
    max_repeat: int = Field(default=3, ge=1, le=10)


class HelloArguments(ToolArguments):
    repeat: int = Field(default=1, ge=1, le=10, description="How many greetings; capped by configuration.")


class HelloResult(ParsedResult):
    greetings: list[str] = Field(default_factory=list)


def build_argv(args: HelloArguments, target: ResolvedTarget, settings: HelloSettings) -> list[str]:
    if args.repeat > settings.max_repeat:
        raise InvalidCall(f"repeat is capped at {settings.max_repeat}", field="repeat")
    return ["--repeat", str(args.repeat), target.tool_target]


def parse(stdout: bytes, truncated: bool) -> HelloResult:
    lines = stdout.decode("utf-8", "replace").splitlines()
    return HelloResult(truncated=truncated, greetings=[line for line in lines if line.startswith("hello ")])


def progress(line: str) -> float | None:
    match = re.search(r"([0-9]+)% greeted", line)
    return float(match[1]) if match else None


HELLO = ToolSpec(
    name="hello",
    title="Greet a lab host",
    description="Greets one lab host by address, a given number of times.",
    settings=HelloSettings,
    arguments=HelloArguments,
    result_model=HelloResult,
    version_argv=("--version",),
    builder=build_argv,
    parser=parse,
    progress_parser=progress,
)

_SCRIPT = f"""#!{sys.executable}
import sys
if sys.argv[1:] == ["--version"]:
    print({HELLO_VERSION!r})
    sys.exit(0)
_, count, target = sys.argv[1:]
for _ in range(int(count)):
    print("hello " + target)
"""


def write_hello(directory: Path) -> Path:
    """The `hello` binary, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "hello"
    binary.write_text(_SCRIPT, encoding="utf-8")
    binary.chmod(0o755)
    return binary
