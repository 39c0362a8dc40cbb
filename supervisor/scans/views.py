"""A scan's result as a model reads it: a summary, or filtered pages of rows, each within a budget.

A view's size is `len(text)` plus the length of `structured` as compact JSON (separators ","
and ":", non-ASCII kept: the form tool results are sent in); it never exceeds `max_chars`.
Rows come in the parser's order, one per host and port, per host without ports (or with OS
guesses or host scripts) and per gobuster finding; a page is a contiguous run of the filtered
rows, so following `next_offset` returns each row exactly once. Pure: no I/O, no threads.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.results import CallError, CallOutcome

__all__ = [
    "MAX_LIMIT",
    "MIN_MAX_CHARS",
    "PAGE_SCHEMA",
    "PAGE_TOOL",
    "SUMMARY_SCHEMA",
    "View",
    "result_page",
    "summarize",
]

PAGE_TOOL = "scan_result"  # the tool a view tells the model to call for more
MIN_MAX_CHARS = 5000  # the smallest budget a view is made for: the largest header plus the largest row
MAX_LIMIT = 1000  # rows per page at most
ROW_MAX_CHARS = 1600  # a row's JSON plus its text, after clipping
FINDING_CHARS = 200
NOTE_CHARS = 200
MESSAGE_CHARS = 300
NAME_CHARS = 120  # tool, call id and target as echoed in a view's header
_SLACK = 128  # what a header may grow by when its numbers are filled in
_SUMMARY_COLUMNS = ("host", "port", "protocol", "state", "service", "product", "version", "extrainfo", "clipped")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_STATUS_CLASS = re.compile(r"[1-5]xx")


@dataclass(frozen=True)
class View:
    """What a model reads: `structured` for `structuredContent`, `text` for the text content."""

    structured: dict[str, Any]
    text: str
    next_offset: int | None  # where the next page starts; None when nothing follows
    total: int  # the rows the view pages through (after filters)

    @property
    def size(self) -> int:
        """The characters this view costs: `text` plus `structured` as compact JSON."""
        return len(self.text) + _json_len(self.structured)


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class _Row:
    kind: str  # "port", "host" or "found"
    raw: dict[str, Any]  # its known values, as the parser gave them
    keys: frozenset[str]  # the addresses and names a `hosts` filter matches, in lower case
    port: int | None
    state: str | None  # port state, host status or HTTP status
    service: str | None

    @property
    def is_port(self) -> bool:
        return self.kind == "port"

    @property
    def host(self) -> str | None:
        host = self.raw.get("host")
        return host if isinstance(host, str) else None

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        """The row as a page holds it: clipped step by step until it costs at most ROW_MAX_CHARS."""
        for chars, items in ((None, None), (400, 8), (120, 4), (40, 2)):
            fitted = self.raw if chars is None else _clip(self.raw, chars, items)
            if fitted != self.raw:
                fitted["clipped"] = True
            if _json_len(fitted) + len(_RENDER[self.kind](fitted)) + 2 <= ROW_MAX_CHARS:
                return fitted
        # Pathological values (thousands of escaped characters): keep what identifies the row.
        identity = {key: _clip(self.raw.get(key), 40, 0) for key in ("host", "path", "port", "protocol", "state")}
        status = {"status": self.raw["status"]} if "status" in self.raw else {}
        return {**_present(identity), **_clip(status, 40, 0), "clipped": True}

    @functools.cached_property
    def text(self) -> str:
        """Its lines in a page's text."""
        return _RENDER[self.kind](self.data)

    @property
    def cost(self) -> int:
        """What it adds to a page: its JSON and a comma, its text and a newline."""
        return _json_len(self.data) + len(self.text) + 2


def _rows(outcome: CallOutcome) -> list[_Row]:
    """Every row of the outcome's parsed result, whatever the tool: hosts with ports, or findings."""
    result = outcome.result or {}
    rows: list[_Row] = []
    hosts = result.get("hosts")
    if isinstance(hosts, list):
        for host in hosts:
            if isinstance(host, dict):
                rows.extend(_host_rows(host))
    findings = result.get("findings")
    if isinstance(findings, list):
        targets = frozenset(t.lower() for t in (outcome.target, *outcome.resolved_targets) if t)
        rows.extend(_finding_row(f, targets) for f in findings if isinstance(f, dict))
    return rows


def _host_address(host: dict[str, Any]) -> str:
    return _text(host.get("address")) or _text(host.get("mac")) or "unknown"


def _host_rows(host: dict[str, Any]) -> Iterator[_Row]:
    address = _host_address(host)
    hostnames = _strings(host.get("hostnames"))
    keys = frozenset(name.lower() for name in (address, *hostnames))
    ports = [p for p in host.get("ports") or [] if isinstance(p, dict) and type(p.get("port")) is int]
    os_matches = _strings(host.get("os_matches"))
    scripts = _scripts(host.get("scripts"))
    if not ports or os_matches or scripts:
        status = _text(host.get("status"))
        data: dict[str, Any] = {
            "host": address,
            "hostnames": hostnames,
            "status": status,
            "os_matches": os_matches,
            "scripts": scripts,
        }
        yield _row("host", data, keys, port=None, state=status, service=None)
    for port in ports:
        banners = _banners(port.get("banners"))
        service = _text(port.get("service")) or next((b["service"] for b in banners if b.get("service")), None)
        data = {
            "host": address,
            "hostnames": hostnames,
            "port": port["port"],
            "protocol": _text(port.get("protocol")),
            "state": _text(port.get("state")),
            "service": service,
            "product": _text(port.get("product")),
            "version": _text(port.get("version")),
            "extrainfo": _text(port.get("extrainfo")),
            "scripts": _scripts(port.get("scripts")),
            "banners": banners,
        }
        yield _row("port", data, keys, port=port["port"], state=data["state"], service=service)


def _finding_row(finding: dict[str, Any], targets: frozenset[str]) -> _Row:
    vhost = _text(finding.get("host"))
    status = finding.get("status")
    data = {
        "path": _text(finding.get("path")),
        "host": vhost,
        "status": status if type(status) is int else None,
        "size": finding.get("size") if type(finding.get("size")) is int else None,
        "redirect": _text(finding.get("redirect")),
    }
    keys = frozenset({vhost.lower()}) if vhost else targets
    state = str(data["status"]) if data["status"] is not None else None
    return _row("found", data, keys, port=None, state=state, service=None)


def _row(
    kind: str, data: dict[str, Any], keys: frozenset[str], *, port: int | None, state: str | None, service: str | None
) -> _Row:
    return _Row(kind, _present(data), keys, port, state, service)


def _port_text(row: dict[str, Any]) -> str:
    lines = [f"{_host_label(row)} {_port_label(row, ('state', 'service', 'product', 'version'))}"]
    return "\n".join(lines + _detail_lines(row))


def _port_label(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    """`22/tcp open ssh OpenSSH 9.2p1 (protocol 2.0)`, from the columns the row has."""
    protocol = f"/{_line(row['protocol'])}" if "protocol" in row else ""
    words = [f"{row['port']}{protocol}", *(_line(row[key]) for key in columns if key in row)]
    if "extrainfo" in row:
        words.append(f"({_line(row['extrainfo'])})")
    return " ".join(words) + _clipped(row)


def _host_text(row: dict[str, Any]) -> str:
    first = _host_label(row) + (f" {_line(row['status'])}" if "status" in row else "")
    if "os_matches" in row:
        first += "; OS: " + "; ".join(_line(name) for name in row["os_matches"])
    return "\n".join([first + _clipped(row), *_detail_lines(row)])


def _finding_text(row: dict[str, Any]) -> str:
    parts = [_line(row.get("path") or row.get("host") or "?")]
    if "status" in row:
        parts.append(str(row["status"]))
    if "size" in row:
        parts.append(f"[size {row['size']}]")
    if "redirect" in row:
        parts.append(f"-> {_line(row['redirect'])}")
    return " ".join(parts) + _clipped(row)


def _host_label(row: dict[str, Any]) -> str:
    names = row.get("hostnames")
    return _line(row.get("host", "?")) + (f" ({', '.join(_line(n) for n in names)})" if names else "")


def _detail_lines(row: dict[str, Any]) -> list[str]:
    lines = [f"  {_line(s['id'])}: {_line(s.get('output', ''))}" for s in row.get("scripts", ())]
    lines += [f"  banner {_line(b.get('service', ''))}: {_line(b['banner'])}" for b in row.get("banners", ())]
    return lines


def _clipped(row: dict[str, Any]) -> str:
    return " [clipped]" if row.get("clipped") else ""


_RENDER: dict[str, Callable[[dict[str, Any]], str]] = {"port": _port_text, "host": _host_text, "found": _finding_text}


# ---------------------------------------------------------------- filters


def _matcher(
    hosts: Sequence[str] | None, ports: Iterable[int] | None, state: str | None, service: str | None
) -> Callable[[_Row], bool]:
    names = {h.lower() for h in hosts or ()}
    networks = [n for n in (_network(h) for h in names) if n is not None]
    port_set = set(ports or ())
    wanted_state = state.lower() if state else None
    wanted_service = service.lower() if service else None

    def matches(row: _Row) -> bool:
        if names and not (row.keys & names or any(_in(key, networks) for key in row.keys)):
            return False
        if port_set and row.port not in port_set:
            return False
        if wanted_state is not None and not _state_matches(row.state, wanted_state):
            return False
        return wanted_service is None or (row.service is not None and wanted_service in row.service.lower())

    return matches


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _in(key: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(key)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _state_matches(state: str | None, wanted: str) -> bool:
    """Exact, case-insensitive; an HTTP status also matches its class ('3xx')."""
    if state is None:
        return False
    state = state.lower()
    if _STATUS_CLASS.fullmatch(wanted) and state.isdigit():
        return state[0] == wanted[0]
    return state == wanted


# ---------------------------------------------------------------- pages


def result_page(
    outcome: CallOutcome,
    *,
    hosts: Sequence[str] | None = None,
    ports: Iterable[int] | None = None,
    state: str | None = None,
    service: str | None = None,
    offset: int = 0,
    limit: int = 100,
    max_chars: int,
) -> View:
    """Rows `offset`, `offset + 1`, ... of the filtered result, at most `limit`, within `max_chars`.

    Filters (an empty one is no filter): `hosts` names addresses, networks or host names;
    `ports` port numbers; `state` a port state ("open", "open|filtered"), a host status ("up")
    or, for gobuster, an HTTP status or class ("301", "3xx"); `service` a substring of the
    service name. The page ends early where the next row would break the budget; `next_offset`
    is where the following page starts, None after the last row.

    Raises:
        ValueError: `offset` below 0, `limit` outside 1..MAX_LIMIT, or `max_chars` below MIN_MAX_CHARS.
    """
    _check_budget(max_chars)
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, not {offset}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    every = _rows(outcome)
    matches = _matcher(hosts, ports, state, service)
    filtered = bool(hosts or ports or state or service)
    selected = [row for row in every if matches(row)] if filtered else every
    page = _Page(outcome, selected, len(every), filtered, offset)
    available = max_chars - page.view(0).size - _SLACK
    taken = 0
    for row in selected[offset : offset + limit]:
        if taken and row.cost > available:
            break
        available -= row.cost
        taken += 1
    view = page.view(taken)
    while view.size > max_chars and taken > 1:
        taken -= 1
        view = page.view(taken)
    return view


@dataclass(frozen=True)
class _Page:
    outcome: CallOutcome
    rows: list[_Row]
    unfiltered: int
    filtered: bool
    offset: int

    def view(self, taken: int) -> View:
        total = len(self.rows)
        shown = self.rows[self.offset : self.offset + taken]
        end = self.offset + len(shown)
        next_offset = end if shown and end < total else None
        notes = _notes(self.outcome)
        structured = {
            **_identity(self.outcome),
            "rows": [row.data for row in shown],
            "offset": self.offset,
            "total": total,
            "unfiltered_total": self.unfiltered,
            "next_offset": next_offset,
            "truncated_output": _truncated(self.outcome),
            "notes": notes,
        }
        lines = [self._headline(shown, next_offset), *(f"Note: {note}" for note in notes)]
        lines += [row.text for row in shown]
        return View(structured, "\n".join(lines), next_offset, total)

    def _headline(self, shown: list[_Row], next_offset: int | None) -> str:
        subject = _subject(self.outcome)
        total = len(self.rows)
        among = f" matching the filters ({self.unfiltered} rows in all)" if self.filtered else ""
        if not total:
            return f"{subject}: no rows{among}." if self.filtered else f"{subject}: the result has no rows."
        if not shown:
            return f"{subject}: offset {self.offset} is past the last row; there are {total} rows{among}."
        span = f"rows {self.offset + 1}-{self.offset + len(shown)} of {total}{among}"
        if next_offset is None:
            return f"{subject}: {span}; this is the last page."
        more = " and the same filters" if self.filtered else ""
        return f"{subject}: {span}. For more call {PAGE_TOOL} with offset={next_offset}{more}."


# ---------------------------------------------------------------- summary


def summarize(outcome: CallOutcome, *, max_chars: int) -> View:
    """The result sized for a model: counts, open ports (or found paths), notable findings, notes.

    The rows shown are the first of `result_page(outcome, state="open")` (gobuster: of
    `result_page(outcome)`); `next_offset` continues them, and `structured["continue_with"]`
    holds the arguments that do. A failed scan leads with its error and recovery.

    Raises:
        ValueError: `max_chars` below MIN_MAX_CHARS.
    """
    _check_budget(max_chars)
    every = _rows(outcome)
    by_ports = isinstance((outcome.result or {}).get("hosts"), list)
    listed = [row for row in every if row.is_port and _state_matches(row.state, "open")] if by_ports else every
    summary = _Summary(
        outcome=outcome,
        listed=listed,
        by_ports=by_ports,
        findings=[_finding_line(finding) for row in every for finding in _findings(row)],
        quiet_hosts=_quiet_hosts(outcome, listed),
        counts=_counts(outcome, every, listed),
    )
    return summary.fit(max_chars)


def _findings(row: _Row) -> Iterator[dict[str, Any]]:
    """The notable lines of one row: OS guesses, script output, banners."""
    place: dict[str, Any] = {key: row.raw[key] for key in ("host", "port", "protocol") if key in row.raw}
    if row.raw.get("os_matches"):
        yield {**place, "kind": "os", "text": "; ".join(row.raw["os_matches"])}
    for script in row.raw.get("scripts", ()):
        yield {**place, "kind": "script", "name": script["id"], "text": script["output"]}
    for banner in row.raw.get("banners", ()):
        yield {**place, "kind": "banner", "name": banner.get("service"), "text": banner["banner"]}


def _finding_line(finding: dict[str, Any]) -> tuple[dict[str, Any], str]:
    finding = _clip(_present(finding), NAME_CHARS, None) | {"text": _shorten(_line(finding["text"]), FINDING_CHARS)}
    where = _line(finding.get("host", "?"))
    if "port" in finding:
        where += f" {finding['port']}" + (f"/{_line(finding['protocol'])}" if "protocol" in finding else "")
    label = "OS" if finding["kind"] == "os" else _line(finding.get("name") or finding["kind"])
    return finding, f"{where} {label}: {finding['text']}"


def _quiet_hosts(outcome: CallOutcome, listed: list[_Row]) -> list[str]:
    """Hosts up without an open port, such as a ping scan's."""
    hosts = (outcome.result or {}).get("hosts")
    with_open = {row.host for row in listed}
    quiet: dict[str, None] = {}
    for host in hosts if isinstance(hosts, list) else ():
        address = _host_address(host) if _host_is_up(host) else None
        if address is not None and address not in with_open:
            quiet[_shorten(address, NAME_CHARS)] = None
    return list(quiet)


def _counts(outcome: CallOutcome, every: list[_Row], listed: list[_Row]) -> dict[str, int | None]:
    result = outcome.result or {}
    hosts = result.get("hosts")
    counts: dict[str, int | None] = {}
    if isinstance(hosts, list):
        up, scanned = result.get("hosts_up"), result.get("hosts_total")
        counts["hosts"] = len(hosts)
        counts["hosts_up"] = up if type(up) is int else sum(1 for host in hosts if _host_is_up(host))
        counts["hosts_scanned"] = scanned if type(scanned) is int else None
        counts["open_ports"] = len(listed)
        counts["ports"] = sum(1 for row in every if row.is_port)
    if isinstance(result.get("findings"), list):
        counts["found"] = sum(1 for row in every if row.kind == "found")
    return counts


def _host_is_up(host: Any) -> bool:
    return isinstance(host, dict) and host.get("status") in ("up", None)


@dataclass
class _Summary:
    outcome: CallOutcome
    listed: list[_Row]  # the rows the summary lists the first of
    by_ports: bool  # listed are open ports grouped by host, not gobuster findings
    findings: list[tuple[dict[str, Any], str]]  # (structured, text) of each notable line
    quiet_hosts: list[str]
    counts: dict[str, int | None]
    _shown: dict[int, tuple[dict[str, Any], str, str]] = field(default_factory=dict)

    @property
    def rows_filter(self) -> dict[str, str]:
        return {"state": "open"} if self.by_ports else {}

    def fit(self, max_chars: int) -> View:
        """Fill the budget: rows first (up to 60%), findings (25%), quiet hosts, then rows and findings again."""
        budget = max_chars - self.view(0, 0, 0).size - _SLACK
        rows, used = _prefix(self._row_cost, 0, len(self.listed), budget * 6 // 10)
        findings, spent = _prefix(self._finding_cost, 0, len(self.findings), min(budget - used, budget // 4))
        used += spent
        quiet, spent = _prefix(self._quiet_cost, 0, len(self.quiet_hosts), budget - used)
        used += spent
        more, spent = _prefix(self._row_cost, rows, len(self.listed), budget - used)
        rows, used = rows + more, used + spent
        more, spent = _prefix(self._finding_cost, findings, len(self.findings), budget - used)
        findings += more
        view = self.view(rows, findings, quiet)
        while view.size > max_chars and (rows or findings or quiet):
            if quiet:
                quiet -= 1
            elif findings:
                findings -= 1
            else:
                rows -= 1
            view = self.view(rows, findings, quiet)
        return view

    def _finding_cost(self, index: int) -> int:
        finding, text = self.findings[index]
        return _json_len(finding) + len(text) + 2

    def _quiet_cost(self, index: int) -> int:
        return _json_len(self.quiet_hosts[index]) + 3  # a comma in the JSON, ", " in the text

    def _row(self, index: int) -> tuple[dict[str, Any], str, str]:
        """Listed row `index`: its structured form, its text, and the label of its host's group."""
        if index not in self._shown:
            row = self.listed[index]
            if self.by_ports:
                data = _clip({key: row.raw[key] for key in _SUMMARY_COLUMNS if key in row.raw}, NAME_CHARS, None)
                if any(data[key] != row.raw[key] for key in data):
                    data["clipped"] = True
                hostnames = row.raw.get("hostnames", [])[:3]
                group = _shorten(_host_label({"host": row.raw["host"], "hostnames": hostnames}), 2 * NAME_CHARS)
                self._shown[index] = data, "  " + _port_label(data, ("service", "product", "version")), group
            else:
                self._shown[index] = row.data, row.text, ""
        return self._shown[index]

    def _row_cost(self, index: int) -> int:
        """A listed row's cost, with the line that opens its host's group when the host changes."""
        data, text, group = self._row(index)
        opens = self.by_ports and (index == 0 or self._row(index - 1)[2] != group)
        return _json_len(data) + len(text) + 2 + (len(group) + 1 if opens else 0)

    def view(self, rows: int, findings: int, quiet: int) -> View:
        total = len(self.listed)
        next_offset = rows if rows < total else None
        notes = _notes(self.outcome)
        error = self.outcome.error
        structured: dict[str, Any] = {
            **_identity(self.outcome),
            "duration_sec": self.outcome.duration_sec,
            "returncode": self.outcome.returncode,
            "error": None if error is None else _error(error),
            "truncated_output": _truncated(self.outcome),
            "notes": notes,
            "counts": self.counts,
            "rows_filter": self.rows_filter,
            "rows": [self._row(index)[0] for index in range(rows)],
            "offset": 0,
            "total": total,
            "next_offset": next_offset,
            "continue_with": None if next_offset is None else {**self.rows_filter, "offset": next_offset},
            "findings": [finding for finding, _ in self.findings[:findings]],
            "findings_total": len(self.findings),
            "quiet_hosts": self.quiet_hosts[:quiet],
            "quiet_hosts_total": len(self.quiet_hosts),
        }
        lines = [self._headline(), *(f"Note: {note}" for note in notes)]
        lines += self._row_lines(rows, next_offset)
        if self.findings:
            lines.append(f"Findings ({_showing(findings, len(self.findings))}; {PAGE_TOOL} rows carry them in full):")
            lines += [line for _, line in self.findings[:findings]]
        if self.quiet_hosts:
            shown = ", ".join(_line(host) for host in self.quiet_hosts[:quiet])
            lines.append(f"Hosts up without open ports ({_showing(quiet, len(self.quiet_hosts))}): {shown}".rstrip())
        return View(structured, "\n".join(lines), next_offset, total)

    def _headline(self) -> str:
        outcome, error = self.outcome, self.outcome.error
        if error is not None or not outcome.ok:
            if error is None:
                return f"{_subject(outcome)} failed without an error description."
            retry = f" Retry after {error.retry_after_sec:g}s." if error.retry_after_sec is not None else ""
            message = _line(_shorten(error.message, MESSAGE_CHARS)).rstrip(".")
            headline = f"{_subject(outcome)} failed ({error.error_type.value}): {message}.{retry}"
            headline += f" Next step: {_line(_shorten(error.recovery_suggestion, MESSAGE_CHARS))}"
            return headline + (f" What it found before: {self._facts()}." if outcome.result else "")
        exit_text = f", exit {outcome.returncode}" if outcome.returncode is not None else ""
        return f"{_subject(outcome)} finished in {outcome.duration_sec:.1f}s{exit_text}: {self._facts()}."

    def _facts(self) -> str:
        counts = self.counts
        facts: list[str] = []
        if "hosts" in counts:
            scanned = f" of {counts['hosts_scanned']}" if counts.get("hosts_scanned") is not None else ""
            facts.append(f"{counts['hosts_up']}{scanned} hosts up")
            facts.append(_plural(counts["open_ports"] or 0, "open port"))
        if counts.get("found"):
            facts.append(f"{counts['found']} {'paths' if self._paths() else 'virtual hosts'} found")
        elif "found" in counts:
            facts.append("nothing found")
        if self.findings:
            facts.append(_plural(len(self.findings), "finding"))
        return ", ".join(facts) if facts else "no hosts or findings to list; read the full result"

    def _paths(self) -> bool:
        return any(row.kind == "found" and "path" in row.raw for row in self.listed[:1])

    def _row_lines(self, rows: int, next_offset: int | None) -> list[str]:
        total = len(self.listed)
        if not total:
            return []
        label = "Open ports" if self.by_ports else "Found"
        more = ""
        if next_offset is not None:
            state = ' state="open" and' if self.rows_filter else ""
            more = f"; for the rest call {PAGE_TOOL} with{state} offset={next_offset}"
        lines = [f"{label} ({_showing(rows, total)}{more}):"]
        previous: str | None = None
        for index in range(rows):
            _, text, group = self._row(index)
            if self.by_ports and group != previous:
                lines.append(group)
                previous = group
            lines.append(text)
        return lines


def _prefix(cost: Callable[[int], int], start: int, end: int, budget: int) -> tuple[int, int]:
    """How many items from `start` on (before `end`) fit in `budget`, and what they cost."""
    taken = spent = 0
    for index in range(start, end):
        item = cost(index)
        if spent + item > budget:
            break
        spent += item
        taken += 1
    return taken, spent


def _showing(shown: int, total: int) -> str:
    return f"all {total}" if shown >= total else f"showing {shown} of {total}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------- shared


def _check_budget(max_chars: int) -> None:
    if max_chars < MIN_MAX_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_MAX_CHARS}, not {max_chars}")


def _identity(outcome: CallOutcome) -> dict[str, Any]:
    return {
        "tool": _shorten(outcome.tool, NAME_CHARS),
        "call_id": _shorten(outcome.call_id, NAME_CHARS),
        "target": _shorten(outcome.target, NAME_CHARS) if outcome.target is not None else None,
        "ok": outcome.ok,
        "error_type": outcome.error_type.value if outcome.error_type is not None else None,
    }


def _subject(outcome: CallOutcome) -> str:
    tool = _line(_shorten(outcome.tool, NAME_CHARS))
    return tool + (f" {_line(_shorten(outcome.target, NAME_CHARS))}" if outcome.target else "")


def _truncated(outcome: CallOutcome) -> bool:
    return outcome.stdout_truncated or bool((outcome.result or {}).get("truncated"))


def _notes(outcome: CallOutcome) -> list[str]:
    """What a reader must know about how complete the result is."""
    result = outcome.result or {}
    notes: list[str] = []
    if outcome.stdout_truncated:
        notes.append("output hit the byte cap; the result is partial; narrow the scan for complete results")
    elif outcome.timed_out:
        notes.append("the scan timed out; the result holds what it found before")
    elif result.get("truncated"):
        notes.append("the tool's output ended early; the result is partial")
    if outcome.ok and outcome.result is None:
        notes.append("the tool's output was not parsed")
    for key, prefix in (("error", "the tool reported: "), ("parse_error", "the output was not fully read: ")):
        value = result.get(key)
        if isinstance(value, str) and value:
            notes.append(prefix + _shorten(_line(value), NOTE_CHARS))
    return notes


def _error(error: CallError) -> dict[str, Any]:
    retry = {} if error.retry_after_sec is None else {"retry_after_sec": error.retry_after_sec}
    return {
        "error_type": error.error_type.value,
        "message": _shorten(error.message, MESSAGE_CHARS),
        "recovery_suggestion": _shorten(error.recovery_suggestion, MESSAGE_CHARS),
        **retry,
    }


def _present(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without None, empty strings and empty lists: a row carries only what is known."""
    return {key: value for key, value in data.items() if value is not None and value != "" and value != []}


def _clip(value: Any, chars: int | None, items: int | None) -> Any:
    if isinstance(value, str):
        return _shorten(value, chars) if chars is not None else value
    if isinstance(value, list):
        kept = value if items is None else value[:items]
        return [_clip(item, chars, items) for item in kept]
    if isinstance(value, dict):
        return {key: _clip(item, chars, items) for key, item in value.items()}
    return value


def _shorten(text: str, chars: int | None) -> str:
    if chars is None or len(text) <= chars:
        return text
    return text[: max(chars - 1, 0)] + "…"


def _line(value: Any) -> str:
    """One line of text: multi-line output joined with ' | ', control characters as spaces."""
    lines = (part.strip() for part in str(value).splitlines())
    return _CONTROL.sub(" ", " | ".join(part for part in lines if part))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str) and item] if isinstance(value, list) else []


def _scripts(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        {"id": s["id"], "output": s["output"] if isinstance(s.get("output"), str) else ""}
        for s in value
        if isinstance(s, dict) and isinstance(s.get("id"), str)
    ]


def _banners(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    banners = []
    for banner in value:
        if isinstance(banner, dict) and isinstance(banner.get("banner"), str):
            service = _text(banner.get("service"))
            banners.append({"banner": banner["banner"], **({"service": service} if service else {})})
    return banners


def _json_len(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


# ---------------------------------------------------------------- schemas

_STRING: dict[str, Any] = {"type": "string"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_STRINGS: dict[str, Any] = {"type": "array", "items": _STRING}
_CLIPPED: dict[str, Any] = {"const": True, "description": "Long values were shortened; the full result has them."}
_SCRIPTS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"id": _STRING, "output": _STRING},
        "required": ["id", "output"],
        "additionalProperties": False,
    },
}
_PORT_ROW: dict[str, Any] = {
    "type": "object",
    "description": "One port of one host.",
    "properties": {
        "host": _STRING,
        "hostnames": _STRINGS,
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "protocol": _STRING,
        "state": _STRING,
        "service": _STRING,
        "product": _STRING,
        "version": _STRING,
        "extrainfo": _STRING,
        "scripts": _SCRIPTS,
        "banners": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"service": _STRING, "banner": _STRING},
                "required": ["banner"],
                "additionalProperties": False,
            },
        },
        "clipped": _CLIPPED,
    },
    "required": ["host", "port"],
    "additionalProperties": False,
}
_HOST_ROW: dict[str, Any] = {
    "type": "object",
    "description": "A host without ports, or the OS guesses and host scripts of a host.",
    "properties": {
        "host": _STRING,
        "hostnames": _STRINGS,
        "status": _STRING,
        "os_matches": _STRINGS,
        "scripts": _SCRIPTS,
        "clipped": _CLIPPED,
    },
    "required": ["host"],
    "additionalProperties": False,
}
_FOUND_ROW: dict[str, Any] = {
    "type": "object",
    "description": "A path (dir mode) or virtual host (vhost mode) gobuster found.",
    "properties": {
        "path": _STRING,
        "host": _STRING,
        "status": {"type": "integer"},
        "size": {"type": "integer"},
        "redirect": _STRING,
        "clipped": _CLIPPED,
    },
    "additionalProperties": False,
}
_ROWS: dict[str, Any] = {"type": "array", "items": {"anyOf": [_PORT_ROW, _HOST_ROW, _FOUND_ROW]}}
_IDENTITY: dict[str, Any] = {
    "tool": _STRING,
    "call_id": _STRING,
    "target": {"type": ["string", "null"]},
    "ok": {"type": "boolean"},
    "error_type": {"type": ["string", "null"]},
}
_PAGING: dict[str, Any] = {
    "offset": _COUNT,
    "total": {**_COUNT, "description": "Rows to page through (after filters)."},
    "next_offset": {"type": ["integer", "null"], "minimum": 0, "description": "Where the next page starts."},
    "truncated_output": {"type": "boolean", "description": "The output was cut short; the result is partial."},
    "notes": {**_STRINGS, "description": "What to know about how complete the result is."},
}

PAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_IDENTITY,
        **_PAGING,
        "rows": _ROWS,
        "unfiltered_total": {**_COUNT, "description": "Rows in the whole result, before filters."},
    },
    "required": [*_IDENTITY, *_PAGING, "rows", "unfiltered_total"],
    "additionalProperties": False,
}

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_IDENTITY,
        **_PAGING,
        "duration_sec": {"type": "number"},
        "returncode": {"type": ["integer", "null"]},
        "error": {
            "type": ["object", "null"],
            "properties": {
                "error_type": _STRING,
                "message": _STRING,
                "recovery_suggestion": _STRING,
                "retry_after_sec": {"type": "number"},
            },
            "required": ["error_type", "message"],
            "additionalProperties": False,
        },
        "counts": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
        "rows_filter": {
            "type": "object",
            "description": "The filter the rows, total and next_offset are taken under.",
            "properties": {"state": _STRING},
            "additionalProperties": False,
        },
        "rows": _ROWS,
        "continue_with": {
            "type": ["object", "null"],
            "description": f"Arguments for {PAGE_TOOL} that continue the rows.",
            "properties": {"offset": _COUNT, "state": _STRING},
            "required": ["offset"],
            "additionalProperties": False,
        },
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "host": _STRING,
                    "port": {"type": "integer"},
                    "protocol": _STRING,
                    "kind": {"enum": ["os", "script", "banner"]},
                    "name": _STRING,
                    "text": _STRING,
                },
                "required": ["kind", "text"],
                "additionalProperties": False,
            },
        },
        "findings_total": _COUNT,
        "quiet_hosts": {**_STRINGS, "description": "Hosts up without an open port."},
        "quiet_hosts_total": _COUNT,
    },
    "additionalProperties": False,
}
SUMMARY_SCHEMA["required"] = list(SUMMARY_SCHEMA["properties"])
