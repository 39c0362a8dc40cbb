"""What a tool call needs to know from configuration, as validated models.

These are the leaves of labrecon's configuration; `supervisor.config`
assembles them with the file and environment sources. `ToolSettings` holds
the limits every tool has; each tool's spec subclasses it with its own keys
and defaults, so a partial `[tools.masscan]` table keeps masscan's defaults.
Unknown keys are refused: a typo is an error that names the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _strict_networks(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(ipaddress.ip_network(v, strict=True) if isinstance(v, str) else v for v in value)
    return value


def within(network: IPNetwork, networks: Iterable[IPNetwork]) -> bool:
    """Whether `network` (an address is its /32 or /128) lies wholly inside one of `networks`."""
    return any(network.version == n.version and network.subnet_of(n) for n in networks)  # type: ignore[arg-type]


Networks = Annotated[tuple[IPNetwork, ...], BeforeValidator(_strict_networks)]
"""Networks written as text: "10.0.0.0/8" is one, "10.0.0.1/8" (host bits set) is refused."""


MAX_CONCURRENCY = 64
"""The most runs one tool may have at once."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySettings(Strict):
    """Which targets exist at all, as far as labrecon is concerned."""

    allowed_networks: Networks = (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("172.16.0.0/12"),
        ipaddress.IPv4Network("192.168.0.0/16"),
    )
    allowed_domains: tuple[str, ...] = ("lab.internal",)
    max_hosts: int = Field(default=256, ge=1, le=65536)
    # Static name → address map, consulted before DNS (and instead of it in tests).
    hosts: dict[str, IPAddress] = Field(default_factory=dict)
    # Whether names missing from `hosts` may be looked up in DNS at all.
    dns: bool = True
    # A call whose look-up has not answered within this is refused; the look-up is left to finish alone.
    dns_timeout_sec: float = Field(default=2.0, gt=0, le=60)
    # Look-ups running at once; more wait in line within their own deadline.
    dns_concurrency: int = Field(default=8, ge=1, le=256)

    @field_validator("allowed_domains")
    @classmethod
    def _normalise_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for domain in value:
            d = domain.strip().strip(".").lower()
            if not d or " " in d:
                raise ValueError(f"invalid domain suffix {domain!r}")
            out.append(d)
        return tuple(out)

    @field_validator("hosts")
    @classmethod
    def _normalise_hosts(cls, value: dict[str, IPAddress]) -> dict[str, IPAddress]:
        return {name.strip().rstrip(".").lower(): addr for name, addr in value.items()}


class BreakerSettings(Strict):
    failure_threshold: int = Field(default=5, ge=1)
    open_sec: float = Field(default=30.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    max_open_sec: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)


class RetrySettings(Strict):
    """Calls that failed for a transient reason (see `supervisor.retries`) are tried again inside the call."""

    attempts: int = Field(default=1, ge=0, le=3)  # further attempts at most; 0 answers the first failure
    backoff_sec: float = Field(default=0.5, ge=0, le=30)  # the wait before the first retry, doubled for each next


class ToolSettings(Strict):
    """Limits shared by every tool; a tool's own settings class adds its keys and sets `binary`'s default."""

    binary: str
    enabled: bool = True
    concurrency: int = Field(default=2, ge=1, le=MAX_CONCURRENCY)
    max_queue: int = Field(default=16, ge=0, le=10_000)
    timeout_sec: float = Field(default=300.0, gt=0)
    max_timeout_sec: float = Field(default=3600.0, gt=0)
    stdout_cap_bytes: int = Field(default=1 << 20, ge=1024)
    stderr_cap_bytes: int = Field(default=256 << 10, ge=1024)
    kill_grace_sec: float = Field(default=2.0, ge=0)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    # How the supervisor treats this tool's actor when it dies (OTP restart types).
    restart: Literal["permanent", "transient", "temporary"] = "permanent"

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> ToolSettings:
        if self.timeout_sec > self.max_timeout_sec:
            raise ValueError("timeout_sec must not exceed max_timeout_sec")
        return self
