"""Server-side TLS for the HTTPS listener: modern defaults, SNI, ALPN, resumption.

One pyOpenSSL context is built per configured certificate; the first is the
default and carries the SNI callback that moves a connection to the context
whose certificate names the requested host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from dlba.errors import ConfigError

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

CONFIG_KEY = "tls.certificates"

# TLS 1.2 only: forward secret key exchange and AEAD ciphers. TLS 1.3 suites
# are all AEAD already, so OpenSSL's defaults stay.
TLS12_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
ECDH_GROUPS = b"X25519:P-256:P-384"
ALPN_HTTP11 = b"http/1.1"
# Sessions in the server cache and TLS 1.3 ticket lifetimes.
SESSION_TIMEOUT = 300
# Every context gets the same id. OpenSSL resumes only a session whose id
# context equals the connection's, and switching context on SNI copies the new
# context's id onto the connection; with one id, no ordering of session lookup
# and SNI callback inside OpenSSL can make a switched connection miss.
SESSION_ID_CONTEXT = b"dlba-https"


class Certificates:
    """The TLS server contexts of one ``[tls] certificates`` list: the first is the default.

    Each entry is a PEM file with the private key and the certificate chain, leaf first.
    A problem with any of them raises :class:`ConfigError` naming the file, before
    anything uses the set: a reload builds the new set first and swaps it in whole.
    """

    def __init__(self, certificates: Sequence[str]) -> None:
        if not certificates:
            raise ValueError("ServerTLSContextFactory needs at least one certificate")
        self.served: list[tuple[str, tuple[str, ...], SSL.Context]] = []
        self._exact: dict[bytes, SSL.Context] = {}
        self._wildcard: dict[bytes, SSL.Context] = {}
        sources = []
        for path in certificates:
            data = _read_pem(path)
            sources.append((path, data))
            key, chain = _parse_pem(path, data)
            context = _new_context(path, key, chain)
            names = _dns_names(chain[0])
            self.served.append((path, names, context))
            for name in names:
                self._index(name, context)
        # What the set was made of: a reload with the same paths and the same bytes in
        # them keeps the set in use (and its sessions resumable).
        self.sources: tuple[tuple[str, bytes], ...] = tuple(sources)
        self.default = self.served[0][2]
        # Only the starting context's callback runs, and it must be set before
        # any Connection uses the context (pyOpenSSL then freezes it).
        self.default.set_tlsext_servername_callback(self._on_server_name)

    def certificate_for(self, server_name: str | None) -> str:
        found = (
            self._lookup(server_name.lower().encode("ascii", "replace")) if server_name else None
        )
        chosen = self.default if found is None else found
        return next(path for path, _, context in self.served if context is chosen)

    def _index(self, name: str, context: SSL.Context) -> None:
        # setdefault: when two certificates claim a name, the earlier one wins,
        # as the first certificate wins when nothing matches.
        raw = name.lower().encode("ascii", "replace")
        if raw.startswith(b"*."):
            suffix = raw[2:]
            if suffix and b"*" not in suffix:
                self._wildcard.setdefault(suffix, context)
        elif b"*" not in raw:
            self._exact.setdefault(raw, context)

    def _lookup(self, name: bytes) -> SSL.Context | None:
        context = self._exact.get(name)
        if context is None:
            # A wildcard covers exactly one label: a.example.com, not a.b.example.com.
            context = self._wildcard.get(name.partition(b".")[2])
        return context

    def _on_server_name(self, connection: SSL.Connection) -> None:
        # Runs on every handshake that sends SNI: two dict lookups, no parsing.  Bound to
        # this set: a handshake begun before a reload finishes among the old certificates.
        name = connection.get_servername()
        if name is None:
            return
        context = self._lookup(name.lower())
        if context is not None and context is not self.default:
            connection.set_context(context)


def same_sources(certificates: Certificates, paths: Sequence[str]) -> bool:
    """Whether ``paths`` hold what ``certificates`` was made of (same files, same bytes);
    a file that cannot be read counts as changed (loading it then says why)."""
    if tuple(path for path, _ in certificates.sources) != tuple(paths):
        return False
    try:
        return all(_read_pem(path) == data for path, data in certificates.sources)
    except ConfigError:
        return False


@implementer(IOpenSSLContextFactory, IOpenSSLServerConnectionCreator)
class ServerTLSContextFactory:
    """TLS server contexts for ``[tls] certificates``: the first is the default.

    Ticket keys and the session cache belong to the context a connection
    starts with (OpenSSL's ``session_ctx``), always the default one, and stay
    with it when SNI switches context: every certificate shares them, so
    resumption works whichever certificate was served. It also means a session
    made under one name resumes under another of this listener's names
    (checked by hand); acceptable, since one operator owns them all.

    ``use`` swaps in new certificates (a reload): connections that start from then on
    get them; established ones keep the context they began with.  Sessions made before
    do not resume afterwards (the new default context has its own ticket keys and
    cache): a full handshake, once.
    """

    def __init__(self, certificates: Sequence[str] | Certificates) -> None:
        if not isinstance(certificates, Certificates):
            certificates = Certificates(certificates)
        self.certificates = certificates

    def use(self, certificates: Certificates) -> None:
        self.certificates = certificates

    def getContext(self) -> SSL.Context:
        return self.certificates.default

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.certificates.default, None)

    def names(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(path, DNS names)`` for each certificate, in configuration order."""
        return [(path, names) for path, names, _ in self.certificates.served]

    def certificate_for(self, server_name: str | None) -> str:
        """The path of the certificate a client sending SNI ``server_name`` gets."""
        return self.certificates.certificate_for(server_name)


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


def _select_alpn(
    connection: SSL.Connection, offered: list[bytes]
) -> bytes | SSL._NoOverlappingProtocols:
    # A client offering only protocols we lack (h2 alone, say) still gets a
    # connection: without ALPN it falls back to HTTP/1.1 rather than failing.
    return ALPN_HTTP11 if ALPN_HTTP11 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _new_context(path: str, key: _ServerKey, chain: list[x509.Certificate]) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    options |= getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    # A client that closes without close_notify (browsers and scanners often just send
    # FIN or RST) is an ordinary end of the connection, as TLS 1.1 and later allow
    # (RFC 5246 §7.2.1), not a fatal error. Without this OpenSSL 3 fails the read and
    # drops the session from the cache, so TLS 1.2 clients that resume by session id
    # (no tickets) never could. HTTP framing, not the TLS close, tells a whole request.
    options |= getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0)
    context.set_options(options)
    # Frees idle connections' read/write buffers: memory per open client matters
    # more than the small cost of reallocating them.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS)
    _set_groups(context)
    context.set_session_id(SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_timeout(SESSION_TIMEOUT)
    context.set_alpn_select_callback(_select_alpn)
    try:
        context.use_privatekey(key)
        context.use_certificate(chain[0])
        for cert in chain[1:]:
            context.add_extra_chain_cert(cert)
    except (SSL.Error, TypeError, ValueError) as e:
        raise ConfigError(
            path, None, CONFIG_KEY, f"cannot use this key or certificate: {e}", _PEM_HINT
        ) from e
    try:
        context.check_privatekey()
    except SSL.Error as e:
        raise ConfigError(
            path,
            None,
            CONFIG_KEY,
            "the private key does not match the first certificate",
            "put the server's own certificate first, then its chain, with the key made for it",
        ) from e
    return context


def _set_groups(context: SSL.Context) -> None:
    # pyOpenSSL only offers set_tmp_ecdh (one curve), so call OpenSSL directly
    # as Twisted's _sslverify does; if that is unavailable OpenSSL's own default
    # list, which includes these groups, stays in force.
    from OpenSSL._util import lib

    set_list = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if set_list is not None:
        set_list(context._context, ECDH_GROUPS)


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
