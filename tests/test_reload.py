"""dlba.reload and the pure pieces of a hot reload: what changes, what keeps, what refuses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dlba import reload
from dlba.config import Config, parse
from dlba.loading import FeedbackController, WaitQueue
from dlba.policy import SessionPolicy, UrlHashPolicy
from dlba.reload import apply_backends, check_reloadable, diff, plan_backends
from dlba.routing import backend_table, build_router
from dlba.sessions import SessionTable
from dlba.tables import NodeState, NodeStatusTable, SummaryTable
from tests.array_support import node_tables

NODE = """
[node]
number = 1
state_dir = "/tmp/dlba-reload-test"
[listen]
http = "tcp:8080"
https = "tcp:8443:interface=127.0.0.1"
status = "tcp:7701"
[tls]
certificates = ["a.pem"]
[[array.node]]
number = 1
mac = "02:00:00:00:00:01"
ip = "127.0.0.11"
[[array.node]]
number = 2
mac = "02:00:00:00:00:02"
ip = "127.0.0.12"
"""

POOL = """
[[pool]]
name = "app"
policy = "{policy}"
max_concurrent = {max}
[[pool.backend]]
number = 1
address = "127.0.0.1:9001"
[[pool.backend]]
number = 2
address = "127.0.0.1:9002"
weight = {weight}
enabled = {enabled}
"""


def config(
    node: str = NODE,
    *,
    policy: str = "round-robin",
    max: int = 64,
    weight: int = 1,
    enabled: str = "true",
    extra: str = "",
) -> Config:
    text = node + POOL.format(policy=policy, max=max, weight=weight, enabled=enabled) + extra
    return parse(text, "/etc/dlba/dlba.toml")


class ClassificationTests(SynchronousTestCase):
    def test_every_key_has_exactly_one_decision(self) -> None:
        sets = [set(reload.RESTART), set(reload.APPLIED), set(reload.NOT_READ_YET)]
        for key in reload.every_key(config()):
            self.assertEqual(sum(key in s for s in sets), 1, key)
        known = set(reload.every_key(config()))
        for s in sets:
            self.assertEqual(s - known, set())


class CheckTests(SynchronousTestCase):
    def test_same_config_is_reloadable(self) -> None:
        self.assertEqual(check_reloadable(config(), config()), [])

    def test_restart_keys_named(self) -> None:
        new = parse(
            NODE.replace("/tmp/dlba-reload-test", "/tmp/other")
            + POOL.format(policy="round-robin", max=64, weight=1, enabled="true")
            + "[log]\njson = true\n",
            "/etc/dlba/dlba.toml",
        )
        problems = check_reloadable(config(), new)
        self.assertEqual(len(problems), 2, problems)
        self.assertTrue(problems[0].startswith("node.state_dir: needs a restart"), problems)
        self.assertTrue(problems[1].startswith("log.json: needs a restart"), problems)

    def test_the_diff_names_them_too(self) -> None:
        moved = NODE.replace("/tmp/dlba-reload-test", "/tmp/other")
        d = diff(config(), config(moved))
        self.assertEqual(len(d.restart), 1)
        self.assertTrue(d.restart[0].startswith("node.state_dir: needs a restart"))

    def test_table_size(self) -> None:
        text = NODE.replace(
            "[[array.node]]\nnumber = 1", "[array]\ntable_size = 7\n[[array.node]]\nnumber = 1", 1
        )
        [problem] = check_reloadable(config(), config(text))
        self.assertTrue(problem.startswith("array.table_size: needs a restart"), problem)

    def test_listener_the_node_cannot_open(self) -> None:
        with_admin = NODE.replace('status = "tcp:7701"', 'status = "tcp:7701"\nadmin = "tcp:7780"')
        [problem] = check_reloadable(config(), config(with_admin))
        self.assertTrue(problem.startswith("listen.admin: added: needs a restart"), problem)
        # Closing one is fine.
        self.assertEqual(check_reloadable(config(with_admin), config()), [])

    def test_proxy_listener_on_a_node_without_proxy(self) -> None:
        no_proxy = NODE.replace('http = "tcp:8080"\n', "").replace(
            'https = "tcp:8443:interface=127.0.0.1"\n', ""
        )
        self.assertEqual(
            check_reloadable(config(no_proxy), config()),
            [
                "listen.http: added: needs a restart (this node runs no proxy)",
                "listen.https: added: needs a restart (this node runs no proxy)",
            ],
        )

    def test_becoming_the_sweeper_needs_a_restart(self) -> None:
        swapped = (
            NODE.replace(
                '[[array.node]]\nnumber = 1\nmac = "02:00:00:00:00:01"\nip = "127.0.0.11"\n', ""
            )
            + '[[array.node]]\nnumber = 1\nmac = "02:00:00:00:00:01"\nip = "127.0.0.11"\n'
        )
        [problem] = check_reloadable(config(), config(swapped))
        self.assertEqual(problem, "array.node: this node would stop sweeping: needs a restart")
        no_status = NODE.replace('status = "tcp:7701"\n', "")
        [problem] = check_reloadable(config(), config(no_status))
        self.assertEqual(problem, "listen.status: this node would stop sweeping: needs a restart")


class DiffTests(SynchronousTestCase):
    def test_nothing(self) -> None:
        self.assertEqual(diff(config(), config()).summary(), [])

    def test_listener_rebound_only_when_its_endpoint_changes(self) -> None:
        moved = NODE.replace('http = "tcp:8080"', 'http = "tcp:8081"')
        d = diff(config(), config(moved))
        self.assertEqual(
            d.listeners,
            {"http": ("tcp:8080:interface=127.0.0.11", "tcp:8081:interface=127.0.0.11")},
        )

    def test_own_ip_moves_the_listeners_bound_to_it(self) -> None:
        moved = NODE.replace('ip = "127.0.0.11"', 'ip = "127.0.0.21"')
        d = diff(config(), config(moved))
        # https names its interface: it stays.
        self.assertEqual(sorted(d.listeners), ["http", "status"])
        self.assertTrue(d.nodes)

    def test_listener_added_and_removed(self) -> None:
        no_https = NODE.replace('https = "tcp:8443:interface=127.0.0.1"\n', "")
        self.assertEqual(
            diff(config(), config(no_https)).listeners,
            {"https": ("tcp:8443:interface=127.0.0.1", None)},
        )
        self.assertEqual(
            diff(config(no_https), config()).listeners,
            {"https": (None, "tcp:8443:interface=127.0.0.1")},
        )

    def test_settings_named_with_values(self) -> None:
        new = config(
            "[limits]\nidle_timeout = 5.0\n[array]\nsweep_delay = 1.0\n" + NODE,
        )
        self.assertEqual(
            diff(config(), new).summary(),
            ["limits.idle_timeout: 60.0 -> 5.0", "array.sweep_delay: 2.0 -> 1.0"],
        )

    def test_tls_and_log(self) -> None:
        new = config(
            NODE.replace(
                'certificates = ["a.pem"]', 'certificates = ["b.pem"]\nhsts = "max-age=60"'
            )
            + '[log]\naccess_log = "/tmp/access.log"\n'
        )
        d = diff(config(), new)
        self.assertTrue(d.certificates and d.hsts and d.access_log)

    def test_pools_and_rules(self) -> None:
        other = '[[pool]]\nname = "b"\n[[pool.backend]]\nnumber = 3\naddress = "127.0.0.1:9003"\n'
        rule = '[[rule]]\npool = "b"\npath_prefix = "/b"\n'
        d = diff(config(), config(extra=other + rule))
        self.assertEqual(d.pools_added, ("b",))
        self.assertTrue(d.rules)
        self.assertEqual(d.backends.added, (3,))
        self.assertIn("back end 3 (127.0.0.1:9003): added", d.summary())
        d = diff(config(policy="session"), config())
        self.assertEqual(d.pools_changed, ("app",))


class PlanTests(SynchronousTestCase):
    def test_kept_replaced_added_removed(self) -> None:
        old = config()
        new = parse(
            NODE
            + '[[pool]]\nname = "app"\n'
            + '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:9001"\nweight = 3\n'
            + '[[pool.backend]]\nnumber = 3\naddress = "127.0.0.1:9003"\n'
            + '[[pool]]\nname = "moved"\n'
            + '[[pool.backend]]\nnumber = 4\naddress = "127.0.0.1:9004"\n',
            "x.toml",
        )
        old = parse(
            NODE
            + '[[pool]]\nname = "app"\n'
            + '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:9001"\n'
            + '[[pool.backend]]\nnumber = 2\naddress = "127.0.0.1:9002"\n'
            + '[[pool.backend]]\nnumber = 4\naddress = "127.0.0.1:9044"\n',
            "x.toml",
        )
        plan = plan_backends(old, new)
        self.assertEqual(plan.kept, (1,))
        self.assertEqual(plan.replaced, (4,))
        self.assertEqual(plan.added, (3,))
        self.assertEqual(plan.removed, (2,))
        self.assertEqual(plan.reweighted, (1,))
        summary = diff(old, new).summary()
        self.assertIn("back end 4: 127.0.0.1:9044 -> 127.0.0.1:9004 (a new row)", summary)
        self.assertIn("back end 2 (127.0.0.1:9002): removed", summary)

    def test_limits_and_controllers(self) -> None:
        self.assertEqual(plan_backends(config(), config(max=8)).limited, (1, 2))
        text = NODE + POOL.format(policy="round-robin", max=64, weight=1, enabled="true")
        on = parse(text.replace("max_concurrent = 64", "max_concurrent = 64\nadaptive = true"), "x")
        self.assertEqual(plan_backends(config(), on).limited, (1, 2))
        self.assertEqual(plan_backends(on, on).limited, ())


class ApplyBackendsTests(SynchronousTestCase):
    def test_kept_rows_keep_their_state(self) -> None:
        old = config()
        table = backend_table(old)
        row1, row2 = table.get(1), table.get(2)
        assert row1 is not None and row2 is not None
        row1.hits = 7
        row1.mark_failed(0.0, 5.0, "boom")
        row1.sessions_assigned = 3
        new = config(weight=5, max=8)
        retired = apply_backends(table, plan_backends(old, new), new)
        self.assertEqual(retired, [])
        self.assertIs(table.get(1), row1)
        self.assertEqual((row1.hits, row1.failures, row1.sessions_assigned), (7, 1, 3))
        self.assertEqual(row2.weight, 5)
        self.assertEqual((row1.limit, row2.limit), (8, 8))

    def test_enabled_follows_the_config_only_where_it_changed(self) -> None:
        old = config()
        table = backend_table(old)
        row2 = table.get(2)
        assert row2 is not None
        row2.disable()  # an operator, at run time
        # A reload about something else leaves it disabled...
        new = config(weight=2)
        apply_backends(table, plan_backends(old, new), new)
        self.assertFalse(row2.enabled)
        # ...one that disables it in the config, then enables it, is obeyed.
        off = config(enabled="false")
        apply_backends(table, plan_backends(new, off), off)
        self.assertFalse(row2.enabled)
        apply_backends(table, plan_backends(off, new), new)
        self.assertTrue(row2.enabled)

    def test_replaced_and_removed_rows_retire(self) -> None:
        old = config()
        table = backend_table(old)
        row1, row2 = table.get(1), table.get(2)
        new = parse(
            NODE
            + '[[pool]]\nname = "app"\n'
            + '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:9011"\n'
            + '[[pool.backend]]\nnumber = 3\naddress = "127.0.0.1:9003"\n',
            "x.toml",
        )
        retired = apply_backends(table, plan_backends(old, new), new)
        self.assertEqual(retired, [row2, row1])
        self.assertTrue(row1 is not None and row1.retired and row2 is not None and row2.retired)
        fresh = table.get(1)
        assert fresh is not None
        self.assertIsNot(fresh, row1)
        self.assertEqual(fresh.address, "127.0.0.1:9011")
        self.assertFalse(fresh.retired)
        self.assertEqual([b.number for b in table], [1, 3])
        self.assertIsNone(table.get(2))


class RouterCarryOverTests(SynchronousTestCase):
    def test_sessions_survive(self) -> None:
        old = config(policy="session")
        table = backend_table(old)
        router = build_router(old, table)
        policy = router.pools[0].policy
        assert isinstance(policy, SessionPolicy)
        policy.table.learn(b"sid", 2, 0.0)
        router.pools[0].expired = 4
        new = config(policy="session", weight=3)
        again = build_router(new, table, router)
        kept = again.pools[0].policy
        assert isinstance(kept, SessionPolicy)
        self.assertIs(kept.table, policy.table)
        self.assertEqual(kept.table.peek(b"sid", 1.0), 2)
        self.assertEqual(again.pools[0].expired, 4)
        # Another policy: a fresh start.
        other = build_router(config(), table, again)
        self.assertNotIsInstance(other.pools[0].policy, SessionPolicy)

    def test_rows_count_only_the_new_queues(self) -> None:
        old = config()
        table = backend_table(old)
        router = build_router(old, table)
        build_router(old, table, router)
        row = table.get(1)
        assert row is not None
        self.assertEqual(len(row.queues), 1)

    def test_url_hash_moves_few_urls(self) -> None:
        from dlba.hashing import stable_hash64

        def cache(numbers: range) -> Config:
            backends = "".join(
                f'[[pool.backend]]\nnumber = {n}\naddress = "127.0.0.1:{9000 + n}"\n'
                for n in numbers
            )
            return parse(NODE + '[[pool]]\nname = "cache"\npolicy = "url-hash"\n' + backends, "x")

        old, new = cache(range(1, 11)), cache(range(1, 10))
        table = backend_table(old)
        router = build_router(old, table)
        before = router.pools[0].policy
        assert isinstance(before, UrlHashPolicy)
        rows = router.pools[0].backends
        urls = [f"/u{i}".encode() for i in range(2000)]

        def owners(policy: UrlHashPolicy, backends: list) -> list[int]:  # type: ignore[type-arg]
            table_ = policy._table_for(backends)
            return [table_.get_hash(stable_hash64(u), set()) or 0 for u in urls]

        first = owners(before, rows)
        apply_backends(table, plan_backends(old, new), new)
        again = build_router(new, table, router)
        after = again.pools[0].policy
        assert isinstance(after, UrlHashPolicy)
        second = owners(after, again.pools[0].backends)
        moved = sum(a != b for a, b in zip(first, second, strict=True) if a != 10)
        self.assertLess(moved, len(urls) // 20)

    def test_current_pool(self) -> None:
        old = config()
        table = backend_table(old)
        router = build_router(old, table)
        again = build_router(old, table, router)
        self.assertIs(again.current(router.pools[0], None), again.pools[0])  # type: ignore[arg-type]


class SmallPiecesTests(SynchronousTestCase):
    def test_drain_tickets_keep_binding_deadline_and_age(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        q.push("a", None, 10.0, 1.0)
        q.push("b", 2, 11.0, 2.0)
        q.push("c", None, 12.0, 3.0)
        tickets = q.drain_tickets()
        self.assertEqual(
            [(t.item, t.sticky, t.deadline, t.queued_at) for t in tickets],
            [("a", None, 10.0, 1.0), ("b", 2, 11.0, 2.0), ("c", None, 12.0, 3.0)],
        )
        self.assertEqual(len(q), 0)
        self.assertEqual(q.waiting_for(2), 0)
        self.assertFalse(any(t.active for t in tickets))

    def test_controller_ceiling(self) -> None:
        c = FeedbackController(64)
        c.set_ceiling(8)
        self.assertEqual((c.ceiling, c.limit), (8, 8))
        c.set_ceiling(100)
        self.assertEqual(c.limit, 8)
        self.assertRaises(ValueError, c.set_ceiling, 0)

    def test_session_table_bounds(self) -> None:
        t = SessionTable(10, 60.0)
        for i in range(10):
            t.learn(b"%d" % i, 1, 0.0)
        t.reconfigure(4, 30.0)
        self.assertEqual(len(t), 4)
        self.assertTrue(t.known(b"9", 1.0))
        self.assertFalse(t.known(b"0", 1.0))

    def test_node_table_reconfigured_in_place(self) -> None:
        table = NodeStatusTable([NodeState(1, "m1", "10.0.0.1"), NodeState(2, "m2", "10.0.0.2")])
        one = table.get(1)
        assert one is not None
        one.hits = 5
        one.enabled = False  # at run time
        was = NodeStatusTable([NodeState(1, "m1", "10.0.0.1"), NodeState(2, "m2", "10.0.0.2")])
        static = NodeStatusTable([NodeState(3, "m3", "10.0.0.3"), NodeState(1, "m1", "10.0.0.9")])
        removed = table.reconfigure(static, was)
        self.assertEqual(removed, [2])
        self.assertEqual([n.number for n in table], [3, 1])
        self.assertIs(table.get(1), one)
        self.assertEqual((one.ip, one.hits, one.enabled), ("10.0.0.9", 5, False))

    def test_summary_forgets_a_node(self) -> None:
        from dlba.tables import BackendReport

        s = SummaryTable()
        s.node_reported(1, [BackendReport(1, "a", 3, 1, 0)])
        s.node_reported(2, [BackendReport(1, "a", 4, 1, 0)])
        s.forget(2)
        [row] = s.rebuild()
        self.assertEqual(row.hits, 3)

    def test_sweep_reconfigured_while_asking_a_node_it_loses(self) -> None:
        from dlba.sweep import Sweep, Visit

        nodes = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2, 3)])
        sweep = Sweep(nodes, SummaryTable(), timeout=1.0, tries=3, delay=2.0)
        visit = sweep.next(0.0)
        assert isinstance(visit, Visit)
        asked = visit.node
        self.assertEqual(asked.number, 1)
        was = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2, 3)])
        removed = nodes.reconfigure(NodeStatusTable([NodeState(3, "", "10.0.0.3")]), was)
        sweep.reconfigure(timeout=0.5, tries=1, delay=1.0, removed=removed)
        # The answer of a node no longer in the table is not recorded.
        sweep.missed(asked, "refused", 0.1)
        self.assertFalse(asked.failed)
        self.assertEqual(sweep.timeout, 0.5)
        visit = sweep.next(0.2)  # on with the sweep: the node left
        assert isinstance(visit, Visit)
        self.assertEqual((visit.node.number, visit.deadline), (3, 0.7))
        sweep.missed(visit.node, "refused", 0.3)  # one try now
        self.assertTrue(visit.node.failed)
        self.assertEqual(sweep.sweeps, 1)

    def test_sweep_reordered_mid_sweep_visits_each_node_once(self) -> None:
        from dlba.sweep import StatusAnswer, Sweep, Visit

        nodes = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2, 3)])
        sweep = Sweep(nodes, SummaryTable(), timeout=1.0, tries=3, delay=2.0)
        answer = StatusAnswer(1, 0.0, 0, 0, ())
        first = sweep.next(0.0)
        assert isinstance(first, Visit)
        sweep.answered(first.node, answer, 0.0)
        second = sweep.next(0.0)
        assert isinstance(second, Visit)
        self.assertEqual(second.node.number, 2)
        was = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2, 3)])
        order = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (3, 2, 1, 4)])
        nodes.reconfigure(order, was)
        sweep.reconfigure(timeout=1.0, tries=3, delay=2.0)
        sweep.answered(second.node, answer, 0.0)
        seen = []
        while True:
            action = sweep.next(0.0)
            if not isinstance(action, Visit):
                break
            seen.append(action.node.number)
            sweep.answered(action.node, answer, 0.0)
        self.assertEqual(seen, [3, 4])
        self.assertEqual(sweep.sweeps, 1)


FAILOVER = """
[listen]
status = "tcp:7701"
sync = "tcp:7702"
[tls]
ca = "ca.pem"
node_certificate = "node{{number}}.pem"
{nodes}
"""


def failover_config(order: tuple[int, ...], sync: bool = True) -> Config:
    nodes = node_tables(order)
    text = FAILOVER.format(nodes=nodes)
    if not sync:
        text = text.replace('sync = "tcp:7702"\n', "")
    return parse(text, "dlba.toml", node=1)


class FailoverReloadTests(SynchronousTestCase):
    def test_the_election_order_needs_a_restart(self) -> None:
        old = failover_config((1, 2, 3))
        self.assertTrue(reload.failover_on(old))
        self.assertEqual(check_reloadable(old, failover_config((1, 2, 3))), [])
        [problem] = check_reloadable(old, failover_config((1, 3, 2)))
        self.assertTrue(problem.startswith("array.node: the order [1, 2, 3] would"), problem)
        self.assertIn("only nodes appended at the end join at run time", problem)
        [problem] = check_reloadable(old, failover_config((1, 2, 4, 3)))
        self.assertTrue(problem.startswith("array.node: the order"), problem)

    def test_removing_a_node_needs_a_restart(self) -> None:
        old = failover_config((1, 2, 3))
        [problem] = check_reloadable(old, failover_config((1, 2)))
        self.assertTrue(problem.startswith("array.node: node 3 removed: removing a node"), problem)
        self.assertIn("dlba-ctl node disable", problem)
        [problem] = check_reloadable(old, failover_config((1, 3, 4)))
        self.assertTrue(problem.startswith("array.node: node 2 removed"), problem)

    def test_a_node_appended_joins_at_run_time(self) -> None:
        old = failover_config((1, 2))
        new = failover_config((1, 2, 3))
        self.assertEqual(check_reloadable(old, new), [])
        d = diff(old, new)
        self.assertEqual(d.joined, (3,))
        self.assertIn(
            "array.node: node 3 joins (new and idle buckets once the sweep hears it)", d.summary()
        )
        self.assertEqual(reload.joined(old, failover_config((1, 2, 3, 5))), (3, 5))
        self.assertEqual(reload.joined(old, old), ())
        self.assertEqual(reload.joined(failover_config((1, 2, 3)), old), ())

    def test_a_node_that_joins_at_run_time_waits_for_the_sweep(self) -> None:
        table = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2)])
        was = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2)])
        grown = NodeStatusTable([NodeState(n, "", f"10.0.0.{n}") for n in (1, 2, 3)])
        self.assertEqual(table.reconfigure(grown, was), [])
        row = table.get(3)
        assert row is not None
        self.assertTrue(row.failed)
        self.assertIn("joined", row.last_error)
        self.assertFalse(any(r.failed for r in table if r.number != 3))

    def test_starting_the_election_needs_a_restart(self) -> None:
        problems = check_reloadable(failover_config((1, 2), sync=False), failover_config((1, 2)))
        self.assertIn("listen.sync: the election would start: needs a restart", problems)
