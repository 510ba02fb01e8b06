"""What ``dlba-lab`` builds, as data: the addressing plan, the array's config text, the state
file and the status table.  Pure: no processes, no ``ip``, no sockets (``dlba/lab/`` does
those and asks this module what to do).

The lab is one /24 on one Linux bridge, every host a network namespace of its own::

    client  10.77.0.2          the curl side
    node i  10.77.0.(10 + i)   a ``twistd dlba`` each, i = 1..9
    web j   10.77.0.(20 + j)   a demo back end each, j = 1..79
    VIP     10.77.0.100        what the packet scheduler makes answer

Each host's interface is ``eth0`` with the MAC ``02:00`` + its IPv4 address's four bytes
(locally administered, unicast), so the config can name every node's MAC before the links
exist.  The bridge lives in a namespace of its own; its port for host ``X`` is called ``X``.
Namespace names carry a prefix (``dlbalab-``, or ``dlbalab-NAME-`` for a named lab), so
``down`` can find what a crashed ``up`` left and touches nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dlba.config import FAST_PATHS

SUBNET = "10.77.0.0/24"
PREFIX_LENGTH = 24
CLIENT_IP = "10.77.0.2"
VIP = "10.77.0.100"
INTERFACE = "eth0"  # every lab host's link to the bridge; also [array] interface
BRIDGE = "br0"  # the bridge, inside the bridge namespace

BACKEND_PORT = 8080
HTTP_PORT = 80
HTTPS_PORT = 443
STATUS_PORT = 7701
SYNC_PORT = 7702
ADMIN_PORT = 7780

MAX_NODES = 9  # node ips .11-.19: .20 is where the web servers start
MAX_BACKENDS = 79  # web ips .21-.99: .100 is the VIP

NAMESPACE_PREFIX = "dlbalab-"
STATE_VERSION = 1

# File names inside the lab's directory.
STATE_FILE = "state.json"
CONFIG_FILE = "dlba.toml"
WEB_CA = "tls/web-ca.pem"  # signs the HTTPS certificate the proxies serve (curl --cacert)
WEB_CERTIFICATE = "tls/www.pem"
ARRAY_CA = "tls/ca.pem"  # the control plane's CA: mutual TLS between nodes, dlba-ctl
NODE_CERTIFICATE = "tls/node{number}.pem"
ADMIN_CERTIFICATE = "tls/admin.pem"


class LabError(Exception):
    """A problem a person can fix, as one line (no traceback), and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- the addressing plan --------------------------------------------------------------------


def mac_of(ip: str) -> str:
    """``02:00`` + the IPv4 address's bytes: 10.77.0.11 -> 02:00:0a:4d:00:0b."""
    octets = [int(o) for o in ip.split(".")]
    return ":".join(f"{b:02x}" for b in (2, 0, *octets))


def node_ip(number: int) -> str:
    return f"10.77.0.{10 + number}"


def web_ip(number: int) -> str:
    return f"10.77.0.{20 + number}"


def prefix_for(name: str) -> str:
    """The namespace prefix of the lab called ``name`` ("" is the default lab)."""
    if not name:
        return NAMESPACE_PREFIX
    if not re.fullmatch(r"[a-z0-9]{1,12}", name):
        raise LabError(f"lab name {name!r}: use 1 to 12 lower-case letters or digits", status=2)
    return f"{NAMESPACE_PREFIX}{name}-"


@dataclass(frozen=True)
class Host:
    """One namespace of the lab."""

    name: str  # bridge, client, node1.., web1..: what exec and status call it
    role: str  # bridge | client | node | web
    number: int  # node or web number; 0 for the bridge and the client
    namespace: str
    ip: str | None  # None for the bridge, which has no address
    mac: str | None

    @property
    def port(self) -> str:
        """The bridge's port (the veth end in the bridge namespace) facing this host."""
        return self.name


@dataclass(frozen=True)
class Plan:
    prefix: str
    nodes: int
    backends: int
    fast_path: str = "auto"  # the nodes' [array] fast_path

    @property
    def bridge(self) -> Host:
        return Host("bridge", "bridge", 0, self.prefix + "bridge", None, None)

    @property
    def client(self) -> Host:
        return Host("client", "client", 0, self.prefix + "client", CLIENT_IP, mac_of(CLIENT_IP))

    def node(self, number: int) -> Host:
        ip = node_ip(number)
        return Host(f"node{number}", "node", number, f"{self.prefix}node{number}", ip, mac_of(ip))

    def web(self, number: int) -> Host:
        ip = web_ip(number)
        return Host(f"web{number}", "web", number, f"{self.prefix}web{number}", ip, mac_of(ip))

    @property
    def node_hosts(self) -> list[Host]:
        return [self.node(i) for i in range(1, self.nodes + 1)]

    @property
    def web_hosts(self) -> list[Host]:
        return [self.web(j) for j in range(1, self.backends + 1)]

    @property
    def attached(self) -> list[Host]:
        """The hosts with a link to the bridge, in the order they are built."""
        return [self.client, *self.node_hosts, *self.web_hosts]

    @property
    def hosts(self) -> list[Host]:
        return [self.bridge, *self.attached]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        names = ", ".join(h.name for h in self.hosts)
        raise LabError(f"no host {name!r} in this lab (there are: {names})", status=2)


def make_plan(nodes: int, backends: int, name: str = "", fast_path: str = "auto") -> Plan:
    if not 1 <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes}: give 1 to {MAX_NODES} nodes", status=2)
    if not 1 <= backends <= MAX_BACKENDS:
        raise LabError(f"--backends {backends}: give 1 to {MAX_BACKENDS} web servers", status=2)
    if fast_path not in FAST_PATHS:
        raise LabError(f"--fast-path {fast_path}: give one of {', '.join(FAST_PATHS)}", status=2)
    return Plan(prefix_for(name), nodes, backends, fast_path)


def grown(state: State) -> tuple[Plan, Host]:
    """The plan of ``state``'s lab with one node more, and that node (``add-node``): the
    next number, so it is appended to ``[[array.node]]`` and joins the running array."""
    if state.phase != "up":
        raise LabError(
            "the lab is not up (an up or add-node did not finish): dlba-lab down, then up"
        )
    number = state.nodes + 1
    if number > MAX_NODES:
        raise LabError(f"the lab has {state.nodes} nodes already, the most it can hold", status=2)
    plan = Plan(state.prefix, number, state.backends)
    return plan, plan.node(number)


def append_node(text: str, host: Host) -> str:
    """The config ``text`` the array runs (what ``up`` wrote, or a config pushed since)
    with ``host`` appended to ``[[array.node]]``: the rest stays as the operator left it.
    A TOML array of tables may grow anywhere in the file, so the new table goes last."""
    assert host.ip is not None and host.mac is not None
    table = _table(
        "[[array.node]]",
        {"number": host.number, "mac": host.mac, "ip": host.ip},
        f"Appended by dlba-lab add-node: {host.name} joins the running array.",
    )
    return text.rstrip("\n") + "\n\n" + "\n".join(table)


def push_problem(report: dict[str, Any]) -> str | None:
    """Why ``dlba-ctl push --json``'s ``report`` is no commit, or None if it is one."""
    errors = report.get("errors") or {}
    if errors:
        number, why = sorted(errors.items())[0]
        first = str(why).splitlines()[0] if why else "refused"
        return f"node {number} refused the new config: {first}"
    if not report.get("committed"):
        return "no node committed the new config"
    return None


def not_reached(report: dict[str, Any], joining: int) -> list[int]:
    """The nodes a push did not reach, but the one joining (it is not started yet)."""
    return sorted(int(n) for n in (report.get("down") or {}) if int(n) != joining)


def is_lab_namespace(namespace: str, prefix: str) -> bool:
    """Whether ``namespace`` is one a lab with ``prefix`` makes (and not another lab's:
    ``dlbalab-t1-client`` is not the default lab's, whose names are ``dlbalab-ROLE``)."""
    if not namespace.startswith(prefix):
        return False
    return (
        re.fullmatch(r"bridge|client|node[1-9]|web[1-9][0-9]?", namespace[len(prefix) :])
        is not None
    )


# -- the array's config ------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _table(header: str, values: dict[str, object], comment: str = "") -> list[str]:
    lines = [f"# {comment}"] if comment else []
    return [*lines, header, *(f"{k} = {_toml_value(v)}" for k, v in values.items()), ""]


def config_text(plan: Plan, directory: str) -> str:
    """The one config file every node of the lab reads (``--node I`` picks the node).

    Paths are absolute so the file can be read from anywhere (``dlba-ctl --config``)."""
    d = directory.rstrip("/")
    lines = [
        "# Written by dlba-lab up: the lab's whole array, one file for every node.",
        "# Each node runs: twistd dlba --config THIS_FILE --node I",
        "",
    ]
    lines += _table("[node]", {"number": 1, "state_dir": f"{d}/state{{number}}"})
    lines += _table(
        "[listen]",
        {
            # 0.0.0.0 inside the node's namespace: its own ip now, and the VIP too once
            # the packet scheduler has put it on the node's loopback.
            "http": f"tcp:{HTTP_PORT}:interface=0.0.0.0",
            "https": f"tcp:{HTTPS_PORT}:interface=0.0.0.0",
            # The rest bind to the node's own ip ([[array.node]] ip).
            "status": f"tcp:{STATUS_PORT}",
            "sync": f"tcp:{SYNC_PORT}",
            "admin": f"tcp:{ADMIN_PORT}",
        },
        "Inside each node's own namespace: nothing here reaches the machine's network.",
    )
    lines += _table(
        "[tls]",
        {
            "certificates": [f"{d}/{WEB_CERTIFICATE}"],
            "ca": f"{d}/{ARRAY_CA}",
            "node_certificate": f"{d}/{NODE_CERTIFICATE}",
            "admin_certificate": f"{d}/{ADMIN_CERTIFICATE}",
        },
    )
    # A lab is stopped and started often: in-flight requests get one second, not ten.
    lines += _table("[limits]", {"shutdown_grace": 1.0})
    lines += _table("[log]", {"access_log": f"{d}/node{{number}}-access.log"})
    lines += _table("[array]", {"vip": VIP, "interface": INTERFACE, "fast_path": plan.fast_path})
    for host in plan.node_hosts:
        assert host.ip is not None and host.mac is not None
        lines += _table("[[array.node]]", {"number": host.number, "mac": host.mac, "ip": host.ip})
    lines += _table("[[pool]]", {"name": "web", "policy": "cookie"})
    for host in plan.web_hosts:
        lines += _table(
            "[[pool.backend]]", {"number": host.number, "address": f"{host.ip}:{BACKEND_PORT}"}
        )
    return "\n".join(lines)


# -- the state file --------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """A process ``up`` started; ``starttime`` (from /proc/PID/stat, in clock ticks since
    boot) tells it from a later process that got the same pid."""

    host: str  # node1, web2, ...
    what: str  # "twistd dlba" or "demo back end"
    pid: int
    starttime: int
    log: str


@dataclass
class State:
    """What ``up`` made, written before each step so a crash leaves a record of it."""

    directory: str
    prefix: str
    nodes: int
    backends: int
    phase: str = "building"  # building | up
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def plan(self) -> Plan:
        return Plan(self.prefix, self.nodes, self.backends)

    def process(self, host: str) -> Process | None:
        for p in self.processes:
            if p.host == host:
                return p
        return None

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def parse_state(text: str, path: str) -> State:
    """The state file's contents; a file that is not one raises ``LabError`` naming it."""

    def bad(problem: str) -> LabError:
        return LabError(
            f"{path}: {problem}: not a dlba-lab state file (remove it, then run "
            "dlba-lab down to remove what is left by name)"
        )

    try:
        raw = json.loads(text)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    if raw.get("version") != STATE_VERSION:
        raise bad(f"version {raw.get('version')!r}, this dlba-lab reads {STATE_VERSION}")
    try:
        processes = [Process(**_typed(p, Process)) for p in raw["processes"]]
        state = State(
            directory=_check(raw["directory"], str),
            prefix=_check(raw["prefix"], str),
            nodes=_check(raw["nodes"], int),
            backends=_check(raw["backends"], int),
            phase=_check(raw["phase"], str),
            namespaces=[_check(n, str) for n in raw["namespaces"]],
            processes=processes,
        )
    except (KeyError, TypeError) as e:
        raise bad(f"missing or wrong field ({e})") from None
    if not state.prefix.startswith(NAMESPACE_PREFIX):
        raise bad(f"namespace prefix {state.prefix!r} does not start with {NAMESPACE_PREFIX}")
    stray = [n for n in state.namespaces if not is_lab_namespace(n, state.prefix)]
    if stray:
        raise bad(f"namespaces {stray} are not the lab's")
    return state


def _check(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{value!r} is not {kind.__name__}")
    return value


def _typed(raw: Any, cls: type) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"{raw!r} is not an object")
    kinds = {"host": str, "what": str, "pid": int, "starttime": int, "log": str}
    if set(raw) != set(kinds):
        raise TypeError(f"{cls.__name__} fields {sorted(raw)}")
    return {k: _check(raw[k], kind) for k, kind in kinds.items()}


# -- /proc ------------------------------------------------------------------------------------


def parse_proc_stat(text: str) -> tuple[str, int]:
    """(state letter, start time) from /proc/PID/stat.  The command name (field 2) is in
    parentheses and may hold spaces and parentheses itself, so split after the last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    return rest[0], int(rest[19])


# -- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostStatus:
    name: str
    namespace: str
    exists: bool
    ip: str | None  # as found on eth0 (None: none, or the namespace is gone)
    mac: str | None
    what: str | None = None  # the process ``up`` started there, if any
    pid: int | None = None
    alive: bool | None = None
    log: str | None = None


def overall(hosts: Sequence[HostStatus]) -> str:
    """up: every namespace and process there; down: none; degraded: anything between."""
    present = [h.exists for h in hosts] + [bool(h.alive) for h in hosts if h.pid is not None]
    if present and all(present):
        return "up"
    if not any(present):
        return "down"
    return "degraded"


def render_status(hosts: Sequence[HostStatus], header: Sequence[str]) -> str:
    """The status table for people: one row a namespace, columns aligned."""
    columns = ("NAME", "NAMESPACE", "IP", "MAC", "PROCESS", "PID", "STATE")
    rows = [columns]
    for h in hosts:
        process = "-" if h.pid is None else ("running" if h.alive else "dead")
        state = process if h.exists else "namespace missing"
        if not h.exists and h.pid is not None:
            state += f", process {process}"
        rows.append(
            (
                h.name,
                h.namespace,
                h.ip or "-",
                h.mac or "-",
                h.what or "-",
                "-" if h.pid is None else str(h.pid),
                state,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    return "\n".join([*header, "", *lines]) + "\n"
