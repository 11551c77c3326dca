"""The peer's viewer page in a real headless Chromium: client version and verified flag.

A goop peer (``--no-p2p``) hosting its own rendezvous; a goop2-style
message is published there and must show in the viewer's table with the
client it says it runs and the rendezvous's verdict. Needs Debian's
chromium and the ``playwright`` package, like tests/test_browser.py.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from goop.identity import _from_seed
from goop.message import PresenceMessage
from goop.signing import sign, signing_key
from tests.procs import GoopProcess

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)",
                allow_module_level=True)
try:
    from playwright.sync_api import Browser, expect, sync_playwright
except ImportError as e:
    pytest.skip(f"playwright cannot be imported: {e}", allow_module_level=True)

TIMEOUT_MS = 10_000
G2 = "12D3KooWViewerGoop2PeerAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            chromium_sandbox=False,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"],
            timeout=30_000,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[GoopProcess]:
    proc = GoopProcess(
        ["--no-p2p", "--no-mdns", "--http-addr", "127.0.0.1:0", "--label", "viewer-peer",
         "--rendezvous-host", "--rendezvous-port", "0"],
        cwd=str(tmp_path),
    )
    try:
        yield proc
    finally:
        proc.kill()


def test_viewer_shows_client_version_and_verified(browser: Browser, peer: GoopProcess) -> None:
    """A goop2 peer's goopClientVersion and the server's verified flag are columns of
    its row; so is our own rendezvous's verdict on it."""
    rendezvous = peer.url()
    viewer = peer.wait_for_line(r"viewer listening on (http://\S+)").group(1)
    body = json.dumps({
        "type": "online", "peerId": G2, "content": "E", "goopClientVersion": "dev",
        "addrs": ["/ip4/10.0.0.5/tcp/4001"], "encryptionSupported": True,
    }).encode()
    req = urllib.request.Request(rendezvous + "/publish", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
    # A peer that signs (as goop peers do): its row says the signature was checked.
    signer = _from_seed(b"\x05" * 32, "")
    message = PresenceMessage("online", signer.peer_id, "S", ts=int(time.time() * 1000))
    message = replace(message, sig=sign(signing_key(signer.seed), message))
    req = urllib.request.Request(rendezvous + "/publish", data=message.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(viewer + "/")
        row = page.locator(f'#peers tr[data-peer-id="{G2}"]')
        expect(row).to_have_count(1, timeout=TIMEOUT_MS)
        headers = page.locator("thead th").all_text_contents()
        cells = row.locator("td")
        expect(cells.nth(headers.index("client"))).to_have_text("dev")
        expect(cells.nth(headers.index("verified"))).to_have_text("\u2713 yes")
        expect(cells.nth(headers.index("seen on"))).to_have_text("local")
        expect(cells.nth(headers.index("signed"))).to_have_text("unsigned")
        signed_row = page.locator(f'#peers tr[data-peer-id="{signer.peer_id}"]')
        expect(signed_row).to_have_count(1, timeout=TIMEOUT_MS)
        expect(signed_row.locator("td").nth(headers.index("signed"))).to_have_text(
            "\u2713 signature checked"
        )
    finally:
        context.close()
