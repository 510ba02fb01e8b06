"""The config file (DESIGN.md §10): parse TOML, validate, and say exactly where it is wrong.

Pure: no reactor, no sockets.  ``load(path)`` returns a frozen ``Config`` or raises
``dlba.errors.ConfigError`` naming the file, the line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSection:
    number: int = 1
    state_dir: str = "/var/lib/dlba"


@dataclass(frozen=True)
class ListenSection:
    """Twisted endpoint strings; None disables a listener."""

    http: str | None = None
    https: str | None = None
    status: str | None = None
    sync: str | None = None
    admin: str | None = None


@dataclass(frozen=True)
class TLSSection:
    certificates: tuple[str, ...] = ()
    ca: str | None = None
    node_certificate: str | None = None
    admin_certificate: str | None = None


@dataclass(frozen=True)
class LimitsSection:
    max_header_bytes: int = 8192
    max_body_bytes: int = 10485760
    header_timeout: float = 10.0
    body_timeout: float = 30.0  # longest silence while a request body is arriving
    idle_timeout: float = 60.0
    backend_connect_timeout: float = 3.0
    backend_response_timeout: float = 30.0
    backend_idle_timeout: float = 4.0  # pooled connection unused this long is closed
    backend_failure_backoff: float = 5.0  # a failed back end is skipped this long
    max_client_connections: int = 10000
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class LogSection:
    access_log: str | None = None  # path of the combined-format access log; None = off
    json: bool = False  # twisted.logger events as JSON lines instead of text


@dataclass(frozen=True)
class ArrayNode:
    number: int
    mac: str
    ip: str
    weight: int = 1
    enabled: bool = True


@dataclass(frozen=True)
class ArraySection:
    vip: str | None = None
    interface: str = "eth0"
    table_size: int = 4093
    bucket_idle_timeout: float = 300.0
    sweep_delay: float = 2.0
    sweep_timeout: float = 1.0
    sweep_retries: int = 3
    ping_interval: float = 0.5
    ping_misses: int = 3
    nodes: tuple[ArrayNode, ...] = ()


@dataclass(frozen=True)
class PersistenceSection:
    cookie: str = "SpServer"
    session_cookies: tuple[str, ...] = ("JSESSIONID", "PHPSESSID", "sessionid")
    session_params: tuple[str, ...] = ("jsessionid", "sid")
    session_table_size: int = 100000
    session_ttl: float = 1800.0


@dataclass(frozen=True)
class BackendConfig:
    number: int
    host: str
    port: int
    weight: int = 1
    enabled: bool = True

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PoolConfig:
    name: str
    backends: tuple[BackendConfig, ...]
    policy: str = "round-robin"
    max_concurrent: int = 64
    adaptive: bool = False
    target: str = "latency"
    queue_limit: int = 1024
    queue_timeout: float = 5.0
    backend_keepalive: bool = True


@dataclass(frozen=True)
class RuleConfig:
    pool: str
    host: str | None = None
    path_prefix: str | None = None
    header: str | None = None  # "Name=value" or "Name" (present)
    cookie: str | None = None  # "name=value" or "name" (present)


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeSection = field(default_factory=NodeSection)
    listen: ListenSection = field(default_factory=ListenSection)
    tls: TLSSection = field(default_factory=TLSSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    array: ArraySection = field(default_factory=ArraySection)
    persistence: PersistenceSection = field(default_factory=PersistenceSection)
    pools: tuple[PoolConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()

    def node_ip(self) -> str | None:
        """This node's own ip from [[array.node]], where listeners bind by default."""
        for n in self.array.nodes:
            if n.number == self.node.number:
                return n.ip
        return None
