"""Which parts a mode loads: --rendezvous-only never imports libp2p, zeroconf or trio.

Checked in a fresh interpreter (this test process has long imported them),
with a full peer as the control that the check can see them at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("libp2p", "zeroconf", "trio", "goop.p2p", "goop.p2p.adapter", "goop.p2p.mdns")

PROBE = """
import json, sys
heavy = sys.argv.pop().split(",")
from goop.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
service = makeService(options)
# What privilegedStartService would import too, without binding anything.
for child in service:
    if child.name in ("libp2p", "mdns"):
        type(child).privilegedStartService(child)
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def loaded(args: list[str], cwd: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args, ",".join(HEAVY)],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "args",
    [
        ["--rendezvous-only", "--rendezvous-port", "0"],
        ["--no-p2p", "--no-mdns", "--rendezvous-wan", "http://127.0.0.1:1"],
    ],
)
def test_modes_without_p2p_import_no_libp2p_zeroconf_or_trio(
    args: list[str], tmp_path: Path
) -> None:
    assert loaded(args, tmp_path) == []


def test_full_peer_loads_libp2p_and_zeroconf(tmp_path: Path) -> None:
    """The control: a default full peer does load them (so the check above can fail)."""
    assert set(loaded(["--http-addr", "127.0.0.1:0"], tmp_path)) == set(HEAVY)
