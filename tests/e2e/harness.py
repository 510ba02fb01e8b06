"""The end-to-end harness: real back ends, a real ``twistd dlba``, real clients.

Everything runs on the real reactor inside trial's ``TestCase`` and is started per test:

- ``Backend``: ``tests/e2e/backend.py`` as a child process.  The test binds its listening
  socket on 127.0.0.1 and hands it over as descriptor 3, so the port is known before the
  child starts (dlba's config can be written at once) and the child can start alongside
  dlba.  The test's copy is closed straight after the spawn, so a killed back end really
  refuses connections.
- ``Dlba``: ``twistd -n --logger=dlba.logs.json_observer dlba --config FILE``, the
  installed package (run ``pip install .`` first), or with ``DLBA_E2E_TREE=1`` this
  working tree's code.  Its log is read as JSON lines;
  the ``listening: {listener} on {host}:{port}`` events are the readiness signal and
  give the real ports.
- ``run``: curl or openssl as a child with a hard deadline.
- ``RawClient``: a TCP (or TLS) connection that sends exactly the bytes given and
  collects what comes back, with bounded waits for a whole answer or the close.

Every wait is bounded (``within``); every process and connection is ended in a cleanup
that runs even when the test fails (SIGTERM, then SIGKILL after a bound).  A test fails
if dlba logged a traceback (an event with ``log_failure``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from dlba.certs import make_cert

reactor: Any = _reactor

T = TypeVar("T")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BACKEND_SCRIPT = os.path.join(HERE, "backend.py")

# Bounds on waits.  Generous because CI machines stall; far below trial's test timeout.
START_DEADLINE = 15.0  # a child process up and serving
STOP_DEADLINE = 8.0  # SIGTERM to exit, before SIGKILL
CLIENT_DEADLINE = 15.0  # curl, openssl and raw-socket answers

# Children see only what they need: a stray http_proxy or OPENSSL_CONF must not change
# what is tested.
CHILD_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

# Port 0 for every listener: the real ports come from dlba's log.
HTTP_ENDPOINT = HTTPS_ENDPOINT = STATUS_ENDPOINT = ADMIN_ENDPOINT = "tcp:0:interface=127.0.0.1"

# Which dlba runs: the installed package (``pip install .`` first, as CI does), or with
# DLBA_E2E_TREE=1 this repository's working tree.
FROM_TREE = os.environ.get("DLBA_E2E_TREE", "") not in ("", "0")


# -- known dlba bugs -------------------------------------------------------------------
# Tests that fail because of these carry @todo(...) (trial's expected failure) until the
# bug is fixed; then remove the decorator.

TLS_CLOSE = (
    "dlba bug: over TLS dlba never closes a client connection: TLSMemoryBIOProtocol."
    "loseConnection waits for the producer FrontProtocol registers in connectionMade"
)
RESPONSE_TIMEOUT = (
    "dlba bug: backend_response_timeout runs from when the request head is sent and is "
    "never moved: a slow upload gets 504 and a streaming answer is cut"
)
OWN_ANSWER_BYTES = "dlba bug: answers dlba makes itself are logged with '-' for the bytes"
JSON_LINES = "dlba bug: every JSON log line starts with RS (0x1e): not one JSON object a line"

F = TypeVar("F", bound=Callable[..., Any])


def todo(reason: str) -> Callable[[F], F]:
    """Trial's expected failure (``todo``) for a test that fails because of a dlba bug."""

    def mark(test: F) -> F:
        test.todo = reason  # type: ignore[attr-defined]
        return test

    return mark


def within(d: Deferred[T], seconds: float, what: str | Callable[[], str]) -> Deferred[T]:
    """``d``, failing with an AssertionError naming ``what`` if it takes over ``seconds``
    (a callable ``what`` is asked at that time, so it can tell the state then)."""

    def timed_out(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            told = what() if callable(what) else what
            raise AssertionError(f"timed out after {seconds}s waiting for {told}")
        return failure

    d.addTimeout(seconds, reactor)
    d.addErrback(timed_out)
    return d


class Waiters:
    """Deferreds waiting for a condition on some state, checked when the state changes."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], Any], Deferred[Any], str]] = []
        self.final: str | None = None

    def add(self, check: Callable[[], Any], what: str) -> Deferred[Any]:
        """``check()`` returns None while not yet, else the value to fire with."""
        d: Deferred[Any] = Deferred()
        self._waiting.append((check, d, what))
        self.poke(self.final)
        return d

    def poke(self, final: str | None = None) -> None:
        """Re-check everyone; with ``final`` (a reason) the ones still waiting fail, as will
        those added later whose condition does not hold at once."""
        if final is not None:
            self.final = final
        for item in list(self._waiting):
            check, d, what = item
            if d.called:
                self._waiting.remove(item)
                continue
            try:
                value = check()
            except Exception:
                self._waiting.remove(item)
                d.errback(Failure())
                continue
            if value is not None:
                self._waiting.remove(item)
                d.callback(value)
            elif final is not None:
                self._waiting.remove(item)
                d.errback(AssertionError(f"{final} while waiting for {what}"))


# -- child processes ----------------------------------------------------------------------


@dataclass
class ProcessResult:
    out: bytes
    err: bytes
    code: int | None  # exit code, or None if killed by a signal
    signal: int | None

    @property
    def text(self) -> str:
        return (self.out + self.err).decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "replace")


class Child(ProcessProtocol):
    """A child process: collects its output, calls ``on_line`` per stdout line.

    ``stdin`` is written at once; stdin is then closed, or with ``close_stdin_when`` only
    once that returns true for the stdout so far.
    """

    def __init__(
        self,
        name: str,
        stdin: bytes | None = None,
        on_line: Callable[[bytes], None] | None = None,
        close_stdin_when: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.name = name
        self.stdin = stdin
        self.on_line = on_line
        self.close_stdin_when = close_stdin_when
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self._partial = b""
        self.result: ProcessResult | None = None
        self.ended = Waiters()
        self.printed = Waiters()  # poked on every chunk of stdout
        self.pid: int | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid  # type: ignore[attr-defined]
        if self.stdin is not None:
            self.transport.write(self.stdin)
            if self.close_stdin_when is None:
                self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)
        self.printed.poke()
        if self.close_stdin_when is not None and self.close_stdin_when(b"".join(self.out)):
            self.close_stdin_when = None
            assert self.transport is not None
            self.transport.closeStdin()
        if self.on_line is not None:
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self.on_line(line)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = sig = None
        if isinstance(value, ProcessDone | ProcessTerminated):
            code, sig = value.exitCode, value.signal
        self.result = ProcessResult(b"".join(self.out), b"".join(self.err), code, sig)
        self.ended.poke(final=f"{self.name} ended")
        self.printed.poke(final=f"{self.name} ended")

    @property
    def running(self) -> bool:
        return self.result is None

    def when_printed(self, check: Callable[[bytes], bool], what: str) -> Deferred[bool]:
        """Until ``check`` holds for the stdout so far (failing if the child ends first)."""
        return within(
            self.printed.add(lambda: True if check(b"".join(self.out)) else None, what),
            CLIENT_DEADLINE,
            lambda: f"{what}; {self.name} printed {b''.join(self.out)[-500:]!r}",
        )

    def when_ended(self, seconds: float) -> Deferred[ProcessResult]:
        return within(
            self.ended.add(lambda: self.result, f"{self.name} to exit"),
            seconds,
            f"{self.name} to exit",
        )

    def signal(self, name: str | int) -> None:
        if self.running and self.transport is not None:
            self.transport.signalProcess(name)

    async def terminate(self, grace: float = STOP_DEADLINE) -> ProcessResult:
        """SIGTERM, then SIGKILL if it has not exited within ``grace``."""
        if self.running:
            self.signal("TERM")
            try:
                return await self.when_ended(grace)
            except AssertionError:
                self.signal("KILL")
        return await self.when_ended(STOP_DEADLINE)

    async def kill(self) -> ProcessResult:
        self.signal("KILL")
        return await self.when_ended(STOP_DEADLINE)

    def output(self) -> str:
        return (b"".join(self.out) + b"\n--- stderr ---\n" + b"".join(self.err)).decode(
            "utf-8", "replace"
        )


def spawn(
    argv: Sequence[str],
    child: Child,
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    fds: dict[int, int] | None = None,
) -> Child:
    child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
    child_fds.update(fds or {})
    reactor.spawnProcess(
        child, argv[0], list(argv), env=env or CHILD_ENV, path=cwd, childFDs=child_fds
    )
    return child


async def run(
    argv: Sequence[str],
    stdin: bytes = b"",
    deadline: float = CLIENT_DEADLINE,
    close_stdin_when: Callable[[bytes], bool] | None = None,
    env: dict[str, str] | None = None,
) -> ProcessResult:
    """Run a client to its end; killed and failed if it takes longer than ``deadline``."""
    name = os.path.basename(argv[0])
    child = spawn(argv, Child(name, stdin=stdin, close_stdin_when=close_stdin_when), env=env)
    try:
        return await child.when_ended(deadline)
    except AssertionError:
        result = await child.kill()
        raise AssertionError(f"{' '.join(argv)} took over {deadline}s:\n{result.text}") from None


def dlba_ctl(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``dlba-ctl``: the installed one, or this tree's with DLBA_E2E_TREE."""
    if FROM_TREE:
        return [sys.executable, "-m", "dlba.ctl", *args], dict(CHILD_ENV, PYTHONPATH=REPO)
    found = shutil.which("dlba-ctl")
    if found is None:
        raise SkipTest("dlba-ctl is not installed (pip install . first, or DLBA_E2E_TREE=1)")
    return [found, *args], CHILD_ENV


def need(*binaries: str) -> None:
    for binary in binaries:
        if shutil.which(binary) is None:
            raise SkipTest(f"{binary} is not installed; this end-to-end test runs the real one")


# -- the back end -------------------------------------------------------------------------


class Backend:
    """``tests/e2e/backend.py`` on a socket this process bound (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        idle_close: float | None = None,
        always_close: bool = False,
        drop_reused: bool = False,
    ):
        self.name = name
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self.port: int = sock.getsockname()[1]
            argv = [sys.executable, BACKEND_SCRIPT, "--name", name, "--fd", "3"]
            if idle_close is not None:
                argv += ["--idle-close", str(idle_close)]
            if always_close:
                argv.append("--always-close")
            if drop_reused:
                argv.append("--drop-reused")
            self._ready: dict[str, Any] | None = None
            self.events: list[dict[str, Any]] = []
            self.ready_waiters = Waiters()
            self.child = spawn(
                argv, Child(f"back end {name}", on_line=self._line), fds={3: sock.fileno()}
            )
        finally:
            sock.close()
        self.child.ended.add(lambda: self.child.result, "exit").addBoth(
            lambda _: self.ready_waiters.poke(final=f"back end {name} exited")
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict):
            self.events.append(event)
            if event.get("event") == "ready":
                self._ready = event
            self.ready_waiters.poke()

    def ready(self) -> Deferred[Any]:
        what = f"back end {self.name} to serve"
        return within(self.ready_waiters.add(lambda: self._ready, what), START_DEADLINE, what)

    def wait_event(self, name: str, count: int = 1) -> Deferred[Any]:
        """Until the back end has printed ``count`` events called ``name``."""
        what = f"{count} {name!r} event(s) from back end {self.name}"

        def check() -> list[dict[str, Any]] | None:
            found = [e for e in self.events if e.get("event") == name]
            return found if len(found) >= count else None

        return within(self.ready_waiters.add(check, what), CLIENT_DEADLINE, what)

    async def stats(self) -> dict[str, Any]:
        """GET /_stats, straight from the back end."""
        client = await connect(self.port)
        try:
            client.send(b"GET /_stats HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            response = await client.response()
            stats: dict[str, Any] = json.loads(response.body)
            return stats
        finally:
            await client.close()


# -- dlba ---------------------------------------------------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_table(header: str, values: dict[str, object]) -> list[str]:
    return [header] + [f"{k} = {toml_value(v)}" for k, v in values.items()] + [""]


@dataclass
class PoolSpec:
    backends: list[Backend]
    name: str = "app"
    options: dict[str, object] = field(default_factory=dict)
    # Extra keys for each [[pool.backend]] (weight, enabled), by position in ``backends``.
    backend_options: list[dict[str, object]] = field(default_factory=list)


def dlba_config(
    state_dir: str,
    pools: Sequence[PoolSpec],
    *,
    certificates: Sequence[str] = (),
    tls: dict[str, object] | None = None,
    limits: dict[str, object] | None = None,
    access_log: str = "",
    http: bool = True,
    https: bool = True,
    status: bool = False,
    persistence: dict[str, object] | None = None,
    rules: Sequence[dict[str, object]] = (),
    admin: bool = False,
) -> str:
    listen: dict[str, object] = {}
    if http:
        listen["http"] = HTTP_ENDPOINT
    if https:
        listen["https"] = HTTPS_ENDPOINT
    if status:
        listen["status"] = STATUS_ENDPOINT
    if admin:
        listen["admin"] = ADMIN_ENDPOINT
    lines = toml_table("[node]", {"number": 1, "state_dir": state_dir})
    lines += toml_table("[listen]", listen)
    if https:
        lines += toml_table("[tls]", {"certificates": list(certificates), **(tls or {})})
    if limits:
        lines += toml_table("[limits]", limits)
    lines += toml_table("[log]", {"access_log": access_log})
    if persistence:
        lines += toml_table("[persistence]", persistence)
    number = 0
    for pool in pools:
        lines += toml_table("[[pool]]", {"name": pool.name, **pool.options})
        for i, backend in enumerate(pool.backends):
            number += 1
            extra = pool.backend_options[i] if i < len(pool.backend_options) else {}
            lines += toml_table(
                "[[pool.backend]]", {"number": number, "address": backend.address, **extra}
            )
    for rule in rules:
        lines += toml_table("[[rule]]", rule)
    return "\n".join(lines)


ARRAY_IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


def array_config(
    state_dir: str,
    status_port: int,
    sync_port: int,
    backends: Sequence[str],
    *,
    policy: str = "round-robin",
    array: dict[str, object] | None = None,
) -> str:
    """One config for three nodes on ARRAY_IPS with the control plane: the certificates
    at the paths ``dlba-ctl certs init`` makes, each node's state in its own folder."""
    lines = toml_table("[node]", {"number": 1, "state_dir": state_dir + "/state{number}"})
    lines += toml_table(
        "[listen]", {"http": "tcp:0", "status": f"tcp:{status_port}", "sync": f"tcp:{sync_port}"}
    )
    lines += toml_table(
        "[tls]",
        {
            "ca": "tls/ca.pem",
            "node_certificate": "tls/node{number}.pem",
            "admin_certificate": "tls/admin.pem",
        },
    )
    lines += toml_table("[log]", {"access_log": ""})
    if array:
        lines += toml_table("[array]", array)
    for n, ip in enumerate(ARRAY_IPS, 1):
        lines += toml_table(
            "[[array.node]]", {"number": n, "mac": f"02:00:00:00:00:{n:02x}", "ip": ip}
        )
    lines += toml_table("[[pool]]", {"name": "app", "policy": policy})
    for number, address in enumerate(backends, 1):
        lines += toml_table("[[pool.backend]]", {"number": number, "address": address})
    return "\n".join(lines)


class Dlba:
    """One ``twistd dlba`` child process reading ``config_path``."""

    def __init__(self, config_path: str, *args: str) -> None:
        self.config_path = config_path
        self.events: list[dict[str, Any]] = []
        self.lines: list[bytes] = []
        self.event_waiters = Waiters()
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logger=dlba.logs.json_observer",
            "dlba",
            "--config",
            config_path,
            *args,
        ]
        if FROM_TREE:
            env, cwd = dict(CHILD_ENV, PYTHONPATH=REPO), REPO
        else:
            # Not the repository: the installed package must not be shadowed by the tree.
            env, cwd = CHILD_ENV, os.path.dirname(config_path)
        self.child = spawn(argv, Child("dlba", on_line=self._line), env=env, cwd=cwd)
        self.child.ended.add(lambda: self.child.result, "exit").addBoth(
            lambda _: self.event_waiters.poke(final="dlba exited")
        )
        self.ports: dict[str, int] = {}

    def _line(self, line: bytes) -> None:
        self.lines.append(line)
        try:
            # Twisted's jsonFileLogObserver starts each record with RS (RFC 7464) by
            # default; test_lifecycle_e2e checks that dlba's lines are plain JSON.
            event = json.loads(line.lstrip(b"\x1e"))
        except ValueError:
            return
        if isinstance(event, dict):
            self.events.append(event)
            if event.get("log_namespace") == "dlba.node" and "listener" in event:
                self.ports[event["listener"]] = int(event["port"])
            self.event_waiters.poke()

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], what: str, seconds: float = CLIENT_DEADLINE
    ) -> Deferred[dict[str, Any]]:
        def check() -> dict[str, Any] | None:
            return next((e for e in self.events if match(e)), None)

        return within(self.event_waiters.add(check, what), seconds, what)

    async def started(self, listeners: Iterable[str]) -> None:
        wanted = set(listeners)
        what = f"dlba to log listening for {sorted(wanted)}"
        try:
            await within(
                self.event_waiters.add(lambda: wanted <= set(self.ports) or None, what),
                START_DEADLINE,
                what,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.child.output()}") from None

    @property
    def http(self) -> int:
        return self.ports["http"]

    @property
    def https(self) -> int:
        return self.ports["https"]

    def failures(self) -> list[str]:
        """Tracebacks dlba logged: each is a bug (or a test that broke it)."""
        found = []
        for event in self.events:
            if "log_failure" in event or event.get("isError"):
                found.append(json.dumps(event)[:3000])
        return found

    def log_text(self) -> str:
        return self.child.output()


# -- raw clients ----------------------------------------------------------------------------


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False
    close_delimited: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        found = self.headers_named(name)
        return found[-1] if found else None

    def headers_named(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class Incomplete(Exception):
    pass


def parse_response(
    data: bytes | bytearray, *, head: bool = False, closed: bool = False
) -> tuple[Response, int]:
    """One response from the start of ``data``: (response, bytes used).

    Raises ``Incomplete`` if more bytes are needed (a close-delimited body is whole only
    once ``closed``).  Interim (1xx) answers other than 101 are returned like any other.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete()
    lines = data[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    response = Response(version, int(code), reason, headers, b"")
    at = end + 4
    status = response.status
    if head or status < 200 or status in (204, 304):
        return response, at
    te = response.header("transfer-encoding")
    cl = response.header("content-length")
    if te is not None:
        assert te.lower() == "chunked", te
        response.chunked = True
        body = []
        while True:
            eol = data.find(b"\r\n", at)
            if eol < 0:
                raise Incomplete()
            size = int(data[at:eol].split(b";")[0], 16)
            at = eol + 2
            if size == 0:
                break
            if len(data) < at + size + 2:
                raise Incomplete()
            body.append(bytes(data[at : at + size]))
            assert data[at + size : at + size + 2] == b"\r\n", "chunk without CRLF"
            at += size + 2
        while True:
            eol = data.find(b"\r\n", at)
            if eol < 0:
                raise Incomplete()
            line = data[at:eol].decode("latin-1")
            at = eol + 2
            if not line:
                break
            name, _, value = line.partition(":")
            response.trailers.append((name, value.strip()))
        response.body = b"".join(body)
        return response, at
    if cl is not None:
        n = int(cl)
        if len(data) < at + n:
            raise Incomplete()
        response.body = bytes(data[at : at + n])
        return response, at + n
    if not closed:
        raise Incomplete()
    response.close_delimited = True
    response.body = bytes(data[at:])
    return response, len(data)


def parse_responses(
    data: bytes, *, heads: Sequence[bool] = (), closed: bool = False
) -> tuple[list[Response], bytes]:
    """All whole responses in ``data`` (``heads[i]``: the i-th final answer is to HEAD)."""
    out: list[Response] = []
    finals = 0
    while data:
        head = heads[finals] if finals < len(heads) else False
        try:
            response, used = parse_response(data, head=head, closed=closed)
        except Incomplete:
            break
        out.append(response)
        if response.status >= 200 or response.status == 101:
            finals += 1
        data = data[used:]
        if response.status == 101:
            break
    return out, data


class RawClient(Protocol):
    """Sends exactly what it is given; collects what comes back."""

    def __init__(self) -> None:
        self.received = bytearray()  # amortised appends: answers may be megabytes
        self.unparsed = bytearray()  # what next_response has not used yet
        self.closed = False
        self.clean_close = False
        self.waiters = Waiters()

    def connectionMade(self) -> None:
        self.waiters.poke()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.unparsed += data
        self.waiters.poke()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        # A clean close (FIN) or not (RST, TLS without close_notify): how a client tells a
        # close-delimited answer that ended from one that broke.
        self.clean_close = reason is not None and reason.check(ConnectionDone) is not None
        self.waiters.poke(final="the connection closed")

    @property
    def data(self) -> bytes:
        """Everything received so far."""
        return bytes(self.received)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def when(self, check: Callable[[], Any], what: str, seconds: float = CLIENT_DEADLINE) -> Any:
        return within(
            self.waiters.add(check, what), seconds, lambda: f"{what}; got {self.data[:500]!r}"
        )

    async def responses(
        self, count: int = 1, *, heads: Sequence[bool] = (), seconds: float = CLIENT_DEADLINE
    ) -> list[Response]:
        """Wait for ``count`` final answers (interim ones are included in the list)."""

        def check() -> list[Response] | None:
            found, _ = parse_responses(self.data, heads=heads, closed=self.closed)
            finals = [r for r in found if r.status >= 200 or r.status == 101]
            if len(finals) >= count:
                return found
            if self.closed:
                raise AssertionError(
                    f"closed after {len(finals)} of {count} answers; got {self.data[:2000]!r}"
                )
            return None

        what = f"{count} answer(s)"
        result: list[Response] = await within(
            self.waiters.add(check, what), seconds, lambda: f"{what}; got {self.data[:500]!r}"
        )
        return result

    async def response(self, *, head: bool = False, seconds: float = CLIENT_DEADLINE) -> Response:
        """The first final answer."""
        found = await self.responses(1, heads=[head], seconds=seconds)
        return next(r for r in found if r.status >= 200 or r.status == 101)

    async def next_response(
        self, *, head: bool = False, seconds: float = CLIENT_DEADLINE
    ) -> Response:
        """The next answer after those taken before (interim ones are skipped)."""

        def check() -> Response | None:
            while True:
                try:
                    response, used = parse_response(self.unparsed, head=head, closed=self.closed)
                except Incomplete:
                    if self.closed:
                        raise AssertionError(
                            f"closed before a whole answer; got {self.unparsed[:2000]!r}"
                        ) from None
                    return None
                del self.unparsed[:used]
                if response.status >= 200 or response.status == 101:
                    return response

        what = "the next answer"
        result: Response = await within(
            self.waiters.add(check, what), seconds, lambda: f"{what}; got {self.unparsed[:500]!r}"
        )
        return result

    async def when_closed(self, seconds: float = CLIENT_DEADLINE) -> bytes:
        """Everything received, once the other side has closed the connection."""
        await within(
            self.waiters.add(lambda: True if self.closed else None, "the close"),
            seconds,
            lambda: f"the peer to close the connection; got {self.data[:500]!r}",
        )
        return self.data

    async def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            await self.when_closed(STOP_DEADLINE)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` has listening sockets on (from /proc: its socket
    inodes against the LISTEN rows of /proc/net/tcp and tcp6). A refused connect proves
    less: on a busy machine another process may bind the freed port at once."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def connect(port: int, *, tls: bool = False) -> RawClient:
    """A raw connection to 127.0.0.1:``port``; TLS without verification (no SNI)."""
    if tls:
        options = ssl.CertificateOptions(verify=False)
        endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options, timeout=5)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client: RawClient = await within(
        connectProtocol(endpoint, RawClient()), CLIENT_DEADLINE, "a connection"
    )
    return client


async def status_lines(
    port: int, command: bytes = b"STATUS", host: str = "127.0.0.1"
) -> list[dict[str, Any]]:
    """A status daemon's answer to ``command``: its JSON lines, once it has closed.  An
    answer that does not end in ``END`` fails the test."""
    if host == "127.0.0.1":
        client = await connect(port)
    else:
        client = await within(
            connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=5), RawClient()),
            CLIENT_DEADLINE,
            f"a connection to {host}:{port}",
        )
    client.send(command + b"\r\n")
    try:
        data = await client.when_closed()
    finally:
        await client.close()
    lines = data.splitlines()
    if not lines or lines[-1] != b"END":
        raise AssertionError(f"the status answer does not end in END: {data[-200:]!r}")
    return [json.loads(line) for line in lines[:-1]]


def request(
    path: str,
    *,
    method: str = "GET",
    host: str = "example.test",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request as bytes, with Content-Length when there is a body."""
    lines = [f"{method} {path} {version}", f"Host: {host}"]
    lines += [f"{n}: {v}" for n, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# -- the test case ----------------------------------------------------------------------


class E2ETestCase(TestCase):
    """Starts back ends and dlba per test and ends them, whatever the test's outcome."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dlba-e2e-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.dlba: Dlba | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes | str) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return path

    def backend(self, name: str, **options: Any) -> Backend:
        backend = Backend(name, **options)
        self.addCleanup(backend.child.terminate)
        return backend

    def certificate(self, name: str, *names: str) -> str:
        return self.write(name, make_cert(list(names)))

    async def start(
        self,
        backends: Sequence[Backend] | None = None,
        *,
        pools: Sequence[PoolSpec] | None = None,
        pool: dict[str, object] | None = None,
        limits: dict[str, object] | None = None,
        certificates: Sequence[str] | None = None,
        tls: dict[str, object] | None = None,
        access_log: str = "",
        https: bool = True,
        status: bool = False,
        persistence: dict[str, object] | None = None,
        rules: Sequence[dict[str, object]] = (),
        admin: bool = False,
    ) -> Dlba:
        """Write a config, start dlba, wait until it and the back ends serve.

        ``status``: the status daemon listens too; ``tls``: more [tls] keys than the
        certificates; ``persistence``: the [persistence] table; ``rules``: [[rule]]
        tables, in order; ``admin``: the admin web listens too."""
        if pools is None:
            pools = [PoolSpec(list(backends or []), options=dict(pool or {}))]
        if https and certificates is None:
            certificates = [self.certificate("a.pem", "a.example")]
        text = dlba_config(
            self.dir,
            pools,
            certificates=certificates or (),
            tls=tls,
            limits=limits,
            access_log=access_log,
            https=https,
            status=status,
            persistence=persistence,
            rules=rules,
            admin=admin,
        )
        self.config_path = self.write("dlba.toml", text)
        dlba = Dlba(self.config_path)
        self.dlba = dlba
        self.addCleanup(self._stop_dlba, dlba)
        listeners = ["http"] + (["https"] if https else []) + (["status"] if status else [])
        await dlba.started(listeners + (["admin"] if admin else []))
        for p in pools:
            for b in p.backends:
                await b.ready()
        return dlba

    async def _stop_dlba(self, dlba: Dlba) -> None:
        await dlba.child.terminate()
        failures = dlba.failures()
        if failures:
            raise AssertionError("dlba logged errors:\n" + "\n".join(failures))

    async def connect(self, port: int, *, tls: bool = False) -> RawClient:
        client = await connect(port, tls=tls)
        self.addCleanup(client.close)
        return client

    async def exchange(
        self, port: int, data: bytes, *, tls: bool = False, head: bool = False
    ) -> tuple[Response, RawClient]:
        """Send ``data`` on a new connection; the first final answer and the connection."""
        client = await self.connect(port, tls=tls)
        client.send(data)
        return await client.response(head=head), client

    async def curl(self, *args: str, deadline: float = CLIENT_DEADLINE) -> ProcessResult:
        need("curl")
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(deadline - 2), *args]
        return await run(argv, deadline=deadline)

    async def openssl(
        self,
        *args: str,
        stdin: bytes = b"",
        close_stdin_when: Callable[[bytes], bool] | None = None,
    ) -> ProcessResult:
        need("openssl")
        return await run(["openssl", *args], stdin=stdin, close_stdin_when=close_stdin_when)


def curl_responses(out: bytes) -> list[Response]:
    """Answers curl printed with ``-i`` (heads and bodies, one after another)."""
    found, rest = parse_responses(out, closed=True)
    assert not rest, rest
    return found
