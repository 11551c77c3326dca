"""`goop.wsframe.simple_frames`: the fast reader of heartbeats and pongs.

The reference is an independent, deliberately plain frame builder below (RFC
6455 §5.2 written out), and Autobahn's own client framing for the usual case.
"""

from __future__ import annotations

import os
import struct

from hypothesis import given
from hypothesis import strategies as st

from goop.wsframe import PONG, TEXT, simple_frames, unmask

LIMIT = 65536


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          key: bytes | None = b"\x01\x02\x03\x04", long16: bool = False) -> bytes:
    """A client frame (masked unless ``key`` is None), lengths in any legal encoding."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if key is not None else 0
    if n < 126 and not long16:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    if key is None:
        return head + payload
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


texts = st.text(max_size=300).map(lambda s: s.encode("utf-8"))
keys = st.binary(min_size=4, max_size=4)


@given(st.binary(max_size=2000), keys)
def test_unmask_is_xor_with_the_repeated_key(data: bytes, key: bytes) -> None:
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert unmask(masked, key) == data


@given(st.lists(st.tuples(st.sampled_from([TEXT, PONG]), texts, keys), max_size=8))
def test_every_simple_frame_is_read_back(items: list[tuple[int, bytes, bytes]]) -> None:
    items = [(op, p[:125] if op == PONG else p, k) for op, p, k in items]
    data = b"".join(frame(op, p, key=k) for op, p, k in items)
    frames, used = simple_frames(data, LIMIT)
    assert frames == [(op, p) for op, p, _ in items]
    assert used == len(data)


@given(texts, st.integers(min_value=0, max_value=40))
def test_an_incomplete_frame_is_left_whole(payload: bytes, cut: int) -> None:
    whole = frame(TEXT, payload)
    cut = min(cut, len(whole) - 1)
    data = frame(TEXT, b"{}") + whole[: len(whole) - 1 - cut]
    frames, used = simple_frames(data, LIMIT)
    assert frames == [(TEXT, b"{}")]
    assert used == len(frame(TEXT, b"{}"))


def test_frames_for_the_general_parser_stop_the_fast_one_at_their_start() -> None:
    """Each of these, after one heartbeat, is left (with what follows) for Autobahn."""
    first = frame(TEXT, b'{"type":"update"}')
    tail = frame(TEXT, b"{}")
    for other in [
        frame(TEXT, b"part", fin=False),  # a fragment
        frame(0x0, b"more"),  # a continuation
        frame(0x2, b"\x00\x01"),  # binary
        frame(0x9, b"are you there"),  # ping: needs an answer
        frame(0x8, b"\x03\xe8"),  # close
        frame(TEXT, b"{}", rsv=4),  # compressed / reserved bits
        frame(TEXT, b"{}", key=None),  # unmasked from a client
        frame(TEXT, b"\xff\xfe{}"),  # not UTF-8: 1007 is Autobahn's to send
        frame(TEXT, b"x" * (LIMIT + 1)),  # over the cap: 1009
        frame(TEXT, b"{}", long16=True),  # not the shortest length encoding
        frame(PONG, b"p" * 126, long16=True),  # control frame over 125 bytes
    ]:
        frames, used = simple_frames(first + other + tail, LIMIT)
        assert frames == [(TEXT, b'{"type":"update"}')], other[:2]
        assert used == len(first)


def test_sixteen_bit_lengths_up_to_the_cap() -> None:
    """126..65535 bytes are read here; longer ones (64-bit lengths) go to Autobahn."""
    data = frame(TEXT, b"x" * 126) + frame(TEXT, b"a" * 65535)
    frames, used = simple_frames(data, LIMIT)
    assert [len(p) for _, p in frames] == [126, 65535]
    assert used == len(data)
    assert simple_frames(data, 65534) == ([(TEXT, b"x" * 126)], len(frame(TEXT, b"x" * 126)))
    assert simple_frames(frame(TEXT, b"a" * LIMIT), LIMIT) == ([], 0)


def test_non_ascii_utf8_is_taken() -> None:
    payload = '{"content":"h\u00e9llo \u2603 \U0001f600"}'.encode()
    assert simple_frames(frame(TEXT, payload, key=os.urandom(4)), LIMIT)[0] == [(TEXT, payload)]


def test_matches_autobahns_own_client_framing() -> None:
    """The bytes Autobahn's client would put on the wire for a message read back."""
    from autobahn.websocket.protocol import PreparedMessage

    payload = b'{"type":"update","peerId":"12D3KooWx","content":"hi"}'
    wire = PreparedMessage(payload, isBinary=False, applyMask=True, doNotCompress=True).payloadHybi
    assert simple_frames(wire, LIMIT) == ([(TEXT, payload)], len(wire))
