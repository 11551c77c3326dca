"""Logs: plain or one JSON object per line, Twisted's port noise dropped, the settings
line at start; pure parts under hypothesis, the rest through a real twistd."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent

from goop.logformat import is_noise, json_line, settings_line
from tests.procs import TWISTD

texts = st.text(max_size=60)


@given(texts, texts, st.sampled_from(list(LogLevel.iterconstants())))
def test_any_event_is_one_line_of_json(peer_id: str, why: str, level: LogLevel) -> None:
    event = {
        "log_format": "peer {peer_id} gone ({why})", "log_level": level,
        "log_namespace": "goop.test", "log_time": 1796203421.5, "peer_id": peer_id, "why": why,
        "obj": object(),
    }  # fmt: skip
    line = json_line(event)
    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert parsed["message"] == formatEvent(event)
    assert parsed["level"] == level.name and parsed["namespace"] == "goop.test"
    assert parsed["time"] == "2026-12-02T09:23:41.500+00:00"
    assert "obj" not in parsed  # only plain values are carried


def test_noise_is_twisteds_port_lines_only() -> None:
    def legacy(text: str) -> dict[str, object]:
        return {"log_format": "{log_text}", "log_text": text}

    assert is_noise(legacy("QuietSite starting on 8787"))
    assert is_noise(legacy("(TCP Port 8787 Closed)"))
    assert not is_noise(legacy("rendezvous listening on http://127.0.0.1:8787"))
    assert not is_noise(legacy("peer QuietSite starting on 8787 (a peer's content)"))


def test_settings_line_masks_secrets() -> None:
    line = settings_line(
        {"presence.admin_password": "hunter2", "presence.max_peers": 5, "p2p.enabled": True},
        {"presence.admin_password": "", "presence.max_peers": 50000, "p2p.enabled": True},
        "/etc/goop/goop.json",
    )
    assert line == (
        "config file /etc/goop/goop.json; settings not at their default: "
        "presence.admin_password=***, presence.max_peers=5"
    )
    assert settings_line({"a": 1}, {"a": 1}, "") == "no config file; all defaults"


def run_twistd(tmp_path: Path, *args: str) -> list[str]:
    proc = subprocess.Popen(
        [TWISTD, "--pidfile=", "-n", "goop", "--rendezvous-only", "--rendezvous-port", "0",
         *args],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if "rendezvous listening on" in line or time.monotonic() > deadline:
            break
    proc.terminate()
    rest, _ = proc.communicate(timeout=15)
    return lines + rest.splitlines()


def test_json_logs_from_a_real_twistd(tmp_path: Path) -> None:
    lines = run_twistd(tmp_path, "--log-format", "json", "--admin-password", "s3cret")
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [e["message"] for e in events]
    assert messages[0].startswith("no config file; settings not at their default:"), messages
    assert "presence.admin_password=***" in messages[0] and "s3cret" not in "".join(lines)
    assert any(m.startswith("rendezvous listening on") for m in messages), messages
    assert not [m for m in messages if "starting on" in m or ("Port" in m and "Closed" in m)]
    assert {e["level"] for e in events} <= {"debug", "info", "warn", "error", "critical"}


def test_text_logs_lose_only_the_noise(tmp_path: Path) -> None:
    lines = run_twistd(tmp_path)
    text = "\n".join(lines)
    assert "rendezvous listening on" in text and "settings not at their default" in text
    assert "QuietSite starting on" not in text and "Closed)" not in text


def test_a_wrong_log_format_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [TWISTD, "-n", "goop", "--log-format", "xml"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.splitlines()[0] == (
        "goop: --log-format: must be one of text, json, got 'xml'"
    ), out.stderr
