"""The seams between dlba's parts, as zope Interfaces, and what a policy may read of a request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from zope.interface import Attribute, Interface

from dlba.tables import BackendState


class RequestView(Protocol):
    """What routing and policies may read of a request (the proxy's Exchange provides it)."""

    method: bytes
    target: bytes  # origin-form, as forwarded
    host: bytes | None
    cookies: list[tuple[bytes, bytes]]  # every Cookie header's pairs, values as sent
    headers: list[tuple[bytes, bytes]]  # forwarded headers, names as sent


class ReportSource(Protocol):
    """What the admin web reads: the node's report (``dlba.report``'s shape) at a time."""

    def report(self, now: float) -> dict[str, Any]: ...


class IBackendPolicy(Interface):
    """Chooses the back end for one request of a pool, and may watch the answers."""

    looks_at_answers = Attribute("True if answered() must see every answer's headers")

    def choose(  # type: ignore[misc]
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        """One of ``backends`` fit to take ``request`` now and not in ``exclude``, or None."""

    def bound(  # type: ignore[misc]
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        """The back end ``request`` belongs to (its session, its URL's cache), if it may
        take it now; None when the request is free to go anywhere."""

    def answered(  # type: ignore[misc]
        request: RequestView,
        backend: BackendState,
        headers: Sequence[tuple[bytes, bytes]],
        secure: bool,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        """Headers to add to the answer ``backend`` gave (``secure``: the client used TLS)."""


class IFrameIO(Interface):
    """The packet scheduler's frame path: reads the frames for the VIP, has a
    ``dlba.frames.FrameRouter`` decide each one, and sends it where the router says.

    ``dlba.packet.rawio.PacketSocketIO`` reads every frame from an AF_PACKET socket;
    issue 13's kernel fast path forwards in nftables and hands this same router only the
    table misses, so the service above it does not change."""

    path = Attribute("the path's name for the status table and /metrics: 'af_packet', …")

    def start(router: Any) -> None:  # type: ignore[misc]
        """From now on, read, route and send; ``router`` is a ``FrameRouter``."""

    def stop() -> None:  # type: ignore[misc]
        """Stop reading and close whatever ``start`` opened; a second call does nothing."""
