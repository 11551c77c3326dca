"""End to end: the installed ``twistd goop`` as a real process on real sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from goop.sseparse import SSEEvent, SSEParser
from tests.procs import TWISTD, GoopProcess, run_goop

PEER = "12D3KooWE2eTestPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
BASE_ARGS = ["--rendezvous-only", "--rendezvous-port", "0", "--no-mdns"]


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[GoopProcess]:
    proc = GoopProcess(BASE_ARGS, cwd=str(tmp_path))
    try:
        yield proc
    finally:
        proc.kill()


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url + "/publish", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class SSEStream:
    """A raw-socket HTTP/1.0 /events reader with a deadline on every wait."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET /events HTTP/1.0\r\nHost: x\r\n{extra}\r\n".encode())
        self.head = b""
        self.raw_body = b""
        self.parser = SSEParser()
        self.events: list[SSEEvent] = []

    def _read(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        if self.head.endswith(b"\r\n\r\n"):
            body = data
        else:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return b""
            self.head, _, body = self.head.partition(b"\r\n\r\n")
            self.head += b"\r\n\r\n"
        self.raw_body += body
        self.events.extend(self.parser.feed(body))
        return body

    def wait_for(self, predicate, timeout: float = 5.0) -> SSEEvent:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(json.loads(event.data)):
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event in {timeout}s: {self.events}")
            self.sock.settimeout(left)
            self._read()

    def close(self) -> None:
        self.sock.close()


def test_plugin_is_listed_by_twistd() -> None:
    """After a normal install, `twistd --help` lists the goop plugin."""
    out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert any(line.split()[:1] == ["goop"] for line in out.stdout.splitlines()), out.stdout


def test_publish_reaches_a_real_events_stream_and_sigterm_stops_in_2s(
    rendezvous: GoopProcess,
) -> None:
    """Port 0 is logged as the real port; a publish reaches /events; SIGTERM exits in 2 s."""
    url = rendezvous.url()
    port = urlsplit(url).port
    assert port and port != 0
    stream = SSEStream(url)
    try:
        stream.sock.settimeout(5)
        while b": ok" not in stream.raw_body:
            stream._read()
        assert b"200 OK" in stream.head and b"text/event-stream" in stream.head
        body = json.dumps({"type": "online", "peerId": PEER, "content": "e2e"}).encode()
        assert post(url, body) == 204
        event = stream.wait_for(lambda m: m["peerId"] == PEER)
        assert json.loads(event.data)["content"] == "e2e"
        assert event.last_event_id.isdigit()
        started = time.monotonic()
        rendezvous.terminate()
        # twistd re-raises the signal after a clean shutdown: status -SIGTERM.
        assert rendezvous.wait_exit(timeout=5) in (0, -15)
        assert time.monotonic() - started < 2.0
        assert "Server Shut Down." in rendezvous.output()
        assert "Traceback" not in rendezvous.output()
    finally:
        stream.close()


def test_goop2_client_accepts_every_data_line(rendezvous: GoopProcess) -> None:
    """goop2's client skips blank, ':' and non-data lines and needs JSON with type and
    peerId in each data line; every line our stream sends passes that reading."""
    url = rendezvous.url()
    for i in range(3):
        msg = {"type": "online", "peerID": f"{PEER}{i}", "avatarHash": "a", "ts": 1738764000000}
        assert post(url, json.dumps(msg).encode()) == 204
    stream = SSEStream(url)
    try:
        stream.wait_for(lambda m: m["peerId"] == f"{PEER}2")
        assert post(url, json.dumps({"type": "offline", "peerId": f"{PEER}0"}).encode()) == 204
        stream.wait_for(lambda m: m["type"] == "offline")
        accepted = 0
        # The same reading goop2's SubscribeEvents does, line by line.
        for line in stream.raw_body.decode().split("\n"):
            if line == "" or line.startswith(":"):
                continue
            if not line.startswith("data:"):
                assert line.startswith("id: ")  # the only other kind we send
                continue
            payload = json.loads(line[len("data:"):].strip())
            assert isinstance(payload, dict)
            assert payload["type"] in ("online", "update", "offline") and payload["peerId"]
            assert payload["ts"] > 0 and "avatarHash" in payload
            accepted += 1
        assert accepted == 4
    finally:
        stream.close()


def test_ten_megabyte_body_refused_before_it_is_sent(rendezvous: GoopProcess) -> None:
    """A 10 MB publish gets 413 after the headers, before the body is uploaded."""
    parts = urlsplit(rendezvous.url())
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
        sock.sendall(b"x" * 65536)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply
    with urllib.request.urlopen(rendezvous.url() + "/healthz", timeout=5) as resp:
        assert resp.status == 200


def test_bad_config_is_one_line_and_nonzero(tmp_path: Path) -> None:
    """heartbeat >= ttl stops startup with one line naming the field; no traceback."""
    out = run_goop([*BASE_ARGS, "--heartbeat-seconds", "30"], cwd=str(tmp_path))
    assert out.returncode != 0
    text = (out.stdout + out.stderr).strip()
    assert "Traceback" not in text
    error_lines = [line for line in text.splitlines() if line.startswith("goop:")]
    assert len(error_lines) == 1, text
    assert "heartbeat_seconds" in error_lines[0]


def test_bad_config_file_names_the_file(tmp_path: Path) -> None:
    """A config file with an unknown field names it and exits non-zero."""
    cfg = tmp_path / "goop.json"
    cfg.write_text(json.dumps({"presence": {"ttl_secs": 5}}))
    out = run_goop(["--config", str(cfg), "--rendezvous-only"], cwd=str(tmp_path))
    assert out.returncode != 0
    assert "presence.ttl_secs" in out.stderr and "Traceback" not in out.stderr


def test_taken_port_stops_startup_clearly(tmp_path: Path) -> None:
    """A rendezvous port already in use: one clear line, non-zero exit."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = run_goop(["--rendezvous-only", "--rendezvous-port", str(port)], cwd=str(tmp_path))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in text, text
    assert "Traceback" not in text


def test_port_environment_variable_sets_the_port(tmp_path: Path) -> None:
    """With $PORT set and no port configured, the rendezvous listens on $PORT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = GoopProcess(["--rendezvous-only"], cwd=str(tmp_path), env={"PORT": str(port)})
    try:
        assert proc.url() == f"http://127.0.0.1:{port}"
    finally:
        proc.kill()


def test_tac_file_serves_the_same_endpoints(tmp_path: Path) -> None:
    """twistd -ny goop.tac with GOOP_CONFIG serves /healthz and /publish."""
    tac = Path(__file__).resolve().parent.parent / "goop.tac"
    cfg = tmp_path / "rv.json"
    cfg.write_text(json.dumps({"presence": {"rendezvous_only": True, "rendezvous_port": 0}}))
    proc = GoopProcess([], cwd=str(tmp_path), env={"GOOP_CONFIG": str(cfg)}, tac=str(tac))
    try:
        url = proc.url()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
        assert post(url, json.dumps({"type": "online", "peerId": PEER}).encode()) == 204
    finally:
        proc.kill()


def test_module_runs_under_the_test_interpreter() -> None:
    """The twistd used by these tests belongs to the interpreter running them."""
    assert Path(TWISTD).parent == Path(sys.executable).parent
