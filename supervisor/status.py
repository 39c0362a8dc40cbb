"""The status snapshot: what an operator sees at a glance, as one validated model.

Served as JSON by `/status`, rendered as a table by `labrecon status`, and
returned by `Runtime.status()`; all three are this model, so a field added
here shows up everywhere and a client can validate what it reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from actors.prepare import split_slot_name

ToolState = Literal["running", "restarting", "failed", "disabled", "stopped"]


class BreakerStatus(BaseModel):
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int = 0
    retry_after_sec: float | None = None


class ToolStatus(BaseModel):
    name: str  # the slot: the tool ("nmap"), or the tool on a scanner pool ("nmap@dmz")
    state: ToolState
    incarnation: int
    restarts: int
    retries: dict[str, int] = Field(default_factory=dict)  # calls tried again inside the call, by reason
    last_restart_reason: str | None = None
    failed_reason: str | None = None
    # Out of service by an operator or the config: why, and since when (Unix time).
    disabled_reason: str | None = None
    disabled_since: float | None = None
    retiring: int = 0  # earlier incarnations still finishing their calls after a reload or a disable
    breaker: BreakerStatus
    in_flight: int
    queued: int
    stashed: int = 0
    calls: dict[str, int] = Field(default_factory=dict)
    p50_sec: float | None = None
    p95_sec: float | None = None
    # Death seen -> the next incarnation reading its mailbox, over recent restarts.
    restart_p50_sec: float | None = None
    restart_p99_sec: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tool(self) -> str:
        """The tool itself: "nmap" for the slot "nmap@dmz"."""
        return split_slot_name(self.name)[0]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pool(self) -> str | None:
        """The scanner pool the slot runs on; None for a tool that runs here."""
        return split_slot_name(self.name)[1]


class RuntimeInfo(BaseModel):
    version: str
    pid: int
    uptime_sec: float
    config_digest: str


class CheckResult(BaseModel):
    name: str
    ok: bool
    critical: bool = True  # a failed critical check makes the runtime not ready
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class HealthStatus(BaseModel):
    live: bool
    ready: bool
    status: Literal["healthy", "degraded", "unhealthy"]
    checks: list[CheckResult] = Field(default_factory=list)


class ScanStoreStatus(BaseModel):
    path: str
    size_bytes: int
    counts: dict[str, int]  # scans in the store per status
    expired_total: int  # removed by age or count since the runtime started


class ReloadAttempt(BaseModel):
    """One reload, applied or refused; a refused one changed nothing."""

    at: float  # Unix time
    by: str  # who asked: an owner, "SIGHUP", "file watcher", ...
    ok: bool
    old_digest: str
    new_digest: str | None = None  # the config it put in force (None when refused)
    changed: list[str] = Field(default_factory=list)  # keys applied now
    needs_restart: list[str] = Field(default_factory=list)  # keys changed in the file, kept until a restart
    tools: dict[str, str] = Field(default_factory=dict)  # tool -> limits | replace | disable | enable
    error: str | None = None  # why it was refused, naming the key
    took_sec: float = 0.0


class ConfigStatus(BaseModel):
    digest: str  # of the config in force
    source: str | None = None  # the file it is read from, when there is one
    loaded_at: float  # Unix time it came into force
    reloads: int = 0  # applied since start
    refused: int = 0  # refused since start: the config did not validate
    last_reload: ReloadAttempt | None = None
    last_failure: ReloadAttempt | None = None
    needs_restart: list[str] = Field(default_factory=list)  # keys the file changed that wait for a restart


class NodeStatus(BaseModel):
    """A Ray node that advertises a pool's resource, as the cluster's watcher last saw it."""

    node_id: str
    address: str
    alive: bool
    tools: dict[str, str | None] = Field(default_factory=dict)  # tool -> the version its runner there found
    running: int = 0  # processes the runners there run now
    load: list[float] | None = None  # the node's load average over 1, 5 and 15 minutes


class PoolStatus(BaseModel):
    name: str
    resource: str  # the Ray custom resource its nodes advertise
    networks: list[str]
    live: bool  # at least one node is alive; a pool that is not refuses its calls (node_lost)
    nodes: list[NodeStatus] = Field(default_factory=list)


class ClusterStatus(BaseModel):
    """The scanner pools of a daemon with `[cluster] engine = "ray"`, as the cluster's watcher last saw them."""

    engine: Literal["ray"] = "ray"
    address: str
    checked_at: float  # Unix time of the watcher's last look
    pools: list[PoolStatus] = Field(default_factory=list)


class Status(BaseModel):
    runtime: RuntimeInfo
    tools: dict[str, ToolStatus]
    faults: list[dict[str, Any]] = Field(default_factory=list)
    health: HealthStatus
    sessions: dict[str, int] = Field(default_factory=dict)
    scans: ScanStoreStatus | None = None  # filled by the runtime, which owns the store
    config: ConfigStatus | None = None  # filled by the runtime, which owns the config in force
    cluster: ClusterStatus | None = None  # the scanner pools; None when every tool runs here
