"""Hot reload of a running ``twistd dlba``: SIGHUP re-reads the file, connections stay.

Each test holds a client connection open across the reload and checks it still works,
then that what comes after follows the new config.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet.error import ConnectionRefusedError

from tests.e2e.harness import (
    HTTP_ENDPOINT,
    Backend,
    Dlba,
    E2ETestCase,
    PoolSpec,
    connect,
    dlba_config,
    listening_ports,
    request,
)
from tests.e2e.test_tls_e2e import subject_cn


def numbered(*pairs: tuple[Backend, int]) -> PoolSpec:
    """A pool of these back ends with these numbers (the number is what a row is kept by)."""
    return PoolSpec([b for b, _ in pairs], backend_options=[{"number": n} for _, n in pairs])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peer_cn(client: Any) -> str:
    return str(client.transport.getPeerCertificate().get_subject().CN)


class ReloadTestCase(E2ETestCase):
    def text(self, pools: list[PoolSpec], **options: Any) -> str:
        options.setdefault("certificates", [self.path("a.pem")])
        return dlba_config(self.dir, pools, **options)

    async def reload(self, node: Dlba, text: str) -> dict[str, Any]:
        """Write ``text`` over the config file, SIGHUP, and wait until dlba has reloaded
        (or refused): the event that says so."""
        before = len(self.reload_events(node))
        self.write("dlba.toml", text)
        node.child.signal("HUP")
        await node.wait_event(
            lambda e: len(self.reload_events(node)) > before, "dlba to reload or refuse"
        )
        return self.reload_events(node)[before]

    def reload_events(self, node: Dlba) -> list[dict[str, Any]]:
        return [
            e
            for e in node.events
            if e.get("log_namespace") == "dlba.node"
            and str(e.get("log_format", "")).startswith(("reloaded:", "reload refused:"))
        ]


class BackendReloadTests(ReloadTestCase):
    async def test_back_ends_change_under_a_held_connection(self) -> None:
        b1, b2, b3 = self.backend("b1"), self.backend("b2"), self.backend("b3")
        node = await self.start(pools=[numbered((b1, 1))])
        slow = await self.connect(node.http)
        slow.send(request("/slow?ms=1500"))
        await b1.wait_event("request")
        held = await self.connect(node.http)
        held.send(request("/first"))
        self.assertEqual((await held.next_response()).header("X-Backend"), "b1")
        await b2.ready()
        await b3.ready()

        event = await self.reload(node, self.text([numbered((b2, 2), (b3, 3))]))
        self.assertTrue(event["log_format"].startswith("reloaded:"), event)
        self.assertIn(f"back end 1 (127.0.0.1:{b1.port}): removed", event["changes"])

        # The request in flight at the back end taken out finishes there.
        answer = await slow.next_response()
        self.assertEqual((answer.status, answer.header("X-Backend")), (200, "b1"))
        # The held connection's next requests follow the new set.
        seen = []
        for i in range(4):
            held.send(request(f"/after{i}"))
            response = await held.next_response()
            self.assertEqual(response.status, 200)
            seen.append(response.header("X-Backend"))
        self.assertEqual(sorted(set(seen)), ["b2", "b3"])
        fresh, _ = await self.exchange(node.http, request("/new"))
        self.assertIn(fresh.header("X-Backend"), ("b2", "b3"))
        targets = [e["target"] for e in b1.events if e.get("event") == "request"]
        self.assertEqual(targets, ["/slow?ms=1500", "/first"])


class ListenerReloadTests(ReloadTestCase):
    async def test_http_port_moves_and_the_old_connection_goes_on(self) -> None:
        b1 = self.backend("b1")
        node = await self.start([b1])
        old_port, https_port = node.http, node.https
        held = await self.connect(node.http)
        held.send(request("/before"))
        self.assertEqual((await held.next_response()).status, 200)
        held_tls = await self.connect(node.https, tls=True)

        new_port = free_port()
        text = self.text([PoolSpec([b1])]).replace(
            f'http = "{HTTP_ENDPOINT}"', f'http = "tcp:{new_port}:interface=127.0.0.1"'
        )
        event = await self.reload(node, text)
        self.assertTrue(event["log_format"].startswith("reloaded:"), event)
        await node.wait_event(
            lambda e: e.get("listener") == "http" and e.get("port") == new_port,
            "dlba to listen on the new port",
        )
        # The connection the old port accepted still works.
        held.send(request("/after"))
        self.assertEqual((await held.next_response()).status, 200)
        # New connections go to the new port; the old one listens no more.
        response, _ = await self.exchange(new_port, request("/new"))
        self.assertEqual(response.header("X-Backend"), "b1")
        assert node.child.pid is not None
        ports = listening_ports(node.child.pid)
        self.assertIn(new_port, ports)
        self.assertNotIn(old_port, ports)
        self.assertIn(https_port, ports)  # unchanged: never rebound
        try:
            client = await connect(old_port)
        except ConnectionRefusedError:
            pass
        else:
            # Another process of the parallel suite took the freed port; dlba, shown
            # above not to listen there, is not who accepted.
            await client.close()
        held_tls.send(request("/tls"))
        self.assertEqual((await held_tls.next_response()).status, 200)

    async def test_a_port_that_cannot_be_bound_leaves_the_listener_where_it_was(self) -> None:
        b1, b2 = self.backend("b1"), self.backend("b2")
        node = await self.start(pools=[numbered((b1, 1))])
        old_port = node.http
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            busy = taken.getsockname()[1]
            await b2.ready()
            text = self.text([numbered((b2, 2))]).replace(
                f'http = "{HTTP_ENDPOINT}"', f'http = "tcp:{busy}:interface=127.0.0.1"'
            )
            await self.reload(node, text)
            warning = await node.wait_event(
                lambda e: "cannot listen on" in str(e.get("why", "")), "the bind error"
            )
        self.assertIn(f"tcp:{busy}:interface=127.0.0.1", warning["why"])
        response, _ = await self.exchange(old_port, request("/still"))
        # The listener stayed; the rest of the config took effect.
        self.assertEqual(response.header("X-Backend"), "b2")


class TLSReloadTests(ReloadTestCase):
    async def test_new_certificate_for_new_connections_only(self) -> None:
        b1 = self.backend("b1")
        node = await self.start([b1])
        established = await self.connect(node.https, tls=True)
        established.send(request("/one"))
        self.assertEqual((await established.next_response()).status, 200)
        self.assertEqual(peer_cn(established), "a.example")
        https_port = node.https

        c_pem = self.certificate("c.pem", "c.example")
        event = await self.reload(node, self.text([PoolSpec([b1])], certificates=[c_pem]))
        self.assertIn("tls.certificates: new certificates for new connections", event["changes"])

        self.assertEqual(node.https, https_port)  # not rebound
        result = await self.openssl(
            "s_client",
            "-connect",
            f"127.0.0.1:{https_port}",
            stdin=b"GET /tls HTTP/1.1\r\nHost: c.example\r\n\r\n",
            close_stdin_when=lambda out: b"\r\n\r\nbackend b1\n" in out,
        )
        self.assertEqual(subject_cn(result.text), "c.example", result.text)
        fresh = await self.connect(https_port, tls=True)
        fresh.send(request("/fresh"))
        self.assertEqual((await fresh.next_response()).status, 200)
        self.assertEqual(peer_cn(fresh), "c.example")
        # The connection made before goes on, with the certificate it began with.
        established.send(request("/two"))
        self.assertEqual((await established.next_response()).status, 200)
        self.assertEqual(peer_cn(established), "a.example")


class RefusedReloadTests(ReloadTestCase):
    async def test_mistakes_are_logged_and_the_node_runs_on(self) -> None:
        b1 = self.backend("b1")
        node = await self.start([b1])
        held = await self.connect(node.http)

        moved = self.text([PoolSpec([b1])]).replace(
            f'state_dir = "{self.dir}"', f'state_dir = "{self.dir}/elsewhere"'
        )
        event = await self.reload(node, moved)
        self.assertEqual(event["log_level"]["name"], "warn")
        self.assertTrue(event["error"].startswith("node.state_dir: needs a restart"), event)

        event = await self.reload(node, self.text([PoolSpec([b1])]) + "\n[limits\n")
        self.assertRegex(event["error"], re.escape(self.config_path) + r":\d+: TOML syntax")

        held.send(request("/still"))
        self.assertEqual((await held.next_response()).status, 200)
        response, _ = await self.exchange(node.http, request("/new"))
        self.assertEqual(response.status, 200)
        # And a good file afterwards is taken.
        event = await self.reload(node, self.text([PoolSpec([b1])], limits={"idle_timeout": 30.0}))
        self.assertIn("limits.idle_timeout: 60.0 -> 30.0", event["changes"])
