"""The seams between dlba's parts, as zope Interfaces."""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import Interface

from dlba.tables import BackendState


class IBackendPolicy(Interface):
    """Chooses the back end for one request among the pool's candidates."""

    def choose(candidates: Sequence[BackendState], request: object) -> BackendState | None:  # type: ignore[misc]
        """Return one of ``candidates`` (all live and enabled), or None when none fits.

        ``request`` is the parsed request head; a policy that does not look at it ignores it.
        """
