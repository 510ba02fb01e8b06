"""The failover glue's side of a config push that grows the array: nodes appended join the
election, and the pings find them at the new config's addresses."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.array.failover import FailoverService
from dlba.clienttable import ClientTable
from dlba.election import Election, Ping
from dlba.node import array_nodes
from tests.test_reload import failover_config


class FakeClient:
    def __init__(self, config: Any) -> None:
        self.config = config


class NodesChangedTests(SynchronousTestCase):
    def test_a_node_appended_joins_the_election_and_is_pinged(self) -> None:
        old, new = failover_config((1, 2)), failover_config((1, 2, 3))
        election = Election(1, (1, 2), ping_interval=0.5, ping_misses=3)
        nodes = array_nodes(old)
        table = ClientTable(7, nodes, idle_timeout=60.0)
        client = FakeClient(old)
        failover = FailoverService(election, client, table, nodes, None, Clock())  # type: ignore[arg-type]
        self.assertEqual(failover.nodes_changed(new), (3,))
        self.assertIs(client.config, new)
        self.assertEqual([a.node for a in election.tick(0.0) if isinstance(a, Ping)], [2, 3])
        with self.assertRaises(ValueError):
            failover.nodes_changed(failover_config((1, 3, 2)))
        self.assertEqual(election.order, (1, 2, 3))
