#!/usr/bin/env python3
"""A real HTTP back end whose goodput falls when too many requests run at once.

    python3 bench/contended_backend.py --port 9100 [--t0 0.02] [--knee 8] [--power 2]

The server is processor sharing in real time, the model of tests/loadsim.py's ``SharpKnee``:
every request brings work (exponential, mean ``t0`` seconds; ``--exact``: exactly ``t0``)
and while ``c`` requests are in flight each advances at the rate 1 / max(1, c/knee)**power.
A request alone takes its work's worth of seconds; up to ``knee`` at once none slows the
others (the server has ``knee`` workers' worth of capacity), beyond it every request slows
by (c/knee)**power, so completions/s = c/T(c) climb to their peak at c = knee and fall as
knee²/c beyond: a server thrashing (lock contention, cache and memory pressure) under
too much concurrency. Progress is computed from the real clock at every arrival and
departure, so the model holds whatever the event loop's delays.

Paths: ``/_stats`` answers at once with JSON (completions, in flight, the most ever in
flight, connections, a time-weighted histogram of concurrency, and ``reset`` clears them
when asked as ``/_stats?reset``); everything else is a request that costs work and answers
``200`` with a short body. HTTP/1.1 keep-alive; GET and HEAD only; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time


class Server:
    """The processor-sharing engine: requests in flight, each with its remaining work."""

    def __init__(self, t0: float, knee: int, power: float, exact: bool, seed: int) -> None:
        self.t0, self.knee, self.power, self.exact = t0, knee, power, exact
        self.rng = random.Random(seed)
        self.loop = asyncio.get_running_loop()
        self.work: dict[asyncio.Future[None], float] = {}
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.reset()

    def reset(self) -> None:
        self.completions = 0
        self.max_inflight = len(self.work)
        self.connections = 0
        self.busy: dict[int, float] = {}  # concurrency -> seconds spent there
        self.since = time.monotonic()

    def rate(self, c: int) -> float:
        return float(1.0 / max(1.0, c / self.knee) ** self.power)

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        c = len(self.work)
        if c:
            self.busy[c] = self.busy.get(c, 0.0) + elapsed
            done = elapsed * self.rate(c)
            for fut in self.work:
                self.work[fut] -= done
        else:
            self.busy[0] = self.busy.get(0, 0.0) + elapsed
        for fut, left in list(self.work.items()):
            if left <= 1e-6:
                del self.work[fut]
                self.completions += 1
                if not fut.done():
                    fut.set_result(None)

    def _reschedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.work:
            wait = min(self.work.values()) / self.rate(len(self.work))
            self.timer = self.loop.call_later(max(wait, 0.0), self._tick)

    def _tick(self) -> None:
        self.timer = None
        self._advance()
        self._reschedule()

    def serve(self) -> asyncio.Future[None]:
        """A future that resolves when one more request's work is done."""
        self._advance()
        fut: asyncio.Future[None] = self.loop.create_future()
        self.work[fut] = self.t0 if self.exact else self.rng.expovariate(1.0 / self.t0)
        self.max_inflight = max(self.max_inflight, len(self.work))
        self._reschedule()
        return fut

    def cancel(self, fut: asyncio.Future[None]) -> None:
        """The client went away: its work leaves the server."""
        self._advance()
        if self.work.pop(fut, None) is not None:
            self._reschedule()

    def stats(self) -> dict[str, object]:
        self._advance()
        total = sum(self.busy.values()) or 1.0
        return {
            "completions": self.completions,
            "inflight": len(self.work),
            "max_inflight": self.max_inflight,
            "connections": self.connections,
            "seconds": time.monotonic() - self.since,
            "concurrency": {str(c): round(s / total, 4) for c, s in sorted(self.busy.items())},
            "model": {"t0": self.t0, "knee": self.knee, "power": self.power},
        }


BODY = b"served\n"


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time (pipelined ones wait their turn)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""
        self.current: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        # A client that leaves takes its work with it, as a real server would stop it.
        if self.current is not None and not self.current.done():
            self.server.cancel(self.current)
        self.current = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        while self.current is None and self.transport is not None:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                if len(self.buf) > 65536:
                    self._reply(b"400 Bad Request", b"", b"text/plain", True, True)
                return
            self.buf = rest
            line, _, fields = head.partition(b"\r\n")
            parts = line.split()
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                self._reply(b"400 Bad Request", b"", b"text/plain", True, True)
                return
            method, target, version = parts
            close = version == b"HTTP/1.0" or b"connection: close" in fields.lower()
            send_body = method == b"GET"
            if target.startswith(b"/_stats"):
                if b"reset" in target:
                    self.server.reset()
                body = json.dumps(self.server.stats()).encode() + b"\n"
                self._reply(b"200 OK", body, b"application/json", close, send_body)
                continue
            fut = self.current = self.server.serve()

            def done(f: asyncio.Future[None], close: bool = close, send: bool = send_body) -> None:
                if f.cancelled() or self.current is not f:
                    return
                self.current = None
                self._reply(b"200 OK", BODY, b"text/plain", close, send)
                self._next()

            fut.add_done_callback(done)

    def _reply(self, status: bytes, body: bytes, kind: bytes, close: bool, send: bool) -> None:
        if self.transport is None:
            return
        out = [
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: ",
            kind,
            b"\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        ]
        if send:
            out.append(body)
        self.transport.write(b"".join(out))
        if close:
            self.transport.close()
            self.transport = None


async def main_async(args: argparse.Namespace) -> None:
    server = Server(args.t0, args.knee, args.power, args.exact, args.seed)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Connection(server), "127.0.0.1", args.port, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    print(json.dumps({"listening": port}), flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--port", type=int, default=0)
    a.add_argument("--t0", type=float, default=0.02, help="work of one request, s (mean)")
    a.add_argument("--knee", type=int, default=8, help="best concurrency")
    a.add_argument("--power", type=float, default=2.0)
    a.add_argument("--exact", action="store_true", help="every request exactly t0 of work")
    a.add_argument("--seed", type=int, default=1)
    args = a.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
