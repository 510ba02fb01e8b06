"""The dashboard in a real headless Chromium, served in process from a report we change.

What a person would see: the back ends and nodes, numbers that change without a reload,
the sweep's age turning amber then red, the client table's picture, the banner when the
node stops answering.  A screenshot goes to ``$DLBA_ARTIFACTS`` (or a temporary folder).
``tests/e2e/test_admin_e2e.py`` does the same against a real node with traffic.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from dlba.admin.web import DashboardSettings, make_admin_site
from dlba.history import History

from .admin_support import ReportFixture
from .browser import Browser, artifacts_dir, tools

R: Any = reactor


class _Tracked:
    """The site's open connections, to close what the browser left open before the end."""

    def __init__(self, site: Any) -> None:
        self.open: set[Any] = set()
        build = site.buildProtocol

        def build_protocol(addr: Any) -> Any:
            proto = build(addr)
            lost = proto.connectionLost
            self.open.add(proto)

            def connection_lost(reason: Any) -> None:
                self.open.discard(proto)
                lost(reason)

            proto.connectionLost = connection_lost
            return proto

        site.buildProtocol = build_protocol

    async def close(self) -> None:
        for proto in list(self.open):
            proto.transport.abortConnection()
        for _ in range(100):  # bounded: each turn of the reactor ends some
            if not self.open:
                return
            await deferLater(R, 0.01, lambda: None)
        raise AssertionError(f"{len(self.open)} admin connections would not close")


class DashboardInBrowserTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        tools()  # skips, saying what is missing, when there is no browser
        self.source = ReportFixture()
        self.history = History()
        self.sample()
        # a quick refresh: each change below shows within half a second
        settings = DashboardSettings(refresh=0.5, sweep_warn=5.0, sweep_alarm=15.0)
        site = make_admin_site(self.source, R, self.history, settings)
        self.connections = _Tracked(site)
        self.port = R.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(lambda: defer.ensureDeferred(self.connections.close()))
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/"

    def sample(self) -> None:
        now = R.seconds()
        self.history.sample(now, self.source.report(now))

    @defer.inlineCallbacks
    def test_the_dashboard_shows_the_report_and_follows_it(self) -> Any:
        browser: Browser = yield Browser.launch(self)
        yield browser.get(self.url)
        hits = '[data-pool="demo"] tr[data-backend="1"] [data-field="hits"]'
        yield browser.wait_text(hits, lambda t: t == "10", "back end 1's hits")

        # what is there: every back end under its pool, both nodes, the scheduler
        rows = yield browser.script(
            "return Array.from(document.querySelectorAll('#pools tr[data-backend]'))"
            ".map(r => [r.closest('[data-pool]').dataset.pool, r.dataset.backend,"
            " r.querySelector('[data-field=state]').textContent])"
        )
        self.assertEqual(
            rows,
            [
                ["demo", "1", "up"],
                ["demo", "2", "failed"],
                ["demo", "3", "draining"],
                ["static", "4", "disabled"],
            ],
        )
        nodes = yield browser.script(
            "return Array.from(document.querySelectorAll('#nodes tbody tr'))"
            ".map(r => r.textContent)"
        )
        self.assertEqual(len(nodes), 2)
        self.assertIn("this node", nodes[0])
        self.assertIn("scheduler", nodes[0])
        self.assertIn("127.0.0.12", nodes[1])
        role = yield browser.text("#role")
        self.assertEqual(role, "scheduler")
        shown = yield browser.script("return !document.getElementById('no-client-table').hidden")
        self.assertTrue(shown, "no client table yet")
        sweep = yield browser.script(
            "const e = document.getElementById('sweep');return [e.textContent, e.className]"
        )
        self.assertEqual(sweep, ["sweep 2.0 s ago", "pill ok"])
        errors = yield browser.console_errors()
        self.assertEqual(errors, [])  # no script error, no CSP violation

        # more answers: the numbers move, the page stays (a reload would drop the marker)
        yield browser.script("window.dlbaMarker = 42")
        self.source.add_hits(1, 1234)
        self.sample()
        yield browser.wait_text(hits, lambda t: t == "1,244", "back end 1's new hits")
        tile = yield browser.wait_text(
            '#tile-rate [data-field="hits"]', lambda t: t.startswith("1,334 "), "the node's hits"
        )
        self.assertEqual(tile, "1,334 requests since start")
        rate = yield browser.text('[data-pool="demo"] tr[data-backend="1"] [data-field="rate"]')
        self.assertRegex(rate or "", r"/s$")
        marker = yield browser.script("return window.dlbaMarker")
        self.assertEqual(marker, 42)
        line = yield browser.script(
            "return document.querySelector('#tile-rate .spark .line').getAttribute('d')"
        )
        self.assertTrue(line and line.startswith("M"), line)  # the sparkline has a curve

        # the sweep goes stale: amber, then red
        array = self.source.data["array"]
        array["sweep_age"] = 7.5
        yield browser.wait_for(
            "an amber sweep",
            "return document.getElementById('sweep').className",
            lambda c: c == "pill warn",
        )
        array["sweep_age"] = 31.0
        yield browser.wait_for(
            "a red sweep",
            "return document.getElementById('sweep').className",
            lambda c: c == "pill alarm",
        )

        # a back end fails, another recovers
        self.source.data["backends"][0]["failed"] = True
        self.source.data["backends"][1]["failed"] = False
        yield browser.wait_text(
            '[data-pool="demo"] tr[data-backend="1"] [data-field="state"]',
            lambda t: t == "failed",
            "back end 1 failed",
        )
        state2 = yield browser.text('[data-pool="demo"] tr[data-backend="2"] [data-field="state"]')
        self.assertEqual(state2, "up")

        # the client table arrives: a bar per node, a map of the buckets
        owners = [1 if i % 3 else 2 for i in range(4093)]
        owners[:100] = [-1] * 100
        array["client_table"] = {
            "version": 3,
            "size": 4093,
            "buckets": {"1": owners.count(1), "2": owners.count(2)},
            "owners": owners,
        }
        legend = yield browser.wait_text(
            "#buckets-legend", lambda t: "version 3" in t, "the client table's legend"
        )
        self.assertIn("node 1", legend)
        self.assertIn("unassigned", legend)
        segments = yield browser.script(
            "return document.querySelectorAll('#buckets-bar .seg').length"
        )
        self.assertEqual(segments, 2)
        canvas = yield browser.script(
            "const c = document.getElementById('bucket-map');"
            "return [c.hidden, c.width * c.height >= 4093]"
        )
        self.assertEqual(canvas, [False, True])
        hidden = yield browser.script("return document.getElementById('no-client-table').hidden")
        self.assertTrue(hidden)

        # the packet scheduler, forwarding in the kernel: the path and its counters
        self.source.data["packets"] = {
            "path": "af_packet",
            "vip": "10.77.0.100",
            "interface": "eth0",
            "forwarding": True,
            "fast_path": "nftables",
            "frames_in": 31,
            "local": 0,
            "forwarded": {"2": 31},
            "table_misses": 9,
            "dropped": {},
            "kernel_forwarded": {"1": 1200, "2": 45678},
            "kernel_misses": 31,
            "kernel_buckets": 17,
            "kernel_errors": 0,
        }
        sub = yield browser.wait_text(
            "#packets-sub", lambda t: "kernel fast path" in t, "the packets box's path"
        )
        self.assertIn("forwarding", sub)
        legend = yield browser.text("#packets-legend")
        self.assertIn("kernel to node 2 45,678", legend or "")
        self.assertIn("kernel misses 31", legend or "")
        self.source.data["packets"]["fast_path"] = "python"
        del self.source.data["packets"]["kernel_forwarded"]
        yield browser.wait_text(
            "#packets-sub", lambda t: "forwarded in Python" in t, "the Python path shown"
        )
        legend = yield browser.text("#packets-legend")
        self.assertNotIn("kernel", legend or "")

        self.source.add_hits(3, 500)
        self.sample()
        yield browser.wait_text(
            '[data-pool="demo"] tr[data-backend="3"] [data-field="hits"]',
            lambda t: t == "550",
            "back end 3's hits",
        )
        folder = artifacts_dir()
        path = yield browser.screenshot(os.path.join(folder, "dashboard-fixture.png"))
        print(f"\ndashboard screenshot: {path}")
        self.assertGreater(os.path.getsize(path), 10000)
        errors = yield browser.console_errors()
        self.assertEqual(errors, [])

        # the node stops answering: a banner, the figures kept and dimmed
        self.source.broken = True
        yield browser.wait_for(
            "the lost-contact banner",
            "return !document.getElementById('offline').hidden",
            lambda shown: shown is True,
        )
        self.flushLoggedErrors(RuntimeError)
        self.source.broken = False
        yield browser.wait_for(
            "the banner gone",
            "return document.getElementById('offline').hidden",
            lambda hidden: hidden is True,
        )
        self.flushLoggedErrors(RuntimeError)
