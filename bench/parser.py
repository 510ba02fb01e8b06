#!/usr/bin/env python3
"""Micro-benchmark: parsing one HTTP/1.1 request head and one response head, httptools vs h11.

    python3 bench/parser.py [--number N]

Prints µs per head, the median of 5 repeats of N parses each.  Every parse uses a parser
made beforehand (outside the timing), so the figure is the parse itself: the proxy keeps one
parser per connection and feeds it head after head.  The cost of making a parser is shown
on its own line.  Each parse also copies out what the proxy needs (method, target, version,
header list; status, header list), since h11 hands over its own objects while httptools
calls back with bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

REQUEST_HEAD = (
    b"GET /shop/cart/items?page=2&sort=price HTTP/1.1\r\n"
    b"Host: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://shop.example.com/shop/cart\r\n"
    b"Cookie: JSESSIONID=8A1F3C5D7E9B0A2C4E6F8A0B2C4D6E8F; SpServer=2; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"\r\n"
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 GMT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: 16384\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 08:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6740a9c0-4000"\r\n'
    b"Set-Cookie: JSESSIONID=8A1F3C5D7E9B0A2C4E6F8A0B2C4D6E8F; Path=/; HttpOnly\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)


class _HeadCollector:
    """httptools callbacks: keep what a proxy needs of a head."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def httptools_cases() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    import httptools

    def new_request_parser() -> Any:
        c = _HeadCollector()
        return c, httptools.HttpRequestParser(c)

    def parse_request(pc: Any) -> Any:
        c, p = pc
        p.feed_data(REQUEST_HEAD)
        assert c.done
        return p.get_method(), c.url, p.get_http_version(), c.headers

    def new_response_parser() -> Any:
        c = _HeadCollector()
        return c, httptools.HttpResponseParser(c)

    def parse_response(pc: Any) -> Any:
        c, p = pc
        p.feed_data(RESPONSE_HEAD)
        assert c.done
        return p.get_status_code(), p.get_http_version(), c.headers

    return {
        "request": (new_request_parser, parse_request),
        "response": (new_response_parser, parse_response),
    }


def h11_cases() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    import h11

    def new_request_parser() -> Any:
        return h11.Connection(h11.SERVER)

    def parse_request(conn: Any) -> Any:
        conn.receive_data(REQUEST_HEAD)
        ev = conn.next_event()
        assert isinstance(ev, h11.Request)
        return ev.method, ev.target, ev.http_version, list(ev.headers)

    def new_response_parser() -> Any:
        # a client connection only reads a response after it has sent a request
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "example.com")]))
        conn.send(h11.EndOfMessage())
        return conn

    def parse_response(conn: Any) -> Any:
        conn.receive_data(RESPONSE_HEAD)
        ev = conn.next_event()
        assert isinstance(ev, h11.Response)
        return ev.status_code, ev.http_version, list(ev.headers)

    return {
        "request": (new_request_parser, parse_request),
        "response": (new_response_parser, parse_response),
    }


def time_parse(
    make: Callable[[], Any], parse: Callable[[Any], Any], number: int, repeat: int
) -> float:
    """Median µs per parse; fresh parsers are made before each repeat, outside the timing."""
    results = []
    for _ in range(repeat):
        parsers = iter([make() for _ in range(number)])

        def one(it: Any = parsers) -> Any:
            return parse(next(it))

        t = timeit.timeit(one, number=number)
        results.append(t / number * 1e6)
    return statistics.median(results)


def time_make(make: Callable[[], Any], number: int, repeat: int) -> float:
    return statistics.median(
        t / number * 1e6 for t in timeit.repeat(make, number=number, repeat=repeat)
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--number", type=int, default=20000, help="parses per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    libs: dict[str, dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]] = {}
    versions = {}
    for name, make_cases in (("httptools", httptools_cases), ("h11", h11_cases)):
        try:
            libs[name] = make_cases()
            versions[name] = __import__(name).__version__
        except ImportError as e:
            print(f"{name}: not installed ({e}); pip install {name}", file=sys.stderr)
    if not libs:
        return 1

    print(f"Python {sys.version.split()[0]}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"request head {len(REQUEST_HEAD)} B, response head {len(RESPONSE_HEAD)} B, 10 headers each"
    )
    print(f"µs per head, median of {args.repeat} repeats of {args.number}\n")
    print("| | " + " | ".join(libs) + (" | h11 / httptools |" if len(libs) == 2 else " |"))
    print("| --- |" + " ---: |" * (len(libs) + (len(libs) == 2)))
    for kind in ("request", "response"):
        row = {}
        for name, cases in libs.items():
            make, parse = cases[kind]
            row[name] = time_parse(make, parse, args.number, args.repeat)
        ratio = f" {row['h11'] / row['httptools']:.1f}\u00d7 |" if len(row) == 2 else ""
        print(
            f"| parse a {kind} head | "
            + " | ".join(f"{v:.2f}" for v in row.values())
            + " |"
            + ratio
        )
    for kind in ("request", "response"):
        row = {
            name: time_make(cases[kind][0], args.number, args.repeat)
            for name, cases in libs.items()
        }
        print(f"| make a {kind} parser | " + " | ".join(f"{v:.2f}" for v in row.values()) + " | |")
    if "h11" in libs:
        print("\n(an h11 client connection reads a response only after it has sent a request:")
        print("that is in its 'make a response parser')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
