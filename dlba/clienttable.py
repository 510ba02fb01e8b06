"""The client table of DESIGN.md §4: which node gets a client's frames.  Pure: time is passed in.

``size`` buckets, fixed at start; bucket = ``bucket_of(client ip, client port, size)``.  Each
bucket holds a ``node`` (-1: unassigned) and a ``last_access`` (seconds).  The packet
scheduler calls `ClientTable.lookup` for every frame, so a frame for an assigned, busy bucket
costs two list reads, one list write and one row check; only a bucket that must be placed
looks at the node status table.

Placing a bucket (a new one, an idle one, or one whose node is gone): the enabled, not
failed node with weight > 0 with the fewest buckets per unit of weight; ties go to the
bucket's own node (moving an idle bucket to an equally loaded node gains nothing and costs a
change to sync), then to the fewest open connections, then to the lowest node number.  The
bucket being placed does not count as load on its own node.

- A busy bucket (a frame within ``idle_timeout``) stays on its node while that node is not
  failed, even if it is disabled: a disabled node drains, its live connections survive, and
  each of its buckets moves on the first frame after it goes idle.
- An idle bucket is placed again on its next frame; if that picks its own node, nothing
  changes and the version does not move.  This is how a node that joins gets traffic
  gradually, without breaking live connections.
- A failed node's buckets go back to -1 at once (`node_failed`, the sweep's hook), and so
  do a disabled node's once it reports no open connection (`node_drained`): drained.  A bucket
  still naming a failed or unknown node (a table taken over from another scheduler) is
  placed again on its next frame.
- No node can take a bucket: it becomes -1 and `lookup` answers -1 (the caller drops the
  frame).

Sync.  Only the ``node`` column is versioned: each change of one bucket's node adds one to
``version`` and appends the bucket to a log, so the log entry ``i`` is version
``log_start + i + 1`` and `changes_since` is an index, a slice and one dict of the buckets
changed (O(changes), not O(size)).  The log keeps between ``log_limit`` and twice that many
entries; a follower further behind, or ahead (from a table that has since restarted), gets
``None``: take the whole `snapshot`.

Every table has a ``table_id``, random unless given.  Versions mean something only within
one id: a restarted scheduler starts again at version 0, so a follower that asked "since
1234" could otherwise be handed a diff against a table it never had.  `changes_since` takes
the follower's id and answers ``None`` on a mismatch; `apply_changes` refuses (returns
False) a diff from another id or computed against another version, so a late answer cannot
undo a newer one.  A follower's copy adopts the id with `load`.  A node that becomes
scheduler calls `take_over`, which gives the table a new id (the new term, say): followers
that had synced with the old scheduler may be ahead of or behind this copy, so each takes
the whole table once instead of a diff that would not add up.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from dlba.hashing import bucket_of
from dlba.tables import NodeState, NodeStatusTable

__all__ = ["UNASSIGNED", "ClientTable"]

UNASSIGNED = -1


class ClientTable:
    """The scheduler's client table, or a follower's copy of it (the same class: a follower
    that wins an election forwards with the copy it has)."""

    def __init__(
        self,
        size: int,
        nodes: NodeStatusTable,
        *,
        idle_timeout: float,
        table_id: str | None = None,
        log_limit: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a client table has at least one bucket, not {size}")
        self.size = size
        self.nodes = nodes
        self.idle_timeout = idle_timeout
        self.table_id = table_id if table_id is not None else _new_id()
        self.version = 0
        self._node = [UNASSIGNED] * size
        self._last = [0.0] * size
        # Buckets per node: the truth, mirrored into each NodeState.buckets as it changes.
        self._counts: dict[int, int] = {}
        for row in nodes:
            row.buckets = 0
        # Bucket changed by each version after _log_start, oldest first.
        self._log: list[int] = []
        self._log_start = 0
        self.log_limit = size if log_limit is None else max(1, log_limit)

    # -- the packet scheduler's side ------------------------------------------------------

    def lookup(self, bucket: int, now: float) -> int:
        """The node for a frame of ``bucket`` at ``now`` (-1: none can take it)."""
        node = self._node[bucket]
        last = self._last[bucket]
        self._last[bucket] = now
        if node >= 0 and now - last <= self.idle_timeout:
            row = self.nodes.get(node)
            if row is not None and not row.failed:
                return node  # busy: stays, even on a disabled (draining) node
        placed = self._least_loaded(node)
        if placed != node:
            self._set(bucket, placed)
        return placed

    def route(self, ip: str | bytes, port: int, now: float) -> int:
        """`lookup` of the bucket of (client ``ip``, client ``port``)."""
        return self.lookup(bucket_of(ip, port, self.size), now)

    def node_failed(self, number: int) -> None:
        """The sweep's hook: every bucket of ``number`` goes back to -1 now."""
        if not self._counts.get(number):
            return
        for bucket, node in enumerate(self._node):
            if node == number:
                self._set(bucket, UNASSIGNED)

    def node_drained(self, number: int) -> None:
        """The sweep's hook for a disabled node that reports no open connection: its
        buckets carry nothing live, so they go back to -1 now (its bucket count falls to
        0) instead of waiting, each, for a frame after it goes idle.  A node enabled again
        meanwhile keeps them."""
        row = self.nodes.get(number)
        if row is not None and not row.enabled:
            self.node_failed(number)

    def node_rejoined(self, number: int) -> None:
        """The sweep's other hook.  Nothing to do: a node that returns gets new and idle
        buckets as their frames come, never busy ones."""

    def seen(self, bucket: int, at: float) -> None:
        """A frame of ``bucket`` passed at ``at`` without `lookup` (the kernel fast path
        forwarded it and kept the time); an earlier time than the one held changes nothing."""
        if at > self._last[bucket]:
            self._last[bucket] = at

    def touch_all(self, now: float) -> None:
        """Every bucket was just used (on failover: the old scheduler's last_access column
        was never synced, and every bucket may carry live connections)."""
        self._last = [now] * self.size

    def take_over(self, now: float, table_id: str | None = None) -> None:
        """This copy becomes the scheduler's table: `touch_all`, a new ``table_id`` (random
        unless given, e.g. from the election's term) and an empty log."""
        self.touch_all(now)
        self.table_id = table_id if table_id is not None else _new_id()
        self._reset_log()

    # -- reading --------------------------------------------------------------------------

    def node_of(self, bucket: int) -> int:
        return self._node[bucket]

    def last_access(self, bucket: int) -> float:
        return self._last[bucket]

    def owners(self) -> list[int]:
        """The node column, a copy (for the dashboard's picture of the table)."""
        return list(self._node)

    def buckets_per_node(self) -> dict[int, int]:
        """Buckets held by each node: every node of the status table (0 if none), then any
        other node the table still names (a copy loaded from a scheduler with more nodes)."""
        out = {row.number: self._counts.get(row.number, 0) for row in self.nodes}
        for node in sorted(self._counts):
            out.setdefault(node, self._counts[node])
        return out

    def row(self) -> dict[str, object]:
        """The status daemon's ``TABLES`` ``client`` line (JSON turns the keys to text)."""
        return {
            "version": self.version,
            "size": self.size,
            "table_id": self.table_id,
            "buckets": self.buckets_per_node(),
        }

    # -- sync -----------------------------------------------------------------------------

    def changes_since(self, version: int, table_id: str) -> tuple[int, dict[int, int]] | None:
        """(current version, {bucket: node} of every bucket changed after ``version``), or
        None: another table, or a version not in the log (too old, or from the future):
        take the whole `snapshot`."""
        if table_id != self.table_id or not self._log_start <= version <= self.version:
            return None
        node = self._node
        return self.version, {b: node[b] for b in self._log[version - self._log_start :]}

    def snapshot(self) -> tuple[int, list[int]]:
        """(version, the whole node column); with ``table_id``, what a follower `load`s."""
        return self.version, list(self._node)

    def apply_changes(
        self, version: int, changes: Mapping[int, int], *, since: int, table_id: str
    ) -> bool:
        """A follower applies ``changes_since(since, table_id)``'s answer.  False, changing
        nothing, unless the copy is that table at version ``since``: fetch the snapshot."""
        if table_id != self.table_id or since != self.version or version < since:
            return False
        for bucket, node in changes.items():
            self._check(bucket, node)
        for bucket, node in changes.items():
            self._put(bucket, node)
        self.version = version
        self._reset_log()  # versions since the diff's base are not one bucket each
        return True

    def load(self, version: int, nodes: Sequence[int], *, table_id: str) -> None:
        """A follower takes the scheduler's whole table."""
        if len(nodes) != self.size:
            raise ValueError(f"a table of {len(nodes)} buckets loaded into one of {self.size}")
        for bucket, node in enumerate(nodes):
            self._check(bucket, node)
        self._node = list(nodes)
        self._counts = {}
        for node in self._node:
            if node >= 0:
                self._counts[node] = self._counts.get(node, 0) + 1
        for row in self.nodes:
            row.buckets = self._counts.get(row.number, 0)
        self.version = version
        self.table_id = table_id
        self._reset_log()

    # -- inside ---------------------------------------------------------------------------

    def _least_loaded(self, current: int) -> int:
        """Where a bucket now on ``current`` (-1: none) goes if placed now (see the module
        doc).  Loads are compared as count·weight cross products: exact, no floats."""
        best: NodeState | None = None
        best_count = 0
        for row in self.nodes:
            if not row.enabled or row.failed or row.weight <= 0:
                continue
            count = self._counts.get(row.number, 0)
            if row.number == current:
                count -= 1
            if best is not None:
                mine, theirs = count * best.weight, best_count * row.weight
                if mine > theirs:
                    continue
                if mine == theirs and _tie_key(row, current) >= _tie_key(best, current):
                    continue
            best, best_count = row, count
        return UNASSIGNED if best is None else best.number

    def _set(self, bucket: int, node: int) -> None:
        """A change of the node column: versioned and logged."""
        self._put(bucket, node)
        self.version += 1
        self._log.append(bucket)
        if len(self._log) > 2 * self.log_limit:
            # Trim in halves, so the copy costs O(1) a change, amortised.
            drop = len(self._log) - self.log_limit
            del self._log[:drop]
            self._log_start += drop

    def _put(self, bucket: int, node: int) -> None:
        old = self._node[bucket]
        if old == node:
            return
        self._node[bucket] = node
        if old >= 0:
            self._count(old, -1)
        if node >= 0:
            self._count(node, 1)

    def _count(self, node: int, delta: int) -> None:
        count = self._counts.get(node, 0) + delta
        if count:
            self._counts[node] = count
        else:
            del self._counts[node]
        row = self.nodes.get(node)
        if row is not None:
            row.buckets = count

    def _check(self, bucket: int, node: int) -> None:
        if not 0 <= bucket < self.size:
            raise ValueError(f"bucket {bucket} is not in a table of {self.size}")
        if node < UNASSIGNED:
            raise ValueError(f"bucket {bucket}: {node} is not a node number")

    def _reset_log(self) -> None:
        self._log = []
        self._log_start = self.version


def _tie_key(row: NodeState, current: int) -> tuple[bool, int, int]:
    # False sorts first: the bucket's own node wins a tie of load.
    return (row.number != current, row.open_connections, row.number)


def _new_id() -> str:
    return secrets.token_hex(8)
