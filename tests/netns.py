"""Linux network namespaces joined by a veth pair, for real multicast between peers.

mDNS in the tests runs only here, never on the machine's real interfaces.
Each `VethPair` gets names unique to this process and test, and removes
everything it made (deleting a namespace deletes its veth end too).
Creating namespaces needs root and a kernel that allows it: `VethPair.create`
raises `NetnsUnavailable` with the reason otherwise, and tests skip with it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from tests.procs import TWISTD, GoopProcess

_counter = itertools.count()


class NetnsUnavailable(Exception):
    """The kernel or our privileges refuse network namespaces; str() says why."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


class VethPair:
    """Two namespaces, ``a`` and ``b``, with 10.<x>.<y>.1 and .2 on a veth between them."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 100000}{n}"
        self.a = f"goopA{tag}"
        self.b = f"goopB{tag}"
        self.veth_a = f"gva{tag}"[:15]
        self.veth_b = f"gvb{tag}"[:15]
        # A /30 of its own per pair, so parallel runs never share a subnet.
        x = os.getpid() % 200 + 20
        y = (n * 4) % 256
        self.addr_a = f"10.{x}.{y}.1"
        self.addr_b = f"10.{x}.{y}.2"
        self._made: list[str] = []

    @classmethod
    def create(cls) -> VethPair:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NetnsUnavailable("creating network namespaces needs root")
        pair = cls()
        try:
            pair._build()
        except BaseException:
            pair.delete()
            raise
        return pair

    def _build(self) -> None:
        for ns in (self.a, self.b):
            _ip("netns", "add", ns)
            self._made.append(ns)
        _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        _ip("link", "set", self.veth_a, "netns", self.a)
        _ip("link", "set", self.veth_b, "netns", self.b)
        for ns, dev, addr in (
            (self.a, self.veth_a, self.addr_a),
            (self.b, self.veth_b, self.addr_b),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")

    def delete(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made = []

    @staticmethod
    def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]


class NetnsGoop(GoopProcess):
    """``twistd -n goop ARGS`` inside network namespace ``ns`` (or ``command``, a
    whole argv, instead of twistd: another test program, e.g. tests/lanforger.py)."""

    def __init__(
        self, ns: str, args: Sequence[str], cwd: str, command: Sequence[str] = ()
    ) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = VethPair.exec_argv(
            ns, list(command) or [TWISTD, "--pidfile=", "-n", "goop", *args]
        )
        self.ns = ns
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def get_json(self, url: str) -> Any:
        """GET ``url`` from inside the namespace (the viewer is bound there)."""
        code = (
            "import sys,urllib.request;"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())"
        )
        out = subprocess.run(
            VethPair.exec_argv(self.ns, [sys.executable, "-c", code, url]),
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return json.loads(out.stdout)
