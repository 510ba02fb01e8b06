"""Cookies as the proxy needs them: read the client's, strip ours, inject the back end's number.

Pure: bytes in, bytes out.  Parsing is deliberately forgiving (RFC 6265 §5.2 is how
browsers parse), because a cookie we cannot read must be ignored, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Set-Cookie attributes the injected cookie copies from the session cookie it follows.
COPIED_ATTRIBUTES = frozenset(
    {b"expires", b"max-age", b"path", b"domain", b"secure", b"httponly", b"samesite"}
)

# An SpServer number above this is garbage, not a back end (and not a slow int() of a huge string).
MAX_BACKEND_DIGITS = 9


def cookie_pairs(values: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """(name, value) from one or more Cookie headers, in order, values as sent (quotes kept).

    Several headers are one list (HTTP/2 splits cookies that way, RFC 9113 §8.2.3).
    """
    pairs: list[tuple[bytes, bytes]] = []
    for header in values:
        for part in header.split(b";"):
            name, eq, value = part.partition(b"=")
            name = name.strip()
            if name and eq:
                pairs.append((name, value.strip()))
    return pairs


def unquote(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return value[1:-1]
    return value


def cookie_value(
    pairs: Sequence[tuple[bytes, bytes]], name: bytes, *, raw: bool = False
) -> bytes | None:
    """The first value of cookie ``name`` (case-sensitive, as cookie names are), unquoted
    unless ``raw``."""
    for n, v in pairs:
        if n == name:
            return v if raw else unquote(v)
    return None


def backend_number(value: bytes | None) -> int | None:
    """The number an injected cookie carries, or None for anything but plain digits."""
    if value is None or not value.isdigit() or len(value) > MAX_BACKEND_DIGITS:
        return None
    number = int(value)
    return number if number > 0 else None


def without_cookie(pairs: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """One Cookie header value with every ``name`` pair removed; None when nothing is left."""
    kept = [b"%s=%s" % (n, v) for n, v in pairs if n != name]
    return b"; ".join(kept) if kept else None


def forwarded_cookies(
    headers: Sequence[bytes], name: bytes
) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The client's cookies, and the one Cookie header to forward: ``name`` (ours) taken
    out, several headers (HTTP/2 style) joined into one (RFC 9113 §8.2.3)."""
    pairs = cookie_pairs(headers)
    if len(headers) == 1 and name not in headers[0]:
        return pairs, headers[0]
    return pairs, without_cookie(pairs, name)


class SetCookie:
    """The parts of one Set-Cookie header the proxy cares about."""

    __slots__ = ("attributes", "name", "value")

    def __init__(self, name: bytes, value: bytes, attributes: list[bytes]) -> None:
        self.name = name
        self.value = value
        self.attributes = attributes  # each "Name=value" or "Flag", as the back end wrote it

    @classmethod
    def parse(cls, header: bytes) -> SetCookie | None:
        first, *rest = header.split(b";")
        name, eq, value = first.partition(b"=")
        name = name.strip()
        if not name or not eq:
            return None
        return cls(name, value.strip(), [a.strip() for a in rest if a.strip()])

    def copied_attributes(self) -> list[bytes]:
        out = []
        for attribute in self.attributes:
            key = attribute.partition(b"=")[0].strip().lower()
            if key in COPIED_ATTRIBUTES:
                out.append(attribute)
        return out


def injected_cookie(name: bytes, number: int, attributes: Sequence[bytes]) -> bytes:
    """The Set-Cookie value that sends this client back to back end ``number``."""
    return b"; ".join([b"%s=%d" % (name, number), *attributes])


def default_attributes(secure: bool) -> list[bytes]:
    """For a fresh cookie with no session cookie to copy: a browser-session cookie for the site."""
    attributes = [b"Path=/", b"HttpOnly"]
    if secure:
        attributes.append(b"Secure")
    return attributes


def url_session_id(target: bytes, params: Sequence[bytes]) -> bytes | None:
    """A session id carried in the URL: ``;jsessionid=ID`` path parameter or ``?sid=ID``.

    ``params`` are lower-case; names in the URL match case-insensitively.
    """
    path, _, query = target.partition(b"?")
    lowered_path = path.lower()
    for param in params:
        marker = b";" + param + b"="
        at = lowered_path.find(marker)
        if at >= 0:
            value = path[at + len(marker) :].split(b";", 1)[0].split(b"/", 1)[0]
            if value:
                return value
    if query:
        for part in query.split(b"&"):
            key, eq, value = part.partition(b"=")
            if eq and value and key.lower() in params:
                return value
    return None
