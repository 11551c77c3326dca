"""WebSocket frames: the ones the server sends, and the common ones it reads.

Pure functions, no reactor. Outgoing: `text_frame` over Autobahn's
`PreparedMessage` (its broadcast helper): the exact bytes Autobahn's own
``sendMessage`` would write on a connection without compression, so batches
of them can be joined and written in one call (see `goop.rendezvous.fanout`),
and the two empty control frames the ping sweep writes.

Incoming: `simple_frames` reads the frames a presence socket receives nearly
all the time (a heartbeat: one small masked text frame; a pong) without
Autobahn's general frame machine, and stops at the first frame it does not
fully understand, which Autobahn then handles with every check RFC 6455 asks
for (fragments, pings, close, oversize, bad UTF-8, protocol errors).
"""

from __future__ import annotations

from typing import Final

from autobahn.websocket.protocol import PreparedMessage

TEXT: Final = 0x1
PONG: Final = 0xA
# Server to client, FIN, unmasked, no payload.
PING_FRAME: Final = b"\x89\x00"
PONG_FRAME: Final = b"\x8a\x00"

_FIN_TEXT: Final = 0x80 | TEXT
_FIN_PONG: Final = 0x80 | PONG


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame holding ``payload`` (UTF-8 JSON)."""
    frame: bytes = PreparedMessage(
        payload, isBinary=False, applyMask=False, doNotCompress=True
    ).payloadHybi
    return frame


def unmask(masked: bytes, key: bytes) -> bytes:
    """XOR ``masked`` with the 4-byte ``key`` repeated (RFC 6455 §5.3)."""
    n = len(masked)
    if not n:
        return b""
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(masked, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def simple_frames(data: bytes, limit: int) -> tuple[list[tuple[int, bytes]], int]:
    """The leading complete client frames of ``data`` that need no more than reading.

    Taken: a FIN, masked, unreserved text frame of at most ``limit`` bytes whose
    payload is valid UTF-8, and a FIN, masked pong of at most 125 bytes. Returns
    ``(opcode, unmasked payload)`` for each, and the offset of the first byte not
    taken: always a frame boundary, where a general parser carries on.
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    end = len(data)
    while end - pos >= 6:
        b0 = data[pos]
        b1 = data[pos + 1]
        if not b1 & 0x80:
            break  # unmasked: a protocol error, for the general parser to report
        n = b1 & 0x7F
        if b0 == _FIN_TEXT:
            if n == 127:
                break
            if n == 126:
                if end - pos < 8:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                if n < 126:
                    break  # not the shortest length encoding: an error to report
                head = pos + 8
            else:
                head = pos + 6
            if n > limit:
                break
        elif b0 == _FIN_PONG and n <= 125:
            head = pos + 6
        else:
            break
        stop = head + n
        if stop > end:
            break
        payload = unmask(data[head:stop], data[head - 4 : head])
        if b0 == _FIN_TEXT and not payload.isascii():
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break
        frames.append((b0 & 0x0F, payload))
        pos = stop
    return frames, pos
