"""What every tool is made of: settings, typed MCP arguments, an argv builder, a parser.

A `ToolSpec` is everything labrecon knows about one tool, as data and pure
functions: its `[tools.<name>]` settings, arguments, argv builder, output and
progress parsers, and version query. `tools/list` schemas are generated from
its models, so what is advertised is what calls take and return; arguments
are strict (no coercion, except port lists that also come as numbers or arrays).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from actors.api import ToolInfo
from actors.flags import MAX_VALUE_LEN
from actors.policy import ResolvedTarget
from actors.results import CallOutcome, InvalidCall
from actors.settings import ToolSettings
from actors.tools.schema import compact_schema

MAX_EXTRA_ARGS = 2048

# These tools only look: nothing is changed on the targets, repeating a scan is
# harmless, and they reach outside this process (hence open world).
READ_ONLY_ANNOTATIONS: Mapping[str, Any] = {
    "readOnlyHint": True,
    "destructiveHint": False,
    "idempotentHint": True,
    "openWorldHint": True,
}


class ToolArguments(BaseModel):
    """Fields every tool takes. Unknown fields are refused, not ignored; types are strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    target: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "One target: an IPv4 address (10.0.0.5), a CIDR network (10.0.0.0/24) or a hostname in an "
            "allowed lab domain. Only allowed lab networks are accepted; ranges, lists and wildcards are not."
        ),
    )
    extra_args: str | None = Field(
        default=None,
        max_length=MAX_EXTRA_ARGS,
        description=(
            "Additional command-line options, checked against the tool's allowlist. Options only: the "
            "target, output and file options are refused."
        ),
    )
    timeout_sec: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Wall-clock limit for the run in seconds; defaults to and is capped by server configuration.",
    )
    wait_sec: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "How long this call waits for the scan before it answers status 'working' with a scan_id to "
            "poll with scan_status; the scan goes on either way. Defaults to and is capped by server "
            "configuration."
        ),
    )


SCAN_FIELDS: dict[str, Any] = {
    "scan_id": {
        "type": "string",
        "description": "The scan this call is kept as: pass it to scan_status, scan_result or scan_cancel.",
    },
    "status": {"enum": ["working", "completed", "failed", "cancelled"], "description": "Where the scan stands."},
    "progress": {"type": ["number", "null"], "description": "Percent done, while the scan is working."},
    "next_step": {
        "type": "string",
        "description": "What to call next: while the scan is working, or to read a result too long for one answer.",
    },
    "summary": {
        "type": "object",
        "description": "In place of result when the whole result is longer than one answer holds: its summary.",
    },
}
"""What a call's answer adds to the envelope when the call is kept as a scan (see `supervisor.scans`)."""

MAX_PORT_ITEMS = 512
_Port = Annotated[int, Field(ge=1, le=65535)]
# What a client may send for a port list, as the input schema shows it.
PortsInput = (
    Annotated[str, Field(min_length=1, max_length=MAX_VALUE_LEN)]
    | _Port
    | Annotated[list[_Port | str], Field(min_length=1, max_length=MAX_PORT_ITEMS)]
)


def _port_list_text(value: Any) -> Any:
    """`"22, 80"`, `22` or `[22, "8000-8100"]` as one port list string (`"22,80"`, ...).

    Only the shape is settled here; the tool's grammar checks and
    canonicalises every item, so a port list has one set of rules.
    """
    if value is None:
        return None
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_PORT_ITEMS:
            raise ValueError(f"a port list holds 1 to {MAX_PORT_ITEMS} items")
        return ",".join(_port_text(item) for item in value)
    return _port_text(value)


def _port_text(value: Any) -> str:
    if isinstance(value, str):
        return ",".join(item.strip(" ") for item in value.split(","))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError("expected a port list like '22,80,8000-8100', a port number like 22, or a list like [22, 80]")


Ports = Annotated[str, BeforeValidator(_port_list_text, json_schema_input_type=PortsInput)]
OptionalPorts = Annotated[str | None, BeforeValidator(_port_list_text, json_schema_input_type=PortsInput | None)]


class ParsedResult(BaseModel):
    """Base of every tool's parsed output."""

    truncated: bool = Field(default=False, description="The output was cut short (byte cap, timeout or cancel).")
    parse_error: str | None = Field(default=None, description="Why the output could not be fully parsed, if so.")


def split_extra_args(extra: str | None) -> list[str]:
    """Split `extra_args` like a POSIX shell would, without running one."""
    if not extra:
        return []
    if "\x00" in extra:
        raise InvalidCall("extra_args contains a NUL character", field="extra_args")
    try:
        return shlex.split(extra, comments=False, posix=True)
    except ValueError as exc:
        raise InvalidCall(f"extra_args could not be split into options: {exc}", field="extra_args") from None


def no_environment(settings: Any) -> Mapping[str, str]:
    return {}


def no_problems(settings: Any) -> tuple[str, ...]:
    return ()


def no_settings_schema(settings: Any) -> Mapping[str, Mapping[str, Any]]:
    return {}


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """A short message naming the offending fields, and the first field."""
    parts, first = [], None
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "arguments"
        if first is None and item["loc"]:
            first = str(item["loc"][0])
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts), first


@dataclass(frozen=True)
class ToolSpec:
    """One tool. `builder` gets the validated `arguments` and the tool's `settings` instance."""

    name: str  # the MCP tool name and the `[tools.<name>]` table: lower case, digits, underscores
    title: str
    description: str
    settings: type[ToolSettings]  # its defaults (binary first) are the tool's defaults
    arguments: type[ToolArguments]
    result_model: type[ParsedResult]
    version_argv: tuple[str, ...]  # what the health check runs after the binary to learn its version
    builder: Callable[[Any, ResolvedTarget, Any], list[str]]
    parser: Callable[[bytes, bool], ParsedResult]
    progress_parser: Callable[[str], float | None]
    annotations: Mapping[str, Any] = field(default_factory=lambda: dict(READ_ONLY_ANNOTATIONS))
    # What each run adds to the runner's minimal environment, from the tool's settings (never HOME).
    environment: Callable[[Any], Mapping[str, str]] = no_environment
    # What keeps the tool from running, or narrows what it runs, as its settings found it; for operators.
    problems: Callable[[Any], tuple[str, ...]] = no_problems
    # What the settings tell a caller about the arguments (a cap, the names on offer): JSON Schema keywords
    # merged into each named property of the input schema, so a client sees them change with the config.
    settings_schema: Callable[[Any], Mapping[str, Mapping[str, Any]]] = no_settings_schema

    def validate_arguments(self, arguments: Any) -> ToolArguments:
        if isinstance(arguments, self.arguments):
            return arguments
        if not isinstance(arguments, Mapping):
            raise InvalidCall(f"{self.name} arguments must be a JSON object", field="arguments")
        try:
            return self.arguments.model_validate(dict(arguments))
        except ValidationError as exc:
            message, first = validation_message(exc)
            raise InvalidCall(f"invalid {self.name} arguments: {message}", field=first) from None

    def build_argv(self, args: Any, target: ResolvedTarget, settings: ToolSettings) -> list[str]:
        """The argv after the binary: checked options, our output flags, the target once."""
        return self.builder(self.validate_arguments(args), target, settings)

    def run_environment(self, settings: ToolSettings) -> Mapping[str, str]:
        return self.environment(settings)

    def installation_problems(self, settings: ToolSettings) -> tuple[str, ...]:
        return self.problems(settings)

    def parse(self, stdout: bytes, *, truncated: bool) -> dict[str, Any]:
        """Parse tool output; never raises, a failure is reported in `parse_error`."""
        try:
            result = self.parser(stdout, truncated)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the run's outcome
            result = self.result_model(truncated=truncated, parse_error=f"{type(exc).__name__}: {exc}")
        return result.model_dump(mode="json")

    def progress(self, line: str) -> float | None:
        try:
            value = self.progress_parser(line)
        except Exception:  # noqa: BLE001 - a progress line the parser trips on is just not progress
            return None
        return None if value is None else max(0.0, min(100.0, value))

    def input_schema(self) -> dict[str, Any]:
        schema = self.arguments.model_json_schema()
        schema["type"] = "object"
        return schema

    def output_schema(self) -> dict[str, Any]:
        return compact_schema(self.model_output_schema())

    def model_output_schema(self) -> dict[str, Any]:
        """The output schema as pydantic writes it: the envelope with this tool's result model in it."""
        envelope = CallOutcome.model_json_schema(mode="serialization")
        result = self.result_model.model_json_schema(mode="serialization")
        defs = {**envelope.pop("$defs", {}), **result.pop("$defs", {})}
        defs[self.result_model.__name__] = result
        envelope["properties"]["result"] = {
            "anyOf": [{"$ref": f"#/$defs/{self.result_model.__name__}"}, {"type": "null"}],
            "default": None,
        }
        envelope["properties"].update(SCAN_FIELDS)
        envelope["$defs"] = defs
        envelope["type"] = "object"
        return envelope

    def info(self, settings: ToolSettings | None = None) -> ToolInfo:
        """The tool as clients list it; with `settings`, its input schema states what they allow."""
        listed = self._listing
        keywords = self.settings_schema(settings) if settings is not None else {}
        if not keywords:
            return listed
        properties = dict(listed.input_schema["properties"])
        for name, extra in keywords.items():
            properties[name] = {**properties[name], **extra}
        return replace(listed, input_schema={**listed.input_schema, "properties": properties})

    @functools.cached_property
    def _listing(self) -> ToolInfo:
        """Derived once: building JSON schemas is costly, and they depend on the spec alone."""
        return ToolInfo(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema(),
            output_schema=self.output_schema(),
            annotations={"title": self.title, **self.annotations},
        )
