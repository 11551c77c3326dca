"""TLS on the rendezvous (SNI, reload on SIGHUP) and peers verifying https, with trustme CAs."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme

from goop.sseparse import SSEParser
from tests.procs import GoopProcess, run_goop

PEER = "12D3KooWTlsTestPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def write_pem(directory: Path, name: str, cert: trustme.LeafCert) -> Path:
    path = directory / f"{name}.pem"
    path.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    return path


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def procs() -> Iterator[list[GoopProcess]]:
    started: list[GoopProcess] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()


def start(procs: list[GoopProcess], cwd: Path, args: list[str]) -> GoopProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = GoopProcess(args, cwd=str(cwd))
    procs.append(proc)
    return proc


def tls_rendezvous(
    procs: list[GoopProcess], root: Path, tls_dir: Path, *extra: str
) -> tuple[GoopProcess, int]:
    proc = start(
        procs,
        root / "rv",
        [
            "--rendezvous-only",
            "--rendezvous-port",
            "0",
            "--rendezvous-tls-dir",
            str(tls_dir),
            *extra,
        ],
    )
    url = proc.url()
    assert url.startswith("https://")
    return proc, int(urlsplit(url).port or 0)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def served_cert(
    port: int, ca: trustme.CA, server_name: str | None, check_name: bool = True
) -> dict[str, object]:
    ctx = client_context(ca)
    if server_name is None or not check_name:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert()
            assert cert is not None
            return cert


def names(cert: dict[str, object]) -> list[str]:
    return [v for k, v in cert["subjectAltName"] if k == "DNS"]  # type: ignore[attr-defined,misc]


def https_post(port: int, ca: trustme.CA, host: str, body: bytes) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=client_context(ca))
    conn._tunnel_host = None  # type: ignore[attr-defined]
    conn.sock = client_context(ca).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=host
    )
    conn.request("POST", "/publish", body, {"Content-Type": "application/json", "Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


def test_two_hostnames_on_one_port_each_get_their_certificate(
    tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess]
) -> None:
    """SNI picks alpha.test's or beta.test's certificate; no SNI gets the default."""
    tls = tmp_path / "tls"
    tls.mkdir()
    write_pem(tls, "alpha.test", ca.issue_cert("alpha.test"))
    write_pem(tls, "beta.test", ca.issue_cert("beta.test"))
    _, port = tls_rendezvous(procs, tmp_path, tls)
    assert names(served_cert(port, ca, "alpha.test")) == ["alpha.test"]
    assert names(served_cert(port, ca, "beta.test")) == ["beta.test"]
    assert names(served_cert(port, ca, None)) == ["alpha.test"]
    # An SNI name with no PEM gets the default certificate, not a failed handshake.
    assert names(served_cert(port, ca, "unknown.test", check_name=False)) == ["alpha.test"]


def test_peers_with_the_right_ca_exchange_presence_over_https(
    tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess]
) -> None:
    """Two peers trusting the CA (rendezvous_ca_file) see each other through https."""
    tls = tmp_path / "tls"
    tls.mkdir()
    write_pem(tls, "localhost", ca.issue_cert("localhost"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    _, port = tls_rendezvous(procs, tmp_path, tls)
    common = [
        "--no-mdns",
        "--no-p2p",
        "--http-addr",
        "127.0.0.1:0",
        "--rendezvous-wan",
        f"https://localhost:{port}",
        "--rendezvous-ca-file",
        str(ca_file),
    ]
    a = start(procs, tmp_path / "a", [*common, "--label", "a"])
    b = start(procs, tmp_path / "b", [*common, "--label", "b"])
    a_id = a.wait_for_line(r"peer id (12D3KooW\w+)").group(1)
    b_id = b.wait_for_line(r"peer id (12D3KooW\w+)").group(1)
    a.wait_for_line(rf"sees peer {b_id}", timeout=10)
    b.wait_for_line(rf"sees peer {a_id}", timeout=10)


@pytest.mark.parametrize("case", ["unknown CA", "wrong name"])
def test_untrusted_rendezvous_is_refused_and_logged(
    tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess], case: str
) -> None:
    """A certificate from an unknown CA, or for another name, is refused with a clear
    log line; the peer never publishes there."""
    tls = tmp_path / "tls"
    tls.mkdir()
    write_pem(tls, "localhost", ca.issue_cert("localhost"))
    rv, port = tls_rendezvous(procs, tmp_path, tls)
    ca_file = tmp_path / "ca.pem"
    if case == "unknown CA":
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        url = f"https://localhost:{port}"
        expected = r"not from a trusted CA"
    else:
        ca.cert_pem.write_to_path(str(ca_file))
        url = f"https://127.0.0.1:{port}"  # the certificate names only localhost
        expected = r"certificate is for another name"
    peer = start(
        procs,
        tmp_path / "p",
        [
            "--no-mdns",
            "--no-p2p",
            "--http-addr",
            "127.0.0.1:0",
            "--rendezvous-wan",
            url,
            "--rendezvous-ca-file",
            str(ca_file),
        ],
    )
    line = peer.wait_for_line(r"publishing to wan failed \((.*)\)", timeout=10)
    assert expected in line.group(1), line.group(0)
    peer.wait_for_line(rf"cannot subscribe to {url}/ws \(.*{expected}", timeout=10)
    assert "online" not in "\n".join(x for x in rv.lines if "peer 12D3" in x)


def test_rotated_certificate_served_after_sighup_and_open_streams_survive(
    tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess]
) -> None:
    """Replace a PEM on disk, SIGHUP: new connections get the new certificate, an
    /events stream opened before keeps receiving events."""
    tls = tmp_path / "tls"
    tls.mkdir()
    write_pem(tls, "alpha.test", ca.issue_cert("alpha.test"))
    rv, port = tls_rendezvous(procs, tmp_path, tls)
    before = served_cert(port, ca, "alpha.test")["serialNumber"]

    stream = client_context(ca).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="alpha.test"
    )
    try:
        stream.sendall(b"GET /events HTTP/1.0\r\nHost: alpha.test\r\n\r\n")
        received = b""
        while b": ok" not in received:
            received += stream.recv(4096)

        write_pem(tls, "alpha.test", ca.issue_cert("alpha.test"))
        mark = len(rv.lines)
        rv.proc.send_signal(signal.SIGHUP)
        rv.wait_for_line_after(r"TLS certificates reloaded", mark, timeout=5)
        after = served_cert(port, ca, "alpha.test")["serialNumber"]
        assert after != before

        body = json.dumps({"type": "online", "peerId": PEER, "content": "rotated"}).encode()
        assert https_post(port, ca, "alpha.test", body) == 204
        parser = SSEParser()
        _, _, rest = received.partition(b"\r\n\r\n")
        events = parser.feed(rest)
        deadline = time.monotonic() + 5
        while not any(PEER in e.data for e in events):
            assert time.monotonic() < deadline, "old stream got nothing after the reload"
            events += parser.feed(stream.recv(65536))
    finally:
        stream.close()


def test_failed_reload_keeps_serving_the_old_certificate(
    tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess]
) -> None:
    """A broken PEM at reload time is logged and the old certificates stay in use."""
    tls = tmp_path / "tls"
    tls.mkdir()
    pem = write_pem(tls, "alpha.test", ca.issue_cert("alpha.test"))
    rv, port = tls_rendezvous(procs, tmp_path, tls)
    before = served_cert(port, ca, "alpha.test")["serialNumber"]
    pem.write_bytes(b"not a pem")
    mark = len(rv.lines)
    rv.proc.send_signal(signal.SIGHUP)
    rv.wait_for_line_after(r"TLS reload failed, still serving the old certificates", mark)
    assert served_cert(port, ca, "alpha.test")["serialNumber"] == before


def test_mismatched_key_and_certificate_stop_startup_naming_the_file(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A PEM whose key does not belong to its certificate: one line naming the file."""
    tls = tmp_path / "tls"
    tls.mkdir()
    one, two = ca.issue_cert("one.test"), ca.issue_cert("two.test")
    bad = tls / "one.test.pem"
    bad.write_bytes(two.private_key_pem.bytes() + one.cert_chain_pems[0].bytes())
    out = run_goop(["--rendezvous-only", "--rendezvous-tls-dir", str(tls)], cwd=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert str(bad) in text and "no certificate matches the private key" in text, text
    assert "Traceback" not in text


def test_empty_or_missing_tls_dir_stops_startup(tmp_path: Path) -> None:
    """No PEM files, or no directory: a clear line, non-zero exit."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_goop(["--rendezvous-only", "--rendezvous-tls-dir", str(empty)], cwd=str(tmp_path))
    assert out.returncode != 0 and "no <hostname>.pem files" in out.stderr
    out = run_goop(
        ["--rendezvous-only", "--rendezvous-tls-dir", str(tmp_path / "nope")], cwd=str(tmp_path)
    )
    assert out.returncode != 0 and "rendezvous_tls_dir" in out.stderr


def test_plain_http_redirect_port(tmp_path: Path, ca: trustme.CA, procs: list[GoopProcess]) -> None:
    """With a redirect port, plain HTTP there answers 308 to the https URL."""
    tls = tmp_path / "tls"
    tls.mkdir()
    write_pem(tls, "localhost", ca.issue_cert("localhost"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        redirect = probe.getsockname()[1]
    rv, port = tls_rendezvous(procs, tmp_path, tls, "--rendezvous-redirect-port", str(redirect))
    rv.wait_for_line(r"redirecting plain HTTP")
    conn = http.client.HTTPConnection("127.0.0.1", redirect, timeout=5)
    conn.request("GET", "/events?x=1", headers={"Host": "localhost"})
    resp = conn.getresponse()
    assert resp.status == 308
    assert resp.getheader("Location") == f"https://localhost:{port}/events?x=1"
    # A forged Host never picks the redirect's target: our certificate's name does.
    conn = http.client.HTTPConnection("127.0.0.1", redirect, timeout=5)
    conn.request("GET", "/x", headers={"Host": "evil.example:666"})
    resp = conn.getresponse()
    assert resp.status == 308
    assert resp.getheader("Location") == f"https://localhost:{port}/x"
