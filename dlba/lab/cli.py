"""dlba-lab: the whole array on one machine, in network namespaces (needs root).

    dlba-lab up [--nodes N] [--backends M] [--dir D] [--name NAME] [--no-wait-vip]
    dlba-lab status [--json]
    dlba-lab exec NAME -- CMD...        NAME: client, node1.., web1.., bridge
    dlba-lab kill NODE                  SIGKILL one node's twistd (failover demos)
    dlba-lab start NODE                 start it again
    dlba-lab add-node                   grow the running array by one node
    dlba-lab down

A mistake a person makes ends the command with one line on stderr, ``dlba-lab: PROBLEM``,
and a non-zero status (2 for bad usage), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from dlba import __version__
from dlba.config import FAST_PATHS
from dlba.lab import ops
from dlba.labplan import MAX_BACKENDS, MAX_NODES, LabError

USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors as one line, like every other error of dlba-lab."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--dir",
        default=os.environ.get("DLBA_LAB_DIR", ops.DEFAULT_DIR),
        metavar="D",
        help="the lab's files: state, config, certificates, logs "
        f"(default $DLBA_LAB_DIR or {ops.DEFAULT_DIR})",
    )
    named = _Parser(add_help=False)
    named.add_argument(
        "--name",
        default="",
        help="a name for a second lab beside the default one: its namespaces are "
        "dlbalab-NAME-*; the state file remembers it, so only up needs it (and down, "
        "status without a state file)",
    )
    top = _Parser(
        prog="dlba-lab",
        description="Build a dlba array in network namespaces on one bridge: a client, "
        "N nodes running twistd dlba and M demo web servers on 10.77.0.0/24 "
        "(client .2, node i .10+i, web j .20+j, VIP .100). Needs root.",
    )
    top.add_argument("--version", action="version", version=f"dlba-lab {__version__}")
    subs = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = subs.add_parser(
        "up", parents=[common, named], help="build the lab and start the array (idempotent)"
    )
    p.add_argument("--nodes", type=int, default=3, help=f"DLBA nodes, 1-{MAX_NODES} (default 3)")
    p.add_argument(
        "--backends", type=int, default=2, help=f"web servers, 1-{MAX_BACKENDS} (default 2)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=ops.START_TIMEOUT,
        help=f"seconds for everything to answer (default {ops.START_TIMEOUT:g})",
    )
    p.add_argument(
        "--fast-path",
        choices=FAST_PATHS,
        default="auto",
        help="the nodes' [array] fast_path: the kernel forwards (nftables), Python does "
        "(off), or the kernel where it can (auto, the default)",
    )
    p.add_argument(
        "--no-wait-vip",
        dest="wait_vip",
        action="store_false",
        help="do not wait until the VIP answers (the packet scheduler's forwarding)",
    )

    p = subs.add_parser(
        "status",
        parents=[common, named],
        help="what exists: namespaces, processes, addresses (exit 0 up, 1 degraded, 3 down)",
    )
    p.add_argument("--json", action="store_true", help="JSON for scripts")

    p = subs.add_parser(
        "exec", parents=[common], help="run a command in one of the lab's namespaces"
    )
    p.add_argument("host", metavar="NAME", help="client, bridge, node1.., web1..")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")

    p = subs.add_parser("kill", parents=[common], help="SIGKILL one node's twistd, nothing else")
    p.add_argument("node", metavar="NODE", help="node1.. (or its number)")

    p = subs.add_parser(
        "start", parents=[common], help="start a killed node's twistd again, wait until it answers"
    )
    p.add_argument("node", metavar="NODE", help="node1.. (or its number)")
    p.add_argument(
        "--timeout",
        type=float,
        default=ops.START_TIMEOUT,
        help=f"seconds for it to answer (default {ops.START_TIMEOUT:g})",
    )

    p = subs.add_parser(
        "add-node",
        parents=[common],
        help="grow the running array by one node: its namespace, certificate and config "
        "pushed with dlba-ctl, then its twistd (it gets new and idle buckets only)",
        description="Add node N+1 to a running lab the way an operator grows an array: "
        "make its namespace and link, sign its control-plane certificate with the "
        "array CA, push the config with it appended to every running node (dlba-ctl "
        "push: all validate, then all commit), then start its twistd and wait until "
        "it answers. No live connection moves: the scheduler gives the new node new "
        "and idle buckets only, once its sweep hears it.",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=ops.START_TIMEOUT,
        help=f"seconds for it to answer (default {ops.START_TIMEOUT:g})",
    )

    subs.add_parser(
        "down",
        parents=[common, named],
        help="stop every process up started and remove every namespace (idempotent)",
    )
    return top


def run(args: argparse.Namespace, io: ops.Output) -> int:
    if args.command == "up":
        return ops.up(
            args.dir,
            args.nodes,
            args.backends,
            args.name,
            args.timeout,
            args.wait_vip,
            io,
            fast_path=args.fast_path,
        )
    if args.command == "status":
        return ops.status(args.dir, args.name, args.json, io)
    if args.command == "exec":
        argv = list(args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        return ops.exec_in(args.dir, args.host, argv, os.execvp)
    if args.command == "kill":
        return ops.kill(args.dir, args.node, io)
    if args.command == "start":
        return ops.restart(args.dir, args.node, args.timeout, io)
    if args.command == "add-node":
        return ops.add_node(args.dir, args.timeout, io)
    assert args.command == "down"
    return ops.down(args.dir, args.name, io)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error: argparse has printed it
        return e.code if isinstance(e.code, int) else USAGE
    io = ops.Output(sys.stdout, sys.stderr)
    try:
        return run(args, io)
    except LabError as e:
        io.say(f"{args.command}: {e}")
        return e.status
    except OSError as e:  # the lab's directory or a log that cannot be written, say
        where = f"{e.filename}: " if e.filename else ""
        io.say(f"{args.command}: {where}{e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
