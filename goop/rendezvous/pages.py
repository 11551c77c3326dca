"""HTML for the rendezvous dashboard (``/``) and admin page (``/admin``).

Server-side rendering with every value escaped; the dashboard then keeps
itself current from ``/events`` (EventSource) without reloading.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from html import escape
from importlib import resources
from string import Template
from typing import Any, Final

from goop.message import PresenceMessage

_DASHBOARD = Template(
    resources.files("goop.rendezvous").joinpath("dashboard.html").read_text("utf-8")
)


def _json_for_script(value: object) -> str:
    # Safe inside <script>: no "</script>" or "<!--" can be formed.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# Rows the dashboard's HTML carries (the live stream brings the rest).
DASHBOARD_ROWS: Final = 100
# Rows the admin page shows; /peers.json pages through all of them.
ADMIN_ROWS: Final = 200


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def security_headers(request: Any, nonce: str) -> None:
    """What every HTML page sends: no framing, no sniffing, only its own script and style."""
    request.setHeader(
        b"content-security-policy",
        (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ).encode(),
    )
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")


def dashboard(
    peers: Sequence[PresenceMessage],
    subscribers: int,
    connect_urls: Sequence[str],
    nonce: str = "",
    total: int | None = None,
) -> bytes:
    if connect_urls:
        urls = "".join(f"<li><code>{escape(u)}</code></li>" for u in connect_urls)
        reach = f"<p>Peers elsewhere can set <code>rendezvous_wan</code> to:</p><ul>{urls}</ul>"
    else:
        reach = (
            "<p>This server listens on a loopback address only, so only this machine "
            "can reach it. Set <code>rendezvous_bind</code> to <code>0.0.0.0</code> "
            "to serve your LAN.</p>"
        )
    return _DASHBOARD.substitute(
        initial=_json_for_script([p.to_dict() for p in peers[:DASHBOARD_ROWS]]),
        count=len(peers) if total is None else total,
        nonce=nonce,
        subscribers=subscribers,
        reach=reach,
    ).encode("utf-8")


def _ago(now: float, then: float) -> str:
    seconds = max(0, int(now - then))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def admin(
    rows: Sequence[dict[str, Any]],
    logs: Sequence[dict[str, Any]],
    subscribers: int,
    now: float,
    nonce: str = "",
    total: int | None = None,
) -> bytes:
    total = len(rows) if total is None else total
    more = (
        f"<p>Showing the first {len(rows)} of {total} peers; "
        '<a href="/peers.json?offset=0&amp;limit=1000">/peers.json</a> pages through '
        "all.</p>"
        if total > len(rows) else ""
    )
    peer_rows = "".join(
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td></tr>".format(
            escape(r["peer_id"]),
            escape(r["type"]),
            escape(r["content"]),
            escape(r["email"]),
            _ago(now, r["last_seen"]),
            r["bytes_received"],
            r["bytes_sent"],
        )
        for r in rows
    ) or '<tr><td colspan="7">no peers online</td></tr>'
    log_rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            time.strftime("%H:%M:%S", time.localtime(line["time"] or 0)),
            escape(line["level"]),
            escape(line["text"]),
        )
        for line in reversed(logs)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>goop rendezvous admin</title>
<meta http-equiv="refresh" content="5">
<style nonce="{nonce}">body{{font:14px system-ui,sans-serif;margin:2em}}
table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}</style></head>
<body><h1>goop rendezvous: admin</h1>
<p>{total} peers online, {subscribers} event subscribers.
JSON: <a href="/peers.json">/peers.json</a>, <a href="/logs.json">/logs.json</a></p>
<h2>Peers</h2><table><tr><th>peer</th><th>type</th><th>content</th><th>email</th>
<th>last seen</th><th>bytes received</th><th>bytes sent</th></tr>{peer_rows}</table>{more}
<h2>Recent log</h2><table>{log_rows}</table></body></html>""".encode()
