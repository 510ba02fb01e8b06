"""Wait until URLs answer: ``python -m dlba.lab.wait [--cafile F] [--deadline S] URL...``.

``dlba-lab up`` runs this inside the client namespace (``ip netns exec``), so the checks
go over the lab's bridge the way a client's requests do.  It tries every URL that has not
answered yet, about every 0.2 s, until all have or ``--deadline`` passes, and prints a
JSON line for each as it first answers (``{"url": U, "status": N}``); at the deadline
one line ``{"url": U, "error": "..."}`` for each that never did.  Exit status 0 when all
answered, 3 (``NOT_ANSWERED``) when some did not; anything else means the check broke.
Any HTTP status counts as an answer: the server is up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
import urllib.parse

NOT_ANSWERED = 3
TRY_TIMEOUT = 2.0  # one connection attempt
INTERVAL = 0.2


def try_once(url: str, context: ssl.SSLContext | None) -> int:
    """GET ``url`` on a new connection; its status.  Raises OSError (and ssl's) on failure."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port or 443, timeout=TRY_TIMEOUT, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port or 80, timeout=TRY_TIMEOUT)
    try:
        connection.request("GET", parts.path or "/", headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlba.lab.wait")
    p.add_argument("--cafile", help="CA certificates to verify HTTPS servers with")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds in all")
    p.add_argument("urls", nargs="+", metavar="URL")
    args = p.parse_args(argv)
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    waiting = {url: "not tried" for url in args.urls}
    end = time.monotonic() + args.deadline
    while True:
        for url in list(waiting):
            try:
                status = try_once(url, context)
            except (OSError, http.client.HTTPException) as e:
                waiting[url] = str(e) or type(e).__name__
                continue
            del waiting[url]
            print(json.dumps({"url": url, "status": status}), flush=True)
        if not waiting:
            return 0
        if time.monotonic() >= end:
            for url, error in waiting.items():
                print(json.dumps({"url": url, "error": error}), flush=True)
            return NOT_ANSWERED
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
