"""The admin web over a real loopback socket: pages, API, metrics, methods, headers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from dlba.admin.metrics import ReportCollector, backend_state
from dlba.admin.web import (
    PAGE_POLICY,
    STATIC_FILES,
    DashboardSettings,
    make_admin_service,
    make_admin_site,
    to_json,
)
from dlba.history import History

from .admin_support import BOUNDS, ReportFixture, fixture_report

NOW = 1764700000.0


class Answer:
    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class _Collect(Protocol):
    """The whole body (readBody warns of transports that cannot abort, as a HEAD's)."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self.parts))


class LoopbackSite(TestCase):
    """A real admin site on 127.0.0.1, a real HTTP client."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.source = ReportFixture()
        self.history = History()
        self.history.sample(NOW, self.source.report(NOW))
        settings = DashboardSettings(refresh=2.0, sweep_warn=5.0, sweep_alarm=9.0)
        site = make_admin_site(self.source, self.clock, self.history, settings)
        self.port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def fetch(
        self, path: str, method: bytes = b"GET", headers: dict[str, str] | None = None
    ) -> Any:
        sent = Headers({k: [v] for k, v in (headers or {}).items()})
        response = yield self.agent.request(method, (self.base + path).encode(), sent)
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Collect(done))
        body = yield done
        return Answer(response.code, response.headers, body)


class PageTests(LoopbackSite):
    @defer.inlineCallbacks
    def test_the_dashboard_page(self) -> Any:
        answer = yield self.fetch("/")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(answer.header("Content-Security-Policy"), PAGE_POLICY.decode())
        self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(answer.header("X-Frame-Options"), "DENY")
        # relative: the page works behind a proxy that mounts it under a path
        self.assertIn(b'<script src="static/dashboard.js" defer></script>', answer.body)
        self.assertIn(b'href="static/dashboard.css"', answer.body)
        # no CDN, nothing inline the policy would block
        self.assertNotIn(b"http://", answer.body.replace(b'"http://www.w3.org/2000/svg"', b""))
        self.assertNotIn(b"https://", answer.body)
        self.assertNotIn(b"<style", answer.body)
        self.assertNotIn(b"style=", answer.body)

    @defer.inlineCallbacks
    def test_the_static_files(self) -> Any:
        types = {
            "/static/dashboard.css": "text/css; charset=utf-8",
            "/static/dashboard.js": "text/javascript; charset=utf-8",
            "/static/favicon.svg": "image/svg+xml",
            "/favicon.ico": "image/svg+xml",
        }
        for path, content_type in types.items():
            answer = yield self.fetch(path)
            self.assertEqual(answer.code, 200, path)
            self.assertEqual(answer.header("Content-Type"), content_type, path)
            self.assertEqual(answer.header("Cache-Control"), "no-cache", path)
            self.assertTrue(answer.body, path)
            self.assertIsNone(answer.header("Content-Security-Policy"), path)

    @defer.inlineCallbacks
    def test_a_known_etag_is_a_304(self) -> Any:
        first = yield self.fetch("/static/dashboard.js")
        etag = first.header("ETag")
        self.assertTrue(etag)
        again = yield self.fetch("/static/dashboard.js", headers={"If-None-Match": etag})
        self.assertEqual(again.code, 304)
        self.assertEqual(again.body, b"")

    @defer.inlineCallbacks
    def test_head_has_the_headers_and_no_body(self) -> Any:
        get = yield self.fetch("/")
        head = yield self.fetch("/", b"HEAD")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.header("Content-Length"), str(len(get.body)))
        self.assertEqual(head.header("Content-Type"), "text/html; charset=utf-8")
        api = yield self.fetch("/api/status", b"HEAD")
        self.assertEqual((api.code, api.body), (200, b""))
        self.assertEqual(api.header("Cache-Control"), "no-store")
        metrics = yield self.fetch("/metrics", b"HEAD")
        self.assertEqual((metrics.code, metrics.body), (200, b""))

    @defer.inlineCallbacks
    def test_other_methods_are_405_naming_get_and_head(self) -> Any:
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
            for path in ("/", "/api/status", "/metrics", "/static/dashboard.css"):
                answer = yield self.fetch(path, method)
                self.assertEqual(answer.code, 405, (method, path))
                self.assertEqual(answer.header("Allow"), "GET, HEAD", (method, path))
                self.assertEqual(answer.header("Cache-Control"), "no-store")
        self.assertEqual(self.source.calls, [NOW])  # none of them read the report

    @defer.inlineCallbacks
    def test_unknown_paths_are_404(self) -> Any:
        for path in (
            "/nope",
            "/index.html",
            "/api",
            "/api/",
            "/api/nope",
            "/api/status/",
            "/api/status/x",
            "/metrics/",
            "/static",
            "/static/",
            "/static/nope.js",
            "/static/../web.py",
            "/static/dashboard.js/x",
            "//",
        ):
            answer = yield self.fetch(path)
            self.assertEqual(answer.code, 404, path)
            self.assertEqual(answer.header("Content-Type"), "text/plain; charset=utf-8", path)
            self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff", path)
        post = yield self.fetch("/nope", b"POST")
        self.assertEqual(post.code, 404)


class StatusApiTests(LoopbackSite):
    @defer.inlineCallbacks
    def test_the_report_history_and_settings(self) -> Any:
        self.clock.advance(2.0)
        self.source.add_hits(1, 10)
        self.history.sample(self.clock.seconds(), self.source.report(self.clock.seconds()))
        answer = yield self.fetch("/api/status")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(answer.header("Cache-Control"), "no-store")
        body = json.loads(answer.body)
        expected = self.source.report(NOW + 2.0)
        for key, value in expected.items():
            self.assertEqual(body[key], value, key)
        self.assertEqual(body["time"], NOW + 2.0)
        self.assertEqual(body["history"]["times"], [NOW, NOW + 2.0])
        self.assertEqual(body["history"]["backends"]["1"]["rate"], [None, 5.0])
        self.assertEqual(body["dashboard"], {"refresh": 2.0, "sweep_warn": 5.0, "sweep_alarm": 9.0})

    @defer.inlineCallbacks
    def test_non_finite_numbers_are_null(self) -> Any:
        self.source.data["node"]["avg_response_time"] = math.nan
        self.source.data["backends"][0]["metric"] = math.inf
        answer = yield self.fetch("/api/status")
        body = json.loads(answer.body)  # strict JSON: NaN would not parse in a browser
        self.assertIsNone(body["node"]["avg_response_time"])
        self.assertIsNone(body["backends"][0]["metric"])

    def test_to_json_is_compact_and_strict(self) -> None:
        self.assertEqual(to_json({"a": [1, 2.5, None]}), b'{"a":[1,2.5,null]}')
        self.assertEqual(to_json({"a": (math.nan, -math.inf)}), b'{"a":[null,null]}')


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def one(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [
        s for s in found.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if len(matching) != 1:
        raise AssertionError(f"{name}{labels}: {len(matching)} samples")
    return matching[0].value


class MetricsEndpointTests(LoopbackSite):
    @defer.inlineCallbacks
    def test_prometheus_text_exposition(self) -> Any:
        answer = yield self.fetch("/metrics")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(answer.header("Cache-Control"), "no-store")
        families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
        self.assertEqual(families["dlba_backend_response_seconds"].type, "histogram")
        self.assertEqual(families["dlba_backend_requests"].type, "counter")
        self.assertEqual(families["dlba_backend_open_connections"].type, "gauge")
        self.assertIn("process_cpu_seconds", families)  # the process's own figures too

    @defer.inlineCallbacks
    def test_openmetrics_when_asked(self) -> Any:
        answer = yield self.fetch(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        self.assertEqual(answer.code, 200)
        self.assertTrue(answer.header("Content-Type").startswith("application/openmetrics-text"))
        self.assertTrue(answer.body.endswith(b"# EOF\n"))

    @defer.inlineCallbacks
    def test_read_at_scrape_time(self) -> Any:
        first = yield self.fetch("/metrics")
        self.source.add_hits(1, 5)
        self.clock.advance(3.0)
        second = yield self.fetch("/metrics")
        before, after = samples(first.body.decode()), samples(second.body.decode())
        self.assertEqual(one(before, "dlba_backend_requests_total", backend="1"), 10)
        self.assertEqual(one(after, "dlba_backend_requests_total", backend="1"), 15)
        self.assertEqual(self.source.calls[-2:], [NOW, NOW + 3.0])


def comparable(found: dict[str, list[Sample]]) -> dict[str, list[Any]]:
    return {k: sorted((sorted(s.labels.items()), s.value) for s in v) for k, v in found.items()}


class CollectorTests(SynchronousTestCase):
    """Every figure of the fixture report, where Prometheus users will look for it."""

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.source = ReportFixture(fixture_report(NOW))
        self.collector = ReportCollector(self.source, clock)

    def found(self) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        families: Iterable[Any] = self.collector.collect()
        for family in families:
            for sample in family.samples:
                out.setdefault(sample.name, []).append(sample)
        # through the text format and back, as a scraper reads it
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(self.collector)
        parsed = samples(generate_latest(registry).decode())
        self.assertEqual(
            {
                k: sorted((tuple(sorted(s.labels.items())), s.value) for s in v)
                for k, v in parsed.items()
            },
            {
                k: sorted((tuple(sorted(s.labels.items())), s.value) for s in v)
                for k, v in out.items()
            },
        )
        return parsed

    def test_backend_histogram(self) -> None:
        found = self.found()
        labels = {"backend": "1", "address": "127.0.0.1:9001"}
        buckets = {
            s.labels["le"]: s.value
            for s in found["dlba_backend_response_seconds_bucket"]
            if s.labels["backend"] == "1"
        }
        expected = fixture_report()["backends"][0]["response_histogram"]
        les = [str(float(b)) for b in BOUNDS] + ["+Inf"]
        self.assertEqual(buckets, dict(zip(les, map(float, expected["counts"]), strict=True)))
        self.assertEqual(one(found, "dlba_backend_response_seconds_count", **labels), 10)
        self.assertAlmostEqual(
            one(found, "dlba_backend_response_seconds_sum", **labels), expected["sum"]
        )

    def test_backend_figures(self) -> None:
        found = self.found()
        b2 = {"backend": "2", "address": "127.0.0.1:9002"}
        self.assertEqual(one(found, "dlba_backend_requests_total", **b2), 40)
        self.assertEqual(one(found, "dlba_backend_failures_total", **b2), 7)
        self.assertEqual(one(found, "dlba_backend_open_connections", **b2), 1)
        self.assertEqual(one(found, "dlba_backend_sessions", **b2), 6)
        self.assertEqual(one(found, "dlba_backend_concurrency_limit", backend="3"), 8)
        self.assertEqual(one(found, "dlba_backend_queue_length", backend="3"), 2)
        self.assertEqual(one(found, "dlba_backend_response_time_average_seconds", **b2), 0.004)
        self.assertEqual(one(found, "dlba_backend_controller_metric", **b2), 0.0)
        ups = {s.labels["backend"]: s.value for s in found["dlba_backend_up"]}
        self.assertEqual(ups, {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0})
        states = {
            s.labels["backend"]: s.labels["state"]
            for s in found["dlba_backend_state"]
            if s.value == 1
        }
        self.assertEqual(states, {"1": "up", "2": "failed", "3": "draining", "4": "disabled"})
        self.assertEqual(len(found["dlba_backend_state"]), 16)  # every state of every back end

    def test_pools_and_sessions(self) -> None:
        found = self.found()
        self.assertEqual(one(found, "dlba_pool_queue_length", pool="demo"), 2)
        self.assertEqual(one(found, "dlba_pool_queue_oldest_wait_seconds", pool="demo"), 0.25)
        self.assertEqual(one(found, "dlba_pool_queue_limit", pool="static"), 64)
        self.assertEqual(one(found, "dlba_pool_queue_timeout_seconds", pool="static"), 1.0)
        self.assertEqual(one(found, "dlba_pool_refused_requests_total", pool="demo"), 6)
        self.assertEqual(one(found, "dlba_pool_refused_connections_total", pool="demo"), 8)
        self.assertEqual(one(found, "dlba_pool_expired_requests_total", pool="demo"), 1)
        self.assertEqual(one(found, "dlba_pool_refusing_connections", pool="static"), 1)
        self.assertEqual(one(found, "dlba_pool_refusing_connections", pool="demo"), 0)
        self.assertEqual(one(found, "dlba_pool_info", pool="static", policy="session"), 1)
        members = sorted(
            (s.labels["pool"], s.labels["backend"]) for s in found["dlba_pool_backend"]
        )
        self.assertEqual(members, [("demo", "1"), ("demo", "2"), ("demo", "3"), ("static", "4")])
        self.assertEqual(one(found, "dlba_sessions_entries", pool="static"), 3)
        self.assertEqual(one(found, "dlba_sessions_max_entries", pool="static"), 100000)
        self.assertEqual(one(found, "dlba_sessions_hits_total", pool="static"), 5)
        self.assertEqual(one(found, "dlba_sessions_misses_total", pool="static"), 3)

    def test_this_node(self) -> None:
        found = self.found()
        self.assertEqual(
            one(found, "dlba_node_info", node="1", role="scheduler", version="0.1.0"), 1
        )
        self.assertEqual(one(found, "dlba_node_term", node="1"), 2)
        self.assertEqual(one(found, "dlba_start_time_seconds"), 1764699000.0)
        self.assertEqual(one(found, "dlba_client_connections"), 3)
        self.assertEqual(one(found, "dlba_client_connections_total"), 120)
        self.assertEqual(one(found, "dlba_client_connections_refused_total"), 5)
        self.assertEqual(one(found, "dlba_requests_total"), 100)
        self.assertEqual(one(found, "dlba_requests_rejected_total"), 4)
        self.assertEqual(one(found, "dlba_response_time_average_seconds"), 0.002)

    def test_the_array(self) -> None:
        found = self.found()
        self.assertEqual(one(found, "dlba_sweeping"), 1)
        self.assertEqual(one(found, "dlba_sweeps_total"), 40)
        self.assertEqual(one(found, "dlba_sweep_age_seconds"), 2.0)
        self.assertEqual(one(found, "dlba_last_sweep_timestamp_seconds"), NOW - 2.0)
        self.assertEqual(one(found, "dlba_node_up", node="1"), 1)
        self.assertEqual(one(found, "dlba_node_up", node="2"), 0)
        self.assertEqual(one(found, "dlba_node_scheduler", node="1"), 1)
        self.assertEqual(one(found, "dlba_node_scheduler", node="2"), 0)
        self.assertEqual(one(found, "dlba_node_buckets", node="2"), 2093)
        self.assertEqual(one(found, "dlba_node_weight", node="2"), 2)
        self.assertEqual(one(found, "dlba_node_requests_total", node="2"), 200)
        self.assertEqual(one(found, "dlba_node_open_connections", node="2"), 9)
        self.assertEqual(one(found, "dlba_node_response_time_average_seconds", node="2"), 0.003)
        self.assertEqual(one(found, "dlba_node_last_seen_timestamp_seconds", node="1"), NOW - 2)
        # never seen: no sample, not a zero that would read as 1970
        self.assertNotIn(
            "2", [s.labels["node"] for s in found["dlba_node_last_seen_timestamp_seconds"]]
        )
        self.assertEqual(
            one(found, "dlba_array_node_info", node="2", ip="127.0.0.12", mac="02:00:00:00:00:02"),
            1,
        )
        self.assertEqual(one(found, "dlba_array_backend_sessions", backend="1"), 3)
        self.assertEqual(one(found, "dlba_array_backend_requests_total", backend="1"), 10)
        self.assertEqual(one(found, "dlba_array_backend_open_connections", backend="1"), 0)
        self.assertNotIn("dlba_client_table_version", found)

    def test_no_sweep_yet(self) -> None:
        array = self.source.data["array"]
        array.update(last_sweep=None, sweep_age=None, sweeping=False)
        found = self.found()
        self.assertNotIn("dlba_sweep_age_seconds", found)
        self.assertNotIn("dlba_last_sweep_timestamp_seconds", found)
        self.assertEqual(one(found, "dlba_sweeping"), 0)

    def test_the_client_table(self) -> None:
        self.source.data["array"]["client_table"] = {
            "version": 7,
            "size": 5,
            "buckets": {"1": 2, "2": 3},
            "owners": [1, 2, 2, 1, 2],
        }
        found = self.found()
        self.assertEqual(one(found, "dlba_client_table_version"), 7)
        self.assertEqual(one(found, "dlba_client_table_size"), 5)
        self.assertEqual(one(found, "dlba_client_table_buckets", node="2"), 3)

    def test_the_packet_scheduler(self) -> None:
        from dlba.frames import FrameCounters

        counters = FrameCounters()
        counters.frames_in, counters.local, counters.table_misses = 100, 30, 4
        counters.forwarded = {2: 50, 3: 15}
        counters.dropped["fragment"] = 5
        self.source.data["packets"] = {
            "path": "af_packet",
            "forwarding": True,
            "arp_answered": 2,
            **counters.row(),
        }
        found = self.found()
        self.assertEqual(one(found, "dlba_packet_forwarding", path="af_packet"), 1)
        self.assertEqual(one(found, "dlba_packet_frames_total"), 100)
        self.assertEqual(one(found, "dlba_packet_local_frames_total"), 30)
        self.assertEqual(one(found, "dlba_packet_forwarded_frames_total", node="3"), 15)
        self.assertEqual(one(found, "dlba_packet_dropped_frames_total", reason="fragment"), 5)
        self.assertEqual(one(found, "dlba_packet_dropped_frames_total", reason="not_tcp"), 0)
        self.assertEqual(one(found, "dlba_packet_table_misses_total"), 4)
        self.assertEqual(one(found, "dlba_packet_arp_answers_total"), 2)

    def test_the_kernel_fast_path(self) -> None:
        self.source.data["packets"] = {
            "path": "af_packet",
            "forwarding": True,
            "fast_path": "nftables",
            "kernel_forwarded": {"1": 40, "2": 900},
            "kernel_misses": 12,
            "kernel_buckets": 30,
            "kernel_transactions": 7,
            "kernel_errors": 0,
        }
        found = self.found()
        self.assertEqual(one(found, "dlba_packet_fast_path_info", fast_path="nftables"), 1)
        self.assertEqual(one(found, "dlba_packet_kernel_frames_total", node="2"), 900)
        self.assertEqual(one(found, "dlba_packet_kernel_misses_total"), 12)
        self.assertEqual(one(found, "dlba_packet_kernel_buckets"), 30)
        self.assertEqual(one(found, "dlba_packet_kernel_transactions_total"), 7)
        self.assertEqual(one(found, "dlba_packet_kernel_errors_total"), 0)

    def test_the_python_path_has_no_kernel_metrics(self) -> None:
        self.source.data["packets"] = {"path": "af_packet", "fast_path": "python"}
        found = self.found()
        self.assertEqual(one(found, "dlba_packet_fast_path_info", fast_path="python"), 1)
        self.assertNotIn("dlba_packet_kernel_frames_total", found)

    def test_no_packet_scheduler_no_packet_metrics(self) -> None:
        self.assertNotIn("dlba_packet_frames_total", self.found())

    def test_a_sparse_report_still_scrapes(self) -> None:
        self.source.data = {"time": NOW, "node": {"number": 1}, "backends": [{"number": 5}]}
        found = self.found()
        self.assertEqual(one(found, "dlba_backend_up", backend="5"), 1)
        self.assertNotIn("dlba_backend_response_seconds_bucket", found)

    def test_backend_state_words(self) -> None:
        self.assertEqual(backend_state({"enabled": False, "failed": True}), "disabled")
        self.assertEqual(
            backend_state({"enabled": True, "failed": True, "draining": True}), "failed"
        )
        self.assertEqual(backend_state({"enabled": True, "draining": True}), "draining")
        self.assertEqual(backend_state({"enabled": True}), "up")


class ServiceTests(SynchronousTestCase):
    """The listener and the sampler, on a memory reactor and its clock."""

    def test_listens_and_samples_on_the_clock(self) -> None:
        clock = MemoryReactorClock()
        clock.advance(NOW)
        source = ReportFixture()
        svc = make_admin_service("tcp:7780:interface=127.0.0.1", source, clock, interval=2.0)
        svc.startService()
        self.assertEqual([(p, i) for p, _, _, i in clock.tcpServers], [(7780, "127.0.0.1")])
        self.assertEqual(source.calls, [NOW])  # a sample at once: the first page has a point
        source.add_hits(1, 20)
        clock.advance(2.0)
        self.assertEqual(source.calls, [NOW, NOW + 2.0])
        site: Any = clock.tcpServers[0][1]
        status = site.resource.children[b"api"].children[b"status"]
        self.assertEqual(status.history.to_dict()["backends"]["1"]["rate"], [None, 10.0])
        self.assertEqual(status.settings.refresh, 2.0)
        svc.stopService()
        clock.advance(10.0)
        self.assertEqual(len(source.calls), 2)

    def test_a_failing_report_skips_a_sample_only(self) -> None:
        clock = MemoryReactorClock()
        source = ReportFixture()
        svc = make_admin_service("tcp:0", source, clock, interval=1.0)
        real = source.report
        fail = [True]

        def report(now: float) -> dict[str, Any]:
            if fail[0]:
                fail[0] = False
                raise RuntimeError("boom")
            return real(now)

        source.report = report  # type: ignore[method-assign]
        svc.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(len(source.calls), 2)
        svc.stopService()

    def test_the_named_files_ship(self) -> None:
        from importlib import resources

        static = resources.files("dlba.admin").joinpath("static")
        for name in STATIC_FILES:
            self.assertTrue(static.joinpath(name).is_file(), name)


class NodeWiringTests(SynchronousTestCase):
    """``[listen] admin`` in the config: the node's report, on the node's own ip."""

    CONFIG = """
[listen]
status = "tcp:0"
admin = "tcp:0"
[array]
sweep_delay = 2.0
sweep_timeout = 1.0
sweep_retries = 3
[[array.node]]
number = 1
mac = "02:00:00:00:00:01"
ip = "127.0.0.21"
[[array.node]]
number = 2
mac = "02:00:00:00:00:02"
ip = "127.0.0.22"
"""

    def test_admin_listens_on_the_node_ip_and_reads_its_report(self) -> None:
        from dlba.config import parse
        from dlba.node import make_node_service

        reactor = MemoryReactorClock()
        reactor.advance(NOW)
        node = make_node_service(parse(self.CONFIG, "x.toml"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        admin = node.getServiceNamed("admin")
        site: Any = next(f for _, f, _, _ in reactor.tcpServers if hasattr(f, "resource"))
        self.assertEqual(
            sorted(i for _, _, _, i in reactor.tcpServers), ["127.0.0.21", "127.0.0.21"]
        )
        status = site.resource.children[b"api"].children[b"status"]
        self.assertIs(status.source, node.report)
        self.assertEqual(status.history.times[-1], NOW)  # sampled at start
        # a 2 s pause and two nodes of 1 s each, three tries: amber past 8 s, red past 16 s
        self.assertEqual((status.settings.sweep_warn, status.settings.sweep_alarm), (8.0, 16.0))
        self.assertEqual(admin.getServiceNamed("admin-sampler").clock, reactor)

    def test_no_admin_key_no_admin_web(self) -> None:
        from dlba.config import parse
        from dlba.node import make_node_service

        node = make_node_service(parse('[listen]\nstatus = "tcp:0"\n', "x.toml"), Clock())
        self.assertRaises(KeyError, node.getServiceNamed, "admin")

    def test_the_demo_serves_it_on_7780(self) -> None:
        from dlba.demo import demo_config

        self.assertEqual(
            demo_config("/tmp/x", "x.pem").listen.admin, "tcp:7780:interface=127.0.0.1"
        )
