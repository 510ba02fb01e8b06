"""Short time series of a node's report, for the dashboard's sparklines.

Each sample reads one report (the shape ``dlba.report`` builds) and appends one value per
series: gauges as they are, counters as a rate over the time since the previous sample.
Every series of a group shares the one list of sample times, so a value's index is its
time; an entity that appears later is padded with ``None`` in front, and one that is gone
gets ``None`` until it has no value left in the window, when it is dropped.  Bounded: at
most ``length`` samples of each series.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

SERIES_LENGTH = 150

Value = float | None

# series name -> how to read it from an entity's row: ("gauge", key) or ("rate", key);
# "mean" reads a histogram's sum and count and gives the mean of the values since the
# previous sample (the response time of that interval rather than a long average).
_NODE = {
    "rate": ("rate", "hits"),
    "connection_rate": ("rate", "connections_total"),
    "open": ("gauge", "connections_open"),
    "response": ("gauge", "avg_response_time"),
}
_BACKEND = {
    "rate": ("rate", "hits"),
    "response": ("mean", "response_histogram"),
    "open": ("gauge", "open_connections"),
    "queued": ("gauge", "queued"),
    "limit": ("gauge", "limit"),
}
_POOL = {
    "queued": ("gauge", "queued"),
    "oldest_wait": ("gauge", "oldest_wait"),
    "refused_rate": ("rate", "refused_requests"),
}
_SESSIONS = {"size": ("gauge", "size")}
_ARRAY_NODE = {
    "rate": ("rate", "hits"),
    "open": ("gauge", "open_connections"),
    "buckets": ("gauge", "buckets"),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _histogram_totals(value: Any) -> tuple[float, float] | None:
    """(sum, count) of a report's ``response_histogram``; its last count is +Inf's."""
    if not isinstance(value, Mapping):
        return None
    counts = value.get("counts") or ()
    total = _number(counts[-1]) if counts else None
    sum_ = _number(value.get("sum"))
    if total is None or sum_ is None:
        return None
    return sum_, total


class _Group:
    """The series of one kind of entity (back ends, pools...), keyed by entity."""

    def __init__(self, spec: Mapping[str, tuple[str, str]], length: int) -> None:
        self.spec = spec
        self.length = length
        self.series: dict[str, dict[str, deque[Value]]] = {}
        # key -> (time, {row key: counter value}) of the previous sample
        self._previous: dict[str, tuple[float, dict[str, Any]]] = {}

    def sample(self, now: float, rows: Mapping[str, Mapping[str, Any]], filled: int) -> None:
        """Append one value to every series; ``filled``: samples taken before this one."""
        for key, row in rows.items():
            series = self.series.get(key)
            if series is None:
                pad = min(filled, self.length - 1)
                series = self.series[key] = {
                    name: deque([None] * pad, maxlen=self.length) for name in self.spec
                }
            previous = self._previous.get(key)
            counters: dict[str, Any] = {}
            for name, (kind, field) in self.spec.items():
                series[name].append(self._value(kind, row.get(field), field, now, previous))
                if kind != "gauge":
                    counters[field] = row.get(field)
            self._previous[key] = (now, counters)
        for key in [k for k in self.series if k not in rows]:
            self._previous.pop(key, None)
            series = self.series[key]
            for values in series.values():
                values.append(None)
            if all(v is None for values in series.values() for v in values):
                del self.series[key]

    def _value(
        self,
        kind: str,
        raw: Any,
        field: str,
        now: float,
        previous: tuple[float, dict[str, Any]] | None,
    ) -> Value:
        if kind == "gauge":
            value = _number(raw)
            return None if value is None else round(value, 6)
        if previous is None:
            return None
        then, counters = previous
        elapsed = now - then
        if elapsed <= 0:
            return None
        if kind == "rate":
            current, before = _number(raw), _number(counters.get(field))
            if current is None or before is None or current < before:
                return None  # no earlier value, or the counter restarted
            return round((current - before) / elapsed, 3)
        totals, before_totals = _histogram_totals(raw), _histogram_totals(counters.get(field))
        if totals is None or before_totals is None:
            return None
        count = totals[1] - before_totals[1]
        if count <= 0:
            return None  # no answer in the interval: a gap, not a zero
        return round(max(totals[0] - before_totals[0], 0.0) / count, 6)

    def to_dict(self) -> dict[str, dict[str, list[Value]]]:
        return {
            key: {name: list(values) for name, values in series.items()}
            for key, series in self.series.items()
        }


def _rows(items: Any, key: str) -> dict[str, Mapping[str, Any]]:
    """A report's list of rows, keyed by the string of each row's ``key``."""
    if not isinstance(items, Iterable):
        return {}
    return {str(row.get(key)): row for row in items if isinstance(row, Mapping)}


class History:
    """The last ``length`` samples of a node's report."""

    def __init__(self, length: int = SERIES_LENGTH) -> None:
        if length < 2:
            raise ValueError("a history needs at least two samples to show a rate")
        self.length = length
        self.times: deque[float] = deque(maxlen=length)
        self._node = _Group(_NODE, length)
        self._backends = _Group(_BACKEND, length)
        self._pools = _Group(_POOL, length)
        self._sessions = _Group(_SESSIONS, length)
        self._array_nodes = _Group(_ARRAY_NODE, length)

    def sample(self, now: float, report: Mapping[str, Any]) -> None:
        """Take one sample of ``report`` at ``now`` (seconds)."""
        filled = len(self.times)
        node = report.get("node")
        self._node.sample(now, {"node": node} if isinstance(node, Mapping) else {}, filled)
        self._backends.sample(now, _rows(report.get("backends"), "number"), filled)
        self._pools.sample(now, _rows(report.get("pools"), "name"), filled)
        self._sessions.sample(now, _rows(report.get("sessions"), "pool"), filled)
        array = report.get("array")
        nodes = array.get("nodes") if isinstance(array, Mapping) else None
        self._array_nodes.sample(now, _rows(nodes, "number"), filled)
        self.times.append(round(now, 3))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``times``, then per group and key the series, oldest first."""
        return {
            "length": self.length,
            "times": list(self.times),
            "node": self._node.to_dict().get("node", {}),
            "backends": self._backends.to_dict(),
            "pools": self._pools.to_dict(),
            "sessions": self._sessions.to_dict(),
            "nodes": self._array_nodes.to_dict(),
        }
