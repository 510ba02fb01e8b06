"""dlba-ctl: the operator's command line.

    dlba-ctl probe URL [--interval S] [--count N] [--timeout S] [--alert CMD] [--json]
    dlba-ctl logstats ACCESS_LOG... [--top N] [--keep-query] [--json]

A face: argument parsing, sockets, files and processes.  The decisions are in
``dlba/probe.py`` (when to page, reading an answer) and ``dlba/logstats.py`` (counting).
Each subcommand is one :class:`Command` in :data:`COMMANDS`; adding one is one
``@command(...)``-decorated function and a function that adds its arguments.

A mistake a person makes (a bad URL, a file that cannot be read) ends the command with one
line on stderr, ``dlba-ctl: COMMAND: PROBLEM``, and a non-zero status (2 for bad usage),
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

from dlba import __version__
from dlba.logstats import LogStats, dumps, render
from dlba.probe import (
    Alert,
    BadResponse,
    Pager,
    ResponseReader,
    Try,
    alert_environment,
    as_json,
    header,
    row,
)

USAGE = 2
# A pager script that hangs must not stop the probing for long.
ALERT_TIMEOUT = 60.0


class CtlError(Exception):
    """What went wrong, as one line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = []


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run(args) -> exit status`` as the subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS.append(Command(name, help, arguments, run))
        return run

    return register


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors, as one line like every other error of dlba-ctl."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="dlba-ctl",
        description="Operate dlba: probe a site, read access logs, make the array's certificates.",
    )
    top.add_argument("--version", action="version", version=f"dlba-ctl {__version__}")
    subs = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        sub = subs.add_parser(c.name, help=c.help, description=c.help)
        c.arguments(sub)
        sub.set_defaults(run=c.run)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return its exit status."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error: argparse has printed it
        return e.code if isinstance(e.code, int) else USAGE
    try:
        status: int = args.run(args)
    except CtlError as e:
        print(f"dlba-ctl: {args.command}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (| head) went away: stop quietly, and keep Python's final flush of
        # stdout from failing again at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


def _positive(kind: type[float] | type[int], allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}: {text}")
        return value

    return parse


# -- probe -----------------------------------------------------------------------------


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="http:// or https:// URL to GET")
    p.add_argument(
        "--interval",
        type=_positive(float, allow_zero=True),
        default=10.0,
        metavar="S",
        help="seconds from one try's start to the next (default 10)",
    )
    p.add_argument(
        "--count",
        type=_positive(int),
        metavar="N",
        help="stop after N tries (default: until interrupted; Ctrl-C exits 0)",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds a whole try may take, connect to last byte (default 5)",
    )
    p.add_argument(
        "--alert",
        metavar="CMD",
        help="shell command run after 3 failed tries in a row, and again at recovery; "
        "its environment has DLBA_PROBE_URL, DLBA_PROBE_STATE (down|up), DLBA_PROBE_ERROR, "
        "DLBA_PROBE_FAILURES and DLBA_PROBE_STATUS",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--cacert",
        metavar="FILE",
        help="PEM CA certificates to verify the server with, instead of the system's",
    )
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per try")
    p.epilog = (
        "A try fails on a name that does not resolve, a refused or timed-out connection, a "
        "TLS error, an answer cut short or not HTTP, or a 5xx status; 1xx-4xx succeed. "
        "Times are milliseconds since just before connect(): TCP connected, TLS done, first "
        "byte of the answer, last byte of its body. Exit status: 0 if the last try "
        "succeeded, 1 if it failed, 2 for bad usage."
    )


@dataclass(frozen=True)
class Target:
    url: str
    tls: bool
    host: str
    port: int
    request: bytes


def target(url: str) -> Target:
    """The URL checked, and the request a try sends (``CtlError`` with status 2 if bad)."""

    def bad(why: str) -> CtlError:
        return CtlError(f"bad URL {url!r}: {why}", USAGE)

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise bad("it must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise bad("no host name")
    if parts.username is not None:
        raise bad("user names and passwords in the URL are not supported")
    default = 443 if scheme == "https" else 80
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != default:
        authority += f":{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: dlba-ctl/{__version__} probe\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
    except UnicodeEncodeError:
        raise bad("non-ASCII characters must be %-encoded") from None
    if any(c in path for c in " \r\n\t"):
        raise bad("spaces and control characters must be %-encoded")
    return Target(url, scheme == "https", host, port or default, request)


def tls_context(cacert: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cafile=cacert)
        except OSError as e:
            raise CtlError(f"cannot read the CA file {cacert}: {e.strerror}", USAGE) from None
        except ssl.SSLError as e:
            raise CtlError(
                f"{cacert} holds no usable PEM certificate ({e.reason})", USAGE
            ) from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _time_left(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)


def _connect(
    infos: Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]],
    deadline: float,
) -> socket.socket:
    """The first address that accepts, like ``socket.create_connection``, within the deadline."""
    last: OSError = OSError("no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            _time_left(sock, deadline)
            sock.connect(address)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            last = e
    raise last


def probe_once(t: Target, ctx: ssl.SSLContext | None, timeout: float) -> Try:
    """One GET, timed from just before ``connect()``; every error becomes ``Try.error``."""
    started = time.time()
    try:
        infos = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return Try(started, error=f"cannot resolve {t.host}: {e.strerror}")
    t0 = time.monotonic()
    deadline = t0 + timeout
    marks: dict[str, float] = {}
    reader = ResponseReader()
    phase = "connection"
    sock: socket.socket | None = None

    def mark(name: str) -> None:
        marks[name] = (time.monotonic() - t0) * 1000

    error: str | None = None
    try:
        sock = _connect(infos, deadline)
        mark("connect")
        if ctx is not None:
            phase = "TLS handshake"
            sock = ctx.wrap_socket(sock, server_hostname=t.host, do_handshake_on_connect=False)
            _time_left(sock, deadline)
            sock.do_handshake()
            mark("tls")
        phase = "request to be sent"
        _time_left(sock, deadline)
        sock.sendall(t.request)
        phase = "first byte"
        while not reader.done:
            _time_left(sock, deadline)
            data = sock.recv(65536)
            if not data:
                reader.eof()
                break
            if "first" not in marks:
                mark("first")
                phase = "last byte"
            reader.feed(data)
        mark("last")
    except TimeoutError:
        error = f"timeout: no {phase} within {timeout:g} s"
    except ssl.SSLCertVerificationError as e:
        error = (
            f"TLS: certificate verify failed: {e.verify_message} "
            "(--cacert FILE names the CA to trust, --insecure skips the check)"
        )
    except ssl.SSLError as e:
        if e.reason == "WRONG_VERSION_NUMBER":
            error = "TLS: the server did not answer in TLS (is the URL http://?)"
        else:
            error = f"TLS: {e.reason or e.strerror or e}"
    except ConnectionRefusedError:
        error = f"connection to {t.host} port {t.port} refused"
    except BadResponse as e:
        error = f"bad answer: {e}"
    except OSError as e:
        error = f"{phase}: {e.strerror or e}"
    finally:
        if sock is not None:
            sock.close()
    return Try(
        started,
        connect_ms=marks.get("connect"),
        tls_ms=marks.get("tls"),
        first_ms=marks.get("first"),
        last_ms=marks.get("last"),
        status=reader.status,
        body_bytes=reader.body_bytes if "last" in marks else None,
        error=error,
    )


def _local(started: float) -> str:
    ms = int(started * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) + f".{ms:03d}"


def _note(text: str) -> None:
    print(f"dlba-ctl: probe: {text}", file=sys.stderr, flush=True)


def run_alert(cmd: str, alert: Alert, url: str, status: int | None) -> None:
    """The alert command, through the shell; its output goes to stderr, not the table."""
    env = dict(os.environ, **alert_environment(alert, url, status))
    try:
        done = subprocess.run(
            cmd,
            shell=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sys.__stderr__.fileno() if sys.__stderr__ else subprocess.DEVNULL,
            timeout=ALERT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _note(f"the alert command ran longer than {ALERT_TIMEOUT:g} s and was killed")
    except OSError as e:
        _note(f"cannot run the alert command: {e.strerror}")
    else:
        if done.returncode:
            _note(f"the alert command exited with status {done.returncode}")


@command("probe", "GET a URL every few seconds, time it, page after 3 failures", _probe_arguments)
def probe(args: argparse.Namespace) -> int:
    t = target(args.url)
    ctx = tls_context(args.cacert, args.insecure) if t.tls else None
    pager = Pager()
    out = sys.stdout
    if not args.json:
        print(header(), file=out, flush=True)
    tries = 0
    failed: str | None = "no try made"
    next_start = time.monotonic()
    try:
        while True:
            result = probe_once(t, ctx, args.timeout)
            tries += 1
            failed = result.failed
            line = (
                as_json(result, t.url, _local(result.started))
                if args.json
                else row(result, _local(result.started))
            )
            print(line, file=out, flush=True)
            alert = pager.record(failed)
            if alert is not None:
                if alert.state == "down":
                    _note(f"DOWN: {t.url} failed {alert.failures} tries in a row ({alert.error})")
                else:
                    _note(f"UP: {t.url} answers again, after {alert.failures} failed tries")
                if args.alert:
                    run_alert(args.alert, alert, t.url, result.status)
            if args.count is not None and tries >= args.count:
                break
            next_start += args.interval
            pause = next_start - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_start = time.monotonic()  # a slow try delays the next, never bunches them
    except KeyboardInterrupt:
        return 0
    return 0 if failed is None else 1


# -- logstats --------------------------------------------------------------------------


def _logstats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "logs",
        metavar="ACCESS_LOG",
        nargs="+",
        help="combined-format access log, plain or gzip (by its first bytes); - for stdin",
    )
    p.add_argument(
        "--top", type=_positive(int), default=10, metavar="N", help="rows per table (10)"
    )
    p.add_argument(
        "--keep-query",
        action="store_true",
        help="count URLs with their query string (default: by path alone)",
    )
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.epilog = (
        "Malformed lines are counted, the first few named, and skipped. Times are shown in "
        "the UTC offset of the first line. URL counts stay exact up to 10,000 distinct "
        "URLs; beyond, the least seen are dropped and the report says by how much a count "
        "may be low."
    )


def open_log(path: str) -> tuple[str, BinaryIO | gzip.GzipFile]:
    """(name for messages, binary stream of the log's lines), gzip unwrapped."""
    if path == "-":
        name, raw = "stdin", sys.stdin.buffer
    else:
        name = path
        try:
            raw = open(path, "rb")
        except OSError as e:
            raise CtlError(f"cannot read {path}: {e.strerror}") from None
    peek = getattr(raw, "peek", None)
    magic = peek(2)[:2] if peek is not None else b""
    if magic == b"\x1f\x8b":
        return name, _Gzip(raw)
    return name, raw


class _Gzip(gzip.GzipFile):
    """A gzip stream that closes the file under it too."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._raw is not sys.stdin.buffer:
                self._raw.close()


@command(
    "logstats", "busiest minutes and hours, statuses and URLs of access logs", _logstats_arguments
)
def logstats(args: argparse.Namespace) -> int:
    # Every file is opened before any is read, so a typo fails at once, not after an hour.
    logs = [open_log(path) for path in args.logs]
    stats = LogStats(top=args.top, keep_query=args.keep_query)
    status = 0
    for name, f in logs:
        try:
            with f if f is not sys.stdin.buffer else contextlib.nullcontext(f):
                stats.feed(f, name)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            print(
                f"dlba-ctl: logstats: {name}: the compressed data is cut short or damaged "
                f"({e}); the lines before that are counted",
                file=sys.stderr,
            )
            status = 1
        except OSError as e:
            print(f"dlba-ctl: logstats: cannot read {name}: {e.strerror}", file=sys.stderr)
            status = 1
    names = [name for name, _ in logs]
    report = stats.report()
    sys.stdout.write(dumps(report, names) if args.json else render(report, names))
    sys.stdout.flush()
    return status


# -- the array's certificates -------------------------------------------------------------


def _certs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init"], help="init: make the CA and every certificate")
    p.add_argument("--config", required=True, metavar="FILE", help="the array's config file")
    p.add_argument("--force", action="store_true", help="replace certificates already there")


@command(
    "certs",
    "make the array CA, a certificate per node and the admin one, where [tls] says",
    _certs_arguments,
)
def certs(args: argparse.Namespace) -> int:
    from dlba.certs import CertificatesExist, init_array_certificates
    from dlba.config import load, with_node
    from dlba.errors import ConfigError

    try:
        config = load(args.config)
    except ConfigError as e:
        raise CtlError(str(e), USAGE) from None
    missing = [
        key
        for key, value in (
            ("tls.ca", config.tls.ca),
            ("tls.node_certificate", config.tls.node_certificate),
            ("tls.admin_certificate", config.tls.admin_certificate),
        )
        if not value
    ]
    if missing:
        raise CtlError(f"{config.path}: set {', '.join(missing)} under [tls] first", USAGE)
    if not config.array.nodes:
        raise CtlError(f"{config.path}: no [[array.node]]: there is no node to certify", USAGE)
    nodes = []
    for n in config.array.nodes:
        path = with_node(config, n.number).tls.node_certificate
        assert path is not None
        nodes.append((n.number, path, n.ip))
    assert config.tls.ca is not None and config.tls.admin_certificate is not None
    try:
        written = init_array_certificates(
            config.tls.ca, config.tls.admin_certificate, nodes, force=args.force
        )
    except CertificatesExist as e:
        raise CtlError(str(e)) from None
    except OSError as e:
        raise CtlError(f"{e.filename}: cannot write: {e.strerror}") from None
    for path in written:
        print(path)
    return 0


# -- the control plane: every node of the file, over AMP with the admin certificate -------
#
# Exit codes scripts can trust: 0 done everywhere; 1 refused or failed (for push: nothing
# changed); 2 bad use; 4 done where the node could be reached, but some could not.

PARTIAL = 4


def _array_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the array's config file")
    p.add_argument("--json", action="store_true", help="JSON for scripts")
    p.add_argument("--timeout", type=_positive(float), default=5.0, help="seconds per node")


def _load_array(args: argparse.Namespace) -> Any:
    from dlba.config import load
    from dlba.errors import ConfigError

    try:
        return load(args.config)
    except ConfigError as e:
        raise CtlError(str(e), USAGE) from None


def _with_client(args: argparse.Namespace, work: Callable[[Any], Any]) -> int:
    """Run ``await work(client)`` on the reactor; its int is the exit status."""
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import ensureDeferred

    from dlba.client import ArrayClient, ClientError

    reactor: Any = _reactor
    config = _load_array(args)
    try:
        client = ArrayClient(config, reactor, timeout=args.timeout)
    except ClientError as e:
        raise CtlError(str(e), USAGE) from None
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["status"] = await work(client)
        except Exception as e:  # reported below, as one line
            outcome["error"] = e
        finally:
            await client.close()
            reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run()))
    reactor.run(installSignalHandlers=False)
    error = outcome.get("error")
    if isinstance(error, CtlError):
        raise error
    if error is not None:
        raise CtlError(str(error) or type(error).__name__)
    status: int = outcome.get("status", 1)
    return status


def _emit(args: argparse.Namespace, data: Any, rows: list[list[str]], heads: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _status_arguments(p: argparse.ArgumentParser) -> None:
    _array_arguments(p)
    p.add_argument("--node", type=int, help="only this node")


@command("status", "each node's role, uptime, traffic and back ends", _status_arguments)
def status(args: argparse.Namespace) -> int:
    async def work(client: Any) -> int:
        numbers = [args.node] if args.node else [n.number for n in client.nodes()]
        answers = await client.gather(numbers, client.status)
        rows, data, down = [], {}, 0
        for number, got in zip(numbers, answers, strict=True):
            if isinstance(got, Exception):
                down += 1
                data[number] = {"error": str(got)}
                rows.append([str(number), "down", "", "", "", "", str(got)])
                continue
            data[number] = got
            node, backends = got["node"], got["backends"]
            up = sum(1 for b in backends if b["enabled"] and not b["failed"])
            rows.append(
                [
                    str(number),
                    node["role"],
                    f"{node['uptime']:.0f}s",
                    str(node["connections_open"]),
                    str(node["hits"]),
                    f"{up}/{len(backends)}",
                    "",
                ]
            )
        heads = ["node", "role", "uptime", "connections", "hits", "back ends up", "error"]
        _emit(args, data, rows, heads)
        if down == len(numbers):
            return 1
        return PARTIAL if down else 0

    return _with_client(args, work)


@command("scheduler", "who each node says is scheduler, and in which term", _array_arguments)
def scheduler(args: argparse.Namespace) -> int:
    async def work(client: Any) -> int:
        numbers = [n.number for n in client.nodes()]
        answers = await client.gather(numbers, client.who_is_scheduler)
        rows, data, views = [], {}, set()
        for number, got in zip(numbers, answers, strict=True):
            if isinstance(got, Exception):
                data[number] = {"error": str(got)}
                rows.append([str(number), "", "", str(got)])
            else:
                views.add(got)
                data[number] = {"scheduler": got[0], "term": got[1]}
                rows.append([str(number), str(got[0]), str(got[1]), ""])
        _emit(args, data, rows, ["node", "scheduler", "term", "error"])
        if not views:
            return 1
        if len(views) > 1:
            print("dlba-ctl: scheduler: the nodes disagree", file=sys.stderr)
            return 1
        reached = sum(1 for d in data.values() if "term" in d)
        return PARTIAL if reached < len(numbers) else 0

    return _with_client(args, work)


def _table_arguments(p: argparse.ArgumentParser) -> None:
    _array_arguments(p)
    p.add_argument("--node", type=int, help="ask this node (default: the scheduler)")
    p.add_argument("--since", type=int, default=-1, help="only the buckets changed since V")
    p.add_argument("--table-id", default="", help="the table id the --since version is of")


@command("table", "the client table: version, buckets per node, changes", _table_arguments)
def table(args: argparse.Namespace) -> int:
    from dlba.config import scheduler_of

    async def work(client: Any) -> int:
        number = args.node or (await client.who_is_scheduler(scheduler_of(client.config)))[0]
        t = await client.client_table(number, args.since, args.table_id)
        counts: dict[int, int] = {}
        for node in t.buckets.values():
            counts[node] = counts.get(node, 0) + 1
        data = {
            "node": number,
            "version": t.version,
            "table_id": t.table_id,
            "full": t.full,
            "size": t.size,
            "buckets": {str(b): n for b, n in sorted(t.buckets.items())},
        }
        what = "whole table" if t.full else f"{len(t.buckets)} changed since {args.since}"
        if not args.json:
            print(
                f"node {number}: table {t.table_id} version {t.version}, {t.size} buckets ({what})"
            )
        rows = [[("unassigned" if n < 0 else str(n)), str(c)] for n, c in sorted(counts.items())]
        _emit(args, data, rows, ["node", "buckets"])
        return 0

    return _with_client(args, work)


def _push_arguments(p: argparse.ArgumentParser) -> None:
    _array_arguments(p)
    p.add_argument("file", metavar="NEW_CONFIG", help="the config every node should run")


@command("push", "validate a config on every node, then commit it on all", _push_arguments)
def push(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise CtlError(f"{args.file}: cannot read: {e.strerror}") from None

    async def work(client: Any) -> int:
        result = await client.push(text)
        data = {
            "committed": result.committed,
            "serial": result.serial,
            "errors": result.errors,
            "down": result.down,
            "serials": result.serials,
        }
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            for n in [n.number for n in client.nodes()]:
                if n in result.serials:
                    print(f"node {n}: committed serial {result.serials[n]}")
                elif n in result.errors:
                    print(f"node {n}: refused:")
                    for line in result.errors[n].splitlines():
                        print(f"  {line}")
                elif n in result.down:
                    print(f"node {n}: not reached: {result.down[n]}")
                else:
                    print(f"node {n}: validated, not committed (another node refused)")
        if result.errors or not result.committed:
            return 1
        return PARTIAL if result.down else 0

    return _with_client(args, work)


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    _array_arguments(p)
    p.add_argument("state", choices=["enable", "disable", "drain"])
    p.add_argument("backend", type=int, metavar="NUMBER", help="the back end's number")
    p.add_argument("--pool", default="", help="check it is in this pool")
    p.add_argument("--grace", type=_positive(float, True), default=60.0, help="drain: seconds")


@command("backend", "enable, disable or drain a back end on every node", _backend_arguments)
def backend(args: argparse.Namespace) -> int:
    state = {"enable": "enabled", "disable": "disabled", "drain": "drain"}[args.state]

    async def work(client: Any) -> int:
        numbers = [n.number for n in client.nodes()]
        answers = await client.gather(
            numbers,
            lambda n: client.set_backend_state(n, args.pool, args.backend, state, args.grace),
        )
        return _report_states(args, numbers, answers)

    return _with_client(args, work)


def _node_arguments(p: argparse.ArgumentParser) -> None:
    _array_arguments(p)
    p.add_argument("state", choices=["enable", "disable"])
    p.add_argument("node", type=int, metavar="NUMBER", help="the node's number")


@command("node", "enable or disable a node (it gets no new clients)", _node_arguments)
def node(args: argparse.Namespace) -> int:
    state = "enabled" if args.state == "enable" else "disabled"

    async def work(client: Any) -> int:
        numbers = [n.number for n in client.nodes()]
        answers = await client.gather(numbers, lambda n: client.set_node_state(n, args.node, state))
        return _report_states(args, numbers, answers)

    return _with_client(args, work)


def _report_states(args: argparse.Namespace, numbers: list[int], answers: list[Any]) -> int:
    from dlba.client import ClientError

    rows, data, down, refused = [], {}, 0, 0
    for number, got in zip(numbers, answers, strict=True):
        if isinstance(got, ClientError):
            down += 1
            data[number] = {"error": str(got)}
            rows.append([str(number), "not reached", str(got)])
        elif isinstance(got, Exception):
            refused += 1
            data[number] = {"error": str(got)}
            rows.append([str(number), "refused", str(got)])
        else:
            data[number] = {"state": got}
            rows.append([str(number), got, ""])
    _emit(args, data, rows, ["node", "state", "error"])
    if refused or down == len(numbers):
        return 1
    return PARTIAL if down else 0


# Last: every subcommand above has registered itself by now.
if __name__ == "__main__":
    sys.exit(main())
