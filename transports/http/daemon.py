"""The HTTP daemon: MCP over legacy SSE and Streamable HTTP, and the ops endpoints, on one port.

`build_http_app` assembles the app; the two MCP transports share one dispatcher and one session
table. `HttpDaemon` runs it in an `HttpServer` actor and ends when asked, when the runtime escalates
(exit 3), or when the server's thread dies unasked (exit 4: a process manager restarts a daemon
that exits, never one that hangs). Stopping closes sessions first, then the servers. A reload reaches
the app from the runtime's thread: the tool list changed (every client told), tokens rotated (sessions
of an identity no token proves any more closed), all through the server's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from supervisor.config import ConfigError, HttpSettings, Settings
from supervisor.runtime import Runtime
from transports import systemd
from transports.exits import EXIT_ESCALATED, EXIT_OK, EXIT_SERVER_FAILED
from transports.http.security import (
    configured_tokens,
    credentials,
    identities,
    require_token_for,
    security_middleware,
    still_held,
)
from transports.http.server import BoundAddress, HttpServer, ServerStartError
from transports.http.sessions import SessionTable
from transports.http.sse import LegacySseTransport
from transports.http.streamable import StreamableHttpTransport
from transports.mcp.dispatcher import McpDispatcher
from transports.ops.endpoints import http_error, ops_routes, serve_ops_socket
from transports.reloads import ReloadRequests, follow_config

__all__ = [
    "HttpDaemon",
    "McpHttp",
    "build_http_app",
    "run_http_daemon",
    "serve_http",
    "with_http_options",
]

log = logging.getLogger("labrecon.daemon")


KEEPALIVE_SEC: Final = 15.0


class McpHttp:
    """The MCP half of an HTTP app: its dispatcher and session table, and a shutdown callable from any thread."""

    def __init__(self, dispatcher: McpDispatcher, sessions: SessionTable) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions

    def counts(self) -> dict[str, int]:
        return self.sessions.counts()

    def close(self, grace: float = 0.0, timeout: float | None = None) -> None:
        """Close every session (running calls get `grace` seconds first) and wait until that is done.

        Call it before stopping the server: uvicorn waits for open responses
        to finish, and an event stream only finishes when its session closes.
        A no-op when the server's loop is not running (never started, or dead).
        """
        loop = self.sessions.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        if timeout is None:
            timeout = grace + 2 * self.sessions.cancel_timeout + 5.0
        future = asyncio.run_coroutine_threadsafe(self.sessions.shutdown(grace), loop)
        try:
            future.result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            future.cancel()
            log.warning("closing the MCP sessions did not finish: %r", exc)


def build_http_app(
    runtime: Runtime,
    settings: Settings,
    *,
    dispatcher: McpDispatcher | None = None,
    keepalive_sec: float = KEEPALIVE_SEC,
) -> Starlette:
    """SSE + Streamable HTTP + ops routes under the security middleware; `app.state.mcp` is the `McpHttp`.

    `settings` gives the session limits (they need a restart to change); who may talk follows the
    runtime's config in force, so a reload that rotates a token applies to the next request.
    """
    http = settings.http
    dispatcher = dispatcher or McpDispatcher.for_backend(runtime)
    sessions = SessionTable(
        dispatcher,
        max_sessions=http.max_sessions,
        idle_sec=http.session_idle_sec,
        unused_sec=http.session_unused_sec,
        max_per_client=http.max_sessions_per_client,
    )
    sse = LegacySseTransport(dispatcher, sessions, max_body_bytes=http.max_body_bytes, ping_sec=keepalive_sec)
    streamable = StreamableHttpTransport(
        dispatcher,
        sessions,
        max_body_bytes=http.max_body_bytes,
        keepalive_sec=keepalive_sec,
        stream_close_sec=http.stream_close_sec,
        resume_window_sec=http.resume_window_sec,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions.start()
        loop = asyncio.get_running_loop()

        def on_loop(callback: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: no client is left
                loop.call_soon_threadsafe(callback, *args)

        unwatch = dispatcher.watch_tools(lambda: on_loop(sessions.tools_changed))
        unfollow = runtime.on_reloaded(lambda old, new: on_loop(_revoke_rotated, sessions, old, new))
        try:
            yield
        finally:
            unwatch()
            unfollow()
            await sessions.shutdown()  # normally a no-op: the daemon closed them before stopping the server

    app = Starlette(
        routes=[*sse.routes(), streamable.route(), *ops_routes(runtime, sessions.counts)],
        middleware=[security_middleware(lambda: runtime.settings)],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.mcp = McpHttp(dispatcher, sessions)
    return app


def _revoke_rotated(sessions: SessionTable, old: Settings, new: Settings) -> None:
    """After a reload that changed the tokens: a session the token that opened it no longer proves is closed.

    Its token would be refused from now on anyway; closing also ends its event streams and cancels its
    calls, so nothing keeps serving a token the operator took away, even one rotated under the same name
    (a leaked token is why one rotates).
    """
    if credentials(old.auth) == credentials(new.auth):
        return
    proved = identities(new)
    closed = sessions.revoke(lambda session: still_held(session, proved), "its token was revoked by a reload")
    if closed:
        log.info("closed the sessions of revoked tokens", extra={"sessions": closed})


class HttpDaemon:
    """A running HTTP daemon: `start`, then `wait` for a reason to end, then `stop`.

    It serves the app on `http.host`/`http.port`, plus the ops-only app on `http.ops_socket` when one
    is configured. A reason to end is `request_stop` (or SIGTERM/SIGINT under `serve_http`), the
    runtime escalating, or the server actor's `on_exit` hook firing.
    """

    def __init__(self, runtime: Runtime, settings: Settings, app: Starlette) -> None:
        self.runtime = runtime
        self.settings = settings
        self.app = app
        self.mcp: McpHttp = app.state.mcp
        self.server: HttpServer | None = None
        self.ops_server: HttpServer | None = None
        self.reason: str | None = None
        self.exit_status = EXIT_OK
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False

    @classmethod
    def start(
        cls, runtime: Runtime, settings: Settings, *, host: str | None = None, port: int | None = None
    ) -> HttpDaemon:
        """Check the bind address, then listen; raises `InsecureBind` before binding anything."""
        host = settings.http.host if host is None else host
        port = settings.http.port if port is None else port
        runtime.add_reload_check(lambda new: require_token_for(host, configured_tokens(new.auth)))
        require_token_for(host, configured_tokens(runtime.settings.auth))  # the tokens in force, after the check
        daemon = cls(runtime, settings, build_http_app(runtime, settings))
        daemon.server = HttpServer.start(daemon.app, host=host, port=port, name="mcp", on_exit=daemon._server_exited)
        try:
            daemon.ops_server = serve_ops_socket(runtime, settings, daemon.mcp.counts)
        except BaseException:
            daemon.mcp.close()
            daemon.server.stop()
            raise
        watcher = threading.Thread(target=daemon._watch_escalation, name="labrecon-escalation-watch", daemon=True)
        watcher.start()
        log.info(
            "labrecon HTTP daemon serving",
            extra={"url": daemon.url, "ops_socket": str(settings.http.ops_socket or "") or None},
        )
        return daemon

    @property
    def address(self) -> BoundAddress:
        assert self.server is not None
        return self.server.address

    @property
    def url(self) -> str:
        return self.address.url

    def request_stop(self, reason: str = "stop requested", status: int = EXIT_OK) -> None:
        """Ask the daemon to end; the first reason (and its exit status) is the one reported."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self.exit_status = status
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until there is a reason to stop; False if `timeout` passed first."""
        return self._wake.wait(timeout)

    def stop(self, grace: float = 10.0) -> int:
        """Close the sessions, stop the servers; returns the exit status.

        Calls still running get `grace` seconds, then are cancelled and their process groups killed;
        event streams end. `serve_http` stops the runtime after this.
        """
        with self._lock:
            if self._stopped:
                return self.exit_status
            self._stopped = True
        self.request_stop()
        log.info("stopping the HTTP daemon", extra={"reason": self.reason, "sessions": self.mcp.counts()})
        self.mcp.close(grace)
        for server in (self.server, self.ops_server):
            if server is not None:
                server.stop()
        return self.exit_status

    def _server_exited(self, error: BaseException | None) -> None:
        """`on_exit` of the server actor: its uvicorn thread ended without being asked to."""
        self.request_stop(f"the HTTP server stopped unexpectedly: {error!r}", EXIT_SERVER_FAILED)

    def _watch_escalation(self) -> None:
        while not self._wake.is_set():
            if self.runtime.escalated.wait(0.5):
                reason = self.runtime.escalation_reason or "the runtime gave up"
                self.request_stop(f"the runtime escalated: {reason}", EXIT_ESCALATED)
                return


# --- running it ----------------------------------------------------------------------------


class _StopSignal(BaseException):
    """SIGTERM or SIGINT arrived while the daemon was serving."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalGate:
    """SIGTERM/SIGINT while the daemon waits interrupts the wait; otherwise it is only remembered.

    Raising from the handler, rather than setting an event, keeps a signal
    from deadlocking on a lock the interrupted main thread holds. Outside the
    wait (while starting or stopping) nothing is interrupted half-way: a
    signal during start is acted on once the daemon is up, and one during
    shutdown changes nothing.
    """

    def __init__(self) -> None:
        self.armed = False
        self.received: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
        if self.armed:
            self.armed = False
            raise _StopSignal(signum)
        log.warning("%s received; stopping as soon as possible", name)


@contextlib.contextmanager
def _signals(gate: _SignalGate) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # embedded in another thread: the embedder decides about signals
        return
    previous = {sig: signal.signal(sig, gate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_http(
    runtime: Runtime,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    grace: float = 10.0,
    reloads: ReloadRequests | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, escalation or server death; then stop it all, the runtime included.

    `reloads` are opened once the daemon listens and closed before it begins to stop.

    Returns the exit status: 0 after a signal, 3 if the runtime escalated, 4
    if the HTTP server died. A service manager (`$NOTIFY_SOCKET`) is told when
    the daemon listens and when it begins to stop, and, if it asks for a
    watchdog, pinged while the runtime answers its status. The runtime is stopped on every path, also when
    the daemon cannot start (e.g. `InsecureBind`, a port already taken).
    """
    gate = _SignalGate()
    with _signals(gate):
        try:
            daemon = HttpDaemon.start(runtime, settings, host=host, port=port)
            systemd.ready(f"serving MCP on {daemon.url}")  # listening: a service manager may start what needs us
            if reloads is not None:
                reloads.open()
            with systemd.watchdog(runtime.status):
                try:
                    gate.armed = True
                    if gate.received is None:
                        daemon.wait()
                    gate.armed = False
                except _StopSignal:
                    pass
            if gate.received is not None:
                daemon.request_stop(f"received {gate.received}")
            if reloads is not None:
                reloads.stop()
            systemd.stopping(daemon.reason)
            log.info("shutting down", extra={"reason": daemon.reason})
            return daemon.stop(grace)
        finally:
            gate.armed = False
            runtime.stop(grace)


def with_http_options(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    ops_socket: str | Path | None = None,
) -> Settings:
    """`settings` with command-line overrides of the `http` section, validated like the file."""
    changes: dict[str, Any] = {
        key: value for key, value in (("host", host), ("port", port), ("ops_socket", ops_socket)) if value is not None
    }
    if not changes:
        return settings
    try:
        http = HttpSettings.model_validate({**settings.http.model_dump(), **changes})
    except ValidationError as exc:
        problems = "; ".join(f"http.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid command-line option: {problems}") from None
    return settings.model_copy(update={"http": http})


def run_http_daemon(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    ops_socket: str | Path | None = None,
    grace: float = 10.0,
    source: Callable[[], Settings] | None = None,
    source_name: str | None = None,
) -> int:
    """`labrecon serve --transport sse|http`: refuse an unsafe bind, start the runtime, serve.

    A reload (SIGHUP, `labrecon reload`, the file watcher) reads `source`: the file, with the same
    command-line overrides applied, so they stay in force.
    """
    settings = with_http_options(settings, host=host, port=port, ops_socket=ops_socket)
    require_token_for(settings.http.host, configured_tokens(settings.auth))  # before any actor or process starts
    runtime = Runtime.start(settings, owns_process=True, source=source, source_name=source_name)
    try:
        with follow_config(runtime) as reloads:
            status = serve_http(runtime, settings, grace=grace, reloads=reloads)
    except ServerStartError as exc:
        print(f"labrecon: {exc}", file=sys.stderr)
        return EXIT_SERVER_FAILED
    if status == EXIT_ESCALATED:
        print(f"labrecon: stopped after escalation: {runtime.escalation_reason}", file=sys.stderr)
    elif status == EXIT_SERVER_FAILED:
        print("labrecon: the HTTP server stopped unexpectedly (see the log)", file=sys.stderr)
    return status

