"""Starting as a daemon (``twistd goop`` without ``-n``) when a port is taken, and
twistd's option errors: real ``twistd`` subprocesses, each bounded by a timeout.

Before: the launching command hung forever (the child's `SystemExit` never
reached twistd's status pipe) and left a pidfile; an unknown option printed
50 lines of help before the error.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from goop.listening import StartupError
from tests.procs import TWISTD


@pytest.fixture
def taken() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def daemon(args: list[str], cwd: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        out = subprocess.run(
            [TWISTD, "--pidfile", str(cwd / "twistd.pid"), "--logfile", str(cwd / "twistd.log"),
             "goop", *args],
            cwd=str(cwd), capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        subprocess.run(["pkill", "-f", f"--pidfile {cwd}"], check=False)
        raise AssertionError(f"twistd did not return: {e.stderr!r}") from None
    return out.returncode, out.stderr, time.monotonic() - started


def test_rendezvous_port_taken_in_daemon_mode(tmp_path: Path, taken: int) -> None:
    code, err, took = daemon(["--rendezvous-only", "--rendezvous-port", str(taken)], tmp_path)
    assert code != 0 and took < 5, (code, took, err)
    assert err.strip().splitlines() == [
        f"goop: rendezvous cannot listen on 127.0.0.1:{taken}: Address already in use "
        "(presence.rendezvous_port / --rendezvous-port)"
    ], err
    assert not (tmp_path / "twistd.pid").exists()


def test_viewer_port_taken_in_daemon_mode(tmp_path: Path, taken: int) -> None:
    code, err, took = daemon(
        ["--no-p2p", "--no-mdns", "--http-addr", f"127.0.0.1:{taken}"], tmp_path
    )
    assert code != 0 and took < 5, (code, took, err)
    assert f"goop: viewer cannot listen on 127.0.0.1:{taken}: Address already in use" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "twistd.pid").exists()


def test_an_unknown_option_is_the_first_thing_said(tmp_path: Path) -> None:
    out = subprocess.run(
        [TWISTD, "-n", "goop", "--port", "9000"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.returncode != 0
    lines = (out.stderr + out.stdout).strip().splitlines()
    assert lines == [
        "goop: option --port not recognized",
        "(twistd goop --help lists every option)",
    ], lines


def test_a_bind_failing_later_is_still_reported_by_a_daemonizing_twistd() -> None:
    """Taken between the check and the bind: the services' error is an Exception too,
    which twistd's daemon start reports on its pipe (exit 1, pidfile removed),
    and a SystemExit, which ``-n`` prints as its one line."""
    error = StartupError("goop: rendezvous cannot listen on x:1: busy (hint)")
    assert isinstance(error, Exception) and isinstance(error, SystemExit)
    assert error.code == "goop: rendezvous cannot listen on x:1: busy (hint)"
