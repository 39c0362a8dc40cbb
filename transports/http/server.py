"""An HTTP server as an actor: one uvicorn loop in its own thread, started and stopped by messages.

uvicorn cannot own the main thread or the signals here (the supervisor and tool actors run beside
it), so `HttpServerActor` owns one uvicorn server and its thread, and `HttpServer` is the handle.
The listening socket is made before uvicorn runs, so a bind error reaches the caller as
`ServerStartError` and a Unix socket is owner-only from its first moment.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import uvicorn
from starlette.types import ASGIApp

__all__ = ["BoundAddress", "HttpServer", "HttpServerActor", "ServerStartError"]

log = logging.getLogger("labrecon.http")

BACKLOG = 128
UNIX_SOCKET_MODE = 0o600


class ServerStartError(RuntimeError):
    """The server could not start listening; the message says where and why."""


@dataclass(frozen=True)
class BoundAddress:
    """Where a started server actually listens."""

    host: str | None = None
    port: int | None = None
    uds: Path | None = None

    @property
    def url(self) -> str:
        """`http://host:port` for TCP; `unix:PATH` for a Unix socket (what `labrecon status --socket` takes)."""
        if self.uds is not None:
            return f"unix:{self.uds}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        return str(self.uds) if self.uds is not None else f"{self.host}:{self.port}"


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _WaitListening:
    timeout: float


@dataclass(frozen=True)
class _Exited:
    """The uvicorn thread ended without being asked to."""

    error: BaseException | None


class _NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling a thread-safe event when it has started listening."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self.started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.started_event.set()


class HttpServerActor(pykka.ThreadingActor):
    """Owns one uvicorn server on an already-listening socket, and the thread that runs it.

    `on_exit` is called (from the actor's thread) if the server stops without
    being asked to, with the exception that ended it, so an owner can react
    — e.g. shut the daemon down rather than keep running deaf.
    """

    def __init__(
        self,
        app: ASGIApp,
        listener: socket.socket,
        *,
        name: str = "http",
        graceful_timeout: float = 5.0,
        access_log: bool = False,
        on_exit: Callable[[BaseException | None], None] | None = None,
        closed: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.listener = listener
        # Set once the socket is closed: the actor counts as stopped a little before that.
        self.closed = closed or threading.Event()
        self.graceful_timeout = graceful_timeout
        self.on_exit = on_exit
        self.uds = Path(listener.getsockname()) if listener.family == socket.AF_UNIX else None
        self._uds_inode = os.stat(self.uds).st_ino if self.uds is not None else None
        config = uvicorn.Config(
            app,
            log_config=None,  # our logging is configured once, for the whole process
            access_log=access_log,
            lifespan="auto",
            loop="uvloop",  # uvicorn's `standard` extra: a faster loop and HTTP parser than asyncio and h11
            http="httptools",
            proxy_headers=False,  # no proxy is trusted to rewrite who the client is
            server_header=False,
            timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]  # uvicorn takes any number
        )
        self._settled = threading.Event()  # set once started, or once the thread ended trying
        self._server = _NotifyingServer(config, self._settled)
        self._thread = threading.Thread(target=self._serve, name=f"labrecon-{name}-uvicorn", daemon=True)
        self._error: BaseException | None = None
        self._exited = False
        self._stopping = False

    # --- life ---------------------------------------------------------------------------

    def on_start(self) -> None:
        self._thread.start()

    def on_receive(self, message: Any) -> Any:
        match message:
            case _WaitListening(timeout):
                return self._wait_listening(timeout)
            case _Exited(error):
                if error is not None and not isinstance(error, SystemExit):
                    log.error("%s server stopped unexpectedly: %r", self.name, error)
                else:
                    log.error("%s server stopped unexpectedly", self.name)
                if self.on_exit is not None:
                    self.on_exit(error)
                self.stop()
            case _:
                raise TypeError(f"{self.name} server got an unknown message {message!r}")
        return None

    def on_stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(self.graceful_timeout + 5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        self.listener.close()
        self._remove_socket_file()
        self.closed.set()

    def on_failure(self, *exc_info: Any) -> None:
        self.on_stop()

    # --- inside ---------------------------------------------------------------------------

    def _serve(self) -> None:
        error: BaseException | None = None
        try:
            self._server.run(sockets=[self.listener])
        except BaseException as exc:  # noqa: BLE001 — SystemExit is how uvicorn reports a failed startup
            error = exc
        self._error = error
        self._exited = True
        self._settled.set()
        if not self._stopping:
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(_Exited(error))

    def _wait_listening(self, timeout: float) -> BoundAddress:
        if not self._settled.wait(timeout):
            raise ServerStartError(f"the {self.name} server did not start within {timeout:g}s")
        if self._exited or not self._server.started:
            reason = "" if self._error is None or isinstance(self._error, SystemExit) else f": {self._error!r}"
            raise ServerStartError(f"the {self.name} server stopped while starting (see the log){reason}")
        return self._bound()

    def _bound(self) -> BoundAddress:
        sockets = [sock for server in self._server.servers for sock in (server.sockets or ())]
        sock = sockets[0] if sockets else self.listener
        if sock.family == socket.AF_UNIX:
            return BoundAddress(uds=self.uds)
        host, port = sock.getsockname()[:2]
        return BoundAddress(host=host, port=port)

    def _remove_socket_file(self) -> None:
        """Remove our socket file, but never one another server has bound since."""
        if self.uds is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.uds).st_ino == self._uds_inode:
                self.uds.unlink()


class HttpServer:
    """A running HTTP server: its bound address, and `stop()`.

        with HttpServer.start(app, host="127.0.0.1", port=0) as server:
            print(server.url)
    """

    def __init__(self, ref: pykka.ActorRef[HttpServerActor], address: BoundAddress, closed: threading.Event) -> None:
        self.ref = ref
        self.address = address
        self._closed = closed

    @classmethod
    def start(
        cls,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        uds: str | Path | None = None,
        name: str = "http",
        startup_timeout: float = 10.0,
        graceful_timeout: float = 5.0,
        access_log: bool = False,
        on_exit: Callable[[BaseException | None], None] | None = None,
    ) -> HttpServer:
        """Listen on `uds` if given, else on `host:port` (0: any free port); return once serving.

        "Serving" is uvicorn's own `startup` setting an event, never a sleep; the bound address is
        read back from the server's sockets, so `port=0` yields a usable ephemeral port.
        """
        listener = bind_unix(Path(uds)) if uds is not None else bind_tcp(host, port)
        closed = threading.Event()
        try:
            ref = HttpServerActor.start(
                app,
                listener,
                name=name,
                graceful_timeout=graceful_timeout,
                access_log=access_log,
                on_exit=on_exit,
                closed=closed,
            )
        except BaseException:
            listener.close()
            raise
        try:
            address: BoundAddress = ref.ask(_WaitListening(startup_timeout), block=True)
        except BaseException:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=graceful_timeout + 15.0)
            raise
        log.info("%s server listening on %s", name, address.describe())
        return cls(ref, address, closed)

    @property
    def port(self) -> int | None:
        return self.address.port

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def running(self) -> bool:
        """Serving, or still letting go of its socket: False only once nothing listens any more."""
        return not self._closed.is_set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop accepting, let open requests finish within the graceful timeout, then close."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.ref.stop(block=True, timeout=timeout)

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- sockets -----------------------------------------------------------------------------


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; the first address `host` resolves to."""
    where = f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerStartError(f"cannot listen on {where}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ServerStartError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, owner-only, replacing only a stale socket file.

    The mode is set between `bind` and `listen`, so no other local user can ever connect to the
    control endpoints (uvicorn's own `uds=` would leave the socket world-writable).
    """
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, UNIX_SOCKET_MODE)  # before listen(): nobody can connect until it is private
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()
        raise ServerStartError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def _clear_stale_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServerStartError(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ServerStartError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    else:
        raise ServerStartError(f"cannot listen on {path}: another server is listening there")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left behind by a server that died
