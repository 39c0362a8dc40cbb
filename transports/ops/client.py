"""A small client for a running daemon's ops endpoints, over TCP or a Unix socket.

Built on the standard library's `http.client`, so the command-line tools need nothing more. The
bearer token is sent in a header only and never appears in an exception message.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pydantic import ValidationError

from supervisor.status import ReloadAttempt, Status

__all__ = ["OpsClient", "OpsClientError", "OpsRequestFailed", "OpsUnreachable", "UnixHTTPConnection", "header_safe"]


class OpsClientError(Exception):
    """Talking to the daemon did not work; the message is meant for the operator."""


class OpsUnreachable(OpsClientError):
    """No answer: nothing listens there, the socket is missing, or the connection broke."""


class OpsRequestFailed(OpsClientError):
    """The daemon answered with an error status."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error

    @property
    def refused(self) -> bool:
        """401/403: the token or the Origin was not accepted."""
        return self.status in (401, 403)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix domain socket; the Host header says `localhost`."""

    def __init__(self, path: str | Path, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class OpsClient:
    """Requests to one daemon. `url` is `http(s)://host:port[/prefix]` or `unix:PATH`."""

    def __init__(
        self,
        *,
        url: str | None = None,
        socket_path: str | Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if (url is None) == (socket_path is None):
            raise ValueError("give exactly one of url and socket_path")
        if url is not None and url.startswith("unix:"):
            socket_path, url = url[len("unix:") :], None
        self.socket_path = Path(socket_path) if socket_path is not None else None
        if token and not header_safe(token):
            # http.client would refuse it with an error that quotes the whole header, token and all.
            raise ValueError(
                "the bearer token holds a line break, a control character or a character beyond Latin-1, "
                "which no HTTP header can carry; check --token, LABRECON_AUTH__TOKEN or the config's auth tokens"
            )
        self.token = token or None
        self.timeout = timeout
        self._scheme = self._host = ""
        self._port: int | None = None
        self._prefix = ""
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s):// or unix: address: {url!r}")
            try:
                self._port = parts.port
            except ValueError:
                raise ValueError(f"bad port in {url!r}") from None
            self._scheme, self._host = parts.scheme, parts.hostname
            self._prefix = parts.path.rstrip("/")

    @property
    def where(self) -> str:
        if self.socket_path is not None:
            return str(self.socket_path)
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{host}" + (f":{self._port}" if self._port else "") + self._prefix

    # --- the endpoints ---------------------------------------------------------------------

    def status(self) -> Status:
        try:
            return Status.model_validate(self.request("GET", "/status"))
        except ValidationError:
            raise OpsClientError(f"{self.where} did not answer with a labrecon status") from None

    def metrics(self) -> str:
        return self.request("GET", "/metrics")

    def faults(self) -> list[dict[str, Any]]:
        return self._field(self.request("GET", "/faults"), "faults")

    def inject(self, **fields: Any) -> dict[str, Any]:
        answer = self.request("POST", "/faults", {k: v for k, v in fields.items() if v is not None})
        self._field(answer, "id")
        return answer

    def clear_faults(self, rule_id: int | None = None, *, tool: str | None = None) -> int:
        path = "/faults" if rule_id is None else f"/faults/{int(rule_id)}"
        return self._field(self.request("DELETE", path, query={"tool": tool}), "cleared")

    def control(self, tool: str, action: str, body: dict[str, Any] | None = None) -> str:
        return self._field(self.request("POST", f"/tools/{quote(tool, safe='')}/{action}", body), "message")

    def reload(self) -> ReloadAttempt:
        """Have the daemon re-read its config file; what changed (`OpsRequestFailed` 422 if it was refused)."""
        try:
            return ReloadAttempt.model_validate(self.request("POST", "/reload"))
        except ValidationError:
            raise OpsClientError(f"{self.where} did not answer with a labrecon reload") from None

    def scans(
        self,
        *,
        tool: str | None = None,
        status: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One page of scans, newest first: `{"scans": [...], "next_cursor": ...}`."""
        query = {"tool": tool, "status": status, "owner": owner, "cursor": cursor, "limit": limit}
        answer = self.request("GET", "/scans", query=query)
        self._field(answer, "scans")
        return answer

    def scan(self, scan_id: str) -> dict[str, Any]:
        """One scan's record, with its outcome once it has finished."""
        answer = self.request("GET", f"/scans/{quote(scan_id, safe='')}")
        self._field(answer, "scan_id")
        return answer

    def cancel_scan(self, scan_id: str) -> dict[str, Any]:
        """Cancel a running scan; the record once it has settled, or as it is if it had already finished."""
        answer = self.request("POST", f"/scans/{quote(scan_id, safe='')}/cancel")
        self._field(answer, "scan_id")
        return answer

    def _field(self, answer: Any, key: str) -> Any:
        if not isinstance(answer, dict) or key not in answer:
            raise OpsClientError(f"{self.where} did not answer like labrecon (no {key!r} in the reply)")
        return answer[key]

    # --- the wire ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON (or text) of a 2xx answer, raise otherwise."""
        query = {k: v for k, v in (query or {}).items() if v is not None}
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = self._connect()
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as exc:
            raise OpsUnreachable(f"cannot reach labrecon at {self.where}: {_reason(exc)}") from None
        finally:
            connection.close()
        data: Any = raw.decode("utf-8", "replace")
        if content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                data = json.loads(raw)
        if 200 <= response.status < 300:
            return data
        error, message = "http_error", f"HTTP {response.status}"
        if isinstance(data, dict):
            error = str(data.get("error", error))
            message = str(data.get("message", message))
        raise OpsRequestFailed(response.status, error, message)

    def _connect(self) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return UnixHTTPConnection(self.socket_path, timeout=self.timeout)
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)


def header_safe(token: str) -> bool:
    """Whether `token` can travel in an `Authorization` header: Latin-1, no control characters but tab."""
    return _HEADER_SAFE.fullmatch(token) is not None


_HEADER_SAFE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
