"""How a peer trusts an ``https://`` rendezvous, and how TLS failures are told.

Certificates are checked against the system trust store plus, when given,
an extra CA bundle (``presence.rendezvous_ca_file``), and the name in the
URL is checked against the certificate with service-identity (through
Twisted's ``optionsForClientTLS``). A wrong name or an unknown CA is refused,
never accepted. The one exception is the peer's own rendezvous reached over
loopback, whose certificate is for its public names, not 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


def _read_bundle(path: str) -> list[crypto.X509]:
    data = open(path, "rb").read()
    certs = []
    marker = b"-----END CERTIFICATE-----"
    for block in data.split(marker)[:-1]:
        certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, block + marker))
    if not certs:
        raise ValueError(f"{path}: no PEM certificates")
    return certs


@implementer(IOpenSSLTrustRoot)
class SystemPlusBundle:
    """The platform's trust store, plus the CAs of an extra bundle."""

    def __init__(self, ca_file: str = "") -> None:
        self.extra = _read_bundle(ca_file) if ca_file else []

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for cert in self.extra:
            store.add_cert(cert)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS without certificate checks: only for our own rendezvous over loopback."""

    def __init__(self) -> None:
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IPolicyForHTTPS)
class RendezvousTrust:
    """The Agent's HTTPS policy: verify everything but our own loopback rendezvous."""

    def __init__(self, ca_file: str = "") -> None:
        self.root = SystemPlusBundle(ca_file)
        self.loopback: set[tuple[bytes, int]] = set()

    def trust_own_loopback(self, host: str, port: int) -> None:
        self.loopback.add((host.encode("ascii"), port))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        if (hostname, port) in self.loopback:
            return _Unverified()
        return optionsForClientTLS(hostname.decode("idna"), trustRoot=self.root)


def describe_failure(failure: Failure) -> str:
    """One readable line for a failed request, TLS reasons spelled out."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(r) for r in reasons)
    value = failure.value
    if isinstance(value, SSL.Error):
        detail = " ".join(str(part[-1]) for part in (value.args[0] if value.args else []) if part)
        hint = ""
        if "certificate verify failed" in detail:
            hint = " (the server's certificate is not from a trusted CA)"
        return f"TLS handshake refused: {detail or value}{hint}"
    name = type(value).__name__
    if name == "VerificationError":  # service_identity: the name does not match
        return f"TLS certificate is for another name: {value}"
    return failure.getErrorMessage() or name
