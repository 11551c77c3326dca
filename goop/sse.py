"""Server-Sent Events framing: the bytes a server writes for events and comments.

Pure functions, no I/O. The reading side (the incremental WHATWG parser)
lives in `goop.sseparse`.
"""

from __future__ import annotations

from typing import Final

OK_COMMENT: Final = b": ok\n\n"
PING_COMMENT: Final = b": ping\n\n"


def _lines(value: bytes) -> list[bytes]:
    # Any of CR, LF or CRLF ends a line in SSE, so a value holding one must be
    # split over several fields of the same name.
    return value.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def format_event(
    data: bytes, event_id: int | None = None, event: bytes | None = None
) -> bytes:
    """One event: optional ``id:`` and ``event:`` lines, ``data:`` lines, blank line."""
    parts: list[bytes] = []
    if event_id is not None:
        parts.append(b"id: %d\n" % event_id)
    if event is not None:
        if b"\n" in event or b"\r" in event:
            raise ValueError("event name may not contain a line break")
        parts.append(b"event: " + event + b"\n")
    for line in _lines(data):
        parts.append(b"data: " + line + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


def format_comment(text: bytes) -> bytes:
    """A comment block (ignored by every client); used for keep-alives."""
    return b"".join(b": " + line + b"\n" for line in _lines(text)) + b"\n"


def format_retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    if milliseconds < 0:
        raise ValueError("retry must be >= 0")
    return b"retry: %d\n\n" % milliseconds
