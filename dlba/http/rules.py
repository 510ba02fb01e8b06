"""What a request must look like before any of it reaches a back end (RFC 9110, RFC 9112).

Pure: bytes in, a verdict out.  llhttp (through httptools) already rejects most
smuggling shapes (CL+TE, duplicate or non-numeric Content-Length, bad chunk sizes,
obs-fold, bare LF, invalid names, control characters); these rules cover what a
parser may accept but a strict proxy must not pass on.
"""

from __future__ import annotations

import functools
import re

# Removed before a message is forwarded, whatever Connection says (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Safe and idempotent methods may be retried when no byte of the answer arrived (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# uri-host [ ":" port ]: reg-name / IPv4 / IP-literal (RFC 3986 §3.2.2).
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_IP_LITERAL = rb"\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
_HOST_RE = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]{0,5})?\Z")

# pchar / "/" / "?" and '%' escapes; no '#', no spaces, no controls (RFC 9112 §3.2).
_ORIGIN_RE = re.compile(rb"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*\Z")
_ABSOLUTE_RE = re.compile(
    rb"(?i:https?)://([^/?#@\s]+)((?:/|\?)(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?\Z"
)


class RequestRejected(Exception):
    """The request is refused with ``status``; ``reason`` goes to the log, not the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@functools.lru_cache(maxsize=1024)  # a site sees few Host values; the regex is not cheap
def valid_host(value: bytes) -> bool:
    """Host header syntax (RFC 9110 §7.2); the empty value is allowed by RFC 9112 §3.2."""
    return _HOST_RE.match(value) is not None and (
        b":" not in value.rpartition(b"]")[2] or _port_ok(value.rpartition(b":")[2])
    )


def _port_ok(port: bytes) -> bool:
    return port == b"" or int(port) <= 65535


def check_version(major: int, minor: int) -> None:
    if major != 1:
        if major == 0:
            raise RequestRejected(400, "HTTP/0.9 is not spoken")
        raise RequestRejected(505, f"HTTP/{major}.{minor} is not spoken")
    if minor not in (0, 1):
        raise RequestRejected(505, f"HTTP/1.{minor} is not spoken")


def split_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """Validate the request-target; return (origin-form target, authority or None).

    Absolute-form is accepted, as RFC 9112 §3.2.2 requires of servers, and turned into
    origin-form with its authority replacing Host.  Asterisk-form only for OPTIONS.
    Authority-form would be CONNECT, which is refused before this is called.
    """
    if target[:1] == b"/":
        if _ORIGIN_RE.match(target) is None:
            raise RequestRejected(400, "invalid characters in the request-target")
        return target, None
    if target == b"*":
        if method != b"OPTIONS":
            raise RequestRejected(400, "asterisk-form is only for OPTIONS")
        return target, None
    m = _ABSOLUTE_RE.match(target)
    if m is None:
        raise RequestRejected(400, "request-target is not origin-form or absolute-form")
    authority, rest = m.group(1), m.group(2) or b"/"
    if not valid_host(authority):
        raise RequestRejected(400, "invalid authority in the absolute-form target")
    if rest[:1] == b"?":
        rest = b"/" + rest
    return rest, authority


def comma_tokens(value: bytes) -> list[bytes]:
    """Lower-cased members of a comma-separated list, empty members dropped (RFC 9110 §5.6.1)."""
    return [t for t in (p.strip().lower() for p in value.split(b",")) if t]
