"""Peer-supplied text made safe for a log line.

A peer ID or a content line comes from whoever posted it. Written raw, a
``\\r`` rewrites the line on a terminal, ANSI and OSC escape sequences
recolour it, retitle the window or hide what follows. `safe` shows every
control character (C0, DEL, C1) and the Unicode line and bidirectional
controls as a visible escape (``\\x1b``, ``\\u202e``), and cuts long text.
"""

from __future__ import annotations

import re
from typing import Final

MAX_LOGGED: Final = 200

# C0 controls, DEL, C1 controls, line/paragraph separators, bidi controls.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str, limit: int = MAX_LOGGED, quote: bool = False) -> str:
    """``text`` with control characters escaped, at most ``limit`` characters of it."""
    cut = text[:limit]
    shown = _UNSAFE.sub(_escape, cut.replace("\\", "\\\\"))
    if len(text) > limit:
        shown += f"...({len(text)} chars)"
    return f"'{shown}'" if quote else shown
