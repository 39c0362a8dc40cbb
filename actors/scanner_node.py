"""A pool's runner on a scanner node: it checks each call again, then runs it as a `ProcessRun`.

The front has checked the call already, but the node trusts nothing it is sent. It prepares the
call again from its arguments with the same tool grammar and the same policy (the target's
addresses pinned to those sent: a node never resolves a name), checks that every address lies in
its pool, and spawns nothing unless what it built is exactly the argv it was sent. Runs have the
same bounds as on the front (no shell, minimal environment, own process group, caps, timeout,
TERM then KILL), and a watchdog process ends them if this runner's worker dies.

Ray hosts one `ScannerNode` per tool and pool incarnation (`actors.remote_run`); it imports no Ray
itself but for naming its node. Each `run` streams `Spawned` (or nothing, when the node refuses),
`Lines` as the tool prints those that report progress, and one `Ended`; `cancel` may come at any
time from another thread. A spawned process is supervised to its end even if the stream is dropped.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from actors.containment import process_start_ticks
from actors.faults import Shaping
from actors.policy import Resolver, TargetPolicy
from actors.prepare import PreparedCall, config_digest, prepare_call
from actors.probe import probe_binary
from actors.results import InvalidCall
from actors.runner import ProcessRun, RunRequest, RunResult
from actors.settings import IPAddress, IPNetwork, PolicySettings, ToolSettings, within
from actors.tools import TOOL_SPECS
from actors.watchdog import Watchdog

__all__ = ["Ended", "Lines", "NodeReport", "RemoteJob", "ScannerNode", "Spawned", "recheck"]

# How long a job waits for the config the front sent before it (Ray may deliver the two out of order).
CONFIG_WAIT_SEC = 10.0
# Configs a runner keeps for calls admitted before the reloads that replaced them.
KEEP_CONFIGS = 8
# Cancels remembered for runs that have not arrived; older ones are for runs that never will.
MAX_EARLY_CANCELS = 1024
# Lines printed while the previous batch was on its way go back together: one message, not one each.
MAX_LINES_PER_BATCH = 256


@dataclass(frozen=True)
class RemoteJob:
    """One attempt at a call, as the front sends it: `key` is unique among the runner's runs."""

    key: str
    prepared: PreparedCall
    shaping: Shaping | None = None
    # How many configs the front had sent this runner when it sent the job: the job waits for that one.
    generation: int = 0


@dataclass(frozen=True)
class Spawned:
    node: str


@dataclass(frozen=True)
class Lines:
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Ended:
    result: RunResult


@dataclass(frozen=True)
class NodeReport:
    """What a runner tells the front about itself and its node, for status."""

    node: str
    host: str
    tool: str
    version: str | None
    running: int
    load: tuple[float, float, float]


def recheck(
    prepared: PreparedCall,
    *,
    settings: ToolSettings,
    policy: PolicySettings,
    networks: Sequence[IPNetwork],
    as_sent: bool = True,
) -> PreparedCall:
    """The call prepared again from its arguments; raises `InvalidCall` unless it is the call that was sent
    (`as_sent`: prepared under this same config), or, without `as_sent`, unless this config allows it.

    Pure: the target's names resolve only to the addresses the front sent, never through DNS.
    """
    spec = TOOL_SPECS.get(prepared.tool)
    if spec is None:
        raise InvalidCall(f"this node runs no tool named {prepared.tool!r}", field="tool")
    pinned = _pinned(prepared.resolved_targets)
    again = prepare_call(spec, prepared.arguments, settings=settings, policy=TargetPolicy(policy, resolver=pinned))
    if again.resolved_targets != tuple(prepared.resolved_targets):
        raise InvalidCall("the addresses sent are not those the target resolves to", field="target")
    if as_sent and again.argv != tuple(prepared.argv):
        raise InvalidCall("the command line sent is not the one the tool's grammar builds from the call's arguments")
    if as_sent and again.timeout_sec != prepared.timeout_sec:
        raise InvalidCall("the time limit sent is not the call's", field="timeout_sec")
    for text in again.resolved_targets:
        target = ipaddress.ip_network(text, strict=False)
        if not within(target, networks):
            raise InvalidCall(f"{target} is not in this node's pool", field="target")
    return again


class ConfigNotHere(RuntimeError):
    """A job came before the config it was sent under, and that config did not follow in time."""


class ScannerNode:
    """One tool's runner on one node of a pool; Ray calls its methods on threads of its own."""

    def __init__(
        self, pool: str, networks: Sequence[IPNetwork], tool: str, settings: ToolSettings, policy: PolicySettings
    ) -> None:
        self.pool = pool
        self.networks = tuple(networks)
        self.tool = tool
        self._lock = threading.Lock()
        self._configured = threading.Condition(self._lock)  # a new config arrived
        self._generation = 0  # how many configs the front has sent after the first
        # Each config the front sent, by its `config_digest`, newest last; calls are checked by the one they name.
        self._configs: OrderedDict[str, tuple[ToolSettings, PolicySettings]] = OrderedDict()
        self._current = self._remember(settings, policy)  # the digest of the config in force
        self._runs: dict[str, ProcessRun] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # cancelled before their run arrived
        self._watchdog = Watchdog()  # ends this runner's process groups if its worker dies
        self._probe_lock = threading.Lock()
        self._versions: dict[str, str | None] = {}  # binary -> what it said its version is
        self.node = _node_id()

    def configure(self, settings: ToolSettings, policy: PolicySettings, generation: int) -> None:
        """The front's config after a reload (its `generation`-th): calls prepared under it are checked by it.

        The configs before stay known for calls the front admitted under them and sends on after the reload.
        """
        with self._lock:
            digest = self._remember(settings, policy)  # kept even when overtaken: calls may still name it
            if generation > self._generation:
                self._current, self._generation = digest, generation
                self._configured.notify_all()

    def _remember(self, settings: ToolSettings, policy: PolicySettings) -> str:
        """Keep a config by its digest (the newest `KEEP_CONFIGS`); returns the digest."""
        digest = config_digest(settings, policy)
        self._configs[digest] = (_here(settings), policy)
        self._configs.move_to_end(digest)
        while len(self._configs) > KEEP_CONFIGS:
            self._configs.popitem(last=False)
        return digest

    def run(self, job: RemoteJob) -> Iterator[Spawned | Lines | Ended]:
        try:
            prepared, settings = self._checked(job)
        except ConfigNotHere as late:
            yield Ended(RunResult.no_process(pool=self.pool, node=self.node, lost=str(late)))
            return
        except Exception as refused:  # noqa: BLE001 - whatever the check could not digest is refused, never run
            why = str(refused) or type(refused).__name__
            yield Ended(RunResult.no_process(pool=self.pool, node=self.node, refused=why))
            return
        request = RunRequest(
            argv=prepared.argv,
            timeout_sec=prepared.timeout_sec,
            stdout_cap=settings.stdout_cap_bytes,
            stderr_cap=settings.stderr_cap_bytes,
            kill_grace_sec=settings.kill_grace_sec,
            env=TOOL_SPECS[prepared.tool].run_environment(settings),
        )
        lines: queue.SimpleQueue[str | RunResult] = queue.SimpleQueue()
        progress_of = TOOL_SPECS[prepared.tool].progress

        def on_line(line: str) -> None:
            if progress_of(line) is not None:  # the front reads a line only for the progress it reports
                lines.put(line)

        run = ProcessRun(request if job.shaping is None else job.shaping.apply(request), on_line=on_line)
        with self._lock:
            if self._cancelled.pop(job.key, False) is None:
                run.cancel()
            self._runs[job.key] = run
        try:
            run.spawn()
            if run.pid is not None:
                self._watch(job.key, run)
            # Supervised from now on, whatever becomes of the stream; the spawn's report overlaps the run.
            threading.Thread(target=_supervise, args=(run, lines), name=f"run-{job.key}", daemon=True).start()
            if run.pid is not None:
                yield Spawned(self.node)
            yield from self._relay(lines, prepared.argv)
        finally:
            with self._lock:
                self._runs.pop(job.key, None)
            run.cancel()  # the front stopped listening: the process ends with the stream
            self._watchdog.forget(job.key)

    def _relay(self, lines: queue.SimpleQueue[str | RunResult], argv: tuple[str, ...]) -> Iterator[Lines | Ended]:
        """The run's lines in batches as they come, then its end, saying the command line the node built."""
        while True:
            batch: list[str] = []
            item = lines.get()
            while isinstance(item, str):
                batch.append(item)
                if len(batch) >= MAX_LINES_PER_BATCH or lines.empty():
                    break
                item = lines.get()
            if batch:
                yield Lines(tuple(batch))
            if isinstance(item, RunResult):
                yield Ended(replace(item, pid=None, pool=self.pool, node=self.node, argv=argv))
                return

    def _checked(self, job: RemoteJob) -> tuple[PreparedCall, ToolSettings]:
        """The call prepared again under the config it names, which must give exactly what was sent; a call
        named a config this runner never had (it started after that reload) is prepared under the one in
        force, and what that builds is what runs.

        Ray may run a job before the config the front sent ahead of it: the job waits for that config.
        """
        prepared = job.prepared
        if prepared.tool != self.tool:
            raise InvalidCall(f"this runner runs {self.tool}, not {prepared.tool}", field="tool")
        with self._lock:
            if not self._configured.wait_for(lambda: self._generation >= job.generation, CONFIG_WAIT_SEC):
                raise ConfigNotHere("the config the call was sent under has not reached the node; retry")
            named = self._configs.get(prepared.config)
            settings, policy = named or self._configs[self._current]
        again = recheck(prepared, settings=settings, policy=policy, networks=self.networks, as_sent=named is not None)
        return again, settings

    def cancel(self, key: str) -> None:
        """Stop run `key`; one that has not arrived yet will not spawn."""
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                self._cancelled[key] = None
                if len(self._cancelled) > MAX_EARLY_CANCELS:  # cancels for runs that never came
                    self._cancelled.popitem(last=False)
                return
        run.cancel()

    def describe(self) -> NodeReport:
        with self._lock:
            settings, running = self._configs[self._current][0], len(self._runs)
        with self._probe_lock:  # asked once per binary: a report comes every second
            if settings.binary not in self._versions:
                probe = probe_binary(settings.binary, TOOL_SPECS[self.tool].version_argv)
                self._versions[settings.binary] = probe.get("version")
            version = self._versions[settings.binary]
        return NodeReport(self.node, socket.gethostname(), self.tool, version, running, os.getloadavg())

    def ping(self) -> str:
        return self.node

    def _watch(self, key: str, run: ProcessRun) -> None:
        assert run.pid is not None
        ticks = process_start_ticks(run.pid)
        if ticks is not None:
            self._watchdog.watch(key, run.pid, ticks, run.home)


def _supervise(run: ProcessRun, events: queue.SimpleQueue[str | RunResult]) -> None:
    """The run's own thread: supervise it to the end, and put how it ended after its last line."""
    try:
        result = run.run()
    except Exception as exc:  # noqa: BLE001 - the front must get an end whatever happens here
        result = RunResult.no_process(spawn_error=f"the runner failed: {exc}")
    events.put(result)


def _here(settings: ToolSettings) -> ToolSettings:
    """The front's settings as this node reads them: what they find on disk (nmap's data) is found here."""
    return type(settings).model_validate(settings.model_dump())


def _pinned(resolved: Sequence[str]) -> Resolver:
    """A resolver that answers every name with the addresses the front sent, and asks no DNS."""

    def resolve(name: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(text) for text in resolved]
        except ValueError:
            raise LookupError(f"no address was sent for {name}") from None

    return resolve


def _node_id() -> str:
    """The Ray node this runner is on; the host name outside Ray.

    Ray's runtime context joins a cluster when asked outside one (whichever its files name), so it is
    asked only where Ray is already running.
    """
    ray = sys.modules.get("ray")  # in a Ray worker, Ray is imported already; elsewhere it is not asked
    if ray is None or not ray.is_initialized():
        return socket.gethostname()
    return str(ray.get_runtime_context().get_node_id())
