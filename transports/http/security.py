"""Who may talk to labrecon over HTTP: Host and Origin validation and bearer-token auth.

A request carrying an `Origin` must come from an allowed origin (a browser page can reach
127.0.0.1); anyone else is kept out by a bearer token, which binding beyond loopback requires.
The token a request carries is its identity (`[auth] token`: "operator", an admin; a named token:
its name); with no token configured there is none, and the caller is the local OS user. `/livez`
and `/readyz` stay open. The rules are those of the config in force: a reload that rotates a token
refuses the old one from then on. No token is ever logged, echoed or rendered.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor.config import OPERATOR, AuthSettings, ConfigError, Settings
from transports.mcp.session import Session

__all__ = [
    "AUTHENTICATED",
    "IDENTITY",
    "MIN_TOKEN_LENGTH",
    "OPEN_PATHS",
    "AccessRules",
    "Credential",
    "HostHeader",
    "Identity",
    "InsecureBind",
    "SecurityMiddleware",
    "WeakToken",
    "bearer_token",
    "bind_session",
    "configured_tokens",
    "credentials",
    "holds_session",
    "host_allowed",
    "identities",
    "identity_of",
    "is_loopback",
    "new_token",
    "origin_allowed",
    "parse_host_header",
    "require_token_for",
    "security_middleware",
    "still_held",
    "token_matches",
    "token_problem",
    "verify",
]

# Probes that must work without credentials (and say nothing worth protecting).
OPEN_PATHS = frozenset({"/livez", "/readyz"})

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
_DEFAULT_PORTS = {"http": 80, "https": 443}

MIN_TOKEN_LENGTH = 24
"""The shortest bearer token that may guard a daemon listening beyond loopback."""


class InsecureBind(ConfigError):
    """The daemon was asked to listen beyond loopback without a bearer token."""


class WeakToken(InsecureBind):
    """The daemon was asked to listen beyond loopback behind a token too weak to guard it."""


# --- binding ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True only for names and addresses that cannot be reached from another machine.

    Anything we cannot prove is loopback counts as exposed: the empty host and
    `0.0.0.0`/`::` (every interface), and any hostname but `localhost`, since
    what it resolves to is not ours to decide.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def require_token_for(host: str, tokens: Mapping[str, SecretStr | str | None]) -> None:
    """Refuse to serve on a non-loopback address unless every configured token is strong, and one exists.

    `tokens` maps each token's config key (`auth.token`, `auth.tokens.0.token`) to the token. A token
    short enough to guess (under 24 characters, or holding whitespace) is no token: a scanner that
    anyone on the network can drive is the one thing this project must never become.

    Raises:
        InsecureBind: no token is configured.
        WeakToken: a token is too short or holds whitespace (`token_problem`); the message names its key.
    """
    if is_loopback(host):
        return
    where = host or "all interfaces"
    secrets_by_key = {key: secret for key, token in tokens.items() if (secret := _secret(token)) is not None}
    if not secrets_by_key:
        raise InsecureBind(
            f"binding to {where} exposes labrecon beyond this machine, and no bearer token "
            "is configured; labrecon refuses to start without one. Set auth.token (or [[auth.tokens]]) in the "
            "config file (or LABRECON_AUTH__TOKEN; `labrecon token` prints a fresh one), or bind to 127.0.0.1."
        )
    for key, secret in secrets_by_key.items():
        if (problem := token_problem(secret)) is not None:
            raise WeakToken(
                f"binding to {where} exposes labrecon beyond this machine, and {key} {problem}; labrecon "
                f"refuses to start behind a token that can be guessed. Use at least {MIN_TOKEN_LENGTH} characters "
                "and no whitespace (`labrecon token` prints a fresh one), or bind to 127.0.0.1."
            )


def configured_tokens(auth: AuthSettings) -> dict[str, SecretStr | None]:
    """Every configured token by its config key, as `require_token_for` takes them."""
    tokens: dict[str, SecretStr | None] = {"auth.token": auth.token}
    tokens.update({f"auth.tokens.{index}.token": entry.token for index, entry in enumerate(auth.tokens)})
    return tokens


def token_problem(token: str) -> str | None:
    """Why `token` cannot guard a non-loopback bind, or None when it can. Never quotes the token."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is shorter than {MIN_TOKEN_LENGTH} characters"
    if any(character.isspace() for character in token):
        return "contains whitespace"
    return None


def new_token() -> str:
    """A fresh random token: 32 bytes from the OS, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


# --- origins ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int | None  # None: not written out

    @classmethod
    def parse(cls, text: str) -> _Origin | None:
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:
            return None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return None
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            return None
        return cls(parts.scheme, parts.hostname.lower(), port)

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else _DEFAULT_PORTS[self.scheme]


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Does a request's `Origin` match an allowed origin?

    Scheme and host must match exactly. An allowed loopback origin written
    without a port (`http://localhost`) admits any port, because local dev
    servers and inspectors pick theirs at random; any other allowed origin
    admits only its own port (the scheme's default when none is written).
    `null` and anything unparsable never match.
    """
    given = _Origin.parse(origin)
    if given is None:
        return False
    for entry in allowed:
        want = _Origin.parse(entry)
        if want is None or (want.scheme, want.host) != (given.scheme, given.host):
            continue
        if want.port is None and is_loopback(want.host):
            return True
        if want.effective_port == given.effective_port:
            return True
    return False


# --- tokens ----------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The credential from an `Authorization: Bearer …` header, or None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


def token_matches(given: str | None, expected: bytes) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


@dataclass(frozen=True)
class Identity:
    """Who a request is, as its bearer token proves: the owner of its calls, and whether it is an admin.

    `proof` names the token that proved it (a keyed digest that never leaves the process), so that a
    session opened with a token that a reload rotated away is closed even when its owner keeps a name.
    """

    owner: str
    admin: bool = False
    proof: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Credential:
    """A configured token (as bytes, kept out of every repr) and the identity it proves."""

    secret: bytes = field(repr=False)
    identity: Identity


def credentials(auth: AuthSettings) -> tuple[Credential, ...]:
    """The tokens `[auth]` configures: `token` proves "operator" (an admin), each named token its name."""
    found: list[Credential] = []
    if (secret := _secret(auth.token)) is not None:
        found.append(Credential(_encode(secret), Identity(OPERATOR, True, _proof(secret))))
    for entry in auth.tokens:
        secret = entry.token.get_secret_value()
        found.append(Credential(_encode(secret), Identity(entry.name, entry.admin, _proof(secret))))
    return tuple(found)


_PROOF_KEY = secrets.token_bytes(32)  # per process: a proof means nothing outside it


def _proof(secret: str) -> str:
    return hmac.new(_PROOF_KEY, _encode(secret), hashlib.sha256).hexdigest()


def verify(given: str | None, configured: Iterable[Credential]) -> Identity | None:
    """The identity `given` proves, or None. Compares against every token, with no early exit."""
    proved: Identity | None = None
    for credential in configured:
        if token_matches(given, credential.secret) and proved is None:
            proved = credential.identity
    return proved


IDENTITY = "labrecon_identity"
"""Key in the ASGI scope's state: the `Identity` the request's token proved; None when no token is configured."""


def identity_of(scope: Scope) -> Identity | None:
    """The identity `SecurityMiddleware` verified for this request (None: the local OS user)."""
    identity = scope.get("state", {}).get(IDENTITY)
    return identity if isinstance(identity, Identity) else None


def bind_session(session: Session, identity: Identity | None) -> None:
    """Give a new MCP session the owner of the request that opened it, and the token that proved it."""
    session.owner = identity.owner if identity is not None else None
    session.admin = identity.admin if identity is not None else False
    session.proof = identity.proof if identity is not None else None


def holds_session(session: Session, identity: Identity | None) -> bool:
    """Whether a request with `identity` may use `session`: only the identity, and token, that opened it may."""
    if identity is None:
        return session.owner is None
    return (session.owner, session.admin, session.proof) == (identity.owner, identity.admin, identity.proof)


def _encode(secret: str) -> bytes:
    return secret.encode("utf-8", "surrogateescape")


def _secret(token: SecretStr | str | None) -> str | None:
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return token or None


# --- middleware ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostHeader:
    """A `Host` header that parsed: the name or address (lowercased, IPv6 without brackets) and the port."""

    name: str
    port: int | None


# RFC 9110 `Host = uri-host [ ":" port ]`, narrowed to what a client of this daemon sends: a DNS name
# (labels of letters, digits, `-` and `_`, an optional final dot) or an IPv4 address, or an IPv6
# address in brackets; then an optional port of 1 to 5 digits. No userinfo, no zone, no empty port.
_HOST_HEADER = re.compile(
    r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?))(?::(?P<port>[0-9]{1,5}))?"
)


def parse_host_header(value: str | None) -> HostHeader | None:
    """The `Host` header as a name and port, or None unless it is exactly that and nothing else.

    `[::1].evil.com`, `localhost:80@evil`, `localhost:evil`, `localhost:80:80`,
    `localhost:`, an IPv6 address without brackets, whitespace or a port over
    65535 all fail, so none of them can pass for a loopback name.
    """
    if not value or not value.isascii():  # lower() maps some non-ASCII letters to ASCII ones
        return None
    match = _HOST_HEADER.fullmatch(value.lower())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and port > 65535:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
        return HostHeader(match["ipv6"], port)
    name = match["name"]
    return HostHeader(name, port) if len(name.rstrip(".")) <= 253 else None


def host_allowed(host_header: str | None, allowed_hosts: Iterable[str]) -> bool:
    """Is this Host header one a loopback-only daemon answers to? Loopback names always are."""
    host = parse_host_header(host_header)
    if host is None:
        return False
    return is_loopback(host.name) or host.name in {h.strip().strip("[]").lower() for h in allowed_hosts}


@dataclass(frozen=True)
class AccessRules:
    """Who may talk: the origins and Host names answered, and the tokens that prove an identity."""

    allowed_origins: tuple[str, ...]
    credentials: tuple[Credential, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> AccessRules:
        return cls(
            allowed_origins=tuple(settings.http.allowed_origins),
            credentials=credentials(settings.auth),
            allowed_hosts=(*settings.http.allowed_hosts, settings.http.host),
        )


class SecurityMiddleware:
    """Pure ASGI middleware (it must not buffer SSE streams): Host, then Origin, then the token.

    With no credentials the daemon is on loopback (`require_token_for` sees
    to that), and the Host check is what stops DNS rebinding: a browser page
    whose name now points at 127.0.0.1 sends no Origin on a GET, but it does
    send its own name as Host. With tokens, the tokens are the defence, since
    no page can know one. `check_host=False` is for the Unix socket, which no
    browser can reach. The identity the token proves goes into the scope's
    state under `IDENTITY`.

    Given `in_force` (the settings a reload swaps whole), each request is checked against the
    settings in force then: a rotated token is refused from the reload on.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: Iterable[str] = (),
        credentials: Iterable[Credential] = (),
        open_paths: Iterable[str] = OPEN_PATHS,
        allowed_hosts: Iterable[str] = (),
        check_host: bool = True,
        in_force: Callable[[], Settings] | None = None,
    ) -> None:
        self.app = app
        self.check_host = check_host
        self.open_paths = frozenset(open_paths)
        self._in_force = in_force
        # The rules and the settings object they were built from (None: given once, never rebuilt).
        self._rules: tuple[Settings | None, AccessRules] = (
            (in_force(), AccessRules.of(in_force()))
            if in_force is not None
            else (None, AccessRules(tuple(allowed_origins), tuple(credentials), tuple(allowed_hosts)))
        )

    @property
    def rules(self) -> AccessRules:
        """The rules of the settings in force, rebuilt only when a reload has swapped them."""
        built_from, rules = self._rules
        if self._in_force is not None and (settings := self._in_force()) is not built_from:
            rules = AccessRules.of(settings)
            self._rules = (settings, rules)
        return rules

    def __repr__(self) -> str:
        rules = self.rules
        return f"SecurityMiddleware(origins={rules.allowed_origins!r}, tokens={len(rules.credentials)})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rules = self.rules  # read once: this request is checked against one config
        headers = _headers(scope)
        if self.check_host and not rules.credentials and not host_allowed(headers.get("host"), rules.allowed_hosts):
            await _deny(scope, send, 403, "forbidden_host", "requests for this Host are not served")
            return
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, rules.allowed_origins):
            await _deny(scope, send, 403, "forbidden_origin", "requests from this Origin are not allowed")
            return
        given = bearer_token(headers.get("authorization"))
        identity = verify(given, rules.credentials)
        authenticated = not rules.credentials or identity is not None
        # Open paths answer anyone, but only an authenticated caller gets their details.
        state = scope.setdefault("state", {})
        state[AUTHENTICATED] = authenticated
        state[IDENTITY] = identity
        if not authenticated and _path(scope) not in self.open_paths:
            challenge = 'Bearer realm="labrecon"'
            if given is not None:
                challenge += ', error="invalid_token"'
            message = "a valid bearer token is required" if given is not None else "a bearer token is required"
            await _deny(scope, send, 401, "unauthorized", message, [(b"www-authenticate", challenge.encode())])
            return
        await self.app(scope, receive, send)


def security_middleware(settings: Settings | Callable[[], Settings], *, check_host: bool = True) -> Middleware:
    """The middleware entry for a Starlette app, from the daemon's `http` and `auth` settings.

    Given a callable (`lambda: runtime.settings`), every request is checked against the settings it
    returns then, so a reload that rotates a token or changes the allowed origins applies at once.
    """
    if callable(settings):
        return Middleware(SecurityMiddleware, in_force=settings, check_host=check_host)
    rules = AccessRules.of(settings)
    return Middleware(
        SecurityMiddleware,
        allowed_origins=rules.allowed_origins,
        credentials=rules.credentials,
        allowed_hosts=rules.allowed_hosts,
        check_host=check_host,
    )


def identities(settings: Settings) -> frozenset[Identity] | None:
    """The identities the settings' tokens prove; None when no token is configured (the local OS user)."""
    found = frozenset(credential.identity for credential in credentials(settings.auth))
    return found or None


def still_held(session: Session, proved: frozenset[Identity] | None) -> bool:
    """Whether the token that opened `session` still proves its owner under tokens proving `proved` (see
    `identities`); a token rotated away loses its sessions, whatever name its successor has."""
    if proved is None:
        return session.owner is None
    held = (session.owner, session.admin, session.proof)
    return any((identity.owner, identity.admin, identity.proof) == held for identity in proved)


AUTHENTICATED = "labrecon_authenticated"
"""Key in the ASGI scope's state: whether the request carried the token (or none is needed)."""


def _headers(scope: Scope) -> dict[str, str]:
    """Header names lowercased; a repeated header keeps its first value."""
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _path(scope: Scope) -> str:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


async def _deny(
    scope: Scope,
    send: Send,
    status: int,
    error: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
