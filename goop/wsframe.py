"""WebSocket frames the server sends, made once and written to many sockets.

Pure functions over Autobahn's `PreparedMessage` (its broadcast helper): a
frame prepared here is the exact bytes Autobahn's own ``sendMessage`` would
write on a connection without compression, so batches of them can be joined
and written in one call (see `goop.rendezvous.fanout`).
"""

from __future__ import annotations

from autobahn.websocket.protocol import PreparedMessage


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame holding ``payload`` (UTF-8 JSON)."""
    frame: bytes = PreparedMessage(
        payload, isBinary=False, applyMask=False, doNotCompress=True
    ).payloadHybi
    return frame
