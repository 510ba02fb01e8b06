"""The admin web (every node, ``[listen] admin``): dashboard, JSON API, Prometheus metrics.

Read-only: ``GET`` and ``HEAD`` only.  ``/`` is the dashboard (static files shipped as
package data, no CDN), ``/api/status`` the node's report plus the history behind its
sparklines, ``/metrics`` the Prometheus exposition.  The history is sampled on the clock
whether anyone looks or not, so a fresh page already has curves.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.application.strports import service as strports_service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from dlba.admin.metrics import exposition, metrics_registry
from dlba.history import SERIES_LENGTH, History
from dlba.interfaces import ReportSource

log = Logger(namespace="dlba.admin")

SAMPLE_INTERVAL = 2.0

# The page loads only its own files and talks only to its own origin.  Inline styles
# are not needed either: the script sets sizes through the CSSOM, which CSP allows.
PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}
STATIC_FILES = ("index.html", "dashboard.css", "dashboard.js", "favicon.svg")


@dataclass(frozen=True)
class DashboardSettings:
    """What the page needs to know that the report does not say."""

    refresh: float = SAMPLE_INTERVAL  # seconds between the page's fetches
    sweep_warn: float = 6.0  # the sweep's age turns amber past this, in seconds
    sweep_alarm: float = 15.0  # and red past this

    def to_dict(self) -> dict[str, float]:
        return {
            "refresh": self.refresh,
            "sweep_warn": self.sweep_warn,
            "sweep_alarm": self.sweep_alarm,
        }


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (``JSON.parse`` refuses them): null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), separators=(",", ":"), allow_nan=False)
    return text.encode()


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return text.encode() + b"\n"


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        return _plain(request, 404, "not found")


class _Node(Resource):
    """A path segment with children of its own; any other name under it is a 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:  # type: ignore[override]
        return _NotFound()

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        return _plain(request, 404, "not found")


class _ReadOnly(Resource):
    """A leaf that answers GET and HEAD; every other method is a 405 naming them."""

    isLeaf = True

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        if request.postpath:  # "/metrics/" or "/metrics/x" is not "/metrics"
            return _plain(request, 404, "not found")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _plain(request, 405, "method not allowed: the admin web is read-only")
        return self.get(request)

    def get(self, request: Request) -> bytes:
        raise NotImplementedError


class StaticFile(_ReadOnly):
    """One file of the dashboard, read from the package once, when the site is built."""

    def __init__(self, name: str, *, page: bool = False) -> None:
        super().__init__()
        self.body = resources.files("dlba.admin").joinpath("static", name).read_bytes()
        self.content_type = _STATIC_TYPES[name[name.rindex(".") :]]
        self.etag = hashlib.sha256(self.body).hexdigest()[:20].encode()
        self.page = page

    def get(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        # Revalidated each load (a 304 costs nothing), so a new version shows at once.
        request.setHeader(b"Cache-Control", b"no-cache")
        if self.page:
            request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
        if request.setETag(b'"%s"' % self.etag):
            return b""  # 304: setETag set the code
        return self.body


class StatusResource(_ReadOnly):
    """``/api/status``: the report, ``history`` for the sparklines, ``dashboard`` settings."""

    def __init__(
        self,
        source: ReportSource,
        clock: IReactorTime,
        history: History,
        settings: DashboardSettings,
    ) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.history = history
        self.settings = settings

    def get(self, request: Request) -> bytes:
        body = dict(self.source.report(self.clock.seconds()))
        body["history"] = self.history.to_dict()
        body["dashboard"] = self.settings.to_dict()
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return to_json(body)


class MetricsResource(_ReadOnly):
    """``/metrics``: read at scrape time from the report (see ``metrics.py``)."""

    def __init__(self, source: ReportSource, clock: IReactorTime) -> None:
        super().__init__()
        self.registry = metrics_registry(source, clock)

    def get(self, request: Request) -> bytes:
        accept = request.getHeader(b"Accept")
        body, content_type = exposition(self.registry, accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return body


class AdminRequest(Request):
    """Every answer of the admin web, errors included, says what a browser may do with it."""

    def process(self) -> None:
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        self.setHeader(b"Referrer-Policy", b"no-referrer")
        self.setHeader(b"X-Frame-Options", b"DENY")
        super().process()


class AdminSite(Site):
    requestFactory = AdminRequest
    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass  # a dashboard polls every two seconds: no access log for that


def admin_resource(
    source: ReportSource,
    clock: IReactorTime,
    history: History,
    settings: DashboardSettings = DashboardSettings(),
) -> Resource:
    root = _Node()
    root.putChild(b"", StaticFile("index.html", page=True))
    static = _Node()
    for name in STATIC_FILES[1:]:
        static.putChild(name.encode(), StaticFile(name))
    root.putChild(b"static", static)
    # Browsers ask for /favicon.ico whatever the page says.
    root.putChild(b"favicon.ico", StaticFile("favicon.svg"))
    api = _Node()
    api.putChild(b"status", StatusResource(source, clock, history, settings))
    root.putChild(b"api", api)
    root.putChild(b"metrics", MetricsResource(source, clock))
    return root


def make_admin_site(
    source: ReportSource,
    clock: IReactorTime,
    history: History | None = None,
    settings: DashboardSettings = DashboardSettings(),
) -> AdminSite:
    """The admin web over any object with ``report(now)``; ``history`` is sampled elsewhere."""
    return AdminSite(admin_resource(source, clock, history or History(), settings))


class Sampler:
    """Takes one sample of the report into the history; a failing report skips a sample."""

    def __init__(self, source: ReportSource, clock: IReactorTime, history: History) -> None:
        self.source = source
        self.clock = clock
        self.history = history

    def __call__(self) -> None:
        now = self.clock.seconds()
        try:
            self.history.sample(now, self.source.report(now))
        except Exception:
            # Sampling runs on a LoopingCall: one bad report must not stop it for good.
            log.failure("admin: sampling the report failed")


def make_admin_service(
    endpoint: str,
    source: ReportSource,
    reactor: Any,  # provides IReactorTCP and IReactorTime
    *,
    interval: float = SAMPLE_INTERVAL,
    length: int = SERIES_LENGTH,
    sweep_warn: float = DashboardSettings.sweep_warn,
    sweep_alarm: float = DashboardSettings.sweep_alarm,
) -> MultiService:
    """The admin listener on ``endpoint`` and the sampler feeding its history."""
    history = History(length)
    settings = DashboardSettings(refresh=interval, sweep_warn=sweep_warn, sweep_alarm=sweep_alarm)
    admin = MultiService()
    admin.setName("admin")
    sampler = TimerService(interval, Sampler(source, reactor, history))
    sampler.clock = reactor
    sampler.setName("admin-sampler")
    sampler.setServiceParent(admin)
    site = make_admin_site(source, reactor, history, settings)
    listener = strports_service(endpoint, site, reactor=reactor)
    listener.setName("admin")
    listener.setServiceParent(admin)
    return admin
