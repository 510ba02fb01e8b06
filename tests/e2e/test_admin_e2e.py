"""The admin web of a real ``twistd dlba`` with real traffic: metrics, API, dashboard.

The dashboard part drives a real headless Chromium (``tests/browser.py``) and leaves
screenshots, light and dark, in ``$DLBA_ARTIFACTS`` (or a temporary folder).
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred

from tests.browser import Browser, artifacts_dir, tools
from tests.e2e.harness import Backend, Dlba, E2ETestCase, reactor, request

SWEEP = {"sweep_delay": 0.5, "sweep_timeout": 1.0}


def pause(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class AdminE2ETests(E2ETestCase):
    timeout = 90

    async def start_with_traffic(self, requests: int) -> tuple[Dlba, list[Backend]]:
        backends = [self.backend("a"), self.backend("b")]
        dlba = await self.start(
            backends, pool={"policy": "round-robin"}, https=False, status=True, admin=True
        )
        await self.traffic(dlba, requests)
        return dlba, backends

    async def traffic(self, dlba: Dlba, requests: int) -> None:
        for _ in range(requests):
            answer, _client = await self.exchange(dlba.http, request("/"))
            self.assertEqual(answer.status, 200)

    async def admin_get(self, dlba: Dlba, path: str, **headers: str) -> Any:
        answer, _client = await self.exchange(
            dlba.ports["admin"],
            request(path, host="127.0.0.1", headers=[("Connection", "close"), *headers.items()]),
        )
        return answer

    async def status_until(self, dlba: Dlba, check: Any, what: str) -> dict[str, Any]:
        """/api/status, asked again every 0.1 s until ``check`` holds (at most 10 s)."""
        body: dict[str, Any] = {}
        for _ in range(100):
            answer = await self.admin_get(dlba, "/api/status")
            self.assertEqual(answer.status, 200)
            body = json.loads(answer.body)
            if check(body):
                return body
            await pause(0.1)
        raise AssertionError(f"{what}: /api/status says {json.dumps(body)[:2000]}")

    async def test_metrics_and_api_count_the_traffic(self) -> None:
        dlba, _ = await self.start_with_traffic(20)
        answer = await self.admin_get(dlba, "/metrics")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        samples: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(answer.body.decode()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        self.assertEqual(sum(s.value for s in samples["dlba_backend_requests_total"]), 20)
        self.assertEqual(
            sorted(s.value for s in samples["dlba_backend_requests_total"]), [10.0, 10.0]
        )
        self.assertEqual(sum(s.value for s in samples["dlba_backend_response_seconds_count"]), 20)
        inf = [
            s for s in samples["dlba_backend_response_seconds_bucket"] if s.labels["le"] == "+Inf"
        ]
        self.assertEqual(sum(s.value for s in inf), 20)
        self.assertEqual(samples["dlba_requests_total"][0].value, 20)
        self.assertGreaterEqual(samples["dlba_client_connections_total"][0].value, 20)
        [info] = samples["dlba_node_info"]
        self.assertEqual((info.labels["node"], info.labels["role"]), ("1", "scheduler"))
        self.assertEqual([s.labels["pool"] for s in samples["dlba_pool_info"]], ["app"])
        self.assertTrue(samples["process_resident_memory_bytes"][0].value > 0)

        body = await self.status_until(
            dlba, lambda b: b["array"]["sweeps"] >= 1, "a sweep of the lone node"
        )
        self.assertEqual(answer.header("Cache-Control"), "no-store")
        self.assertEqual(body["node"]["hits"], 20)
        self.assertEqual([b["hits"] for b in body["backends"]], [10, 10])
        self.assertEqual(body["array"]["scheduler"], 1)
        self.assertEqual([n["number"] for n in body["array"]["nodes"]], [1])
        # The scheduler holds the client table; no frames are routed yet, so all free.
        table = body["array"]["client_table"]
        self.assertEqual((table["version"], table["size"]), (0, 4093))
        self.assertEqual(set(table["owners"]), {-1})
        self.assertGreaterEqual(len(body["history"]["times"]), 1)
        self.assertEqual(set(body["history"]["backends"]), {"1", "2"})

        page = await self.admin_get(dlba, "/")
        self.assertEqual(page.status, 200)
        self.assertIn("default-src 'none'", page.header("Content-Security-Policy") or "")
        for method in ("POST", "DELETE"):
            answer, _c = await self.exchange(
                dlba.ports["admin"],
                request("/metrics", method=method, host="127.0.0.1", body=b""),
            )
            self.assertEqual(answer.status, 405)
        missing = await self.admin_get(dlba, "/nope")
        self.assertEqual(missing.status, 404)

    async def test_the_dashboard_follows_the_traffic(self) -> None:
        tools()  # skips, saying what is missing, when there is no browser
        dlba, _ = await self.start_with_traffic(20)
        url = f"http://127.0.0.1:{dlba.ports['admin']}/"
        browser = await Browser.launch(self)
        await browser.get(url)
        await browser.wait_text(
            '#tile-rate [data-field="hits"]',
            lambda t: t == "20 requests since start",
            "the node's hits",
        )
        rows = await browser.script(
            "return Array.from(document.querySelectorAll('#pools tr[data-backend]'))"
            ".map(r => [r.dataset.backend, r.querySelector('[data-field=hits]').textContent,"
            " r.querySelector('[data-field=state]').textContent])"
        )
        self.assertEqual(rows, [["1", "10", "up"], ["2", "10", "up"]])
        node = await browser.text("#nodes tbody tr")
        self.assertIn("this node", node or "")
        self.assertIn("scheduler", node or "")
        await browser.wait_for(
            "a fresh sweep",
            "return document.getElementById('sweep').className",
            lambda c: c == "pill ok",
        )
        legend = await browser.script(
            "return document.getElementById('no-client-table').hidden"
            " && document.getElementById('buckets-legend').textContent"
        )
        self.assertIn("unassigned", legend or "")

        await browser.script("window.dlbaMarker = 7")
        await self.traffic(dlba, 30)
        await browser.wait_text(
            '#tile-rate [data-field="hits"]',
            lambda t: t == "50 requests since start",
            "the node's hits after more traffic",
        )
        await browser.wait_text(
            'tr[data-backend="2"] [data-field="hits"]', lambda t: t == "25", "back end 2's hits"
        )
        # no reload: the page's own state is still there
        self.assertEqual(await browser.script("return window.dlbaMarker"), 7)
        # a second sample has counted the traffic: a rate, not a dash
        await browser.wait_text(
            'tr[data-backend="1"] [data-field="rate"]',
            lambda t: t.endswith("/s"),
            "back end 1's request rate",
        )
        self.assertEqual(await browser.console_errors(), [])

        folder = artifacts_dir()
        light = await browser.screenshot(os.path.join(folder, "dashboard-node.png"))
        dark_browser = await Browser.launch(self, dark=True)
        await dark_browser.get(url)
        await dark_browser.wait_text(
            '#tile-rate [data-field="hits"]', lambda t: t.startswith("50 "), "the dark page"
        )
        dark = await dark_browser.screenshot(os.path.join(folder, "dashboard-node-dark.png"))
        print(f"\ndashboard screenshots: {light} {dark}")
        self.assertGreater(os.path.getsize(light), 10000)
