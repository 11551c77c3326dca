"""The dashboard at ``/`` in a real headless Chromium against a real goop process.

The page must follow ``/events`` live: peers published after it loaded appear
(and go away) without a reload, and their text is never parsed as HTML.
Needs Debian's chromium (``make test`` installs it) and the ``playwright``
package; the browser is never downloaded.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from tests.procs import GoopProcess

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)",
                allow_module_level=True)
try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError as e:
    pytest.skip(f"playwright cannot be imported: {e}", allow_module_level=True)

TIMEOUT_MS = 10_000
PEER = "12D3KooWBrowserPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
XSS = '<img src=x onerror="window.__xss=1">'
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # No --user-data-dir here: playwright refuses it in launch() and gives each
    # launch a fresh temporary profile of its own, removed on close.
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
            timeout=30_000,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    proc = GoopProcess(["--rendezvous-only", "--rendezvous-port", "0", "--no-mdns"],
                       cwd=str(tmp_path))
    try:
        yield proc.url()
    finally:
        proc.terminate()
        try:
            proc.wait_exit(5)
        except Exception:
            proc.kill()
            raise


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """The dashboard, loaded, live on /events, and marked so a reload would show."""
    context = browser.new_context()
    try:
        p = context.new_page()
        p.set_default_timeout(TIMEOUT_MS)
        p.goto(urljoin(server, "/"))
        expect(p.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
        p.evaluate("window.__marker = 1")
        yield p
    finally:
        context.close()


def publish(server: str, **message: Any) -> None:
    body = json.dumps(message).encode()
    req = urllib.request.Request(urljoin(server, "/publish"), data=body, method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204


def row(page: Page, peer_id: str) -> Locator:
    return page.locator(f'#peers tr[data-peer-id="{peer_id}"]')


def assert_not_reloaded(page: Page) -> None:
    # A reload or navigation would have wiped what the fixture set after load.
    assert page.evaluate("window.__marker") == 1, "the page reloaded or navigated"


class TestLiveDashboard:
    def test_peer_published_after_load_appears_without_reload(
        self, page: Page, server: str
    ) -> None:
        """A peer published after the page loaded shows up as a row, and the count is 1."""
        expect(page.locator("#peers tr")).to_have_count(0)
        publish(server, type="online", peerId=PEER, content="Alice's node")
        r = row(page, PEER)
        expect(r).to_have_count(1, timeout=TIMEOUT_MS)
        expect(r.locator("td").nth(0)).to_have_text(PEER)
        expect(r.locator("td").nth(1)).to_have_text("Alice's node")
        expect(page.locator("#count")).to_have_text("1")
        assert_not_reloaded(page)

    def test_offline_peer_row_disappears_without_reload(self, page: Page, server: str) -> None:
        """An offline event removes the peer's row live and the count drops to 0."""
        publish(server, type="online", peerId=PEER, content="Alice's node")
        expect(row(page, PEER)).to_have_count(1, timeout=TIMEOUT_MS)
        publish(server, type="offline", peerId=PEER)
        expect(row(page, PEER)).to_have_count(0, timeout=TIMEOUT_MS)
        expect(page.locator("#count")).to_have_text("0")
        assert_not_reloaded(page)

    def test_content_is_shown_as_text_not_html(self, page: Page, server: str) -> None:
        """Markup in a peer's content is shown literally and never runs."""
        publish(server, type="online", peerId=PEER, content=XSS)
        r = row(page, PEER)
        expect(r).to_have_count(1, timeout=TIMEOUT_MS)
        expect(r.locator("td").nth(1)).to_have_text(XSS)
        expect(page.locator("#peers img")).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert_not_reloaded(page)
