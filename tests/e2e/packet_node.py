"""One node of the packet test's array, run inside its network namespace by
tests/e2e/test_packet_netns.py: the real PacketSchedulerService (every-node setup; with
--schedule also the forwarder), a tiny TCP server on VIP:port that answers which node it
is, and a status file (the service's row and the client table's owners) rewritten every
0.1 s for the test to poll.  SIGUSR1 makes it take over as failover's ``_become`` does:
the nodes named by --dead fail (their buckets freed), then ``start(2)``.

    python3 -m tests.e2e.packet_node --vip V --own N --nodes 1=MAC,2=MAC --status FILE
        [--schedule] [--port 8080] [--table-size 61]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from twisted.internet import protocol, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from dlba.clienttable import ClientTable
from dlba.config import ArrayNode, ArraySection
from dlba.packet.service import PacketSchedulerService
from dlba.tables import NodeState, NodeStatusTable


class Says(protocol.Protocol):
    transport: Any

    def connectionMade(self) -> None:
        self.transport.write(self.factory.answer)  # type: ignore[attr-defined]
        self.transport.loseConnection()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--own", type=int, required=True)
    parser.add_argument("--nodes", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--schedule", action="store_true")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--table-size", type=int, default=61)
    parser.add_argument("--dead", default="", help="nodes to fail on SIGUSR1, e.g. 1,3")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])

    from twisted.internet import reactor

    r: Any = reactor
    macs = dict((int(n), mac) for n, mac in (item.split("=", 1) for item in args.nodes.split(",")))
    array = ArraySection(
        vip=args.vip,
        interface="eth0",
        table_size=args.table_size,
        nodes=tuple(ArrayNode(n, mac, f"10.77.0.{10 + n}") for n, mac in macs.items()),
    )
    nodes = NodeStatusTable(NodeState(n, mac, f"10.77.0.{10 + n}") for n, mac in macs.items())
    table = ClientTable(args.table_size, nodes, idle_timeout=300.0)
    svc = PacketSchedulerService(array, args.own, table, nodes, r, scheduler_at_start=False)
    svc.startService()
    if args.schedule:
        svc.start(1)
    factory = protocol.Factory.forProtocol(Says)
    factory.answer = f"node {args.own}\n".encode()  # type: ignore[attr-defined]
    r.listenTCP(args.port, factory, interface=args.vip)

    def dump() -> None:
        doc = {"pid": os.getpid(), "packets": svc.row(), "owners": table.owners()}
        tmp = args.status + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, args.status)
        except Exception as e:  # a LoopingCall that raises stops: keep dumping
            print(f"status dump failed: {e!r}", file=sys.stderr)

    task.LoopingCall(dump).start(0.1)

    def take_over() -> None:
        table.take_over(r.seconds())
        for number in filter(None, args.dead.split(",")):
            row = nodes.get(int(number))
            if row is not None:
                row.failed = True
                table.node_failed(int(number))
        svc.start(2)

    signal.signal(signal.SIGUSR1, lambda *_: r.callFromThread(take_over))
    r.addSystemEventTrigger("before", "shutdown", svc.stopService)
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
