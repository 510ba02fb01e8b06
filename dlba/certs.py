"""Certificates dlba makes itself: the demo's self-signed one, the array's own CA with a
certificate per node and one for dlba-ctl (``dlba-ctl certs init``), and test fixtures.

Everything here returns or writes PEM: a private key followed by the certificate
chain, leaf first, which is the format ``[tls] certificates`` expects.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dlba.files import write_atomically

KeyType = Literal["ec", "rsa"]
_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Backdated so a peer whose clock runs a little behind ours still accepts a new cert.
_CLOCK_SKEW = datetime.timedelta(hours=1)


def ensure_self_signed(
    state_dir: str,
    names: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> str:
    """Return the path of ``<state_dir>/tls/selfsigned.pem``, creating it if absent.

    An existing file is reused as is, so clients that pinned it keep working
    across restarts.
    """
    directory = os.path.join(state_dir, "tls")
    path = os.path.join(directory, "selfsigned.pem")
    if os.path.exists(path):
        return path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pem = make_cert(names, ips=ips, common_name=names[0] if names else "dlba")
    write_atomically(path, pem, 0o600)
    return path


def make_ca(
    common_name: str = "dlba test CA", *, key_type: KeyType = "ec", days: int = 365
) -> bytes:
    """A self-signed CA: PEM private key followed by its certificate."""
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)


def make_cert(
    names: Sequence[str],
    *,
    ca: bytes | None = None,
    ips: Sequence[str] = (),
    common_name: str | None = None,
    key_type: KeyType = "ec",
    days: int = 365,
) -> bytes:
    """A leaf certificate for DNS ``names`` and ``ips``, usable by servers and clients.

    Signed by ``ca`` (the PEM :func:`make_ca` returns) when given, otherwise
    self-signed. Returns the PEM key, the leaf and, if signed, the CA certificate.
    """
    key = _new_key(key_type)
    cn = common_name if common_name is not None else (names[0] if names else "dlba")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    if ca is None:
        issuer_key: _PrivateKey = key
        issuer_name = subject
        chain = b""
    else:
        issuer_key = _load_key(ca)
        ca_cert = x509.load_pem_x509_certificate(ca)
        issuer_name = ca_cert.subject
        chain = ca_cert.public_bytes(serialization.Encoding.PEM)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca is not None:
        # Verifiers in strict mode (Python 3.13's ssl default) reject a CA-issued
        # leaf without an Authority Key Identifier.
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM) + chain


class CertificatesExist(Exception):
    """``certs init`` would overwrite files; ``paths`` names them."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        super().__init__(
            "already there: " + ", ".join(paths) + " (pass --force to make new ones; every "
            "node then needs its new certificate)"
        )


def ca_key_path(ca_path: str) -> str:
    """Where ``certs init`` keeps the CA's private key: beside the CA certificate, which
    is all a node needs.  Keep the key off the nodes once their certificates are made."""
    return ca_path + ".key"


def array_certificate_paths(
    ca: str, admin: str, nodes: Sequence[tuple[int, str, str]]
) -> dict[str, str]:
    """What ``certs init`` writes: path → what it is."""
    paths = {ca: "the array CA", ca_key_path(ca): "the array CA's key", admin: "admin"}
    for number, path, _ in nodes:
        paths[path] = f"node{number}"
    return paths


def init_array_certificates(
    ca: str,
    admin: str,
    nodes: Sequence[tuple[int, str, str]],  # (number, certificate path, ip)
    *,
    force: bool = False,
    days: int = 825,
) -> list[str]:
    """Make the array CA, one certificate per node (DNS name ``node<N>`` and the node's
    ip) and the admin certificate; return the paths written."""
    paths = array_certificate_paths(ca, admin, nodes)
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise CertificatesExist(existing)
    ca_pem = make_ca("dlba array CA", days=days * 2)
    key_end = ca_pem.index(b"-----BEGIN CERTIFICATE")
    written = []
    _write(ca_key_path(ca), ca_pem[:key_end], 0o600)
    _write(ca, ca_pem[key_end:], 0o644)
    written += [ca, ca_key_path(ca)]
    for number, path, ip in nodes:
        _write(path, make_cert([f"node{number}"], ca=ca_pem, ips=[ip], days=days), 0o600)
        written.append(path)
    _write(admin, make_cert(["admin"], ca=ca_pem, days=days), 0o600)
    written.append(admin)
    return written


def _write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, data, mode)


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _load_key(pem: bytes) -> _PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported CA key type {type(key).__name__}")
    return key


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
