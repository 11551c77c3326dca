"""The dashboard at ``/`` in a real headless Chromium against a real goop process.

The page must follow ``/events`` live: peers published after it loaded appear
(and go away) without a reload, and their text is never parsed as HTML.
Needs Debian's chromium (``make test`` installs it) and the ``playwright``
package; the browser is never downloaded.
"""

from __future__ import annotations

import json
import os
import re
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


# Screenshots: $GOOP_TEST_ARTIFACTS, else test-artifacts/ beside tests/ (git-ignored).
ARTIFACTS = Path(
    os.environ.get("GOOP_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def signed_message(content: str) -> dict[str, Any]:
    import time
    from dataclasses import replace

    from goop.identity import _from_seed
    from goop.message import PresenceMessage
    from goop.signing import sign, signing_key

    me = _from_seed(b"\x08" * 32, "")
    m = PresenceMessage("online", me.peer_id, content, ts=int(time.time() * 1000),
                        goop_client_version="goop/0.1")
    return replace(m, sig=sign(signing_key(me.seed), m)).to_dict()


class TestOperatorsDashboard:
    def test_chart_rates_watchers_and_live_rows(self, page: Page, server: str) -> None:
        """The hour's chart, publishes/s and events/s, the watcher count (this page
        included), and per peer: client, transport, a ticking "last seen", and a
        signed badge for a peer that signs. Screenshots go to test-artifacts/."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        signed = signed_message("signed peer")
        publish(server, **signed)
        publish(server, type="online", peerId=PEER, content="goop2 peer", goopClientVersion="dev",
                addrs=["/ip4/10.0.0.5/tcp/4001"])
        headers = page.locator("thead th").all_text_contents()
        r = row(page, PEER)
        expect(r).to_have_count(1, timeout=TIMEOUT_MS)
        cells = r.locator("td")
        expect(cells.nth(headers.index("client"))).to_have_text("dev")
        expect(cells.nth(headers.index("via"))).to_have_text("HTTP", timeout=TIMEOUT_MS)
        ago = cells.nth(headers.index("last seen"))
        expect(ago).to_have_text(re.compile(r"^\d+ s ago$"), timeout=TIMEOUT_MS)
        first = int(ago.inner_text().split()[0])
        expect(ago).to_have_text(re.compile(rf"^(?!{first} )\d+ s ago$"), timeout=5_000)  # ticks
        expect(cells.nth(headers.index("proof"))).to_have_text("verified")
        s = row(page, signed["peerId"]).locator("td")
        expect(s.nth(headers.index("proof"))).to_contain_text("signed \u2713")
        expect(s.nth(headers.index("client"))).to_have_text("goop/0.1")
        # This page's own stream is a watcher; a second page makes two.
        expect(page.locator("#watchers")).to_have_text("1", timeout=TIMEOUT_MS)
        other = page.context.new_page()
        other.goto(urljoin(server, "/"))
        expect(page.locator("#watchers")).to_have_text("2", timeout=TIMEOUT_MS)
        other.close()
        # Rates come from two polls; the chart has the first minute's point.
        expect(page.locator("#pubrate")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=TIMEOUT_MS)
        expect(page.locator("#evrate")).to_have_text(re.compile(r"^\d+\.\d$"))
        expect(page.locator("#chart polyline")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 1000
        assert_not_reloaded(page)
