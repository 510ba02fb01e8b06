"""The scheduler's status sweep (DESIGN.md §2, §4): a state machine, no sockets, no clock.

The sweep visits the nodes' status daemons one at a time, never all at once.  A visit is
one try: connect, ``STATUS``, read to ``END``, close, within ``timeout``.  A node that
misses ``tries`` tries in a row is failed (a node already failed gets one try a sweep, so a
dead node does not slow every sweep by its retries); a failed node that answers rejoins.
After each full sweep it pauses ``delay`` seconds.  The time of the last completed sweep
is kept so that anyone can tell how stale the tables are.

The glue asks ``next(now)`` what to do, does it, and reports ``answered`` or ``missed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dlba.tables import BackendReport, NodeState, NodeStatusTable, SummaryTable


class BadAnswer(ValueError):
    """A status answer that is not what a dlba status daemon sends."""


@dataclass(frozen=True)
class StatusAnswer:
    """What a node's ``STATUS`` answer says, as far as the sweep needs it."""

    number: int
    avg_response_time: float
    hits: int
    open_connections: int
    backends: tuple[BackendReport, ...]


def parse_status(lines: Iterable[bytes]) -> StatusAnswer:
    """The JSON lines of a ``STATUS`` answer (without the ``END`` line)."""
    node: dict[str, Any] | None = None
    backends = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError as e:
            raise BadAnswer(f"not JSON: {line[:60]!r}") from e
        if not isinstance(item, dict):
            raise BadAnswer(f"not a JSON object: {line[:60]!r}")
        try:
            table = item.get("table")
            if table == "node":
                node = item
            elif table == "backend":
                backends.append(
                    BackendReport(
                        number=int(item["number"]),
                        address=str(item["address"]),
                        hits=int(item["hits"]),
                        open_connections=int(item["open_connections"]),
                        sessions=int(item.get("sessions", 0)),
                    )
                )
        except (KeyError, TypeError, ValueError) as e:
            raise BadAnswer(f"a {table} line lacks {e}") from e
    if node is None:
        raise BadAnswer("no node line")
    try:
        return StatusAnswer(
            number=int(node["number"]),
            avg_response_time=float(node.get("avg_response_time", 0.0)),
            hits=int(node.get("hits", 0)),
            open_connections=int(node.get("connections_open", 0)),
            backends=tuple(backends),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BadAnswer(f"the node line lacks {e}") from e


@dataclass(frozen=True)
class Visit:
    """Ask ``node``'s status daemon, giving up at ``deadline``."""

    node: NodeState
    attempt: int  # 1 for the first try of this visit
    deadline: float


@dataclass(frozen=True)
class Pause:
    """Nothing to do until ``until``."""

    until: float


NodeHook = Callable[[int], None]


class Sweep:
    """Idle (pausing after a sweep), or asking node ``index`` (try ``attempt``)."""

    def __init__(
        self,
        nodes: NodeStatusTable,
        summary: SummaryTable,
        *,
        timeout: float,
        tries: int,
        delay: float,
        on_failed: Iterable[NodeHook] = (),
        on_rejoined: Iterable[NodeHook] = (),
        on_drained: Iterable[NodeHook] = (),
    ) -> None:
        if tries < 1:
            raise ValueError("a sweep tries each node at least once")
        self.nodes = nodes
        self.summary = summary
        self.timeout = timeout
        self.tries = tries
        self.delay = delay
        # The client table's "node failed" hook goes here once the table exists.
        self.on_failed = list(on_failed)
        self.on_rejoined = list(on_rejoined)
        # A disabled node that answers with no open connection and still holds buckets.
        self.on_drained = list(on_drained)
        self._order = list(nodes)
        self._index = 0
        self._attempt = 1
        self._asking: NodeState | None = None
        self._pause_until: float | None = None  # None: a sweep is under way
        self.last_sweep: float | None = None  # when the last full sweep ended
        self.sweeps = 0

    @property
    def state(self) -> str:
        if self._pause_until is not None:
            return "idle"
        return "waiting" if self._asking is not None else "asking"

    def age(self, now: float) -> float | None:
        """Seconds since the last full sweep ended (None: none has yet)."""
        return None if self.last_sweep is None else max(0.0, now - self.last_sweep)

    def next(self, now: float) -> Visit | Pause:
        """What to do now.  A visit stays outstanding until answered or missed."""
        if self._pause_until is not None:
            if now < self._pause_until:
                return Pause(self._pause_until)
            self._pause_until = None
            self._index = 0
            self._attempt = 1
        if self._index >= len(self._order):  # no nodes, or a reload took the rest away
            self._finish(now)
            return Pause(self._pause_until or now)
        node = self._order[self._index]
        self._asking = node
        return Visit(node, self._attempt, now + self.timeout)

    def reconfigure(
        self, *, timeout: float, tries: int, delay: float, removed: Iterable[int] = ()
    ) -> None:
        """New settings, and the node table changed in place (a reload): they hold from
        the next visit on.  A sweep under way goes on where it was: the nodes it visited
        first, then the one it is at, then the others in the table's new order; the
        ``removed`` nodes' reports leave the summary."""
        if tries < 1:
            raise ValueError("a sweep tries each node at least once")
        self.timeout, self.tries, self.delay = timeout, tries, delay
        old, index = self._order, self._index
        kept = [n for n in old if not self._gone(n)]
        visited = [n for n in old[:index] if n in kept]
        current = [old[index]] if index < len(old) and old[index] in kept else []
        rest = [n for n in self.nodes if n not in visited and n not in current]
        self._order = visited + current + rest
        self._index = len(visited)
        for number in removed:
            self.summary.forget(number)
        self.summary.rebuild()

    def _gone(self, node: NodeState) -> bool:
        """``node`` was being asked when a reload took it out of the table."""
        return self.nodes.get(node.number) is not node

    def answered(self, node: NodeState, answer: StatusAnswer, now: float) -> None:
        self._check_asking(node)
        if self._gone(node):
            self._passed_over(now)
            return
        node.avg_response_time = answer.avg_response_time
        node.hits = answer.hits
        node.open_connections = answer.open_connections
        node.last_seen = now
        node.last_error = ""
        self.summary.node_reported(node.number, answer.backends)
        self.summary.rebuild()  # cheap, and fresher than once a sweep
        if node.failed:
            node.failed = False
            for hook in self.on_rejoined:
                hook(node.number)
        if not node.enabled and node.buckets and not answer.open_connections:
            for hook in self.on_drained:
                hook(node.number)
        self._advance(now)

    def missed(self, node: NodeState, error: str, now: float) -> None:
        """The try failed: refused, timed out, closed early or a bad answer."""
        self._check_asking(node)
        if self._gone(node):
            self._passed_over(now)
            return
        node.last_error = error
        if not node.failed and self._attempt < self.tries:
            self._attempt += 1
            self._asking = None
            return
        if not node.failed:
            node.failed = True
            node.open_connections = 0
            self.summary.node_failed(node.number)
            self.summary.rebuild()
            for hook in self.on_failed:
                hook(node.number)
        self._advance(now)

    def _check_asking(self, node: NodeState) -> None:
        if node is not self._asking:
            raise RuntimeError(f"node {node.number} is not being asked")
        self._asking = None

    def _passed_over(self, now: float) -> None:
        """The node asked left the table meanwhile: on to the one now in its place."""
        self._attempt = 1
        if self._index >= len(self._order):
            self._finish(now)

    def _advance(self, now: float) -> None:
        self._attempt = 1
        self._index += 1
        if self._index >= len(self._order):
            self._finish(now)

    def _finish(self, now: float) -> None:
        self.last_sweep = now
        self.sweeps += 1
        self._pause_until = now + self.delay
