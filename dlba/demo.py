"""The demo: three small back ends that issue a session cookie and say who answered,
and the config of a one-node array in front of them.

A back end also serves a slow download, for tests of connections that outlive a failover:
``GET /download?bytes=N&rate=R`` answers ``N`` bytes (with a Content-Length) at about ``R``
bytes a second, a few writes a second.  The body is `download_body`: 16-byte lines holding
their own offset, so a client can check every byte it got.  ``N`` is at most
`DOWNLOAD_MAX_BYTES` and the whole answer takes at most `DOWNLOAD_MAX_SECONDS`; anything
else is a 400.  Every other path answers as before.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from dlba.config import (
    BackendConfig,
    Config,
    ListenSection,
    LogSection,
    NodeSection,
    PoolConfig,
    TLSSection,
)

DEMO_PORTS = (9001, 9002, 9003)


DOWNLOAD_PATH = b"/download"
DOWNLOAD_MAX_BYTES = 64 * 1024 * 1024
DOWNLOAD_MAX_SECONDS = 60.0
DOWNLOAD_DEFAULT_RATE = 1024 * 1024  # bytes a second, when the query names none
DOWNLOAD_TICK = 0.05  # seconds between writes
_LINE = 16  # bytes of one line of the body


def download_body(offset: int, length: int) -> bytes:
    """``length`` bytes of the download's body from ``offset``: line k (16 bytes) is k·16
    in 15 decimal digits and a newline, so every byte says where it belongs."""
    if length <= 0:
        return b""
    first = offset // _LINE
    last = (offset + length + _LINE - 1) // _LINE
    lines = b"".join(b"%015d\n" % (k * _LINE) for k in range(first, last))
    start = offset - first * _LINE
    return lines[start : start + length]


def download_request(args: dict[bytes, list[bytes]]) -> tuple[int, float] | str:
    """(size, rate) asked for by a download's query arguments, or why they are refused."""
    try:
        size = int(args.get(b"bytes", [b""])[0])
        rate = float(args.get(b"rate", [b"%d" % DOWNLOAD_DEFAULT_RATE])[0])
    except ValueError:
        return "bytes must be an integer and rate a number"
    if not 0 <= size <= DOWNLOAD_MAX_BYTES:
        return f"bytes must be from 0 to {DOWNLOAD_MAX_BYTES}"
    if not rate > 0 or rate == float("inf"):
        return "rate must be a positive number of bytes a second"
    if size / rate > DOWNLOAD_MAX_SECONDS:
        return f"that would take over {DOWNLOAD_MAX_SECONDS:g} s: ask for a higher rate"
    return size, rate


@implementer(IPushProducer)
class _Trickle:
    """Writes a download's body to ``request`` a slice every `DOWNLOAD_TICK`, as a push
    producer: the transport's backpressure pauses it; a lost connection ends it."""

    def __init__(self, request: Request, size: int, rate: float, clock: IReactorTime) -> None:
        self.request = request
        self.size = size
        self.rate = rate
        self.clock = clock
        self.sent = 0
        self.paused = False
        self.done = False
        self._call: IDelayedCall | None = None
        self._slice = max(1, int(rate * DOWNLOAD_TICK))

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(self._lost)
        self._tick()

    def _tick(self) -> None:
        self._call = None
        if self.done or self.paused:
            return
        n = min(self._slice, self.size - self.sent)
        if n > 0:
            self.request.write(download_body(self.sent, n))
            self.sent += n
        if self.sent >= self.size:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()
        elif not self.paused and self._call is None:
            self._call = self.clock.callLater(DOWNLOAD_TICK, self._tick)

    def _lost(self, reason: Failure) -> None:
        self.stopProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        if self.done or not self.paused:
            return
        self.paused = False
        self._call = self.clock.callLater(DOWNLOAD_TICK, self._tick)

    def stopProducing(self) -> None:
        self.done = True
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class DemoBackendResource(Resource):
    """Answers any path with which back end it is and the session it saw; `DOWNLOAD_PATH`
    with a slow download (the module's docstring)."""

    isLeaf = True

    def __init__(self, number: int, clock: IReactorTime | None = None) -> None:
        super().__init__()
        self.number = number
        self._clock = clock

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor  # type: ignore[assignment]
        assert self._clock is not None
        return self._clock

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"X-Backend", b"%d" % self.number)
        if request.path == DOWNLOAD_PATH and request.method in (b"GET", b"HEAD"):
            return self.download(request)
        session = request.getCookie(b"JSESSIONID")
        if session is None:
            session = secrets.token_hex(8).encode()
            request.addCookie(b"JSESSIONID", session, path=b"/", httpOnly=True)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"backend %d answered %s %s (JSESSIONID=%s)\n" % (
            self.number,
            request.method,
            request.uri,
            session,
        )

    def download(self, request: Request) -> bytes | int:
        asked = download_request(request.args or {})
        if isinstance(asked, str):
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return asked.encode() + b"\n"
        size, rate = asked
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % size)
        if request.method == b"HEAD":
            return b""
        _Trickle(request, size, rate, self.clock).start()
        return NOT_DONE_YET


class _QuietSite(Site):
    """The proxy keeps the access log; the demo back ends keep none."""

    def log(self, request: Any) -> None:
        pass


def demo_site(number: int, clock: IReactorTime | None = None) -> Site:
    site = _QuietSite(DemoBackendResource(number, clock))
    site.displayTracebacks = False
    site.noisy = False
    return site


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "dlba-demo")


def demo_config(state_dir: str, certificate: str) -> Config:
    """DESIGN.md §10: HTTP 8080, HTTPS 8443, status 7701, admin 7780, all on 127.0.0.1."""
    return Config(
        path="<demo>",
        node=NodeSection(number=1, state_dir=state_dir),
        listen=ListenSection(
            http="tcp:8080:interface=127.0.0.1",
            https="tcp:8443:interface=127.0.0.1",
            status="tcp:7701:interface=127.0.0.1",
            admin="tcp:7780:interface=127.0.0.1",
        ),
        tls=TLSSection(certificates=(certificate,)),
        log=LogSection(access_log=None),
        pools=(
            PoolConfig(
                name="demo",
                policy="cookie",
                adaptive=False,
                backends=tuple(
                    BackendConfig(number=i + 1, host="127.0.0.1", port=port)
                    for i, port in enumerate(DEMO_PORTS)
                ),
            ),
        ),
    )
