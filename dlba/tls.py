"""Server-side TLS for the HTTPS listener: modern defaults, SNI, ALPN, resumption.

One ``ssl.SSLContext`` is built per configured certificate; the first is the default
and carries the SNI callback that moves a connection to the context whose certificate
names the requested host.  Python's ``ssl`` (on the system's OpenSSL) rather than
pyOpenSSL: only there can every node share the array's session-ticket keys
(:mod:`dlba.libssl`).  Twisted's ``TLSMemoryBIOProtocol`` drives it through
:class:`_TLSConnection`, which speaks the part of pyOpenSSL's ``Connection`` it uses.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from dlba import libssl
from dlba.errors import ConfigError
from dlba.ticketkeys import TicketKeyRing, keys_from_bytes

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

log = Logger(namespace="dlba.tls")

CONFIG_KEY = "tls.certificates"

# TLS 1.2 only: forward secret key exchange and AEAD ciphers. TLS 1.3 suites
# are all AEAD already, so OpenSSL's defaults stay.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ECDH_GROUPS = b"X25519:P-256:P-384"
ALPN_HTTP11 = "http/1.1"
# Sessions in the server cache and TLS 1.3 ticket lifetimes.
SESSION_TIMEOUT = 300
# Every context gets the same id. OpenSSL resumes only a session whose id
# context equals the connection's, and switching context on SNI copies the new
# context's id onto the connection; with one id, no ordering of session lookup
# and SNI callback inside OpenSSL can make a switched connection miss.
SESSION_ID_CONTEXT = b"dlba-https"
# How long one ticket key seals new tickets before the next takes over.
TICKET_KEY_ROTATION = 3600.0


class TicketKeys:
    """The ring of session-ticket keys the HTTPS contexts seal and open tickets with.

    One per process, shared by every certificate and kept across reloads, so a reload
    does not cost resumptions.  A node alone makes its own keys (:meth:`rotate`); in an
    array the scheduler makes them and every other node merges what it pushes (:meth:`merge`).
    """

    def __init__(
        self,
        clock: IReactorTime,
        rotation: float = TICKET_KEY_ROTATION,
        lifetime: float = SESSION_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.ring = TicketKeyRing(rotation, lifetime)
        self.callback = libssl.TicketKeyCallback(self, self._failed) if libssl.AVAILABLE else None

    def sealing_key(self) -> tuple[bytes, bytes, bytes] | None:
        key = self.ring.sealing(self.clock.seconds())
        return None if key is None else (key.name, key.aes, key.hmac)

    def opening_key(self, name: bytes) -> tuple[bytes, bytes, bool] | None:
        found = self.ring.opening(name, self.clock.seconds())
        if found is None:
            return None
        key, renew = found
        return key.aes, key.hmac, renew

    def rotate(self) -> bool:
        return self.ring.rotate(self.clock.seconds())

    def merge(self, data: bytes) -> bool:
        """Take the keys of a ring on the wire (``TicketKeyRing.to_bytes``)."""
        return self.ring.merge(keys_from_bytes(data), self.clock.seconds())

    def install(self, context: ssl.SSLContext) -> None:
        if self.callback is not None:
            libssl.install_ticket_keys(context, self.callback)

    def counters(self) -> dict[str, int]:
        c = self.callback
        return {
            "ticket_keys": len(self.ring),
            "tickets_sealed": c.sealed if c else 0,
            "tickets_opened": c.opened if c else 0,
            "tickets_unknown": c.unknown if c else 0,
        }

    def _failed(self, error: BaseException) -> None:
        log.error("session ticket key callback failed: {error!r}", error=error)


class Certificates:
    """The TLS server contexts of one ``[tls] certificates`` list: the first is the default.

    Each entry is a PEM file with the private key and the certificate chain, leaf first.
    A problem with any of them raises :class:`ConfigError` naming the file, before
    anything uses the set: a reload builds the new set first and swaps it in whole.
    """

    def __init__(self, certificates: Sequence[str], ticket_keys: TicketKeys | None = None) -> None:
        if not certificates:
            raise ValueError("ServerTLSContextFactory needs at least one certificate")
        self.ticket_keys = ticket_keys
        self.served: list[tuple[str, tuple[str, ...], ssl.SSLContext]] = []
        self._exact: dict[bytes, ssl.SSLContext] = {}
        self._wildcard: dict[bytes, ssl.SSLContext] = {}
        sources = []
        for path in certificates:
            data = _read_pem(path)
            sources.append((path, data))
            _, chain = _parse_pem(path, data)
            context = _new_context(path)
            if ticket_keys is not None:
                ticket_keys.install(context)
            names = _dns_names(chain[0])
            self.served.append((path, names, context))
            for name in names:
                self._index(name, context)
        # What the set was made of: a reload with the same paths and the same bytes in
        # them keeps the set in use (and its sessions resumable).
        self.sources: tuple[tuple[str, bytes], ...] = tuple(sources)
        self.default = self.served[0][2]
        # Only the starting context's callback runs (switching context keeps it).
        self.default.sni_callback = self._on_server_name

    def certificate_for(self, server_name: str | None) -> str:
        found = (
            self._lookup(server_name.lower().encode("ascii", "replace")) if server_name else None
        )
        chosen = self.default if found is None else found
        return next(path for path, _, context in self.served if context is chosen)

    def _index(self, name: str, context: ssl.SSLContext) -> None:
        # setdefault: when two certificates claim a name, the earlier one wins,
        # as the first certificate wins when nothing matches.
        raw = name.lower().encode("ascii", "replace")
        if raw.startswith(b"*."):
            suffix = raw[2:]
            if suffix and b"*" not in suffix:
                self._wildcard.setdefault(suffix, context)
        elif b"*" not in raw:
            self._exact.setdefault(raw, context)

    def _lookup(self, name: bytes) -> ssl.SSLContext | None:
        context = self._exact.get(name)
        if context is None:
            # A wildcard covers exactly one label: a.example.com, not a.b.example.com.
            context = self._wildcard.get(name.partition(b".")[2])
        return context

    def _on_server_name(
        self, connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> None:
        # Runs on every handshake that sends SNI: two dict lookups, no parsing.  Bound to
        # this set: a handshake begun before a reload finishes among the old certificates.
        # ssl hands over the name IDNA-decoded; the certificates' names are A-labels.
        if name is None:
            return
        raw = name.encode("idna") if not name.isascii() else name.encode("ascii")
        found = self._lookup(raw.lower())
        if found is not None and found is not self.default:
            connection.context = found


def same_sources(certificates: Certificates, paths: Sequence[str]) -> bool:
    """Whether ``paths`` hold what ``certificates`` was made of (same files, same bytes);
    a file that cannot be read counts as changed (loading it then says why)."""
    if tuple(path for path, _ in certificates.sources) != tuple(paths):
        return False
    try:
        return all(_read_pem(path) == data for path, data in certificates.sources)
    except ConfigError:
        return False


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSContextFactory:
    """TLS server contexts for ``[tls] certificates``: the first is the default.

    Ticket keys and the session cache belong to the context a connection
    starts with (OpenSSL's ``session_ctx``), always the default one, and stay
    with it when SNI switches context: every certificate shares them, so
    resumption works whichever certificate was served. It also means a session
    made under one name resumes under another of this listener's names
    (checked by hand); acceptable, since one operator owns them all.

    ``use`` swaps in new certificates (a reload): connections that start from then on
    get them; established ones keep the context they began with.  Tickets sealed before
    still open afterwards (the ticket keys are the process's, not the contexts');
    sessions held only in the old default context's cache (TLS 1.2 session ids) do not.
    """

    def __init__(
        self, certificates: Sequence[str] | Certificates, ticket_keys: TicketKeys | None = None
    ) -> None:
        if not isinstance(certificates, Certificates):
            certificates = Certificates(certificates, ticket_keys)
        self.certificates = certificates

    def use(self, certificates: Certificates) -> None:
        self.certificates = certificates

    def serverConnectionForTLS(  # type: ignore[override]  # pyOpenSSL's Connection, in duck
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> _TLSConnection:
        return _TLSConnection(self.certificates.default)

    def names(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(path, DNS names)`` for each certificate, in configuration order."""
        return [(path, names) for path, names, _ in self.certificates.served]

    def certificate_for(self, server_name: str | None) -> str:
        """The path of the certificate a client sending SNI ``server_name`` gets."""
        return self.certificates.certificate_for(server_name)


def _pyopenssl_error(e: ssl.SSLError) -> SSL.Error:
    """The pyOpenSSL exception TLSMemoryBIOProtocol expects for an ``ssl`` one."""
    if isinstance(e, ssl.SSLWantReadError):
        return SSL.WantReadError()
    if isinstance(e, ssl.SSLZeroReturnError):
        return SSL.ZeroReturnError()
    if isinstance(e, ssl.SSLEOFError):
        return SSL.SysCallError(-1, "Unexpected EOF")
    # An error queue of (library, function, reason); a reason starting "unexpected eof"
    # is taken for a connection lost.
    reason = e.reason or str(e)
    return SSL.Error([(e.library or "SSL routines", "", reason.lower().replace("_", " "))])


class _TLSConnection:
    """An ``ssl.SSLObject`` on memory BIOs, with the methods and errors of pyOpenSSL's
    ``Connection`` that ``TLSMemoryBIOProtocol`` calls."""

    __slots__ = ("_app", "_incoming", "_outgoing", "_tls")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app: object = None

    def set_app_data(self, data: object) -> None:
        self._app = data

    def get_app_data(self) -> object:
        return self._app

    def set_accept_state(self) -> None:
        pass  # a server from the start: wrap_bio(server_side=True)

    def do_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLError as e:
            raise _pyopenssl_error(e) from None

    def bio_write(self, data: bytes) -> int:
        return self._incoming.write(data)

    def bio_read(self, size: int) -> bytes:
        data = self._outgoing.read(size)
        if not data:
            raise SSL.WantReadError()
        return data

    def bio_shutdown(self) -> None:
        self._incoming.write_eof()

    def recv(self, size: int) -> bytes:
        try:
            data = self._tls.read(size)
        except ssl.SSLError as e:
            raise _pyopenssl_error(e) from None
        if not data:
            # ssl reports a ragged end (EOF with no close_notify) as b"", where pyOpenSSL
            # raises: TLSMemoryBIOProtocol would read the nothing again, forever.
            raise SSL.ZeroReturnError()
        return data

    def send(self, data: bytes) -> int:
        try:
            return self._tls.write(data)
        except ssl.SSLError as e:
            raise _pyopenssl_error(e) from None

    def shutdown(self) -> bool:
        """Send close_notify; True once the peer's has come too (as pyOpenSSL)."""
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            return False  # ours is in the outgoing BIO; theirs has not come yet
        except ssl.SSLError as e:
            raise _pyopenssl_error(e) from None
        return True

    def get_peer_certificate(self) -> None:
        return None  # the HTTPS listener asks for no client certificate

    def get_alpn_proto_negotiated(self) -> bytes:
        chosen = self._tls.selected_alpn_protocol()
        return chosen.encode("ascii") if chosen else b""

    # What logs, tests and the curious may ask of ``transport.getHandle()``.
    def get_servername(self) -> bytes | None:
        name = self._tls.server_hostname
        return name.encode("idna") if name else None

    def version(self) -> str | None:
        return self._tls.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()

    def session_reused(self) -> bool:
        return self._tls.session_reused


class _RefusingTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` that refuses a connection its wrapped factory refuses.

    Twisted's wraps whatever the inner ``buildProtocol`` returns, None too: the refused
    connection then stays open, silent, and ``makeConnection`` logs an AttributeError.
    Returning None here lets the port close it at once, as on a plain TCP listener.
    """

    def buildProtocol(  # type: ignore[override]  # None: a refusal, as Factory may return
        self, addr: IAddress | None
    ) -> TLSMemoryBIOProtocol | None:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


def wrap_tls(
    factory: IProtocolFactory,
    context_factory: ServerTLSContextFactory,
    clock: IReactorTime | None = None,
) -> TLSMemoryBIOFactory:
    """Serve ``factory``'s protocol over TLS on any stream endpoint; a connection
    ``factory`` refuses (``buildProtocol`` returns None) is closed before any TLS."""
    return _RefusingTLSFactory(context_factory, False, factory, clock)


def _new_context(path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    options = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # A client that closes without close_notify (browsers and scanners often just send
    # FIN or RST) is an ordinary end of the connection, as TLS 1.1 and later allow
    # (RFC 5246 §7.2.1), not a fatal error. Without this OpenSSL 3 fails the read and
    # drops the session from the cache, so TLS 1.2 clients that resume by session id
    # (no tickets) never could. HTTP framing, not the TLS close, tells a whole request.
    options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    context.options |= options
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols([ALPN_HTTP11])
    # A client offering only protocols we lack (h2 alone, say) still gets a connection:
    # ssl answers without ALPN and it falls back to HTTP/1.1 rather than failing.
    try:
        context.load_cert_chain(path)
    except ssl.SSLError as e:
        mismatch = "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e)
        if mismatch:
            raise ConfigError(
                path,
                None,
                CONFIG_KEY,
                "the private key does not match the first certificate",
                "put the server's own certificate first, then its chain, with the key made for it",
            ) from e
        raise ConfigError(
            path, None, CONFIG_KEY, f"cannot use this key or certificate: {e}", _PEM_HINT
        ) from e
    except OSError as e:
        raise ConfigError(path, None, CONFIG_KEY, f"cannot read: {e.strerror}", _PEM_HINT) from e
    if libssl.AVAILABLE:
        # Without these (no usable libssl beside ssl): OpenSSL's own group list, which
        # includes these groups, buffers kept, ssl's session id context, OpenSSL's
        # default session timeout; and per-node tickets.
        libssl.set_groups(context, ECDH_GROUPS)
        # Frees idle connections' read/write buffers: memory per open client matters
        # more than the small cost of reallocating them.
        libssl.release_buffers(context)
        libssl.set_session_id_context(context, SESSION_ID_CONTEXT)
        libssl.set_session_timeout(context, SESSION_TIMEOUT)
    return context


_ServerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_PEM_HINT = "the file must hold an unencrypted private key and the certificate chain, leaf first"


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ConfigError(
            path, None, CONFIG_KEY, "file not found", "check the path, or drop it from the list"
        ) from e
    except PermissionError as e:
        raise ConfigError(
            path, None, CONFIG_KEY, "permission denied", "make it readable by dlba's user"
        ) from e
    except OSError as e:
        raise ConfigError(path, None, CONFIG_KEY, f"cannot read: {e.strerror}", _PEM_HINT) from e


def _parse_pem(path: str, data: bytes) -> tuple[_ServerKey, list[x509.Certificate]]:
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(path, None, CONFIG_KEY, "no PEM certificate found", _PEM_HINT) from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise ConfigError(path, None, CONFIG_KEY, "the private key is encrypted", _PEM_HINT) from e
    except ValueError as e:
        raise ConfigError(
            path, None, CONFIG_KEY, "no usable PEM private key found", _PEM_HINT
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(
            path,
            None,
            CONFIG_KEY,
            f"unsupported private key type {type(key).__name__}",
            "use an ECDSA or RSA key: every client can use those",
        )
    return key, chain


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names: list[str] = []
    else:
        names = san.value.get_values_for_type(x509.DNSName)
    if not names:
        # RFC 6125: the CN counts only when the certificate has no DNS SAN.
        names = [
            str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(names)
