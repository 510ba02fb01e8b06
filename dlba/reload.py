"""What a new config changes in a running node, and what only a restart can change.

Pure: no reactor, no sockets.  ``check_reloadable(old, new)`` names what the running node
cannot take (the control plane calls it when a push is validated, ``NodeService.reload``
before it changes anything); ``diff(old, new)`` says what a reload changes: which
listeners move, which back ends keep their rows, which get new ones.  ``apply_backends``
makes the back-end status table follow the new config.

Every key of the schema is in exactly one of three sets (a test holds this, so a new key
gets a decision): ``APPLIED`` (a reload applies it), ``RESTART`` (read once, at start) and
``NOT_READ_YET`` (nothing that runs reads it yet: failover and the packet scheduler will,
and must then move it to one of the other two).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from dlba.config import (
    Config,
    LimitsSection,
    ListenSection,
    PersistenceSection,
    bind_to,
    scheduler_of,
)
from dlba.routing import backend_entries, controlled, new_row
from dlba.tables import BackendState, BackendStatusTable

# Read once when the node starts; the reason is part of the refusal.
RESTART: Final[dict[str, str]] = {
    "node.number": "which node this process is",
    "node.state_dir": "where this node keeps its state",
    "array.table_size": "the client table's size is fixed at start",
    "array.vip": "the packet scheduler's address",
    "array.interface": "the packet scheduler's interface",
    "log.json": "twistd picks its log observer at start",
    "tls.ca": "the control plane's TLS is set up at start",
    "tls.node_certificate": "the control plane's TLS is set up at start",
    "tls.admin_certificate": "the control plane's TLS is set up at start",
    "array.ping_interval": "the election's pace is set at start",
    "array.ping_misses": "the election's pace is set at start",
    "array.fast_path": "the packet scheduler picks its path at start",
    "array.debug_frames": "the packet scheduler's frame reader is made at start",
}

# Taken by a reload: for the listeners, pools, back ends and rules see ``diff``.
APPLIED: Final = frozenset(
    {
        "listen.http",
        "listen.https",
        "listen.status",
        "listen.sync",
        "listen.admin",
        "tls.certificates",
        "tls.hsts",
        "log.access_log",
        "array.sweep_delay",
        "array.sweep_timeout",
        "array.sweep_retries",
        "array.bucket_idle_timeout",
        "array.nodes",
        "pools",
        "rules",
    }
    | {f"limits.{f.name}" for f in dataclasses.fields(LimitsSection)}
    | {f"persistence.{f.name}" for f in dataclasses.fields(PersistenceSection)}
)

# Nothing that runs reads these yet: a change is accepted and means nothing until then.
NOT_READ_YET: Final[frozenset[str]] = frozenset()

# ``[listen]`` keys, in the order listeners are reported.
LISTENERS: Final = tuple(f.name for f in dataclasses.fields(ListenSection))
# The listeners a running node can open for itself; the others' services are made at start.
OPENED_AT_RUN_TIME: Final = ("http", "https", "status")

_SWEEP_KEYS: Final = ("sweep_delay", "sweep_timeout", "sweep_retries")


def value_at(config: Config, key: str) -> Any:
    """``config``'s value at a dotted key such as ``array.table_size``."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def listen_endpoints(config: Config) -> dict[str, str]:
    """Every listener ``config`` runs, by name, with the endpoint it really binds: one
    without ``interface=`` binds to the node's own ip, so moving that ip moves it."""
    ip = config.node_ip()
    endpoints = {}
    for name in LISTENERS:
        description = getattr(config.listen, name)
        if description:
            endpoints[name] = bind_to(description, ip)
    return endpoints


def runs_proxy(config: Config) -> bool:
    return bool(config.listen.http or config.listen.https)


def failover_on(config: Config) -> bool:
    """Whether the election decides who is scheduler (``make_node_service``): a control
    plane, a status daemon and peers.  Otherwise the first ``[[array.node]]`` is."""
    return bool(
        config.listen.sync
        and config.listen.status
        and len(config.array.nodes) > 1
        and config.node_ip() is not None
    )


def sweeps(config: Config) -> bool:
    """Whether the node ``config`` describes has a sweep (``make_node_service``); with
    failover every node has one, running while it is scheduler."""
    if failover_on(config):
        return True
    return bool(config.listen.status) and scheduler_of(config) == config.node.number


def joined(old: Config, new: Config) -> tuple[int, ...]:
    """The nodes ``new`` appends to ``old``'s ``[[array.node]]`` (empty when the numbers
    before them are not ``old``'s, in its order: see ``membership_problems``)."""
    before = [n.number for n in old.array.nodes]
    after = [n.number for n in new.array.nodes]
    if after[: len(before)] != before:
        return ()
    return tuple(after[len(before) :])


def membership_problems(old: Config, new: Config) -> list[str]:
    """What of a change of ``[[array.node]]`` the running election cannot take.  Nodes
    appended with new numbers join at run time (keepalived- or IPVS-like: the others keep
    their priority, and the newcomer gets only new and idle buckets); a node removed or
    moved changes the others' priority and needs a restart of every node."""
    before = [n.number for n in old.array.nodes]
    after = [n.number for n in new.array.nodes]
    gone = [n for n in before if n not in after]
    if gone:
        names = ", ".join(str(n) for n in gone)
        return [
            f"array.node: node {names} removed: removing a node needs a restart of every "
            "node (disable it with dlba-ctl node disable to drain it meanwhile); only "
            "nodes appended at the end join at run time"
        ]
    if after[: len(before)] != before:
        return [
            f"array.node: the order {before} would become {after}: the order is the "
            "election's priority and changes only with a restart; only nodes appended at "
            "the end join at run time"
        ]
    return []


def check_reloadable(old: Config, new: Config) -> list[str]:
    """What in ``new`` the node running ``old`` cannot take without a restart, one line
    each, the key first ("array.table_size: needs a restart (...)"); empty if none."""
    problems = [
        f"{key}: needs a restart ({why})"
        for key, why in RESTART.items()
        if value_at(old, key) != value_at(new, key)
    ]
    for name in LISTENERS:
        added = not getattr(old.listen, name) and getattr(new.listen, name)
        if not added:
            continue
        if name not in OPENED_AT_RUN_TIME:
            problems.append(f"listen.{name}: added: needs a restart (its service starts with it)")
        elif name in ("http", "https") and not runs_proxy(old):
            problems.append(f"listen.{name}: added: needs a restart (this node runs no proxy)")
    if failover_on(old) != failover_on(new):
        doing = "start" if failover_on(new) else "stop"
        problems.append(f"listen.sync: the election would {doing}: needs a restart")
    elif failover_on(old):
        problems += membership_problems(old, new)
    if sweeps(old) != sweeps(new):
        status_moved = bool(old.listen.status) != bool(new.listen.status)
        key = "listen.status" if status_moved else "array.node"
        doing = "start" if sweeps(new) else "stop"
        problems.append(f"{key}: this node would {doing} sweeping: needs a restart")
    return problems


# -- back ends ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendPlan:
    """What becomes of each back end's row (numbers, ascending)."""

    kept: tuple[int, ...] = ()  # same number, same address: the row and its state stay
    replaced: tuple[int, ...] = ()  # same number, another address: a new row
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    reweighted: tuple[int, ...] = ()  # kept, with a new weight
    toggled: tuple[int, ...] = ()  # kept, and the config's ``enabled`` changed
    limited: tuple[int, ...] = ()  # kept, and its max_concurrent or controller changed


def plan_backends(old: Config, new: Config) -> BackendPlan:
    before, after = backend_entries(old), backend_entries(new)
    was_controlled, now_controlled = controlled(old), controlled(new)
    kept, replaced, reweighted, toggled, limited = [], [], [], [], []
    for number in sorted(after.keys() & before.keys()):
        (b0, p0), (b1, p1) = before[number], after[number]
        if b0.address != b1.address:
            replaced.append(number)
            continue
        kept.append(number)
        if b0.weight != b1.weight:
            reweighted.append(number)
        if b0.enabled != b1.enabled:
            toggled.append(number)
        if (p0.max_concurrent, was_controlled.get(number)) != (
            p1.max_concurrent,
            now_controlled.get(number),
        ):
            limited.append(number)
    return BackendPlan(
        kept=tuple(kept),
        replaced=tuple(replaced),
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        reweighted=tuple(reweighted),
        toggled=tuple(toggled),
        limited=tuple(limited),
    )


def apply_backends(table: BackendStatusTable, plan: BackendPlan, new: Config) -> list[BackendState]:
    """Make ``table`` hold ``new``'s back ends; the rows it lets go are returned, retired.

    A kept row keeps its counters, failure, sessions and limit state; its weight follows
    the config, and so does ``enabled``, but only where the config changed it (so a back
    end an operator disabled at run time stays disabled across a reload about something
    else).  Its limit is the new ``max_concurrent`` unless a feedback controller steers it
    (the proxy then sets the controller's ceiling).
    """
    entries = backend_entries(new)
    retired = []
    for number in plan.removed:
        row = table.remove(number)
        if row is not None:
            retired.append(row)
    for number in plan.replaced:
        row = table.replace(new_row(*entries[number]))
        if row is not None:
            retired.append(row)
    for number in plan.added:
        table.add(new_row(*entries[number]))
    steered = controlled(new)
    for number in plan.kept:
        row = table.get(number)
        if row is None:
            continue
        b, pool = entries[number]
        row.weight = b.weight
        if number in plan.toggled and row.enabled != b.enabled:
            if b.enabled:
                row.enable()
            else:
                row.disable()
        if number in plan.limited and number not in steered:
            row.limit = pool.max_concurrent
    return retired


# -- the whole --------------------------------------------------------------------------


def _changed_fields(old: object, new: object, prefix: str) -> list[tuple[str, Any, Any]]:
    return [
        (f"{prefix}.{f.name}", getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(old)  # type: ignore[arg-type]
        if getattr(old, f.name) != getattr(new, f.name)
    ]


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload from ``old`` to ``new`` changes."""

    # What a running node cannot take (``check_reloadable``): a reload refuses it all.
    restart: tuple[str, ...] = ()
    # name -> (endpoint before, endpoint after); None: not listening.  Changed ones only.
    listeners: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    certificates: bool = False
    hsts: bool = False
    access_log: bool = False
    # (key, before, after) for the keys applied to what comes after.
    settings: tuple[tuple[str, Any, Any], ...] = ()
    nodes: bool = False  # [[array.node]]: the node status table's static columns
    joined: tuple[int, ...] = ()  # nodes appended to [[array.node]]: they join the array
    pools_added: tuple[str, ...] = ()
    pools_removed: tuple[str, ...] = ()
    pools_changed: tuple[str, ...] = ()
    rules: bool = False
    backends: BackendPlan = BackendPlan()
    old_addresses: dict[int, str] = field(default_factory=dict)
    new_addresses: dict[int, str] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """One line per change, for the log and the caller."""
        lines = []
        for name, (before, after) in self.listeners.items():
            lines.append(f"listen.{name}: {before or 'off'} -> {after or 'off'}")
        if self.certificates:
            lines.append("tls.certificates: new certificates for new connections")
        if self.hsts:
            lines.append("tls.hsts: changed for new answers")
        if self.access_log:
            lines.append("log.access_log: reopened")
        lines += [f"{key}: {before!r} -> {after!r}" for key, before, after in self.settings]
        if self.nodes:
            lines.append("array.node: the node status table's static columns")
        lines += [
            f"array.node: node {n} joins (new and idle buckets once the sweep hears it)"
            for n in self.joined
        ]
        lines += [f"pool {name}: added" for name in self.pools_added]
        lines += [f"pool {name}: removed" for name in self.pools_removed]
        lines += [f"pool {name}: changed" for name in self.pools_changed]
        if self.rules:
            lines.append("rule: the rules changed")
        plan = self.backends
        old, new = self.old_addresses, self.new_addresses
        lines += [f"back end {n} ({new[n]}): added" for n in plan.added]
        lines += [f"back end {n} ({old[n]}): removed" for n in plan.removed]
        lines += [f"back end {n}: {old[n]} -> {new[n]} (a new row)" for n in plan.replaced]
        lines += [f"back end {n}: weight changed" for n in plan.reweighted]
        lines += [f"back end {n}: enabled changed in the config" for n in plan.toggled]
        lines += [f"back end {n}: max_concurrent or adaptive changed" for n in plan.limited]
        return lines


def diff(old: Config, new: Config) -> ConfigDiff:
    """What changes from ``old`` to ``new``; ``restart`` says what only a restart may."""
    was, now = listen_endpoints(old), listen_endpoints(new)
    listeners = {
        name: (was.get(name), now.get(name)) for name in LISTENERS if was.get(name) != now.get(name)
    }
    settings = _changed_fields(old.limits, new.limits, "limits")
    settings += _changed_fields(old.persistence, new.persistence, "persistence")
    settings += [
        (f"array.{key}", getattr(old.array, key), getattr(new.array, key))
        for key in _SWEEP_KEYS
        if getattr(old.array, key) != getattr(new.array, key)
    ]
    pools_before = {p.name: p for p in old.pools}
    pools_after = {p.name: p for p in new.pools}
    return ConfigDiff(
        restart=tuple(check_reloadable(old, new)),
        listeners=listeners,
        certificates=old.tls.certificates != new.tls.certificates,
        hsts=old.tls.hsts != new.tls.hsts,
        access_log=old.log.access_log != new.log.access_log,
        settings=tuple(settings),
        nodes=old.array.nodes != new.array.nodes,
        joined=joined(old, new),
        pools_added=tuple(n for n in pools_after if n not in pools_before),
        pools_removed=tuple(n for n in pools_before if n not in pools_after),
        pools_changed=tuple(
            n for n, p in pools_after.items() if n in pools_before and pools_before[n] != p
        ),
        rules=old.rules != new.rules,
        backends=plan_backends(old, new),
        old_addresses=_addresses(old),
        new_addresses=_addresses(new),
    )


def _addresses(config: Config) -> dict[int, str]:
    return {number: b.address for number, (b, _) in backend_entries(config).items()}


def every_key(config: Config) -> Iterable[str]:
    """Every dotted key of the schema (for the test that each has a decision)."""
    for section in ("node", "listen", "tls", "limits", "log", "array", "persistence"):
        for f in dataclasses.fields(getattr(config, section)):
            yield f"{section}.{f.name}"
    yield "pools"
    yield "rules"
