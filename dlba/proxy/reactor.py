"""The reactor a dlba node runs on: Twisted's epoll reactor, lighter per event.

Twisted's reactors dispatch each ready descriptor through ``log.callWithLogger``, which
copies a context dict and pushes it on a stack so that legacy ``log.msg`` calls made while
handling the event carry the connection's log prefix as ``system``.  dlba logs with
``twisted.logger``, which never reads that context, and a proxy handles a few events per
request: the copy, the stack and their try/finally were about a tenth of a node's CPU under
keep-alive load (py-spy, bench/run.sh).  This reactor dispatches directly.  What is lost:
a traceback Twisted logs for an exception escaping a protocol (``_doReadOrWrite`` still
catches, logs and disconnects) names no ``system``.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import epollreactor


class LeanEPollReactor(epollreactor.EPollReactor):
    """``EPollReactor`` whose ``doPoll`` calls ``_doReadOrWrite`` with no log context."""

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite  # catches and logs what a protocol raises
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> LeanEPollReactor:
    """Install a ``LeanEPollReactor`` as the global reactor (before anything imports one)."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


def node_reactor() -> Any:
    """The reactor a node should run on: the lean one unless a reactor is installed already
    (``twistd --reactor NAME`` chose one, or something imported the default) or this
    platform has no epoll."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        return reactor
    try:
        return install()
    except (ImportError, AttributeError):  # no select.epoll here
        from twisted.internet import reactor

        return reactor
