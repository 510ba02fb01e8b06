"""The demo: three small back ends that issue a session cookie and say who answered,
and the config of a one-node array in front of them."""

from __future__ import annotations

import os
import secrets
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

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


class DemoBackendResource(Resource):
    """Answers any path with which back end it is and the session it saw."""

    isLeaf = True

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number

    def render(self, request: Request) -> bytes:
        session = request.getCookie(b"JSESSIONID")
        if session is None:
            session = secrets.token_hex(8).encode()
            request.addCookie(b"JSESSIONID", session, path=b"/", httpOnly=True)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Backend", b"%d" % self.number)
        return b"backend %d answered %s %s (JSESSIONID=%s)\n" % (
            self.number,
            request.method,
            request.uri,
            session,
        )


class _QuietSite(Site):
    """The proxy keeps the access log; the demo back ends keep none."""

    def log(self, request: Any) -> None:
        pass


def demo_site(number: int) -> Site:
    site = _QuietSite(DemoBackendResource(number))
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
