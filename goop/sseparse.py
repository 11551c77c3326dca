"""Server-Sent Events reading: an incremental text/event-stream parser.

One job: turn the bytes of an event stream, delivered in arbitrary chunks,
into `SSEEvent` values exactly as the WHATWG HTML standard ("Interpreting an
event stream") says a browser's EventSource would. No I/O, no reactor, no
reconnection logic: the caller feeds bytes, gets events, and reads
`last_event_id` / `retry` when it reconnects. The writing side lives in
`goop.sse`.

Spec points worth knowing:

* CRLF, LF and CR all end a line; a CR ending one chunk and an LF starting the
  next are one line end.
* One UTF-8 BOM at the very start of the stream is dropped; anywhere else it
  is a U+FEFF character.
* Bytes are decoded as UTF-8 with U+FFFD replacement. Decoding each line on
  its own gives the same text as decoding the whole stream, because CR, LF and
  ":" are ASCII and never part of a multi-byte sequence.
* `last_event_id` is the spec's "last event ID string": an ``id`` field sets
  the buffer, and the buffer is copied to the string at every blank line
  (whether or not an event is dispatched). It is never reset by dispatch.
* An event not ended by a blank line when the stream ends is never dispatched;
  `close` just drops it.

Hostile servers are bounded by two caps: a line (without its line end) longer
than ``max_line_bytes`` and a data buffer larger than ``max_event_bytes``
raise `SSEProtocolError`; the parser is then unusable and the caller should
drop the connection. Memory held between feeds never exceeds those caps.

One deliberate departure: a ``retry`` value with more digits than Python will
convert to an int (``sys.get_int_max_str_digits``, 4300 by default, after
leading zeros) is ignored rather than set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NoReturn

__all__ = ["SSEEvent", "SSEParser", "SSEProtocolError"]

DEFAULT_MAX_LINE_BYTES: Final = 64 * 1024
DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_CR: Final = 0x0D
_LF: Final = 0x0A
_COLON: Final = 0x3A


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event, as an EventSource's MessageEvent would carry it."""

    type: str  # "message" unless an event: field said otherwise
    data: str
    last_event_id: str


class SSEProtocolError(ValueError):
    """The stream broke a size cap (or the parser already failed); str() says how."""


class SSEParser:
    """Incremental text/event-stream parser; feed it bytes, get `SSEEvent` lists."""

    __slots__ = (
        "_at_start",
        "_closed",
        "_comments",
        "_data",
        "_data_bytes",
        "_error",
        "_event_type",
        "_id_buffer",
        "_last_event_id",
        "_max_event",
        "_max_line",
        "_pending_cr",
        "_retry",
        "_tail",
    )

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, not {max_line_bytes}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, not {max_event_bytes}")
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        # Bytes of the current, not yet terminated line (at the stream start:
        # the first bytes, held until it is known whether they are a BOM).
        self._tail = bytearray()
        self._at_start = True
        # The previous chunk ended with CR: an LF opening the next one belongs to it.
        self._pending_cr = False
        self._data: list[str] = []  # data field values; joined with LF on dispatch
        self._data_bytes = 0  # UTF-8 size of the spec's data buffer
        self._event_type = ""
        self._id_buffer = ""
        self._last_event_id = ""
        self._retry: int | None = None
        self._comments = 0
        self._error: str | None = None
        self._closed = False

    @property
    def last_event_id(self) -> str:
        """The id to send as ``Last-Event-ID`` on reconnection ("" means none)."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The last valid ``retry`` value in milliseconds; None if never set."""
        return self._retry

    @property
    def comments(self) -> int:
        """How many comment lines have been seen (keep-alives prove liveness)."""
        return self._comments

    def close(self) -> None:
        """End of stream: drop any partial line and undispatched event.

        `last_event_id`, `retry` and `comments` stay readable; `feed` then raises.
        """
        self._closed = True
        self._tail = bytearray()
        self._reset_event()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse the next bytes of the stream; return the events they complete, in order."""
        if self._error is not None:
            raise SSEProtocolError(f"parser unusable after an earlier error: {self._error}")
        if self._closed:
            raise SSEProtocolError("feed() called after close()")
        if not chunk:
            return []
        if self._at_start:
            head = bytes(self._tail) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._tail = bytearray(head)  # maybe a BOM split across chunks
                return []
            self._at_start = False
            self._tail = bytearray()
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._pending_cr and chunk:
            self._pending_cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            # Still inside one line: check the cap before buffering anything.
            if len(self._tail) + len(chunk) > self._max_line:
                self._line_too_long(len(self._tail) + len(chunk))
            self._tail += chunk
            return []

        data = bytes(self._tail) + chunk if self._tail else chunk
        self._tail = bytearray()
        lines = data.splitlines()  # bytes.splitlines splits on CRLF, LF and CR only
        last = data[-1]
        if last == _CR:
            self._pending_cr = True
        elif last != _LF:
            tail = lines.pop()
            if len(tail) > self._max_line:
                self._line_too_long(len(tail))
            self._tail = bytearray(tail)

        events: list[SSEEvent] = []
        max_line = self._max_line
        for line in lines:
            if len(line) > max_line:
                self._line_too_long(len(line))
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            else:
                self._process_line(line)
        return events

    def _process_line(self, line: bytes) -> None:
        if line[0] == _COLON:
            self._comments += 1
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        # Comparing raw bytes is the same as comparing decoded names: only the
        # bytes b"data" decode to "data", and so on.
        if name == b"data":
            self._data_bytes += len(value) + 1
            if self._data_bytes > self._max_event:
                self._fail(
                    f"event data exceeds max_event_bytes={self._max_event}"
                    f" (at least {self._data_bytes} bytes)"
                )
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event_type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id_buffer = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
                try:
                    self._retry = int(value.lstrip(b"0") or b"0")
                except ValueError:  # more digits than int() accepts; see module doc
                    pass
        # Any other field name is ignored.

    def _dispatch(self) -> SSEEvent | None:
        self._last_event_id = self._id_buffer
        if not self._data:
            self._event_type = ""
            return None
        event = SSEEvent(
            type=self._event_type or "message",
            data="\n".join(self._data),
            last_event_id=self._last_event_id,
        )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._data = []
        self._data_bytes = 0
        self._event_type = ""

    def _line_too_long(self, size: int) -> NoReturn:
        self._fail(f"line exceeds max_line_bytes={self._max_line} (at least {size} bytes)")

    def _fail(self, message: str) -> NoReturn:
        self._error = message
        self._tail = bytearray()
        self._reset_event()
        raise SSEProtocolError(message)
