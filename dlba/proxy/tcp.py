"""TCP details shared by both sides of the proxy."""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """Turn off Nagle: a proxy sends what it has at once (an answer's head, then its body,
    may leave in two sends, and the second must not wait for the client's delayed ACK)."""
    tcp = getattr(transport, "transport", transport)  # under TLS, the TCP transport beneath
    set_no_delay = getattr(tcp, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket after all (a UNIX socket listener): nothing to turn off
