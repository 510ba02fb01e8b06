"""Prometheus ``/metrics``: a collector that reads the node's report when scraped.

Nothing on the request path updates a metric: each scrape takes one report, so what
Prometheus sees is what the dashboard and the status daemon see, and a node nobody
scrapes pays nothing.  Names follow Prometheus's conventions (base units, ``_total`` on
counters, ``_info`` for labels worth joining on), HAProxy's exporter the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime

from dlba.interfaces import ReportSource

BACKEND_STATES = ("up", "draining", "failed", "disabled")


def backend_state(row: Mapping[str, Any]) -> str:
    """The one word the dashboard and ``dlba_backend_state`` show for a back end."""
    if not row.get("enabled", True):
        return "disabled"
    if row.get("failed"):
        return "failed"
    if row.get("draining"):
        return "draining"
    return "up"


def _value(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        return float(raw)
    return None  # null (no sweep yet, never seen): no sample rather than a made-up zero


def _rows(raw: Any) -> Sequence[Mapping[str, Any]]:
    if not isinstance(raw, list | tuple):
        return ()
    return [row for row in raw if isinstance(row, Mapping)]


class _Families:
    """The families of one scrape, made on first use, in the order first used."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, kind: Any, name: str, doc: str, labels: Sequence[str]) -> Any:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, doc, labels=list(labels))
        return family

    def gauge(
        self, name: str, doc: str, labels: Mapping[str, str], raw: Any, *, keep: bool = False
    ) -> None:
        family = self._family(GaugeMetricFamily, name, doc, list(labels))
        value = _value(raw)
        if value is not None or keep:
            family.add_metric(list(labels.values()), value if value is not None else 0.0)

    def counter(self, name: str, doc: str, labels: Mapping[str, str], raw: Any) -> None:
        family = self._family(CounterMetricFamily, name, doc, list(labels))
        value = _value(raw)
        if value is not None:
            family.add_metric(list(labels.values()), value)

    def histogram(self, name: str, doc: str, labels: Mapping[str, str], raw: Any) -> None:
        family = self._family(HistogramMetricFamily, name, doc, list(labels))
        if not isinstance(raw, Mapping):
            return
        bounds, counts, total = (
            raw.get("bounds") or [],
            raw.get("counts") or [],
            _value(raw.get("sum")),
        )
        if len(counts) != len(bounds) + 1 or total is None:
            return
        les = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
        family.add_metric(
            list(labels.values()),
            [(le, float(count)) for le, count in zip(les, counts, strict=True)],
            sum_value=total,
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class ReportCollector:
    """A ``prometheus_client`` collector over any :class:`ReportSource`."""

    def __init__(self, source: ReportSource, clock: IReactorTime) -> None:
        self.source = source
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the report: never read one to register

    def collect(self) -> Iterable[Metric]:
        report = self.source.report(self.clock.seconds())
        out = _Families()
        _node(out, report.get("node") or {})
        _backends(out, _rows(report.get("backends")))
        _pools(out, _rows(report.get("pools")))
        _sessions(out, _rows(report.get("sessions")))
        _array(out, report.get("array") or {})
        _packets(out, report.get("packets"))
        return list(out)


def _node(out: _Families, node: Mapping[str, Any]) -> None:
    me = {"node": str(node.get("number", ""))}
    out.gauge(
        "dlba_node_info",
        "This node: its number, role in the array and version (always 1).",
        {**me, "role": str(node.get("role", "")), "version": str(node.get("version", ""))},
        1,
    )
    out.gauge("dlba_node_term", "The election term this node is in.", me, node.get("term"))
    out.gauge(
        "dlba_start_time_seconds", "When this node started, Unix time.", me, node.get("started")
    )
    out.gauge(
        "dlba_client_connections",
        "Client connections open on this node.",
        me,
        node.get("connections_open"),
    )
    out.counter(
        "dlba_client_connections_total",
        "Client connections this node accepted.",
        me,
        node.get("connections_total"),
    )
    out.counter(
        "dlba_client_connections_refused_total",
        "Client connections closed at once: too many, or a pool's queue too long.",
        me,
        node.get("connections_refused"),
    )
    out.counter("dlba_requests_total", "Requests this node answered.", me, node.get("hits"))
    out.counter(
        "dlba_requests_rejected_total",
        "Requests this node refused with a status of its own.",
        me,
        node.get("requests_rejected"),
    )
    out.gauge(
        "dlba_response_time_average_seconds",
        "Average time to answer a request, on this node.",
        me,
        node.get("avg_response_time"),
    )


def _backends(out: _Families, rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        labels = {"backend": str(row.get("number", "")), "address": str(row.get("address", ""))}
        state = backend_state(row)
        out.gauge(
            "dlba_backend_up",
            "1 when the back end takes requests (enabled, not failed; draining counts).",
            labels,
            state in ("up", "draining"),
        )
        for name in BACKEND_STATES:
            out.gauge(
                "dlba_backend_state",
                "1 for the back end's state: up, draining, failed or disabled.",
                {**labels, "state": name},
                name == state,
            )
        out.counter(
            "dlba_backend_requests_total",
            "Requests the back end answered.",
            labels,
            row.get("hits"),
        )
        out.histogram(
            "dlba_backend_response_seconds",
            "Time from sending a request to the back end to its whole answer.",
            labels,
            row.get("response_histogram"),
        )
        out.gauge(
            "dlba_backend_response_time_average_seconds",
            "Moving average of the back end's response time.",
            labels,
            row.get("avg_response_time"),
        )
        out.gauge(
            "dlba_backend_open_connections",
            "Requests in flight to the back end.",
            labels,
            row.get("open_connections"),
        )
        out.gauge(
            "dlba_backend_queue_length",
            "Requests waiting for this back end in particular (bound by session or URL).",
            labels,
            row.get("queued"),
        )
        out.gauge(
            "dlba_backend_concurrency_limit",
            "Requests the back end may have in flight now (controlled loading).",
            labels,
            row.get("limit"),
        )
        out.gauge(
            "dlba_backend_controller_metric",
            "What the feedback controller steers by: p90 seconds or completions per second.",
            labels,
            row.get("metric"),
        )
        out.counter(
            "dlba_backend_failures_total",
            "Times the back end refused, dropped or timed out a connection.",
            labels,
            row.get("failures"),
        )
        out.gauge(
            "dlba_backend_sessions",
            "Sessions bound to the back end on this node.",
            labels,
            row.get("sessions"),
        )


def _pools(out: _Families, rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        labels = {"pool": str(row.get("name", ""))}
        out.gauge(
            "dlba_pool_info",
            "A pool and its scheduling policy (always 1).",
            {**labels, "policy": str(row.get("policy", ""))},
            1,
        )
        for number in row.get("backends") or ():
            out.gauge(
                "dlba_pool_backend",
                "1 for each back end of a pool (join on backend).",
                {**labels, "backend": str(number)},
                1,
            )
        out.gauge(
            "dlba_pool_queue_length",
            "Requests waiting in the pool's queue.",
            labels,
            row.get("queued"),
        )
        out.gauge(
            "dlba_pool_queue_oldest_wait_seconds",
            "How long the oldest waiting request has waited.",
            labels,
            row.get("oldest_wait"),
        )
        out.gauge(
            "dlba_pool_queue_limit",
            "Waiting requests past which the pool answers 503.",
            labels,
            row.get("queue_limit"),
        )
        out.gauge(
            "dlba_pool_queue_timeout_seconds",
            "How long a request may wait before a 503.",
            labels,
            row.get("queue_timeout"),
        )
        out.gauge(
            "dlba_pool_refusing_connections",
            "1 while the queue is long enough that new client connections are refused.",
            labels,
            row.get("refusing_connections"),
        )
        out.counter(
            "dlba_pool_refused_requests_total",
            "Requests answered 503 because the queue was full.",
            labels,
            row.get("refused_requests"),
        )
        out.counter(
            "dlba_pool_refused_connections_total",
            "Client connections refused while the queue was long.",
            labels,
            row.get("refused_connections"),
        )
        out.counter(
            "dlba_pool_expired_requests_total",
            "Requests answered 503 after waiting queue_timeout.",
            labels,
            row.get("expired"),
        )


def _sessions(out: _Families, rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        labels = {"pool": str(row.get("pool", ""))}
        out.gauge("dlba_sessions_entries", "Sessions in the pool's table.", labels, row.get("size"))
        out.gauge(
            "dlba_sessions_max_entries",
            "Sessions the table holds before it drops the least recent.",
            labels,
            row.get("max_size"),
        )
        out.counter(
            "dlba_sessions_hits_total",
            "Requests whose session was in the table.",
            labels,
            row.get("hits"),
        )
        out.counter(
            "dlba_sessions_misses_total",
            "Requests with a session id the table did not hold.",
            labels,
            row.get("misses"),
        )


def _array(out: _Families, array: Mapping[str, Any]) -> None:
    out.gauge(
        "dlba_sweeping",
        "1 on the node sweeping the array (the scheduler).",
        {},
        array.get("sweeping"),
    )
    out.counter("dlba_sweeps_total", "Full sweeps of the array's nodes.", {}, array.get("sweeps"))
    out.gauge(
        "dlba_last_sweep_timestamp_seconds",
        "When the last full sweep ended, Unix time.",
        {},
        array.get("last_sweep"),
    )
    out.gauge(
        "dlba_sweep_age_seconds", "Seconds since the last full sweep.", {}, array.get("sweep_age")
    )
    scheduler = array.get("scheduler")
    for row in _rows(array.get("nodes")):
        number = row.get("number")
        labels = {"node": str(number)}
        out.gauge(
            "dlba_array_node_info",
            "A node of the array and its addresses (always 1).",
            {**labels, "ip": str(row.get("ip", "")), "mac": str(row.get("mac", ""))},
            1,
        )
        out.gauge(
            "dlba_node_up",
            "1 when the node answered the last sweep.",
            labels,
            not row.get("failed"),
        )
        out.gauge(
            "dlba_node_scheduler",
            "1 for the node that is the scheduler.",
            labels,
            number == scheduler,
        )
        out.gauge(
            "dlba_node_enabled", "1 when the node may take clients.", labels, row.get("enabled")
        )
        out.gauge(
            "dlba_node_weight", "The node's share of buckets, relative.", labels, row.get("weight")
        )
        out.gauge(
            "dlba_node_buckets",
            "Client-table buckets assigned to the node.",
            labels,
            row.get("buckets"),
        )
        out.counter(
            "dlba_node_requests_total", "Requests the node answered.", labels, row.get("hits")
        )
        out.gauge(
            "dlba_node_open_connections",
            "Client connections open on the node.",
            labels,
            row.get("open_connections"),
        )
        out.gauge(
            "dlba_node_response_time_average_seconds",
            "Average time the node takes to answer a request.",
            labels,
            row.get("avg_response_time"),
        )
        out.gauge(
            "dlba_node_last_seen_timestamp_seconds",
            "When the node last answered a sweep, Unix time.",
            labels,
            row.get("last_seen"),
        )
    for row in _rows(array.get("summary")):
        labels = {"backend": str(row.get("backend", "")), "address": str(row.get("address", ""))}
        out.gauge(
            "dlba_array_backend_sessions",
            "Sessions bound to the back end, over all nodes.",
            labels,
            row.get("sessions"),
        )
        out.counter(
            "dlba_array_backend_requests_total",
            "Requests the back end answered, over all nodes.",
            labels,
            row.get("hits"),
        )
        out.gauge(
            "dlba_array_backend_open_connections",
            "Requests in flight to the back end, over all nodes.",
            labels,
            row.get("open_connections"),
        )
    table = array.get("client_table")
    if isinstance(table, Mapping):
        out.gauge(
            "dlba_client_table_version", "The client table's version.", {}, table.get("version")
        )
        out.gauge("dlba_client_table_size", "Buckets in the client table.", {}, table.get("size"))
        buckets = table.get("buckets")
        for node, count in buckets.items() if isinstance(buckets, Mapping) else ():
            out.gauge(
                "dlba_client_table_buckets",
                "Buckets the client table assigns to each node.",
                {"node": str(node)},
                count,
            )


def _packets(out: _Families, packets: Any) -> None:
    """The packet scheduler's counters (every node with a VIP; they move on the scheduler)."""
    if not isinstance(packets, Mapping):
        return
    path = {"path": str(packets.get("path", ""))}
    out.gauge(
        "dlba_packet_forwarding",
        "1 while this node forwards the VIP's frames (it is scheduler), else 0.",
        path,
        packets.get("forwarding"),
    )
    out.counter(
        "dlba_packet_frames_total",
        "Frames for the VIP the packet scheduler read.",
        {},
        packets.get("frames_in"),
    )
    forwarded = packets.get("forwarded")
    for node, count in forwarded.items() if isinstance(forwarded, Mapping) else ():
        out.counter(
            "dlba_packet_forwarded_frames_total",
            "Frames rewritten and sent to another node, by node.",
            {"node": str(node)},
            count,
        )
    out.counter(
        "dlba_packet_local_frames_total",
        "Frames for this node's own buckets, handed to its own stack.",
        {},
        packets.get("local"),
    )
    dropped = packets.get("dropped")
    for reason, count in dropped.items() if isinstance(dropped, Mapping) else ():
        out.counter(
            "dlba_packet_dropped_frames_total",
            "Frames for the VIP dropped, by reason.",
            {"reason": str(reason)},
            count,
        )
    out.counter(
        "dlba_packet_table_misses_total",
        "Frames whose client-table bucket had to be placed (new, idle or its node gone).",
        {},
        packets.get("table_misses"),
    )
    out.counter(
        "dlba_packet_send_errors_total",
        "Frames decided but not sent (a full queue, a link down).",
        {},
        packets.get("send_errors"),
    )
    out.counter(
        "dlba_packet_arp_answers_total",
        "ARP who-has answers for the VIP sent while scheduler (this term).",
        {},
        packets.get("arp_answered"),
    )
    fast = str(packets.get("fast_path", ""))
    if fast:
        out.gauge(
            "dlba_packet_fast_path_info",
            "Which path forwards the VIP's frames: nftables (the kernel) or python (always 1).",
            {"fast_path": fast},
            1,
        )
    if "kernel_forwarded" in packets:
        _kernel(out, packets)


def _kernel(out: _Families, packets: Mapping[str, Any]) -> None:
    """The kernel fast path's own counters: present while it forwards."""
    forwarded = packets.get("kernel_forwarded")
    for node, count in forwarded.items() if isinstance(forwarded, Mapping) else ():
        out.counter(
            "dlba_packet_kernel_frames_total",
            "Frames the kernel's ingress program handled without Python, by node (own: "
            "up this node's stack).",
            {"node": str(node)},
            count,
        )
    out.counter(
        "dlba_packet_kernel_misses_total",
        "Frames the kernel handed to Python: their bucket was not in its map.",
        {},
        packets.get("kernel_misses"),
    )
    out.gauge(
        "dlba_packet_kernel_buckets",
        "Buckets in the kernel's map (busy buckets of live nodes).",
        {},
        packets.get("kernel_buckets"),
    )
    out.counter(
        "dlba_packet_kernel_transactions_total",
        "nftables transactions that changed the kernel's map.",
        {},
        packets.get("kernel_transactions"),
    )
    out.counter(
        "dlba_packet_kernel_errors_total",
        "nftables transactions or reads that failed (the map is installed whole again).",
        {},
        packets.get("kernel_errors"),
    )


def metrics_registry(source: ReportSource, clock: IReactorTime) -> CollectorRegistry:
    """A registry of its own (never the global one): the report, and the process's figures."""
    registry = CollectorRegistry()
    registry.register(ReportCollector(source, clock))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type: OpenMetrics if the scraper asks, else text 0.0.4."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
