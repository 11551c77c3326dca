"""Real goop processes for end-to-end tests: start twistd, read its log, stop it.

Uses the twistd of the interpreter running the tests, so it exercises the
installed package (the plugin included). Blocking helpers with deadlines:
for plain (non-reactor) tests; reactor tests wrap them in threads.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))
LISTENING = re.compile(r"rendezvous listening on (https?://\S+)")


class GoopProcess:
    """One ``twistd -n goop ...``; its output is read by a thread into a queue."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: str,
        env: dict[str, str] | None = None,
        tac: str | None = None,
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if tac is not None:
            argv = [TWISTD, "--pidfile=", "-ny", tac, *args]
        else:
            argv = [TWISTD, "--pidfile=", "-n", "goop", *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float = 20) -> re.Match[str]:
        """The first (new or already seen) output line matching ``pattern``."""
        return self.wait_for_line_after(pattern, 0, timeout)

    def wait_for_line_after(
        self, pattern: re.Pattern[str] | str, after: int, timeout: float = 20
    ) -> re.Match[str]:
        """The first output line with index >= ``after`` matching ``pattern``."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.lines[after:]:
            m = rx.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line matching {rx.pattern!r} within {timeout}s; output:\n"
                    + "\n".join(self.lines)
                )
            try:
                got = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if got is None:
                raise AssertionError(
                    f"process exited ({self.proc.wait()}) before {rx.pattern!r}; output:\n"
                    + "\n".join(self.lines)
                )
            self.lines.append(got)
            m = rx.search(got)
            if m:
                return m

    def url(self, timeout: float = 20) -> str:
        return self.wait_for_line(LISTENING, timeout).group(1)

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        # Drain what is left so callers can read every line.
        while True:
            try:
                line = self._queue.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return "\n".join(self.lines)


def run_goop(args: Sequence[str], cwd: str, env: dict[str, str] | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run twistd goop to completion (for startup errors)."""
    return subprocess.run(
        [TWISTD, "--pidfile=", "-n", "goop", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
