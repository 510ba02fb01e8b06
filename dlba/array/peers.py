"""Mutual TLS for the control plane (DESIGN.md §7): who is at the other end.

Both ends show a certificate signed by the array's own CA (``[tls] ca``); the name in it
says who they are: ``node<N>`` for a node of ``[[array.node]]``, ``admin`` for dlba-ctl.
OpenSSL refuses a peer without a certificate or with one of another CA during the
handshake; the name is checked once it is done, with service-identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography import x509
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import ssl

ADMIN = "admin"


def node_name(number: int) -> str:
    return f"node{number}"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(f"{path}: cannot read the {what}: {e.strerror}") from None


def _ca(path: str) -> ssl.Certificate:
    pem = _read(path, "array CA ([tls] ca)")
    start = pem.find(b"-----BEGIN CERTIFICATE")
    if start < 0:
        raise ValueError(f"{path}: no certificate in the array CA file ([tls] ca)")
    return ssl.Certificate.loadPEM(pem[start:])


def _own(path: str) -> ssl.PrivateCertificate:
    pem = _read(path, "certificate")
    try:
        own: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(pem)
        return own
    except Exception as e:  # pyOpenSSL raises several kinds for a bad file
        raise ValueError(f"{path}: not a PEM key and certificate: {e}") from None


def server_options(ca_path: str, own_path: str) -> Any:
    """The sync listener's TLS: TLS 1.3, and a client certificate of the CA required."""
    own = _own(own_path)
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        verify=True,
        caCerts=[_ca(ca_path).original],
        requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )


def client_options(ca_path: str, own_path: str, peer: str) -> Any:
    """To connect to ``peer`` (``node<N>``): its certificate must name it."""
    return ssl.optionsForClientTLS(
        peer,
        trustRoot=_ca(ca_path),
        clientCertificate=_own(own_path),
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
    )


def identity(certificate: Any, nodes: Iterable[int]) -> str | None:
    """``admin``, ``node<N>`` for a node of the array, or None: what the peer's
    certificate (pyOpenSSL or cryptography) says it is."""
    if certificate is None:
        return None
    cert: x509.Certificate = (
        certificate.to_cryptography() if hasattr(certificate, "to_cryptography") else certificate
    )
    for name in [ADMIN, *(node_name(n) for n in nodes)]:
        try:
            verify_certificate_hostname(cert, name)
        except VerificationError:
            continue
        return name
    return None
