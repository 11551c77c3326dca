"""HTTPS for the rendezvous: one PEM per hostname in a directory, chosen by SNI (txsni).

``<hostname>.pem`` holds that name's private key and certificate chain
(txsni's layout). ``DEFAULT.pem``, or else the first file by name, serves
clients that send no SNI or an unknown name. Every file is read and checked
once at start (a missing, unreadable or mismatched one stops startup, named)
and again by `ReloadableSNI.reload` (SIGHUP): a reload that fails keeps the
certificates in use. Handshakes never touch the disk, and connections already
open keep the certificate they started with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions
from txsni.only_noticed_pypi_pem_after_i_wrote_this import certificateOptionsFromPileOfPEM
from txsni.snimap import SNIMap
from zope.interface import implementer


class TLSSetupError(Exception):
    """A certificate directory or file that cannot be served; str() names it."""


def load_certificates(directory: str) -> dict[str, CertificateOptions]:
    """hostname (lower case) -> options, one per ``*.pem`` in ``directory``."""
    root = Path(directory)
    try:
        files = sorted(p for p in root.iterdir() if p.suffix == ".pem" and p.is_file())
    except OSError as e:
        raise TLSSetupError(f"{directory}: cannot list: {e.strerror}") from None
    if not files:
        raise TLSSetupError(f"{directory}: no <hostname>.pem files")
    loaded: dict[str, CertificateOptions] = {}
    for path in files:
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise TLSSetupError(f"{path}: cannot read: {e.strerror}") from None
        try:
            options = certificateOptionsFromPileOfPEM(pem)
            options.getContext()  # builds the context now: bad key/cert fails here
        except ValueError as e:
            why = "no certificate matches the private key" if "matching" in str(e) else str(e)
            raise TLSSetupError(f"{path}: {why}") from None
        except (SSL.Error, Exception) as e:
            raise TLSSetupError(f"{path}: not a usable PEM key and certificate ({e})") from None
        loaded[path.stem.lower()] = options
    return loaded


class _HostMap:
    """txsni's mapping: SNI name -> CertificateOptions, unknown names -> default."""

    def __init__(self, certificates: dict[str, CertificateOptions]) -> None:
        self.certificates = certificates
        self.default_name = "default" if "default" in certificates else next(iter(certificates))

    def __getitem__(self, hostname: Any) -> CertificateOptions:
        if isinstance(hostname, bytes):
            hostname = hostname.decode("ascii", "replace")
        key = (hostname or "default").lower()
        return self.certificates.get(key, self.certificates[self.default_name])


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableSNI:
    """A connection creator whose certificates can be swapped while serving."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._current: SNIMap = self._build()

    def _build(self) -> SNIMap:
        hosts = _HostMap(load_certificates(self.directory))
        self.names = sorted(hosts.certificates)
        self.default_name = hosts.default_name
        return SNIMap(hosts)

    @property
    def public_name(self) -> str:
        """The host name this server answers for by default (for redirects)."""
        if self.default_name != "default":
            return self.default_name
        real = [n for n in self.names if n != "default"]
        return real[0] if real else "localhost"

    def reload(self) -> list[str]:
        """Re-read the directory; on error keep serving the old certificates and raise."""
        self._current = self._build()
        return self.names

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self._current.serverConnectionForTLS(tlsProtocol)
