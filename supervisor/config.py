"""labrecon's configuration: defaults < TOML file < LABRECON_* environment.

The file is named by `--config FILE` or `LABRECON_CONFIG`; environment
variables override single keys with `__` between levels
(`LABRECON_TOOLS__NMAP__BINARY=/opt/nmap/bin/nmap`). A config that does not
validate is refused as a whole with one line per problem, each naming the
key, because a daemon that starts with half its settings ignored is worse
than one that does not start. The `[tools]` table has one entry per
registered tool spec (`actors.tools`), validated by that spec's settings model.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from actors.api import local_user
from actors.settings import MAX_CONCURRENCY, IPNetwork, Networks, PolicySettings, Strict, ToolSettings, within
from actors.tools import TOOL_SPECS

CONFIG_ENV = "LABRECON_CONFIG"

_FILE_DATA: ContextVar[Mapping[str, Any]] = ContextVar("labrecon_config_file", default=MappingProxyType({}))


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every bad key."""


class ToolsSettings(Strict):
    """The `[tools]` table: `tools_settings_model` gives it one field per tool, typed by the tool's spec."""

    if TYPE_CHECKING:  # the fields are made at run time; each is a tool's own ToolSettings subclass

        def __getattr__(self, name: str) -> ToolSettings: ...

    def items(self) -> list[tuple[str, ToolSettings]]:
        return [(name, getattr(self, name)) for name in type(self).model_fields]


ToolsKey = tuple[tuple[str, type[ToolSettings]], ...]


def _registered_tools() -> ToolsKey:
    return tuple((name, spec.settings) for name, spec in TOOL_SPECS.items())


@functools.lru_cache(maxsize=16)  # one model per set of tools: pydantic models are costly to build
def tools_settings_model(tools: ToolsKey) -> type[ToolsSettings]:
    """A `[tools]` model with a table per `(name, settings model)`; each table defaults to its model's defaults."""
    for name, _ in tools:
        if hasattr(ToolsSettings, name):
            raise ConfigError(f"a tool cannot be named {name!r}: the [tools] table uses that name itself")
    fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in tools}
    return create_model("ToolsSettings", __base__=ToolsSettings, **fields)


def _registered_tools_defaults() -> ToolsSettings:
    return tools_settings_model(_registered_tools())()


class SupervisionSettings(Strict):
    """OTP-style supervision of the tool actors (see supervisor.restarts)."""

    max_restarts: int = Field(default=5, ge=0)
    restart_window_sec: float = Field(default=60.0, gt=0)
    backoff_initial_sec: float = Field(default=0.1, ge=0)
    backoff_max_sec: float = Field(default=10.0, ge=0)
    backoff_reset_sec: float = Field(default=60.0, gt=0)
    on_intensity_exceeded: Literal["fail", "escalate"] = "fail"
    ping_interval_sec: float = Field(default=1.0, gt=0)
    ping_deadline_sec: float = Field(default=5.0, gt=0)
    stash_limit: int = Field(default=64, ge=0)


class FaultSettings(Strict):
    """One injected fault, as written in `[[faults]]` or sent to the API."""

    tool: str
    kind: Literal["crash", "hang", "fail", "delay", "timeout", "flood", "runner_lost"]
    # Only this pool's calls (a `[[cluster.pools]]` name); none: every call of the tool.
    pool: str | None = None
    count: int | None = Field(default=None, ge=1)
    every: int | None = Field(default=None, ge=1)
    probability: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    delay_sec: float = Field(default=1.0, ge=0)
    flood_bytes: int = Field(default=200 << 20, ge=1)

    @model_validator(mode="after")
    def _one_trigger(self) -> FaultSettings:
        given = [k for k in ("count", "every", "probability") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of count, every, probability (got {', '.join(given)})")
        if self.seed is not None and self.probability is None:
            raise ValueError("seed goes with probability")
        return self


class PoolSettings(Strict):
    """One `[[cluster.pools]]` entry: the lab networks a group of Ray nodes scans, and how many runs at once."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    networks: Networks = Field(min_length=1)
    resource: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    # Runs at once per tool on this pool; a tool not named keeps its own `concurrency`.
    concurrency: dict[str, Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]] = Field(default_factory=dict)


class ClusterSettings(Strict):
    """`[cluster]`: where processes run. "local" (the default) runs them here; "ray" runs them on pools."""

    engine: Literal["local", "ray"] = "local"
    # What ray.init() is given: "auto", the head's "HOST:PORT", or "local" for an in-process cluster.
    address: str = "auto"
    namespace: str = Field(default="labrecon", min_length=1)
    # How long a call waits for a node of its pool to take it (a runner being placed after a restart).
    placement_timeout_sec: float = Field(default=10.0, gt=0)
    # How often the nodes of each pool are looked at; a pool without a live node refuses calls.
    watch_interval_sec: float = Field(default=1.0, gt=0, le=60)
    pools: tuple[PoolSettings, ...] = ()

    @field_validator("address")
    @classmethod
    def _not_ray_client(cls, value: str) -> str:
        if value.startswith("ray://"):
            raise ValueError("Ray Client (ray://) cannot stream a run's progress: give the head's HOST:PORT")
        return value

    @model_validator(mode="after")
    def _pools_apart(self) -> ClusterSettings:
        if self.pools and self.engine != "ray":
            raise ValueError('pools run on a Ray cluster: set engine = "ray"')
        names: set[str] = set()
        taken: list[tuple[IPNetwork, str]] = []  # every network of the pools before, with its pool
        for index, pool in enumerate(self.pools):
            if pool.name in names:
                raise ValueError(f"pools[{index}].name: {pool.name!r} is used twice")
            names.add(pool.name)
            for network in pool.networks:
                for other, owner in taken:
                    if network.version == other.version and network.overlaps(other):
                        raise ValueError(
                            f"pools[{index}].networks: {network} overlaps {other} of pool {owner!r}; "
                            "a target must belong to one pool"
                        )
                taken.append((network, pool.name))
        return self


class HealthSettings(Strict):
    max_cpu_percent: float = Field(default=95.0, gt=0, le=100)
    max_memory_percent: float = Field(default=90.0, gt=0, le=100)
    max_disk_percent: float = Field(default=95.0, gt=0, le=100)
    max_rss_mb: float = Field(default=1024.0, gt=0)
    max_open_fds: int = Field(default=4096, ge=16)


class HttpSettings(Strict):
    """The HTTP daemon: MCP over legacy SSE and Streamable HTTP, plus the ops endpoints."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    # Serve the ops endpoints (alone) on this Unix socket too, e.g. beside a stdio server.
    ops_socket: Path | None = None
    # Origins a browser-borne request may come from; requests without Origin are allowed.
    allowed_origins: tuple[str, ...] = ("http://localhost", "http://127.0.0.1")
    # Host names clients may use besides loopback ones, when no token is set: a browser page whose
    # name was rebound to this machine sends its own name as Host and is refused.
    allowed_hosts: tuple[str, ...] = ()
    max_sessions: int = Field(default=64, ge=1)
    session_idle_sec: float = Field(default=600.0, gt=0)
    # A session that carried nothing but initialize goes this soon, so clients that vanish after it
    # cannot fill the table; one with an open stream or a call in flight stays.
    session_unused_sec: float = Field(default=30.0, gt=0)
    # Sessions one client address may hold (IPv6: one /64). Loopback clients are not capped: every
    # local agent connects from 127.0.0.1.
    max_sessions_per_client: int = Field(default=16, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Streamable HTTP sessions at 2025-11-25 or later: close a request's event stream after this long (0: never);
    # the client resumes it with GET + Last-Event-ID. A stream nobody resumes in resume_window_sec is cancelled.
    stream_close_sec: float = Field(default=0.0, ge=0)
    resume_window_sec: float = Field(default=60.0, gt=0)


OPERATOR = "operator"
"""The owner `[auth] token` authenticates (with admin rights)."""


class NamedToken(Strict):
    """One `[[auth.tokens]]` entry: a bearer token whose holder is known by `name`."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    token: SecretStr = Field(min_length=1)
    # Admin tokens may see every owner's scans and use the ops endpoints.
    admin: bool = False


class AuthSettings(Strict):
    # Required for MCP and control endpoints whenever the bind address is not loopback.
    # `token` authenticates the owner "operator", an admin; `tokens` name their owners.
    token: SecretStr | None = None
    tokens: tuple[NamedToken, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> AuthSettings:
        """Names and tokens are unique; a problem names the keys, never the token."""
        names: dict[str, int] = {}
        secrets: dict[str, str] = {}
        if self.token is not None and self.token.get_secret_value():
            names[OPERATOR] = -1
            secrets[self.token.get_secret_value()] = "auth.token"
        for index, entry in enumerate(self.tokens):
            key = f"auth.tokens.{index}"
            if entry.name == local_user():
                raise ValueError(
                    f"{key}.name: {entry.name!r} is the OS user this daemon runs as, the owner of its stdio and "
                    "token-less calls; a token of that name would share their scans. Choose another name"
                )
            if (other := names.setdefault(entry.name, index)) != index:
                taken = "the owner of auth.token" if other < 0 else f"auth.tokens.{other}.name"
                raise ValueError(f"{key}.name: {entry.name!r} is already {taken}; names must be unique")
            if (first := secrets.setdefault(entry.token.get_secret_value(), f"{key}.token")) != f"{key}.token":
                raise ValueError(f"{key}.token: the same token as {first}; every token must be different")
        return self

    def admin_token(self) -> SecretStr | None:
        """The token an operator's CLI sends: `token`, else the first admin named token."""
        if self.token is not None and self.token.get_secret_value():
            return self.token
        return next((entry.token for entry in self.tokens if entry.admin), None)


def default_store_path() -> str:
    """`$XDG_STATE_HOME/labrecon/scans.sqlite3`, `~/.local/state` when XDG_STATE_HOME is unset."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "labrecon" / "scans.sqlite3")


class ScansSettings(Strict):
    """Scans that outlive their call: where they are kept, how long a call waits, how much a reply holds."""

    # A file path, or ":memory:" for a store that lives and dies with the process.
    path: str = Field(default_factory=default_store_path, min_length=1)
    # How long a scanner call waits for its scan before answering "working" with the scan_id.
    inline_wait_sec: float = Field(default=45.0, ge=0, le=3600)
    # The most a call's own wait_sec, or scan_status's, may ask for.
    max_wait_sec: float = Field(default=300.0, gt=0, le=3600)
    retention_days: float = Field(default=7.0, gt=0)
    max_scans: int = Field(default=10_000, ge=1)
    # The most text one scan_result or summary carries; the rest is paged.
    max_result_chars: int = Field(default=20_000, ge=5_000, le=1_000_000)  # views need 5000 at least

    @model_validator(mode="after")
    def _inline_within_max(self) -> ScansSettings:
        if self.inline_wait_sec > self.max_wait_sec:
            raise ValueError("inline_wait_sec must not exceed max_wait_sec")
        return self


class ConfigSettings(Strict):
    """How the daemon follows its own config file."""

    # Reload when the file changes, as `labrecon reload` and SIGHUP do.
    watch: bool = False


class ReloadSettings(Strict):
    # A tool a reload replaced (a new binary) or an operator disabled finishes its running calls within
    # this; what still runs then is cancelled and answered.
    drain_sec: float = Field(default=300.0, gt=0, le=86_400)


class LoggingSettings(Strict):
    # Any case: operators write both `level = "debug"` and LABRECON_LOGGING__LEVEL=DEBUG.
    level: Annotated[str, BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value)] = Field(
        default="info", pattern="^(debug|info|warning|error)$"
    )
    # Append-only JSONL record of every call: who, what, against which target, how it ended.
    audit_path: Path | None = None


class TelemetrySettings(Strict):
    """Traces of tool calls over OTLP/HTTP (the `otel` extra); with no `otlp_endpoint`, nothing is traced."""

    # The collector's base URL, e.g. "http://127.0.0.1:4318"; spans go to <otlp_endpoint>/v1/traces.
    otlp_endpoint: str | None = None
    service_name: str = Field(default="labrecon", min_length=1)
    # Sent with every export (an Authorization header, say); secrets, never shown.
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:4318")
        return value.rstrip("/")

    @property
    def traces_url(self) -> str | None:
        return None if self.otlp_endpoint is None else self.otlp_endpoint + "/v1/traces"


class _Environment(EnvSettingsSource):
    """LABRECON_* variables; LABRECON_CONFIG names the config file, so it is not read as the [config] table
    (LABRECON_CONFIG__WATCH still is)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        value, key, complex_ = super().get_field_value(field, field_name)
        return (None if field_name == "config" else value), key, complex_


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LABRECON_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    policy: PolicySettings = Field(default_factory=PolicySettings)
    # Settings() alone gives every registered tool its defaults; settings_model() also reads a [tools] table.
    tools: ToolsSettings = Field(default_factory=_registered_tools_defaults)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    supervisor: SupervisionSettings = Field(default_factory=SupervisionSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    faults: tuple[FaultSettings, ...] = ()
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    scans: ScansSettings = Field(default_factory=ScansSettings)
    config: ConfigSettings = Field(default_factory=ConfigSettings)
    reload: ReloadSettings = Field(default_factory=ReloadSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="after")
    def _faults_name_tools(self) -> Settings:
        known = set(type(self.tools).model_fields)
        pools = {pool.name for pool in self.cluster.pools}
        for index, fault in enumerate(self.faults):
            if fault.tool not in known:
                raise ValueError(f"faults[{index}].tool: unknown tool {fault.tool!r}")
            if fault.pool is not None and fault.pool not in pools:
                raise ValueError(f"faults[{index}].pool: no pool is named {fault.pool!r}")
            if fault.kind == "runner_lost" and not pools:
                raise ValueError(f"faults[{index}].kind: runner_lost needs scanner pools ([[cluster.pools]])")
        return self

    @model_validator(mode="after")
    def _pools_inside_policy(self) -> Settings:
        known = set(type(self.tools).model_fields)
        allowed = self.policy.allowed_networks
        for index, pool in enumerate(self.cluster.pools):
            for network in pool.networks:
                if not within(network, allowed):
                    raise ValueError(
                        f"cluster.pools[{index}].networks: {network} is not inside [policy] allowed_networks"
                    )
            for tool in pool.concurrency:
                if tool not in known:
                    raise ValueError(f"cluster.pools[{index}].concurrency: unknown tool {tool!r}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_settings = InitSettingsSource(settings_cls, dict(_FILE_DATA.get()))
        return (init_settings, _Environment(settings_cls), file_settings)

    def digest(self) -> str:
        """A short fingerprint of the effective config, for status pages and audit lines.

        Secrets enter it masked (`model_dump_json` writes every `SecretStr` as stars), so the
        fingerprint is no oracle to test a guessed token against. A change of a secret alone
        therefore leaves the digest as it was: whatever reports a change names its key instead.
        """
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def settings_model() -> type[Settings]:
    """`Settings` whose `[tools]` table holds the tools registered now; what the loaders validate with."""
    return _settings_model(_registered_tools())


@functools.lru_cache(maxsize=16)
def _settings_model(tools: ToolsKey) -> type[Settings]:
    model = tools_settings_model(tools)
    return create_model("Settings", __base__=Settings, tools=(model, Field(default_factory=model)))


def config_path(path: str | Path | None = None) -> str | Path | None:
    """The config file `load_settings` reads: `path`, else $LABRECON_CONFIG, else none."""
    return path if path is not None else os.environ.get(CONFIG_ENV) or None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings; `path` falls back to $LABRECON_CONFIG."""
    path = config_path(path)
    data = read_toml(Path(path)) if path is not None else {}
    token = _FILE_DATA.set(data)
    try:
        return settings_model()(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:
        raise ConfigError(_unparsable_environment(exc, path)) from None
    finally:
        _FILE_DATA.reset(token)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f"config file {path}" if path is not None else "configuration"
    lines = [f"{where} is invalid:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problem = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key}: {problem}")
    return "\n".join(lines)


def _unparsable_environment(exc: SettingsError, path: str | Path | None) -> str:
    """A LABRECON_* variable for a table or a list held no valid JSON; the value is never quoted."""
    where = f"config file {path}" if path is not None else "configuration"
    return f"{where} is invalid:\n  {exc}: a LABRECON_* variable for it is not valid JSON"


def settings_from(config: Settings | Mapping[str, Any] | str | Path | None) -> Settings:
    """Accept what embedders naturally have: a Settings, a dict shaped like the TOML, or a path."""
    if isinstance(config, Settings):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_settings(config)
    if isinstance(config, BaseModel):
        raise ConfigError(f"expected Settings, got {type(config).__name__}")
    token = _FILE_DATA.set(dict(config))
    try:
        return settings_model()()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, None)) from None
    except SettingsError as exc:
        raise ConfigError(_unparsable_environment(exc, None)) from None
    finally:
        _FILE_DATA.reset(token)
