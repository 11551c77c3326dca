"""`make run` as a new user meets it: runtime dependencies only, an admin password
printed, the dashboard up, and Ctrl-C ending it quietly.

The real `make run` runs on the virtualenv `make test` already made (its
runtime stamp is there), so this costs seconds; what a fresh machine would
install is read from make's dry run against an empty virtualenv path.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def test_make_run_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    out = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "tools/sysdeps.sh runtime" in out, out
    assert "[test]" not in out and "sysdeps.sh test" not in out, out
    sysdeps = (ROOT / "tools" / "sysdeps.sh").read_text()
    assert "--no-install-recommends" in sysdeps
    runtime_part = sysdeps.split('if [ "$what" = test ]')[0]
    assert "chromium" not in runtime_part.split("need=()")[1]


def test_make_run_prints_an_admin_password_and_stops_quietly_on_ctrl_c() -> None:
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run", "RUN_PORT=0", f"VENV={VENV}"],
        cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: Ctrl-C goes to all of it
    )  # fmt: skip
    lines: list[str] = []
    password = url = None
    deadline = time.monotonic() + 120
    try:
        assert make.stdout is not None
        for line in make.stdout:
            lines.append(line)
            m = re.search(r"user admin, password (\S+)", line)
            if m:
                password = m.group(1)
            m = re.search(r"rendezvous listening on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert url and password, "".join(lines)
        with urllib.request.urlopen(url + "/", timeout=5) as r:
            assert r.status == 200
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        auth = {"Authorization": f"Basic {token}"}
        request = urllib.request.Request(url + "/admin", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        rest, _ = make.communicate(timeout=30)
    text = "".join(lines) + rest
    assert "Interrupt" not in text and "Error" not in text, text
    assert "Server Shut Down" in text, text
