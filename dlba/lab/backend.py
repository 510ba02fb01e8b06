"""One lab web server: ``python -m dlba.lab.backend --number J --listen ENDPOINT``.

The demo's back end (``dlba.demo``, the one ``twistd dlba --demo`` runs): it answers any
path with ``backend J answered ...``, an ``X-Backend: J`` header and a ``JSESSIONID``
cookie, so every answer says which web server served it; ``/download?bytes=N&rate=R`` is a
slow download of ``N`` checkable bytes (``dlba.demo``).  It runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from dlba.demo import demo_site

log = Logger()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlba.lab.backend")
    p.add_argument("--number", type=int, required=True, help="the back end's number")
    p.add_argument("--listen", required=True, help="a Twisted endpoint, e.g. tcp:8080")
    args = p.parse_args(argv)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    listening = serverFromString(reactor, args.listen).listen(demo_site(args.number))
    status = [0]

    def failed(failure: Any) -> None:
        log.failure("back end {number} cannot listen on {listen}", failure, **vars(args))
        status[0] = 1
        reactor.stop()

    listening.addCallbacks(
        lambda port: log.info(
            "back end {number} listening on {listen}", number=args.number, listen=args.listen
        ),
        failed,
    )
    reactor.run()
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
