"""A declarative command-line grammar: the only way user options reach argv.

Each tool lists the options it accepts, each with a value kind that checks
and canonicalises the value. `Grammar.parse` reads tokens the way the real
tools' parsers would (`--opt value`, `--opt=value`, joined short forms like
`-p80`, single-dash long forms like `-script` for getopt_long_only tools) but
accepts only exact spellings: an abbreviation such as `--scr`, a positional
token, or any option not declared is refused with `InvalidCall`. The argv is
then *rendered* from the parsed result in one canonical form, so what the
tool runs is exactly what was checked, never the user's original spelling.

Value kinds never accept a value beginning with `-`: such a value could be
taken for an option by the tool's own parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

from actors.results import InvalidCall

MAX_VALUE_LEN = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ValueKind(Protocol):
    """Checks one option value; returns its canonical form or raises ValueError."""

    @property
    def description(self) -> str:
        """What a valid value looks like, for messages."""
        ...

    def canonical(self, raw: str) -> str: ...


# ---------------------------------------------------------------- value kinds


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    description: str = "an integer"

    def canonical(self, raw: str) -> str:
        if not re.fullmatch(r"[0-9]{1,10}", raw):
            raise ValueError(f"expected {self.description} from {self.lo} to {self.hi}, got {raw!r}")
        number = int(raw)
        if not self.lo <= number <= self.hi:
            raise ValueError(f"{number} is outside the allowed range {self.lo}..{self.hi}")
        return str(number)


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]
    description: str = "one of a fixed set"

    def canonical(self, raw: str) -> str:
        if raw not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {raw!r}")
        return raw


@dataclass(frozen=True)
class Pattern:
    """A value matching a fixed ASCII regular expression."""

    regex: str
    description: str
    max_len: int = 256

    def canonical(self, raw: str) -> str:
        if len(raw) > self.max_len or not re.fullmatch(self.regex, raw, flags=re.ASCII):
            raise ValueError(f"expected {self.description}, got {raw[:80]!r}")
        return raw


_DURATION = re.compile(r"([0-9]{1,7})(ms|s|m|h)?", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


@dataclass(frozen=True)
class Duration:
    """A time such as `500ms`, `30s`, `5m`; a bare number means seconds.

    Rendered with an explicit unit because Go's duration parser (gobuster)
    refuses bare numbers while nmap accepts both. Both bounds are stated by
    each option: for a timeout, zero means "no timeout" to the tools, so its
    lower bound is above zero.
    """

    min_sec: float
    max_sec: float
    description: str = "a duration like 500ms, 30s, 5m"

    def canonical(self, raw: str) -> str:
        match = _DURATION.fullmatch(raw)
        if not match:
            raise ValueError(f"expected {self.description}, got {raw!r}")
        amount, unit = int(match[1]), match[2] or "s"
        millis = amount * _UNIT_MS[unit]  # whole milliseconds: no rounding at the bounds
        if not self.min_sec * 1000 <= millis <= self.max_sec * 1000:
            raise ValueError(f"{raw} is outside the allowed range {self.min_sec:g}s..{self.max_sec:g}s")
        return f"{amount}{unit}"


@dataclass(frozen=True)
class PortList:
    """Port specs like `22,80,8000-8100` or `T:80,U:53`, with a port-count cap.

    Service names, wildcards, open-ended ranges (`1024-`, `-`) and brackets
    are refused: they make the number of probed ports unknowable here.
    """

    max_ports: int = 65535
    prefixes: tuple[str, ...] = ("T", "U")
    description: str = "a port list like 22,80,8000-8100"

    def canonical(self, raw: str) -> str:
        return ",".join(self.items(raw))

    def items(self, raw: str) -> list[str]:
        if len(raw) > MAX_VALUE_LEN:
            raise ValueError("port list is too long")
        parts, count = [], 0
        for item in raw.split(","):
            match = re.fullmatch(r"(?:([A-Z]):)?([0-9]{1,5})(?:-([0-9]{1,5}))?", item, flags=re.ASCII)
            if not match:
                raise ValueError(f"expected {self.description}, got item {item!r}")
            prefix, lo, hi = match[1], int(match[2]), int(match[3] or match[2])
            if prefix is not None and prefix not in self.prefixes:
                allowed = ", ".join(f"{p}:" for p in self.prefixes) or "none"
                raise ValueError(f"protocol prefix {prefix}: is not allowed (allowed: {allowed})")
            if not 1 <= lo <= hi <= 65535:
                raise ValueError(f"port range {item!r} must lie within 1-65535 with start <= end")
            count += hi - lo + 1
            text = f"{lo}" if lo == hi else f"{lo}-{hi}"
            parts.append(f"{prefix}:{text}" if prefix else text)
        if count > self.max_ports:
            raise ValueError(f"{count} ports requested; the limit is {self.max_ports}")
        return parts

    def count(self, raw: str) -> int:
        total = 0
        for part in self.items(raw):
            span = part.split(":")[-1].split("-")
            total += int(span[-1]) - int(span[0]) + 1
        return total


@dataclass(frozen=True)
class NameList:
    """A comma-separated selection from an allowed set (e.g. nmap scripts)."""

    allowed: frozenset[str]
    forbidden: frozenset[str] = frozenset()
    description: str = "a comma-separated list of names"

    def canonical(self, raw: str) -> str:
        names: list[str] = []
        for name in raw.split(","):
            name = name.strip().lower()
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name, flags=re.ASCII):
                raise ValueError(f"{name!r} is not a plain name (no paths, wildcards or expressions)")
            if name in self.forbidden:
                raise ValueError(f"{name!r} is never allowed")
            if name not in self.allowed:
                raise ValueError(f"{name!r} is not allowed; choose from {', '.join(sorted(self.allowed))}")
            if name not in names:
                names.append(name)
        return ",".join(names)


@dataclass(frozen=True)
class FileInDirectory:
    """A plain file name resolved inside one directory (gobuster wordlists).

    Only a bare name is accepted: no separators, no `..`, no hidden files.
    A name without a suffix also finds `<name>.txt`. The rendered value is
    the absolute path, so the tool never sees a path the user wrote.
    """

    directory: Path
    description: str = "a wordlist name"

    def canonical(self, raw: str) -> str:
        directory = self.directory.resolve()
        own = f"{directory}/"
        if raw.startswith(own):  # our own rendering, so that canonical forms are fixed points
            raw = raw[len(own):]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}", raw, flags=re.ASCII) or ".." in raw:
            raise ValueError(f"expected {self.description} (a plain file name, no path), got {raw[:80]!r}")
        for candidate in (raw, f"{raw}.txt"):
            path = directory / candidate
            if path.is_file() and path.resolve().parent == directory:
                return str(path)
        available = ", ".join(self.available()) or "none"
        raise ValueError(f"no wordlist named {raw!r}; available: {available}")

    def available(self) -> list[str]:
        try:
            return sorted(p.name for p in self.directory.iterdir() if p.is_file() and not p.name.startswith("."))
        except OSError:
            return []


# ---------------------------------------------------------------- grammar


@dataclass(frozen=True)
class Option:
    """One accepted option. `names[0]` is the spelling rendered into argv."""

    names: tuple[str, ...]
    value: ValueKind | None = None
    repeatable: bool = False
    joined: bool = False  # render "-T4" instead of "-T", "4"
    help: str = ""

    @property
    def name(self) -> str:
        return self.names[0]

    def render(self, value: str | None) -> list[str]:
        if self.value is None:
            return [self.name]
        assert value is not None
        return [f"{self.name}{value}"] if self.joined else [self.name, value]


@dataclass(frozen=True)
class ParsedOption:
    option: Option
    value: str | None
    source: str = "extra_args"  # the argument field the option came from

    @property
    def name(self) -> str:
        return self.option.name


def render(parsed: Iterable[ParsedOption]) -> list[str]:
    """The canonical argv fragment for already-checked options."""
    argv: list[str] = []
    for item in parsed:
        argv.extend(item.option.render(item.value))
    return argv


@dataclass
class Grammar:
    """The complete set of options a tool accepts from users.

    `forbidden` maps option spellings (or short prefixes like `-o`) to the
    reason they are refused; it only improves error messages, since anything
    undeclared is refused anyway.
    """

    options: Sequence[Option]
    forbidden: Mapping[str, str] = field(default_factory=dict)
    single_dash_long: bool = False
    tool: str = "tool"

    def __post_init__(self) -> None:
        self._by_name: dict[str, Option] = {}
        for option in self.options:
            for name in option.names:
                if not name.startswith("-") or name in self._by_name:
                    raise ValueError(f"bad or duplicate option name {name!r}")
                self._by_name[name] = option
        # Single-dash options taking a value may be joined with it (-p80, -T4).
        self._joinable = sorted(
            (n for n, o in self._by_name.items() if o.value is not None and not n.startswith("--")),
            key=len,
            reverse=True,
        )

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def option(self, name: str) -> Option:
        return self._by_name[name]

    def parse(self, tokens: Sequence[str], *, field: str = "extra_args") -> list[ParsedOption]:
        """Parse one argument's tokens; see `parse_sources` for several at once."""
        return self.parse_sources([(field, tokens)])

    def parse_sources(self, sources: Iterable[tuple[str, Sequence[str]]]) -> list[ParsedOption]:
        """Parse tokens from several argument fields as one command line.

        An option that is not repeatable may appear once in total, so a typed
        field and the same option in `extra_args` conflict instead of one
        silently overriding the other.
        """
        parsed: list[ParsedOption] = []
        seen: dict[Option, str] = {}
        for field_name, tokens in sources:
            for item in self._parse_tokens(list(tokens), field_name):
                first = seen.get(item.option)
                if first is not None and not item.option.repeatable:
                    where = field_name if first == field_name else f"{first} and {field_name}"
                    raise InvalidCall(f"{item.name} is given more than once (in {where})", field=field_name)
                seen.setdefault(item.option, field_name)
                parsed.append(item)
        return parsed

    def _parse_tokens(self, tokens: list[str], field_name: str) -> Iterable[ParsedOption]:
        i = 0
        while i < len(tokens):
            token = tokens[i]
            option, inline = self._match(token, field_name)
            i += 1
            if option.value is None:
                if inline is not None:
                    raise InvalidCall(f"{option.name} takes no value (got {token!r})", field=field_name)
                yield ParsedOption(option, None, field_name)
                continue
            if inline is None:
                if i >= len(tokens):
                    raise InvalidCall(f"{option.name} needs a value ({option.value.description})", field=field_name)
                inline = tokens[i]
                i += 1
            yield ParsedOption(option, self._check_value(option, inline, field_name), field_name)

    def _match(self, token: str, field_name: str) -> tuple[Option, str | None]:
        """Find the option a token names, plus any value written into it."""
        if token in ("-", "--") or not token.startswith("-"):
            raise InvalidCall(
                f"unexpected argument {token[:80]!r}: only options are accepted here; "
                "the target comes from the 'target' field",
                field=field_name,
            )
        name, eq, value = token.partition("=")
        inline = value if eq else None
        if token.startswith("--"):
            if name in self._by_name:
                return self._by_name[name], inline
            self._unknown(name, field_name)
        if token in self._by_name:
            return self._by_name[token], None
        if self.single_dash_long and "-" + name in self._by_name:
            return self._by_name["-" + name], inline
        if name in self.forbidden or (self.single_dash_long and "-" + name in self.forbidden):
            self._unknown(name, field_name)
        for short in self._joinable:
            if token.startswith(short) and len(token) > len(short):
                return self._by_name[short], token[len(short):]
        self._unknown(name, field_name)

    def _check_value(self, option: Option, raw: str, field_name: str) -> str:
        assert option.value is not None
        if not raw:
            raise InvalidCall(f"{option.name} needs a non-empty value", field=field_name)
        if raw.startswith("-"):
            raise InvalidCall(
                f"{option.name}: values may not start with '-' (got {raw[:80]!r})", field=field_name
            )
        if len(raw) > MAX_VALUE_LEN or _CONTROL.search(raw):
            raise InvalidCall(f"{option.name}: value is too long or has control characters", field=field_name)
        try:
            return option.value.canonical(raw)
        except ValueError as exc:
            raise InvalidCall(f"{option.name}: {exc}", field=field_name) from None

    def _unknown(self, name: str, field_name: str) -> NoReturn:
        reason = self._forbidden_reason(name)
        if reason:
            raise InvalidCall(f"{name[:80]} is not allowed: {reason}", field=field_name)
        hint = ""
        stem = "--" + name.lstrip("-")
        prefixed = sorted(n for n in self._by_name if n.startswith((stem, name)))
        if prefixed and len(name) > 2:
            hint = f" (abbreviations are not accepted; did you mean {' or '.join(prefixed[:3])}?)"
        raise InvalidCall(
            f"unknown or unsupported {self.tool} option {name[:80]!r}{hint}; accepted: {self.summary()}",
            field=field_name,
        )

    def _forbidden_reason(self, name: str) -> str | None:
        if name in self.forbidden:
            return self.forbidden[name]
        if self.single_dash_long and not name.startswith("--") and "-" + name in self.forbidden:
            return self.forbidden["-" + name]
        prefixes = [p for p in self.forbidden if not p.startswith("--") and name.startswith(p)]
        return self.forbidden[max(prefixes, key=len)] if prefixes else None

    def summary(self) -> str:
        return " ".join(sorted(o.name for o in self.options))
