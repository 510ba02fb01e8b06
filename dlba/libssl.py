"""What Python's ``ssl`` module leaves out, called in the very OpenSSL it is linked with.

The HTTPS listener needs four things ``ssl.SSLContext`` has no method for: the key
exchange groups as a list (it takes one curve), buffer release for idle connections,
our own session id context, and, above all, a ticket-key callback so every node of the
array seals and opens TLS session tickets with the same keys (pyOpenSSL has none either,
and its cryptography wheel carries an OpenSSL of its own that nothing else can reach).

Both libraries are found among those the process has loaded after ``import ssl`` (so
they are the ones ``_ssl`` uses, never a second copy), and every pointer is checked
before use: :func:`context_pointer` compares what OpenSSL says of the context with what
``ssl`` says.  If any of that fails, :data:`AVAILABLE` is False with the reason in
:data:`UNAVAILABLE_BECAUSE`, and the listener runs with per-node tickets.
"""

from __future__ import annotations

import ctypes
import os
import ssl
from collections.abc import Callable
from typing import Any, Protocol

SSL_CTRL_MODE = 33
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_MODE_RELEASE_BUFFERS = 0x10
_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5

# What the ticket-key callback returns to OpenSSL (SSL_CTX_set_tlsext_ticket_key_evp_cb(3)).
_FAILED = -1
_NO_KEY = 0  # sealing: no ticket this time; opening: unknown key, a full handshake
_DONE = 1
_DONE_RENEW = 2  # opened, and the client gets a ticket sealed with the current key


class _Param(ctypes.Structure):
    _fields_ = [
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    ]


_UBYTES = ctypes.POINTER(ctypes.c_ubyte)
_TicketCallback = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # SSL *
    _UBYTES,  # unsigned char key_name[16]
    _UBYTES,  # unsigned char iv[EVP_MAX_IV_LENGTH]
    ctypes.c_void_p,  # EVP_CIPHER_CTX *
    ctypes.c_void_p,  # EVP_MAC_CTX *
    ctypes.c_int,  # enc
)


class TicketKeySource(Protocol):
    """What the callback asks, on handshakes: the sealing key, and the key of a name."""

    def sealing_key(self) -> tuple[bytes, bytes, bytes] | None:
        """(name, aes key, hmac key) to seal new tickets with; None: issue none."""

    def opening_key(self, name: bytes) -> tuple[bytes, bytes, bool] | None:
        """(aes key, hmac key, renew) for a ticket's key name; None: unknown."""


def _loaded(prefix: str) -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if os.path.basename(path).startswith(prefix + ".so"):
                    return path
    except OSError:
        return None
    return None


def _bind() -> tuple[Any, Any]:
    import _ssl  # noqa: F401  (loads the libraries whose copies we must use)

    ssl_path, crypto_path = _loaded("libssl"), _loaded("libcrypto")
    if ssl_path is None or crypto_path is None:
        raise OSError("the ssl module's libssl is not a shared library of this process")
    libssl, libcrypto = ctypes.CDLL(ssl_path), ctypes.CDLL(crypto_path)
    libcrypto.OpenSSL_version_num.restype = ctypes.c_ulong
    if libcrypto.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise OSError(f"{crypto_path} is not the OpenSSL the ssl module runs on")
    if ssl.OPENSSL_VERSION_INFO < (3, 0):
        raise OSError(f"{ssl.OPENSSL_VERSION}: ticket-key callbacks need OpenSSL 3")
    libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
    libssl.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    libssl.SSL_CTX_ctrl.restype = ctypes.c_long
    libssl.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    libssl.SSL_CTX_set_timeout.restype = ctypes.c_long
    libssl.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libssl.SSL_CTX_set_session_id_context.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    libssl.SSL_CTX_set_tlsext_ticket_key_evp_cb.argtypes = [ctypes.c_void_p, _TicketCallback]
    libcrypto.EVP_aes_256_cbc.restype = ctypes.c_void_p
    for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
        fn = getattr(libcrypto, name)
        fn.argtypes = [ctypes.c_void_p] * 5
    libcrypto.EVP_MAC_CTX_set_params.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libcrypto.RAND_bytes.argtypes = [_UBYTES, ctypes.c_int]
    return libssl, libcrypto


try:
    _libssl, _libcrypto = _bind()
    AES_256_CBC = _libcrypto.EVP_aes_256_cbc()
    AVAILABLE = True
    UNAVAILABLE_BECAUSE = ""
except (OSError, AttributeError) as e:
    _libssl = _libcrypto = None
    AES_256_CBC = None
    AVAILABLE = False
    UNAVAILABLE_BECAUSE = str(e)


def context_pointer(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside an ``ssl.SSLContext`` (CPython keeps it first, after the
    object header), checked against what both sides say of the context's options."""
    if not AVAILABLE:
        raise OSError(UNAVAILABLE_BECAUSE)
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or _libssl.SSL_CTX_get_options(pointer) != int(context.options):
        raise OSError("cannot find the OpenSSL context inside ssl.SSLContext")
    return pointer


def set_groups(context: ssl.SSLContext, groups: bytes) -> None:
    if _libssl.SSL_CTX_ctrl(context_pointer(context), SSL_CTRL_SET_GROUPS_LIST, 0, groups) != 1:
        raise ValueError(f"OpenSSL refuses the groups {groups.decode()}")


def release_buffers(context: ssl.SSLContext) -> None:
    _libssl.SSL_CTX_ctrl(context_pointer(context), SSL_CTRL_MODE, SSL_MODE_RELEASE_BUFFERS, None)


def set_session_id_context(context: ssl.SSLContext, sid: bytes) -> None:
    if _libssl.SSL_CTX_set_session_id_context(context_pointer(context), sid, len(sid)) != 1:
        raise ValueError("OpenSSL refuses the session id context")


def set_session_timeout(context: ssl.SSLContext, seconds: int) -> None:
    _libssl.SSL_CTX_set_timeout(context_pointer(context), seconds)


class _Prepared:
    """One key's buffers and OSSL_PARAMs, made once: handshakes only copy pointers."""

    def __init__(self, aes: bytes, hmac: bytes) -> None:
        self.aes = ctypes.create_string_buffer(aes, len(aes))
        self._hmac = ctypes.create_string_buffer(hmac, len(hmac))
        self._digest = ctypes.create_string_buffer(b"SHA256")
        self.params = (_Param * 3)(
            _Param(b"key", _OSSL_PARAM_OCTET_STRING, ctypes.addressof(self._hmac), len(hmac), 0),
            _Param(b"digest", _OSSL_PARAM_UTF8_STRING, ctypes.addressof(self._digest), 6, 0),
            _Param(None, 0, None, 0, 0),
        )


class TicketKeyCallback:
    """The C callback that seals and opens tickets with a :class:`TicketKeySource`.

    Kept for the life of the process (see :func:`install_ticket_keys`): OpenSSL holds the
    function pointer in every context it was set on, and in each connection's session
    context, which may outlive any Python object we could tie it to.
    """

    def __init__(self, source: TicketKeySource, on_error: Callable[[BaseException], None]) -> None:
        self.source = source
        self._on_error = on_error
        self._prepared: dict[tuple[bytes, bytes], _Prepared] = {}
        self.c_function = _TicketCallback(self._call)
        self.sealed = 0
        self.opened = 0
        self.unknown = 0

    def _prepare(self, aes: bytes, hmac: bytes) -> _Prepared:
        prepared = self._prepared.get((aes, hmac))
        if prepared is None:
            if len(self._prepared) > 64:
                self._prepared.clear()
            prepared = self._prepared[(aes, hmac)] = _Prepared(aes, hmac)
        return prepared

    def _call(self, ssl_: int, name: Any, iv: Any, cipher: int, mac: int, enc: int) -> int:
        # An exception cannot cross into OpenSSL: report it, and let this handshake go on
        # without a ticket (sealing) or as a full handshake (opening).
        try:
            if enc:
                return self._seal(name, iv, cipher, mac)
            return self._open(name, iv, cipher, mac)
        except BaseException as e:
            self._on_error(e)
            return _NO_KEY

    def _seal(self, name: Any, iv: Any, cipher: int, mac: int) -> int:
        key = self.source.sealing_key()
        if key is None:
            return _NO_KEY
        key_name, aes, hmac = key
        prepared = self._prepare(aes, hmac)
        ctypes.memmove(name, key_name, len(key_name))
        if _libcrypto.RAND_bytes(iv, 16) != 1:
            return _FAILED
        if _libcrypto.EVP_EncryptInit_ex(cipher, AES_256_CBC, None, prepared.aes, iv) != 1:
            return _FAILED
        if _libcrypto.EVP_MAC_CTX_set_params(mac, prepared.params) != 1:
            return _FAILED
        self.sealed += 1
        return _DONE

    def _open(self, name: Any, iv: Any, cipher: int, mac: int) -> int:
        found = self.source.opening_key(ctypes.string_at(name, 16))
        if found is None:
            self.unknown += 1
            return _NO_KEY
        aes, hmac, renew = found
        prepared = self._prepare(aes, hmac)
        if _libcrypto.EVP_MAC_CTX_set_params(mac, prepared.params) != 1:
            return _FAILED
        if _libcrypto.EVP_DecryptInit_ex(cipher, AES_256_CBC, None, prepared.aes, iv) != 1:
            return _FAILED
        self.opened += 1
        return _DONE_RENEW if renew else _DONE


_KEPT: list[TicketKeyCallback] = []


def install_ticket_keys(context: ssl.SSLContext, callback: TicketKeyCallback) -> None:
    """Seal and open this context's tickets with ``callback``'s keys."""
    if callback not in _KEPT:
        _KEPT.append(callback)
    if (
        _libssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(context_pointer(context), callback.c_function)
        != 1
    ):
        raise ValueError("OpenSSL refuses the ticket-key callback")
