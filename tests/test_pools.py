"""Scanner pools without Ray: the `[cluster]` config, routing by resolved targets, a pool's settings,
the scanner node's own check of every call, and a `ScannerNode` driven in-process on a fake scanner."""

from __future__ import annotations

import ipaddress
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actors.outcome import outcome_from_run
from actors.policy import TargetPolicy
from actors.prepare import PreparedCall, on_pool, prepare_call, slot_name, split_slot_name
from actors.results import InvalidCall
from actors.runner import RunResult
from actors.scanner_node import (
    MAX_EARLY_CANCELS,
    MAX_LINES_PER_BATCH,
    Ended,
    Lines,
    RemoteJob,
    ScannerNode,
    Spawned,
    recheck,
)
from actors.tools import TOOL_SPECS
from actors.tools.nmap import progress as nmap_progress
from supervisor.config import ConfigError, PoolSettings, Settings, settings_from
from supervisor.pools import pool_label, pool_settings, route
from tests.fakes.install import install_fake, read_calls
from tests.helpers import process_alive, wait_until
from tests.pool_support import retarget
from tests.runtimes import fake_config, scan_calls

POOL_A = {"name": "a", "networks": ["10.1.0.0/16", "10.3.0.0/25"], "resource": "labrecon_a"}
POOL_B = {"name": "b", "networks": ["10.2.0.0/16", "10.3.0.128/25"], "resource": "labrecon_b"}
B_NETWORKS = [ipaddress.ip_network(text) for text in POOL_B["networks"]]
HANG_GUARD_SEC = 30.0


def pools_settings(tmp_path: Path, *pools: dict[str, Any], **sections: Any) -> Settings:
    """Settings on fakes in `tmp_path` with `pools` (a and b by default) on a Ray cluster."""
    config = fake_config(tmp_path, **sections)
    config["cluster"] = {"engine": "ray", "address": "127.0.0.1:1", "pools": list(pools or (POOL_A, POOL_B))}
    return settings_from(config)


def pools(*entries: dict[str, Any]) -> tuple[PoolSettings, ...]:
    return tuple(PoolSettings.model_validate(entry) for entry in entries)


# --- configuration ------------------------------------------------------------------------------


def test_without_a_cluster_section_processes_run_here_and_no_pool_exists(tmp_path):
    settings = settings_from(fake_config(tmp_path))
    assert settings.cluster.engine == "local" and settings.cluster.pools == ()


def test_pools_are_read_with_their_networks_resource_and_concurrency(tmp_path):
    settings = pools_settings(tmp_path, POOL_A, {**POOL_B, "concurrency": {"nmap": 4, "masscan": 1}})
    a, b = settings.cluster.pools
    assert (a.name, a.resource, [str(n) for n in a.networks]) == ("a", "labrecon_a", POOL_A["networks"])
    assert b.concurrency == {"nmap": 4, "masscan": 1} and a.concurrency == {}


@pytest.mark.parametrize(
    ("cluster", "named"),
    [
        ({"engine": "local", "pools": [POOL_A]}, 'engine = "ray"'),
        ({"engine": "ray", "pools": [POOL_A, {**POOL_B, "name": "a"}]}, "'a' is used twice"),
        ({"engine": "ray", "pools": [POOL_A, {**POOL_B, "networks": ["10.1.128.0/24"]}]}, "overlaps 10.1.0.0/16"),
        ({"engine": "ray", "pools": [POOL_A, {**POOL_B, "networks": ["10.0.0.0/8"]}]}, "of pool 'a'"),
        ({"engine": "ray", "pools": [{**POOL_A, "networks": []}]}, "networks"),
        ({"engine": "ray", "pools": [{**POOL_A, "networks": ["10.1.0.1/16"]}]}, "networks"),
        ({"engine": "ray", "pools": [{**POOL_A, "name": "Pool A"}]}, "name"),
        ({"engine": "ray", "pools": [{**POOL_A, "resource": "labrecon a"}]}, "resource"),
        ({"engine": "ray", "pools": [{**POOL_A, "concurrency": {"nmap": 0}}]}, "concurrency"),
        ({"engine": "ray", "pools": [{**POOL_A, "concurrency": {"nikto": 2}}]}, "unknown tool 'nikto'"),
        ({"engine": "ray", "pools": [{**POOL_A, "networks": ["192.0.2.0/24"]}]}, "not inside [policy] allowed"),
        ({"engine": "ray", "pools": [{**POOL_A, "size": 3}]}, "size"),
        ({"engine": "spark"}, "engine"),
        ({"engine": "ray", "address": "ray://127.0.0.1:10001", "pools": [POOL_A]}, "ray://"),
    ],
)
def test_a_cluster_section_that_cannot_work_is_refused_naming_the_key(tmp_path, cluster, named):
    config = fake_config(tmp_path)
    config["cluster"] = {"address": "127.0.0.1:1", **cluster}
    with pytest.raises(ConfigError) as refused:
        settings_from(config)
    assert named in str(refused.value) and "cluster" in str(refused.value)


def test_a_pool_network_must_stay_inside_the_policy(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster\.pools\[1\]\.networks: 10\.2\.0\.0/16 is not inside"):
        pools_settings(tmp_path, policy={"allowed_networks": ["10.1.0.0/16", "10.3.0.0/24"]})


def test_a_runner_lost_fault_needs_pools(tmp_path):
    config = fake_config(tmp_path)
    config["faults"] = [{"tool": "nmap", "kind": "runner_lost", "count": 1}]
    with pytest.raises(ConfigError, match="runner_lost needs scanner pools"):
        settings_from(config)


@pytest.mark.parametrize("runner_died", [False, True])
def test_a_run_lost_before_its_job_is_sent_sends_nothing_and_says_why(tmp_path, runner_died):
    from actors.remote_run import RemoteRun  # imports Ray, which joins no cluster by itself
    from actors.runner import RunRequest

    settings = pools_settings(tmp_path)
    prepared = prepared_for(settings, {"target": "10.2.0.5"})
    request = RunRequest(argv=prepared.argv, timeout_sec=prepared.timeout_sec)
    # No runner at all: anything sent to it would fail the run with an AttributeError instead.
    run = RemoteRun(None, RemoteJob("nmap-1", prepared), request, None, pool="b", placement_sec=10.0)
    run.lost_before_sent("pool b has no live node; retry later", runner_died=runner_died)
    result = run.run()
    assert result.lost == "pool b has no live node; retry later" and result.runner_died is runner_died
    assert not run.started and result.pool == "b"
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_fault_names_a_pool_that_exists(tmp_path):
    fault = {"tool": "nmap", "kind": "runner_lost", "pool": "c", "count": 1}
    with pytest.raises(ConfigError, match="no pool is named 'c'"):
        pools_settings(tmp_path, faults=[fault])
    assert pools_settings(tmp_path, faults=[{**fault, "pool": "b"}]).faults[0].pool == "b"


# --- routing ------------------------------------------------------------------------------------


def test_without_pools_every_call_runs_here():
    assert route(["10.1.0.5"], ()) is None


@pytest.mark.parametrize(
    ("resolved", "pool"),
    [
        (["10.1.0.5"], "a"),
        (["10.2.255.254"], "b"),
        (["10.1.4.0/24"], "a"),
        (["10.3.0.0/25"], "a"),
        (["10.3.0.128/26"], "b"),
        (["10.2.0.5", "10.3.0.200"], "b"),  # a name resolving to several addresses, all in b's networks
    ],
)
def test_a_call_goes_to_the_one_pool_holding_every_resolved_target(resolved, pool):
    chosen = route(resolved, pools(POOL_A, POOL_B))
    assert chosen is not None and chosen.name == pool


@pytest.mark.parametrize(
    "resolved", [["10.3.0.0/24"], ["10.0.0.0/14"], ["10.1.0.5", "10.2.0.5"], ["10.1.0.5", "10.3.0.129"]]
)
def test_a_call_spanning_pools_is_refused_naming_them(resolved):
    with pytest.raises(InvalidCall) as refused:
        route(resolved, pools(POOL_A, POOL_B))
    message = str(refused.value)
    assert "spans the pools a and b" in message
    assert "a (10.1.0.0/16, 10.3.0.0/25), b (10.2.0.0/16, 10.3.0.128/25)" in message
    assert refused.value.field == "target"


@pytest.mark.parametrize(
    ("resolved", "homeless"),
    [(["10.9.0.5"], "10.9.0.5/32"), (["10.1.0.5", "10.9.0.0/24"], "10.9.0.0/24"), (["10.0.0.0/15"], "10.0.0.0/15")],
)
def test_a_call_with_a_target_in_no_pool_is_refused_naming_the_pools(resolved, homeless):
    with pytest.raises(InvalidCall) as refused:
        route(resolved, pools(POOL_A, POOL_B))
    assert "is in no scanner pool; pools: a (10.1.0.0/16, 10.3.0.0/25), b (" in str(refused.value)
    assert str(refused.value).startswith(homeless)


def test_a_network_reaching_past_its_pool_is_in_no_pool():
    with pytest.raises(InvalidCall, match=r"10\.3\.0\.0/24 is in no scanner pool"):
        route(["10.3.0.0/24"], pools(POOL_A))


def test_slot_names_say_the_tool_and_its_pool():
    assert slot_name("nmap", "dmz") == "nmap@dmz" and slot_name("nmap", None) == "nmap"
    assert split_slot_name("nmap@dmz") == ("nmap", "dmz") and split_slot_name("nmap") == ("nmap", None)
    assert pool_label("nmap@dmz") == "dmz" and pool_label("nmap") == "local"


def test_a_pools_concurrency_for_a_tool_replaces_the_tools_own(tmp_path):
    settings = pools_settings(tmp_path, POOL_A, {**POOL_B, "concurrency": {"nmap": 5}})
    a, b = settings.cluster.pools
    nmap = settings.tools.nmap
    assert pool_settings("nmap", nmap, b).concurrency == 5
    assert pool_settings("nmap", nmap, b).model_copy(update={"concurrency": nmap.concurrency}) == nmap
    assert pool_settings("nmap", nmap, a) is nmap and pool_settings("nmap", nmap, None) is nmap
    assert pool_settings("masscan", settings.tools.masscan, b) is settings.tools.masscan


# --- the scanner node's check -------------------------------------------------------------------


def prepared_for(settings: Settings, arguments: dict[str, Any], pool: str = "b", tool: str = "nmap") -> PreparedCall:
    """The call as an honest front prepares it, routed to `pool`."""
    policy = TargetPolicy(settings.policy)
    tool_settings = getattr(settings.tools, tool)
    prepared = prepare_call(TOOL_SPECS[tool], arguments, settings=tool_settings, policy=policy)
    return on_pool(prepared, pool, tool_settings, settings.policy)


def node_check(settings: Settings, prepared: PreparedCall, networks=B_NETWORKS) -> PreparedCall:
    return recheck(prepared, settings=settings.tools.nmap, policy=settings.policy, networks=networks)


def test_the_node_accepts_the_call_the_front_prepared(tmp_path):
    settings = pools_settings(tmp_path)
    sent = prepared_for(settings, {"target": "10.2.0.5", "ports": "22,80", "timeout_sec": 30})
    again = node_check(settings, sent)
    assert (again.argv, again.resolved_targets, again.timeout_sec) == (sent.argv, sent.resolved_targets, 30.0)


def test_the_node_pins_names_to_the_addresses_sent_and_asks_no_dns(tmp_path):
    asked: list[str] = []

    def resolver(name: str) -> list[Any]:
        asked.append(name)
        return [ipaddress.ip_address("10.2.0.9")]

    settings = pools_settings(tmp_path, policy={"dns": True})
    front = TargetPolicy(settings.policy, resolver=resolver)
    sent = replace(prepare_call(TOOL_SPECS["nmap"], {"target": "db.lab.internal"}, settings=settings.tools.nmap,
                                policy=front), pool="b")
    assert asked == ["db.lab.internal"]
    assert node_check(settings, sent).resolved_targets == ("10.2.0.9",)
    assert asked == ["db.lab.internal"]  # the node asked nobody
    # A name pinned to addresses outside the node's pool is refused all the same.
    with pytest.raises(InvalidCall, match=r"10\.1\.0\.9/32 is not in this node's pool"):
        node_check(settings, replace(sent, resolved_targets=("10.1.0.9",), argv=(*sent.argv[:-1], "10.1.0.9")))


@pytest.mark.parametrize(
    ("tamper", "refusal"),
    [
        # A target the policy refuses, with the argv built for it.
        (lambda s: retarget(s, "8.8.8.8"), "8.8.8.8 is not inside an allowed network"),
        # A target in the policy but in the other pool.
        (lambda s: retarget(s, "10.1.0.5"), "10.1.0.5/32 is not in this node's pool"),
        # An option the grammar forbids, slipped into the argv.
        (lambda s: replace(s, argv=(*s.argv[:-1], "-iL", "/etc/passwd", s.argv[-1])), "not the one the tool's grammar"),
        # The forbidden option in the arguments themselves, with the argv to match.
        (lambda s: replace(s, arguments={**s.arguments, "extra_args": "-iL /etc/passwd"}), "-iL"),
        # Another binary than the configured one.
        (lambda s: replace(s, argv=("/bin/sh", *s.argv[1:])), "not the one the tool's grammar"),
        # An argv that differs from what the arguments build (other ports).
        (lambda s: replace(s, arguments={**s.arguments, "ports": "1-65535"}), "not the one the tool's grammar"),
        # Addresses that are not what the target resolves to.
        (lambda s: replace(s, resolved_targets=("10.2.0.6",)), "the addresses sent are not"),
        # A longer time limit than the call's.
        (lambda s: replace(s, timeout_sec=3000.0), "the time limit sent is not the call's"),
        # A time limit above the configured maximum, asked for in the arguments.
        (lambda s: replace(s, arguments={**s.arguments, "timeout_sec": 99999}, timeout_sec=99999.0), "above the max"),
        # A tool the node does not know.
        (lambda s: replace(s, tool="nc"), "no tool named 'nc'"),
    ],
)
def test_the_node_refuses_a_call_that_is_not_the_one_its_arguments_make(tmp_path, tamper, refusal):
    settings = pools_settings(tmp_path)
    sent = prepared_for(settings, {"target": "10.2.0.5", "ports": "22"})
    with pytest.raises(InvalidCall) as refused:
        node_check(settings, tamper(sent))
    assert refusal in str(refused.value)


# --- a ScannerNode in-process -------------------------------------------------------------------


@pytest.fixture
def node_and_settings(tmp_path) -> Iterator[tuple[ScannerNode, Settings]]:
    settings = pools_settings(tmp_path)
    yield ScannerNode("b", B_NETWORKS, "nmap", settings.tools.nmap, settings.policy), settings
    # Outside a Ray worker a node names itself by its host, and never starts or joins a cluster to ask Ray.
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def run_job(node: ScannerNode, prepared: PreparedCall, key: str = "nmap-1") -> list[Spawned | Lines | Ended]:
    return list(node.run(RemoteJob(key, prepared)))


def end_of(events: list[Spawned | Lines | Ended]) -> RunResult:
    """The result a run's stream ended with."""
    assert isinstance(events[-1], Ended), events
    return events[-1].result


def lines_of(events: list[Any]) -> list[str]:
    return [line for event in events if isinstance(event, Lines) for line in event.lines]


def test_a_node_runs_a_checked_call_and_streams_its_spawn_lines_and_end(node_and_settings):
    node, settings = node_and_settings
    events = run_job(node, prepared_for(settings, {"target": "10.2.0.5", "ports": "22"}))
    assert isinstance(events[0], Spawned) and events[0].node == node.node
    assert isinstance(events[-1], Ended) and all(isinstance(e, Lines) for e in events[1:-1])
    result = events[-1].result
    assert result.returncode == 0 and not result.cancelled and result.refused is None
    assert (result.pool, result.node, result.pid) == ("b", node.node, None)  # a pid means nothing to the front
    assert b"10.2.0.5" in result.stdout
    # Only the lines that report progress come back as they are printed; the end carries the whole output.
    progress = [line for line in result.stdout.decode().splitlines() if nmap_progress(line) is not None]
    assert lines_of(events) == progress
    (call,) = scan_calls(settings.tools.nmap.binary)
    assert call["argv"][-1] == "10.2.0.5" and call["exit_code"] == 0
    assert node.describe().running == 0


def test_a_node_that_refuses_spawns_nothing_and_says_why(node_and_settings):
    node, settings = node_and_settings
    sent = prepared_for(settings, {"target": "10.2.0.5"})
    events = run_job(node, retarget(sent, "10.1.0.5"))
    assert len(events) == 1 and isinstance(events[0], Ended)
    result = events[0].result
    assert result.refused is not None and "is not in this node's pool" in result.refused
    assert (result.returncode, result.pool, result.node) == (None, "b", node.node)
    assert read_calls(settings.tools.nmap.binary) == []


def test_a_node_takes_a_reloads_settings_for_later_calls(node_and_settings):
    node, settings = node_and_settings
    raised = settings.tools.nmap.model_copy(update={"max_timeout_sec": 7200.0})
    after_reload = settings.model_copy(update={"tools": settings.tools.model_copy(update={"nmap": raised})})
    longer = prepared_for(after_reload, {"target": "10.2.0.5", "timeout_sec": 5000})  # as the front admits it now
    (refused,) = run_job(node, longer)  # before the node has that config, its own refuses the call
    assert isinstance(refused, Ended) and "above the maximum of 3600" in (refused.result.refused or "")
    node.configure(raised, settings.policy, 1)
    assert end_of(run_job(node, longer, key="nmap-2")).returncode == 0
    assert len(scan_calls(settings.tools.nmap.binary)) == 1


def test_a_call_admitted_before_reloads_is_checked_by_the_config_it_was_prepared_under(node_and_settings):
    """The front sends on calls it admitted before a reload; the node checks each by the config it names."""
    node, settings = node_and_settings
    admitted = prepared_for(settings, {"target": "10.2.0.5"})  # its time limit is the default in force: 600 s
    tools = settings.tools.nmap
    node.configure(tools.model_copy(update={"timeout_sec": 900.0}), settings.policy, 1)
    node.configure(tools.model_copy(update={"timeout_sec": 1200.0}), settings.policy, 2)
    assert end_of(run_job(node, admitted)).returncode == 0
    tampered = replace(admitted, argv=(*admitted.argv[:-1], "-sS", admitted.argv[-1]))
    assert "command line" in (end_of(run_job(node, tampered, key="nmap-2")).refused or "")
    (call,) = scan_calls(settings.tools.nmap.binary)
    assert call["argv"] == list(admitted.argv[1:])


def test_a_call_naming_a_config_the_runner_never_had_runs_as_its_own_config_builds_it(node_and_settings):
    """A runner started after a reload never had the config a handed-over call was admitted under: its own
    config decides, and what that builds runs, never the command line sent."""
    node, settings = node_and_settings
    sent = replace(prepared_for(settings, {"target": "10.2.0.5", "ports": "22"}), config="an-older-config")
    tampered = replace(sent, argv=(*sent.argv[:-1], "--script", "broadcast-dhcp-discover", sent.argv[-1]))
    result = end_of(run_job(node, tampered))
    assert result.returncode == 0 and result.argv == sent.argv
    (call,) = scan_calls(settings.tools.nmap.binary)
    assert call["argv"] == list(sent.argv[1:]) and "--script" not in call["argv"]
    # The answer (and with it the scan store and the audit line) says what ran, not what was sent.
    assert outcome_from_run(TOOL_SPECS["nmap"], "call-1", tampered, result)[0].argv == list(sent.argv)
    outside = replace(retarget(sent, "10.1.0.5"), config="an-older-config")
    assert "is not in this node's pool" in (end_of(run_job(node, outside, key="nmap-2")).refused or "")


def test_a_job_sent_after_a_reload_waits_for_that_reloads_config_however_ray_orders_them(node_and_settings):
    node, settings = node_and_settings
    raised = settings.tools.nmap.model_copy(update={"max_timeout_sec": 7200.0})
    after_reload = settings.model_copy(update={"tools": settings.tools.model_copy(update={"nmap": raised})})
    longer = prepared_for(after_reload, {"target": "10.2.0.5", "timeout_sec": 5000})
    events: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
    job = threading.Thread(target=lambda: events.put(list(node.run(RemoteJob("nmap-1", longer, generation=1)))))
    job.start()  # it arrives first, and waits for the config sent ahead of it
    node.configure(raised, settings.policy, 1)
    assert end_of(events.get(timeout=HANG_GUARD_SEC)).returncode == 0
    node.configure(settings.tools.nmap, settings.policy, 1)  # a config overtaken on its way is ignored
    assert end_of(run_job(node, replace(longer), key="nmap-2")).returncode == 0


def test_a_config_overtaken_on_its_way_is_still_known_to_the_calls_that_name_it(node_and_settings):
    node, settings = node_and_settings
    first = settings.tools.nmap.model_copy(update={"timeout_sec": 900.0})
    second = settings.tools.nmap.model_copy(update={"timeout_sec": 1200.0})
    node.configure(second, settings.policy, 2)
    node.configure(first, settings.policy, 1)  # Ray delivered the two out of order
    under_first = settings.model_copy(update={"tools": settings.tools.model_copy(update={"nmap": first})})
    sent = prepared_for(under_first, {"target": "10.2.0.5"})
    tampered = replace(sent, argv=(*sent.argv[:-1], "-sS", sent.argv[-1]))
    assert "command line" in (end_of(run_job(node, tampered)).refused or "")  # checked as sent, under `first`
    assert end_of(run_job(node, sent, key="nmap-2")).returncode == 0
    (call,) = scan_calls(settings.tools.nmap.binary)
    assert call["argv"] == list(sent.argv[1:])


def test_a_job_whose_config_never_comes_is_lost_not_refused(node_and_settings, monkeypatch):
    node, settings = node_and_settings
    monkeypatch.setattr("actors.scanner_node.CONFIG_WAIT_SEC", 0.05)
    job = RemoteJob("nmap-1", prepared_for(settings, {"target": "10.2.0.5"}), generation=3)
    result = end_of(list(node.run(job)))
    assert result.lost is not None and "has not reached the node" in result.lost and result.refused is None
    assert read_calls(settings.tools.nmap.binary) == []


def test_a_node_reads_nmaps_data_where_it_runs_not_where_the_front_found_it(node_and_settings, tmp_path):
    node, settings = node_and_settings
    front = settings.tools.nmap.model_copy()
    object.__setattr__(front, "_data", replace(front.data, directory=str(tmp_path / "only-on-the-front")))
    node.configure(front, settings.policy, 1)
    assert end_of(run_job(node, prepared_for(settings, {"target": "10.2.0.5"}))).returncode == 0
    (call,) = scan_calls(settings.tools.nmap.binary)
    assert call["env"]["NMAPDIR"] == settings.tools.nmap.data.directory != front.data.directory


@pytest.mark.parametrize(
    ("tamper", "refusal"),
    [
        (lambda p: replace(p, tool="gobuster"), "this runner runs nmap, not gobuster"),
        (lambda p: replace(p, argv=None), ""),  # a call the check cannot digest is refused, not a lost runner
        (lambda p: replace(p, arguments=None), ""),
    ],
)
def test_a_call_the_node_cannot_check_is_refused_and_spawns_nothing(node_and_settings, tamper, refusal):
    node, settings = node_and_settings
    result = end_of(run_job(node, tamper(prepared_for(settings, {"target": "10.2.0.5"}))))
    assert result.refused is not None and refusal in result.refused and not result.runner_died
    assert read_calls(settings.tools.nmap.binary) == []


def test_cancels_for_runs_that_never_come_are_not_kept_forever(node_and_settings):
    node, settings = node_and_settings
    for number in range(MAX_EARLY_CANCELS + 1):
        node.cancel(f"nmap-never-{number}")
    assert end_of(run_job(node, prepared_for(settings, {"target": "10.2.0.5"}), key="nmap-never-0")).returncode == 0
    assert end_of(run_job(node, prepared_for(settings, {"target": "10.2.0.5"}), key="nmap-never-1")).cancelled


def test_cancel_ends_a_running_process_and_its_run(node_and_settings):
    node, settings = node_and_settings
    nmap = install_fake(Path(settings.tools.nmap.binary).parent, "nmap", mode="hang")
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stream = node.run(RemoteJob("nmap-7", prepared_for(settings, {"target": "10.2.0.5"})))

    def read() -> None:
        for event in stream:
            events.put(event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert isinstance(events.get(timeout=HANG_GUARD_SEC), Spawned)
    (call,) = wait_until(lambda: scan_calls(nmap), timeout=HANG_GUARD_SEC, what="the fake to start")
    assert node.describe().running == 1
    node.cancel("nmap-7")
    reader.join(HANG_GUARD_SEC)
    assert not reader.is_alive()
    *_, ended = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(ended, Ended) and ended.result.cancelled
    wait_until(lambda: not process_alive(call["pid"]), timeout=HANG_GUARD_SEC, what="the fake to be gone")
    assert node.describe().running == 0


def test_a_call_cancelled_before_it_reached_the_node_never_spawns(node_and_settings):
    node, settings = node_and_settings
    node.cancel("nmap-3")
    events = run_job(node, prepared_for(settings, {"target": "10.2.0.5"}), key="nmap-3")
    assert not any(isinstance(event, Spawned) for event in events)
    assert isinstance(events[-1], Ended) and events[-1].result.cancelled
    assert read_calls(settings.tools.nmap.binary) == []
    # The cancel was for that run only: the next run of the node goes ahead.
    assert end_of(run_job(node, prepared_for(settings, {"target": "10.2.0.5"}), key="nmap-4")).returncode == 0


def test_a_front_that_stops_listening_ends_the_process(node_and_settings):
    node, settings = node_and_settings
    install_fake(Path(settings.tools.nmap.binary).parent, "nmap", mode="hang")
    stream = node.run(RemoteJob("nmap-5", prepared_for(settings, {"target": "10.2.0.5"})))
    assert isinstance(next(stream), Spawned)
    (call,) = wait_until(lambda: scan_calls(settings.tools.nmap.binary), timeout=HANG_GUARD_SEC)
    stream.close()  # as Ray does when the caller's stream is dropped
    wait_until(lambda: not process_alive(call["pid"]), timeout=HANG_GUARD_SEC, what="the fake to be gone")
    assert node.describe().running == 0


def test_progress_printed_while_the_front_is_busy_comes_back_together_in_bounded_batches(node_and_settings):
    node, settings = node_and_settings
    steps = 2 * MAX_LINES_PER_BATCH + 40
    install_fake(Path(settings.tools.nmap.binary).parent, "nmap", mode="slow", steps=steps, delay_sec=0.0)
    stream = node.run(RemoteJob("nmap-9", prepared_for(settings, {"target": "10.2.0.5"})))
    assert isinstance(next(stream), Spawned)  # and the front is busy elsewhere until the run is over
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "run-nmap-9"], timeout=HANG_GUARD_SEC)
    rest = list(stream)
    assert isinstance(rest[-1], Ended) and rest[-1].result.returncode == 0
    batches = [event.lines for event in rest[:-1]]
    printed = [line for line in rest[-1].result.stdout.decode().splitlines() if nmap_progress(line) is not None]
    assert [line for batch in batches for line in batch] == printed and len(printed) >= steps
    assert [len(batch) for batch in batches] == [MAX_LINES_PER_BATCH] * (len(printed) // MAX_LINES_PER_BATCH) + (
        [len(printed) % MAX_LINES_PER_BATCH] if len(printed) % MAX_LINES_PER_BATCH else []
    )
