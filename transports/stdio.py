"""MCP over stdio: newline-delimited JSON-RPC on stdin and stdout.

stdout carries protocol messages and nothing else; logs go to stderr. Every line is handled
concurrently and every malformed line answered with its JSON-RPC error. EOF on stdin (or SIGTERM)
shuts the server down: running calls get a grace period, then are cancelled and still answered.
A change of the tool list, seen on any thread, is told to the client from the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import pykka
import uvloop

from actors.api import ToolBackend
from transports.framing import LineFramer, Oversized
from transports.mcp import jsonrpc
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST
from transports.mcp.session import Session

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "StdioTransport", "serve_stdio"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES: Final[int] = 4 << 20
"""Largest accepted line. Big enough for any sane request, small enough to bound memory per client."""

_READ_CHUNK: Final[int] = 64 << 10
_MAX_BACKLOG: Final[int] = 1024

Stream = BinaryIO | int


@dataclass(frozen=True)
class _Outgoing:
    """What a line is: progress may be dropped when the reader is far behind; a reply never is."""

    droppable: bool
    request_id: Any = None


class _StdoutWriter:
    """The one writer of stdout: a thread that writes the lines the loop hands it, in order.

    Only the loop calls `send`; only the writer thread touches stdout. When
    more than `max_backlog` lines wait, progress notifications give way;
    replies never do. A reader that left is noticed at the next write, and
    from then on lines are discarded, each lost reply logged.
    """

    def __init__(self, out: Stream, *, max_backlog: int = _MAX_BACKLOG) -> None:
        self._out = out
        self._fd = out if isinstance(out, int) else _fileno(out)
        self._queue: queue.SimpleQueue[tuple[bytes, _Outgoing] | None] = queue.SimpleQueue()
        self._max_backlog = max_backlog
        self._thread = threading.Thread(target=self._run, name="labrecon-stdio-out", daemon=True)
        self.lines_written = 0  # the writer thread's
        self.dropped = 0  # the loop's

    def start(self) -> None:
        self._thread.start()

    def send(self, line: bytes, what: _Outgoing) -> None:
        if what.droppable and self._queue.qsize() >= self._max_backlog:
            self.dropped += 1
            return
        self._queue.put((line + b"\n", what))

    async def close(self, join_within: float) -> None:
        """Flush what is queued, then end the thread (bounded, for a client that stopped reading).

        The bound is the thread join's own: cancelling an await would leave the join blocking its worker.
        """
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, join_within)
        if self._thread.is_alive():
            logger.warning("stdout writer did not drain in time; abandoning unsent messages")

    def _run(self) -> None:
        gone = False
        while (item := self._queue.get()) is not None:
            line, what = item
            if not gone:
                try:
                    self._write(line)
                    self.lines_written += 1
                    continue
                except (OSError, ValueError) as exc:
                    gone = True
                    logger.warning("stdout is gone; further messages are discarded", extra={"error": str(exc)})
            if not what.droppable:
                logger.warning("reply not sent: stdout is closed or gone", extra={"request_id": what.request_id})

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            assert not isinstance(self._out, int)
            self._out.write(data)
            self._out.flush()
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                # Someone made the descriptor non-blocking; wait until it can take more.
                select.select([], [self._fd], [])
                continue
            view = view[written:]


class _InputReader:
    """Reads stdin without blocking the event loop.

    A pipe, socket or terminal is watched by the loop itself. Anything else (a
    regular file, a file-like object) is read by a daemon thread that hands the
    loop each chunk: one that blocks forever holds up neither a shutdown nor
    the process's exit.
    """

    def __init__(self, source: Stream) -> None:
        self._fd = source if isinstance(source, int) else _fileno(source)
        self._source = source
        self._stream: asyncio.StreamReader | None = None
        self._chunks: asyncio.Queue[bytes | Exception] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._restore_blocking: bool | None = None

    async def open(self) -> None:
        if self._fd is None or stat.S_ISREG(os.fstat(self._fd).st_mode) or not await self._watch(self._fd):
            self._start_reader_thread()

    async def _watch(self, fd: int) -> bool:
        loop = asyncio.get_running_loop()
        was_blocking = os.get_blocking(fd)
        # The transport closes what it is given: hand it a duplicate, so our stdin stays open.
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        stream = asyncio.StreamReader(limit=_READ_CHUNK)
        try:
            self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), pipe)
        except (OSError, ValueError):
            pipe.close()
            os.set_blocking(fd, was_blocking)
            return False
        self._stream = stream
        self._restore_blocking = was_blocking
        return True

    def _start_reader_thread(self) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        fd, source = self._fd, self._source

        def read() -> bytes:
            if fd is not None:
                return os.read(fd, _READ_CHUNK)
            assert not isinstance(source, int)
            return source.read(_READ_CHUNK)

        def pump() -> None:
            while True:
                item: bytes | Exception
                try:
                    item = read()
                except Exception as exc:  # noqa: BLE001 - handed to the loop, which reports it as a failed read
                    item = exc
                try:
                    loop.call_soon_threadsafe(chunks.put_nowait, item)
                except RuntimeError:
                    return  # the loop is gone: nobody reads any more
                if not isinstance(item, bytes) or not item:
                    return

        self._chunks = chunks
        threading.Thread(target=pump, name="labrecon-stdin", daemon=True).start()

    async def read(self) -> bytes:
        """Next chunk, or b"" at end of input."""
        if self._stream is not None:
            return await self._stream.read(_READ_CHUNK)
        assert self._chunks is not None
        item = await self._chunks.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._restore_blocking is not None and self._fd is not None:
            with suppress(OSError):
                os.set_blocking(self._fd, self._restore_blocking)
            self._restore_blocking = None


class _StdioConnection:
    """The asyncio side of the transport: frame, dispatch, reply."""

    def __init__(
        self,
        dispatcher: McpDispatcher,
        stdin: Stream,
        stdout: Stream,
        *,
        max_message_bytes: int,
        grace: float,
        cancel_timeout_sec: float,
        on_serving: Callable[[], object] | None = None,
        on_stopping: Callable[[], object] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._on_serving = on_serving
        self._on_stopping = on_stopping
        self._stdin = stdin
        self._stdout = stdout
        self._framer = LineFramer(max_message_bytes)
        self._grace = grace
        self._cancel_timeout = cancel_timeout_sec
        self._session = Session(peer="stdio")
        self._session.standalone = self._notify  # stdout carries notifications outside any request too
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: _StdoutWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._draining: asyncio.Event | None = None
        self._stop_before_start = threading.Event()
        self._drain_before_start = threading.Event()
        self.messages_in = 0
        self.oversized = 0

    def request_stop(self) -> None:
        """Ask the connection to shut down now; safe from any thread, before or during `serve`."""
        self._stop_before_start.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with suppress(RuntimeError):  # loop already closed: nothing left to stop
                loop.call_soon_threadsafe(stopping.set)

    def request_drain(self) -> None:
        """Shut down as at EOF: read no more, give running calls the grace period; any thread."""
        self._drain_before_start.set()
        loop, draining = self._loop, self._draining
        if loop is not None and draining is not None:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(draining.set)

    def stats(self) -> dict[str, Any]:
        writer = self._writer
        return {
            "messages_in": self.messages_in,
            "lines_out": writer.lines_written if writer else 0,
            "notifications_dropped": writer.dropped if writer else 0,
            "oversized": self.oversized,
            "in_flight": self._session.in_flight,
            "era": self._session.era.value if self._session.era else None,
            "protocol_version": self._session.protocol_version,
        }

    async def serve(self) -> int:
        """Serve until EOF or a stop request; the status is 0 unless reading stdin failed."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._draining = asyncio.Event()
        if self._stop_before_start.is_set():
            self._stopping.set()
        if self._drain_before_start.is_set():
            self._draining.set()
        self._writer = _StdoutWriter(self._stdout)
        self._writer.start()
        reader = _InputReader(self._stdin)
        stop_wait = asyncio.create_task(self._stopping.wait())
        drain_wait = asyncio.create_task(self._draining.wait())
        unwatch = self._dispatcher.watch_tools(self._tools_changed)
        status = 0
        try:
            await reader.open()
            logger.info("stdio transport serving", extra={"pid": os.getpid()})
            reading = asyncio.create_task(self._read_all(reader))
            _tell(self._on_serving)
            await asyncio.wait({reading, stop_wait, drain_wait}, return_when=asyncio.FIRST_COMPLETED)
            _tell(self._on_stopping)
            if reading.done() and not self._stopping.is_set():
                if exc := reading.exception():
                    logger.error("reading stdin failed", exc_info=exc)
                    status = 1
                logger.info("stdin closed; shutting down", extra={"in_flight": self._session.in_flight})
                await self._settle(grace=self._grace)
            elif drain_wait.done() and not self._stopping.is_set():
                logger.info("asked to drain; shutting down", extra={"in_flight": self._session.in_flight})
                reading.cancel()
                await self._settle(grace=self._grace)
            else:
                logger.info("stop requested; shutting down", extra={"in_flight": self._session.in_flight})
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await self._settle(grace=0.0)
        finally:
            unwatch()
            stop_wait.cancel()
            drain_wait.cancel()
            reader.close()
            await self._writer.close(join_within=self._cancel_timeout)
        logger.info("stdio transport stopped", extra=self.stats())
        return status

    async def _read_all(self, reader: _InputReader) -> None:
        while chunk := await reader.read():
            for frame in self._framer.feed(chunk):
                self._accept(frame)
        for frame in self._framer.finish():
            self._accept(frame)

    def _accept(self, frame: bytes | Oversized) -> None:
        self.messages_in += 1
        if isinstance(frame, Oversized):
            self.oversized += 1
            logger.warning("message over the size limit discarded", extra={"size": frame.size})
            self._send(
                jsonrpc.error_response(
                    None,
                    INVALID_REQUEST,
                    f"Invalid Request: message of {frame.size} bytes exceeds the limit of "
                    f"{self._framer.max_bytes} bytes",
                    {"limit": self._framer.max_bytes},
                )
            )
            return
        task = asyncio.create_task(self._serve_line(frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_line(self, line: bytes) -> None:
        reply = await self._dispatcher.handle_text(self._session, line, self._notify)
        if reply is not None:
            self._send(reply)

    def _tools_changed(self) -> None:
        """Any thread: the tool list changed; the client is told from the loop (never blocking the caller)."""
        loop = self._loop
        if loop is not None:
            with suppress(RuntimeError):  # the loop has closed: nobody is left to tell
                loop.call_soon_threadsafe(self._dispatcher.tools_changed, self._session)

    def _notify(self, message: dict[str, Any]) -> None:
        self._send(message, _Outgoing(droppable=message.get("method") == "notifications/progress"))

    def _send(self, message: dict[str, Any] | list[dict[str, Any]], what: _Outgoing | None = None) -> None:
        assert self._writer is not None
        if what is None:  # a reply, or a batch of them
            what = _Outgoing(droppable=False, request_id=message.get("id") if isinstance(message, dict) else "batch")
        try:
            line = jsonrpc.encode(message)
        except (TypeError, ValueError):
            logger.exception("a message could not be encoded")
            if what.droppable or not isinstance(message, dict) or "id" not in message:
                return
            line = jsonrpc.encode(jsonrpc.error_response(message["id"], INTERNAL_ERROR, "Internal error"))
        self._writer.send(line, what)

    async def _settle(self, *, grace: float) -> None:
        """Give running calls `grace` seconds (cut short by a stop request), then cancel the rest.

        Cancelled calls are still answered with their cancelled outcome; only
        a call that ignores cancellation for `cancel_timeout_sec` is abandoned.
        """
        assert self._stopping is not None
        self._dispatcher.end_subscriptions(self._session)  # a stream open for listening never ends by itself
        running = {task for task in self._tasks if not task.done()}
        if running and grace > 0:
            all_done = asyncio.gather(*running, return_exceptions=True)
            stop_wait = asyncio.ensure_future(self._stopping.wait())
            waiters: set[asyncio.Future[Any]] = {all_done, stop_wait}
            try:
                await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
        running = {task for task in self._tasks if not task.done()}
        if not running:
            return
        cancelled = self._dispatcher.cancel_all(self._session)
        logger.info("cancelled calls still running at shutdown", extra={"calls": cancelled})
        _, stuck = await asyncio.wait(running, timeout=self._cancel_timeout)
        if stuck:
            logger.warning("calls did not settle after cancellation; abandoned", extra={"calls": len(stuck)})
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)


class StdioTransport(pykka.ThreadingActor):
    """The stdio transport as an actor: `start()` begins serving, `stop()` ends it.

    The protocol runs on an asyncio loop in a thread the actor owns, because tool calls are awaited
    concurrently: the loop reads stdin, dispatches, and hands every outgoing line to the one writer
    thread, which owns stdout.

    After EOF on stdin, calls still running get `grace` seconds to finish
    before they are cancelled; `stop()` cancels them at once. Either way each
    cancelled call is still answered, and `cancel_timeout_sec` bounds the
    wait for those answers. `finished` (optional) is resolved with the exit
    status once the connection is over. The actor stops itself after EOF.
    `on_serving` is called (on the loop) once stdin is being read, and
    `on_stopping` once shutdown begins, whatever began it.
    """

    def __init__(
        self,
        dispatcher: McpDispatcher,
        *,
        stdin: Stream,
        stdout: Stream,
        finished: Future[int] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        grace: float = 1.0,
        cancel_timeout_sec: float = 5.0,
        on_serving: Callable[[], object] | None = None,
        on_stopping: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self._connection = _StdioConnection(
            dispatcher,
            stdin,
            stdout,
            max_message_bytes=max_message_bytes,
            grace=grace,
            cancel_timeout_sec=cancel_timeout_sec,
            on_serving=on_serving,
            on_stopping=on_stopping,
        )
        self._finished: Future[int] = finished if finished is not None else Future()
        self._join_timeout = 2 * cancel_timeout_sec + 5.0
        self._thread: threading.Thread | None = None

    def on_start(self) -> None:
        self._thread = threading.Thread(target=self._run_loop, name="labrecon-stdio", daemon=True)
        self._thread.start()

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._shutdown()

    def stats(self) -> dict[str, Any]:
        return self._connection.stats()

    def drain(self) -> None:
        """Stop reading and let running calls finish within the grace period, as at EOF."""
        self._connection.request_drain()

    def _run_loop(self) -> None:
        status = 1
        try:
            status = uvloop.run(self._connection.serve())
        except Exception:
            logger.exception("stdio transport failed")
        finally:
            if not self._finished.done():
                self._finished.set_result(status)
            # Stopping an actor that is already stopping is harmless: the request is dropped.
            self.actor_ref.stop(block=False)

    def _shutdown(self) -> None:
        self._connection.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._join_timeout)
            if thread.is_alive():
                logger.error("stdio loop thread did not end in time")
        if not self._finished.done():
            self._finished.set_result(1)


def serve_stdio(
    backend: ToolBackend | McpDispatcher,
    *,
    stdin: Stream | None = None,
    stdout: Stream | None = None,
    guard_stdout: bool = True,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    grace: float = 1.0,
    cancel_timeout_sec: float = 5.0,
    until: threading.Event | None = None,
    on_serving: Callable[[], object] | None = None,
    on_stopping: Callable[[], object] | None = None,
) -> int:
    """Serve MCP on this process's stdin/stdout until EOF, SIGTERM or `until`; returns the exit status.

    SIGTERM and `until` being set (the runtime escalating, say) shut down as
    EOF does: no more reading, running calls get `grace` seconds, then are
    cancelled and answered.

    `grace` is how long calls still running at EOF may take to finish before
    they are cancelled; Ctrl-C (KeyboardInterrupt) cancels them at once. With
    the real stdout and `guard_stdout`, file descriptor 1 is pointed at
    stderr for the duration and the protocol writes to a private duplicate,
    so a stray `print()` (or a library writing to fd 1) lands in the logs
    instead of corrupting the protocol stream. `on_serving` and `on_stopping`
    are as for `StdioTransport` (the CLI tells the service manager).
    """
    dispatcher = backend if isinstance(backend, McpDispatcher) else McpDispatcher.for_backend(backend)
    source: Stream = stdin if stdin is not None else sys.stdin.buffer
    with _protocol_output(stdout, guard_stdout) as out:
        finished: Future[int] = Future()
        ref = StdioTransport.start(
            dispatcher,
            stdin=source,
            stdout=out,
            finished=finished,
            max_message_bytes=max_message_bytes,
            grace=grace,
            cancel_timeout_sec=cancel_timeout_sec,
            on_serving=on_serving,
            on_stopping=on_stopping,
        )
        restore = _drain_on_sigterm(ref) if threading.current_thread() is threading.main_thread() else None
        if until is not None:
            threading.Thread(
                target=_drain_when, args=(until, ref, finished), name="labrecon-stdio-until", daemon=True
            ).start()
        try:
            status = finished.result()
        except KeyboardInterrupt:
            logger.info("interrupted; stopping")
            status = 130
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            if ref.is_alive():
                ref.stop()
    return status


def _drain_when(event: threading.Event, ref: pykka.ActorRef[StdioTransport], finished: Future[int]) -> None:
    while not finished.done():
        if event.wait(0.5):
            with suppress(pykka.ActorDeadError):
                ref.proxy().drain()
            return


def _drain_on_sigterm(ref: pykka.ActorRef[StdioTransport]) -> Any:
    """SIGTERM means what EOF means: finish what runs (within the grace period), then exit 0."""

    def on_sigterm(signum: int, frame: Any) -> None:
        logger.info("SIGTERM received; draining")
        with suppress(pykka.ActorDeadError):
            ref.proxy().drain()

    return signal.signal(signal.SIGTERM, on_sigterm)


@contextmanager
def _protocol_output(stdout: Stream | None, guard: bool) -> Iterator[Stream]:
    if stdout is not None:
        yield stdout
        return
    if not guard:
        yield sys.stdout.buffer
        return
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        yield protocol_fd
    finally:
        with suppress(OSError):
            sys.stdout.flush()
        os.dup2(protocol_fd, 1)
        os.close(protocol_fd)


def _tell(hook: Callable[[], object] | None) -> None:
    """Run a lifecycle hook; one that fails is logged and changes nothing else."""
    if hook is None:
        return
    try:
        hook()
    except Exception:
        logger.exception("a stdio lifecycle hook failed")


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
