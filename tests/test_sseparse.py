"""Tests for goop.sseparse: the incremental WHATWG text/event-stream parser."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from goop.sse import OK_COMMENT, PING_COMMENT, format_comment, format_event, format_retry
from goop.sseparse import SSEEvent, SSEParser, SSEProtocolError

BOM = b"\xef\xbb\xbf"

Outcome = tuple[list[SSEEvent], str, int | None, int]


def parse(chunks: list[bytes], parser: SSEParser | None = None) -> Outcome:
    """Feed every chunk; return the events and the final id, retry and comment count."""
    p = SSEParser() if parser is None else parser
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(p.feed(chunk))
    return events, p.last_event_id, p.retry, p.comments


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Cut a stream at the given offsets (any order, repeats allowed: empty chunks)."""
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def reference(stream: bytes) -> Outcome:
    """The spec's algorithm written as literally as possible, on the whole decoded stream.

    Deliberately unlike the parser: decode everything first, then split with a
    regex, then interpret text lines.
    """
    if stream.startswith(BOM):
        stream = stream[len(BOM) :]
    lines = re.split("\r\n|\r|\n", stream.decode("utf-8", "replace"))
    lines.pop()  # what follows the last line end is not a line yet
    events: list[SSEEvent] = []
    data = event_type = id_buffer = last_id = ""
    retry: int | None = None
    comments = 0
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(SSEEvent(event_type or "message", data, last_id))
            data = event_type = ""
        elif line.startswith(":"):
            comments += 1
        else:
            if ":" in line:
                name, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
            else:
                name, value = line, ""
            if name == "event":
                event_type = value
            elif name == "data":
                data += value + "\n"
            elif name == "id":
                if "\0" not in value:
                    id_buffer = value
            elif name == "retry":
                if value and all(c in "0123456789" for c in value):
                    retry = int(value)
    return events, last_id, retry, comments


# --- strategies -------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10)
_value = st.one_of(
    _text,
    st.sampled_from(["", " ", "  x", "message", "0", "0042", "12a", "-5", "\x00", "1\x00"]),
    st.from_regex(r"[0-9]{1,7}", fullmatch=True),
    st.just("\u00e9\u20ac\U0001f600\ufeff"),
).map(str.encode)
_raw_value = st.binary(max_size=6)  # may be invalid UTF-8, may hold CR/LF
_name = st.sampled_from(
    [b"data", b"data", b"data", b"event", b"id", b"retry", b"Data", b"dat", b"datas", b"", b"x"]
)
_separator = st.sampled_from([b"", b":", b": ", b":  "])
_field = st.builds(
    lambda name, sep, value: name + sep + value if sep else name,
    _name,
    _separator,
    _value | _raw_value,
)
_comment = st.builds(lambda v: b":" + v, _value)
_line = st.one_of(_field, _field, _comment, st.just(b""), st.just(b""))
_ending = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def realistic_streams(draw: st.DrawFn) -> bytes:
    """Field, comment and blank lines with mixed line ends, maybe a BOM, maybe a partial tail."""
    parts = [draw(st.sampled_from([b"", b"", BOM, BOM + BOM, BOM[:2]]))]
    for line, end in draw(st.lists(st.tuples(_line, _ending), max_size=25)):
        parts += [line, end]
    parts.append(draw(st.one_of(st.just(b""), _line)))
    return b"".join(parts)


_atoms = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b":",
        b" ",
        b"data",
        b"id",
        b"event",
        b"retry",
        b"7",
        b"\x00",
        BOM,
        b"\xef",
        b"\xbb",
        b"\xe2\x82",
        b"\xac",
        b"\xf0\x9f\x98",
    ]
)
arbitrary_streams = st.one_of(
    st.binary(max_size=200),
    st.lists(_atoms | st.binary(max_size=3), max_size=60).map(b"".join),
)


@st.composite
def splits(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    """A stream and the same stream cut into chunks at arbitrary points."""
    stream = draw(streams)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=max(1, len(stream))))
    return stream, split_at(stream, cuts)


_event_ids = st.none() | st.integers(-(2**63), 2**63 - 1)
_event_names = st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_payloads = st.text(st.characters(codec="utf-8"))


def normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- properties -------------------------------------------------------------


class ChunkingPropertyTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(splits(realistic_streams()))
    def test_realistic_stream_parses_the_same_however_it_is_split(
        self, case: tuple[bytes, list[bytes]]
    ) -> None:
        """Chunk boundaries never change the events, last id, retry or comment count."""
        stream, chunks = case
        self.assertEqual(parse(chunks), parse([stream]))

    @settings(deadline=None)
    @given(splits(arbitrary_streams))
    def test_arbitrary_bytes_parse_the_same_however_split(
        self, case: tuple[bytes, list[bytes]]
    ) -> None:
        """Even on garbage input, chunk boundaries never change the outcome."""
        stream, chunks = case
        self.assertEqual(parse(chunks), parse([stream]))

    @settings(deadline=None)
    @given(realistic_streams())
    def test_realistic_stream_matches_literal_spec_reference(self, stream: bytes) -> None:
        """The parser agrees with a whole-stream, decode-first rendering of the spec."""
        self.assertEqual(parse([stream]), reference(stream))

    @settings(deadline=None)
    @given(arbitrary_streams)
    def test_arbitrary_bytes_match_literal_spec_reference(self, stream: bytes) -> None:
        """Per-line decoding gives the same text as decoding the whole stream at once."""
        self.assertEqual(parse([stream]), reference(stream))

    @settings(deadline=None)
    @given(realistic_streams())
    def test_byte_at_a_time_equals_all_at_once(self, stream: bytes) -> None:
        """The worst split, one byte per chunk, still parses like the whole stream."""
        chunks = [stream[i : i + 1] for i in range(len(stream))]
        self.assertEqual(parse(chunks), parse([stream]))


class FramingRoundTripTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(_payloads, _event_ids, _event_names)
    def test_format_event_round_trips_with_line_ends_normalized(
        self, text: str, event_id: int | None, name: str | None
    ) -> None:
        """format_event output parses to one event: LF-normalized data, right id and type."""
        wire = format_event(
            text.encode(), event_id=event_id, event=None if name is None else name.encode()
        )
        events, last_id, retry, comments = parse([wire])
        expected_id = "" if event_id is None else str(event_id)
        self.assertEqual(events, [SSEEvent(name or "message", normalized(text), expected_id)])
        self.assertEqual((last_id, retry, comments), (expected_id, None, 0))

    @settings(deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(_payloads, _event_ids, _event_names),
                _payloads.map(lambda t: t.encode()),
            ),
            max_size=8,
        ),
        st.data(),
    )
    def test_stream_of_formatted_events_and_comments_round_trips_when_chunked(
        self, items: list[tuple[str, int | None, str | None] | bytes], data: st.DataObject
    ) -> None:
        """Events and keep-alive comments, concatenated and re-chunked, give back the events."""
        wire: list[bytes] = []
        expected: list[SSEEvent] = []
        expected_comments = 0
        last_id = ""
        for item in items:
            if isinstance(item, bytes):
                wire.append(format_comment(item))
                expected_comments += len(normalized(item.decode()).split("\n"))
                continue
            text, event_id, name = item
            wire.append(
                format_event(text.encode(), event_id, None if name is None else name.encode())
            )
            if event_id is not None:
                last_id = str(event_id)
            expected.append(SSEEvent(name or "message", normalized(text), last_id))
        stream = b"".join(wire)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
        self.assertEqual(
            parse(split_at(stream, cuts)), (expected, last_id, None, expected_comments)
        )

    @settings(deadline=None)
    @given(_payloads)
    def test_format_comment_yields_no_events(self, text: str) -> None:
        """A comment block is counted, line by line, and never dispatches anything."""
        events, _, _, comments = parse([format_comment(text.encode())])
        self.assertEqual(events, [])
        self.assertEqual(comments, len(normalized(text).split("\n")))

    @settings(deadline=None)
    @given(st.integers(0, 2**64))
    def test_format_retry_sets_retry_without_events(self, ms: int) -> None:
        """format_retry output sets the reconnection time and dispatches nothing."""
        self.assertEqual(parse([format_retry(ms)]), ([], "", ms, 0))

    def test_keepalive_constants_are_comments(self) -> None:
        """OK_COMMENT and PING_COMMENT each count as one comment and dispatch nothing."""
        self.assertEqual(parse([OK_COMMENT, PING_COMMENT]), ([], "", None, 2))


# --- the WHATWG examples ----------------------------------------------------


def both_ways(stream: bytes) -> Outcome:
    """Parse whole and byte by byte; they must agree; return the outcome."""
    whole = parse([stream])
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == whole
    return whole


class SpecExampleTests(SynchronousTestCase):
    def test_stock_example_joins_data_lines_with_lf(self) -> None:
        """Three data lines then a blank line make one message "YHOO\\n+2\\n10"."""
        events, *_ = both_ways(b"data: YHOO\ndata: +2\ndata: 10\n\n")
        self.assertEqual(events, [SSEEvent("message", "YHOO\n+2\n10", "")])

    def test_four_block_example_sets_and_clears_last_event_id(self) -> None:
        """Comment block fires nothing; id: 1 then a bare id reset the id; one space stripped."""
        stream = (
            b": test stream\n\n"
            b"data: first event\nid: 1\n\n"
            b"data:second event\nid\n\n"
            b"data:  third event\n\n"
        )
        events, last_id, _, comments = both_ways(stream)
        self.assertEqual(
            events,
            [
                SSEEvent("message", "first event", "1"),
                SSEEvent("message", "second event", ""),
                SSEEvent("message", " third event", ""),
            ],
        )
        self.assertEqual((last_id, comments), ("", 1))

    def test_four_block_example_last_id_is_one_between_blocks(self) -> None:
        """After the second block the id to reconnect with is "1"."""
        p = SSEParser()
        p.feed(b": test stream\n\ndata: first event\nid: 1\n\n")
        self.assertEqual(p.last_event_id, "1")

    def test_final_block_without_blank_line_is_not_dispatched(self) -> None:
        """End of stream alone does not dispatch the last block."""
        p = SSEParser()
        self.assertEqual(p.feed(b"data:  third event\n"), [])
        p.close()
        self.assertEqual(p.last_event_id, "")

    def test_bare_data_lines_example_gives_empty_and_newline_events(self) -> None:
        """Bare `data` is an empty value; two give "\\n"; the unterminated block is lost."""
        events, *_ = both_ways(b"data\n\ndata\ndata\n\ndata:")
        self.assertEqual(events, [SSEEvent("message", "", ""), SSEEvent("message", "\n", "")])

    def test_space_after_colon_is_optional(self) -> None:
        """`data:test` and `data: test` give identical events."""
        events, *_ = both_ways(b"data:test\n\ndata: test\n\n")
        self.assertEqual(events, [SSEEvent("message", "test", "")] * 2)

    def test_event_field_sets_type_per_block(self) -> None:
        """The spec's add/remove example: each block carries its own event type."""
        events, *_ = both_ways(
            b"event: add\ndata: 73857293\n\n"
            b"event: remove\ndata: 2153\n\n"
            b"event: add\ndata: 113411\n\n"
        )
        self.assertEqual(
            [(e.type, e.data) for e in events],
            [("add", "73857293"), ("remove", "2153"), ("add", "113411")],
        )


# --- single behaviours ------------------------------------------------------


class BomTests(SynchronousTestCase):
    def test_leading_bom_is_skipped(self) -> None:
        """A BOM opening the stream is not part of the first field name."""
        self.assertEqual(parse([BOM + b"data: x\n\n"])[0], [SSEEvent("message", "x", "")])

    def test_leading_bom_split_across_chunks_is_skipped(self) -> None:
        """The BOM is recognised even when it arrives one byte per chunk."""
        chunks = [b"\xef", b"", b"\xbb", b"\xbf", b"data: x\n\n"]
        self.assertEqual(parse(chunks)[0], [SSEEvent("message", "x", "")])

    def test_only_one_bom_is_skipped(self) -> None:
        """A second BOM becomes U+FEFF in the field name, so the field is unknown."""
        self.assertEqual(parse([BOM + BOM + b"data: x\n\n"])[0], [])

    def test_bom_after_stream_start_is_kept(self) -> None:
        """A BOM inside a value is the character U+FEFF."""
        stream = b"data: a\n\n" + BOM + b"data: b\n\ndata: " + BOM + b"c\n\n"
        self.assertEqual(
            parse([stream])[0], [SSEEvent("message", "a", ""), SSEEvent("message", "\ufeffc", "")]
        )

    def test_partial_bom_at_start_is_not_stripped(self) -> None:
        """Two BOM bytes followed by something else stay in the stream (and mangle the name)."""
        self.assertEqual(parse([b"\xef\xbb", b"data: x\n\n"])[0], [])

    def test_stream_shorter_than_bom_then_closed_yields_nothing(self) -> None:
        """A lone BOM prefix and close() produce no events and no error."""
        p = SSEParser()
        self.assertEqual(p.feed(b"\xef\xbb"), [])
        p.close()


class LineEndTests(SynchronousTestCase):
    def test_cr_lf_and_crlf_all_end_lines(self) -> None:
        """Each of the three line ends separates fields and blank lines."""
        events, *_ = parse([b"data: a\rdata: b\r\ndata: c\n\r\n"])
        self.assertEqual(events, [SSEEvent("message", "a\nb\nc", "")])

    def test_cr_at_chunk_end_and_lf_at_next_start_are_one_line_end(self) -> None:
        """CR|LF split across chunks is one line end, not a line plus a blank line."""
        p = SSEParser()
        self.assertEqual(p.feed(b"data: a\r"), [])
        self.assertEqual(p.feed(b"\n"), [])
        self.assertEqual(p.feed(b"\r\n"), [SSEEvent("message", "a", "")])

    def test_cr_then_cr_in_next_chunk_is_a_blank_line(self) -> None:
        """A CR after a chunk-final CR is a second line end and dispatches."""
        p = SSEParser()
        p.feed(b"data: a\r")
        self.assertEqual(p.feed(b"\r"), [SSEEvent("message", "a", "")])

    def test_empty_chunk_between_cr_and_lf_keeps_them_together(self) -> None:
        """An empty feed does not forget the pending CR."""
        self.assertEqual(
            parse([b"data: a\r", b"", b"\ndata: b\n\n"])[0], [SSEEvent("message", "a\nb", "")]
        )

    def test_other_control_characters_do_not_end_lines(self) -> None:
        """Vertical tab, form feed, NEL and U+2028 are ordinary characters."""
        events, *_ = parse([b"data: a\x0bb\x0cc\xc2\x85d\xe2\x80\xa8e\n\n"])
        self.assertEqual(events, [SSEEvent("message", "a\x0bb\x0cc\x85d\u2028e", "")])

    def test_multibyte_character_split_across_chunks_decodes(self) -> None:
        """UTF-8 sequences cut mid-character decode once the line is complete."""
        stream = "data: \u00e9\u20ac\U0001f600\n\n".encode()
        events, *_ = parse([stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(events, [SSEEvent("message", "\u00e9\u20ac\U0001f600", "")])

    def test_invalid_utf8_is_replaced(self) -> None:
        """Undecodable bytes become U+FFFD instead of raising."""
        events, *_ = parse([b"data: a\xffb\xe2\x82\n\n"])
        self.assertEqual(events, [SSEEvent("message", "a\ufffdb\ufffd", "")])


class FieldTests(SynchronousTestCase):
    def test_several_events_in_one_chunk_come_back_in_order(self) -> None:
        """One feed returns every event it completes, first to last."""
        events = SSEParser().feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
        self.assertEqual([e.data for e in events], ["1", "2", "3"])

    def test_id_with_nul_is_ignored(self) -> None:
        """An id value containing U+0000 leaves the last event id unchanged."""
        events, last_id, *_ = parse([b"id: 1\n\nid: 2\x003\ndata: x\n\n"])
        self.assertEqual(events, [SSEEvent("message", "x", "1")])
        self.assertEqual(last_id, "1")

    def test_last_event_id_persists_across_events(self) -> None:
        """Dispatch does not reset the id; later events without id: carry it."""
        events, last_id, *_ = parse([b"id: 7\ndata: a\n\ndata: b\n\n"])
        self.assertEqual([e.last_event_id for e in events], ["7", "7"])
        self.assertEqual(last_id, "7")

    def test_id_takes_effect_at_the_blank_line_even_without_data(self) -> None:
        """An id is reported only once a blank line ends its block, data or not."""
        p = SSEParser()
        p.feed(b"id: 9\n")
        self.assertEqual(p.last_event_id, "")
        self.assertEqual(p.feed(b"\n"), [])
        self.assertEqual(p.last_event_id, "9")

    def test_id_of_undispatched_block_is_dropped_on_close(self) -> None:
        """An id in a block the stream never finished is not the reconnection id."""
        p = SSEParser()
        p.feed(b"id: 1\n\nid: 2\ndata: x\n")
        p.close()
        self.assertEqual(p.last_event_id, "1")

    def test_id_with_non_ascii_is_kept_as_text(self) -> None:
        """Any text without NUL, including non-ASCII, is a valid id."""
        self.assertEqual(parse(["id: \u00e9\n\n".encode()])[1], "\u00e9")

    def test_retry_sets_reconnection_time_from_ascii_digits(self) -> None:
        """`retry: 0042` sets 42 ms."""
        self.assertEqual(parse([b"retry: 0042\n"])[2], 42)

    def test_retry_with_non_digits_is_ignored(self) -> None:
        """Signs, decimals, letters, blanks, extra spaces and non-ASCII digits do not count."""
        values = [b"12a", b"-5", b"+5", b"1.5", b"", b" 7", b"7 ", "\u0663".encode(), b"1e3"]
        stream = b"retry: 1000\n" + b"".join(b"retry: " + v + b"\n" for v in values)
        self.assertEqual(parse([stream])[2], 1000)

    def test_retry_never_set_is_none(self) -> None:
        """Without a valid retry field the property is None."""
        self.assertIsNone(parse([b"data: x\n\nretry\n"])[2])

    def test_retry_with_more_digits_than_int_accepts_is_ignored(self) -> None:
        """An absurdly long digit string is ignored rather than crashing the parser."""
        stream = b"retry: 5\nretry: " + b"9" * 50_000 + b"\nretry: " + b"0" * 50_000 + b"6\n"
        self.assertEqual(parse([stream])[2], 6)

    def test_unknown_fields_are_ignored(self) -> None:
        """Field names match exactly: `Data`, `data ` and `foo` do nothing."""
        events, *_ = parse([b"foo: bar\nData: x\ndata : y\ndatas: w\ndata: z\n\n"])
        self.assertEqual(events, [SSEEvent("message", "z", "")])

    def test_only_one_space_after_colon_is_removed(self) -> None:
        """`data:  x` keeps one space; tabs are not removed."""
        events, *_ = parse([b"data:  x\n\ndata:\tx\n\n"])
        self.assertEqual([e.data for e in events], [" x", "\tx"])

    def test_colon_later_in_value_is_kept(self) -> None:
        """Only the first colon separates name from value."""
        self.assertEqual(parse([b"data: a: b:c\n\n"])[0][0].data, "a: b:c")

    def test_empty_event_type_means_message(self) -> None:
        """`event:` with an empty value leaves the type as "message"."""
        self.assertEqual(parse([b"event:\ndata: x\n\n"])[0][0].type, "message")

    def test_event_type_does_not_leak_into_next_block(self) -> None:
        """A block with an event type but no data is dropped with its type."""
        events, *_ = parse([b"event: add\n\ndata: x\n\nevent: a\nevent: b\ndata: y\n\n"])
        self.assertEqual([(e.type, e.data) for e in events], [("message", "x"), ("b", "y")])

    def test_comments_are_counted_and_ignored(self) -> None:
        """Comment lines, even inside an event, are counted and change nothing else."""
        events, _, _, comments = parse([b":\n: ping\ndata: a\n:data: b\ndata: c\n\n"])
        self.assertEqual(events, [SSEEvent("message", "a\nc", "")])
        self.assertEqual(comments, 3)

    def test_close_discards_incomplete_event_and_partial_line(self) -> None:
        """close() dispatches nothing and later feeds raise."""
        p = SSEParser()
        self.assertEqual(p.feed(b"data: x\ndata: y"), [])
        p.close()
        self.assertRaises(SSEProtocolError, p.feed, b"\n\n")


class SizeCapTests(SynchronousTestCase):
    def test_line_at_cap_is_accepted(self) -> None:
        """A line of exactly max_line_bytes (line end not counted) is fine."""
        events = SSEParser(max_line_bytes=10).feed(b"data: 1234\r\n\r\n")
        self.assertEqual(events, [SSEEvent("message", "1234", "")])

    def test_complete_line_over_cap_raises(self) -> None:
        """A terminated line one byte over the cap raises SSEProtocolError."""
        p = SSEParser(max_line_bytes=10)
        with self.assertRaises(SSEProtocolError) as caught:
            p.feed(b"data: 12345\n\n")
        self.assertIn("max_line_bytes=10", str(caught.exception))

    def test_unterminated_line_over_cap_raises_before_line_end(self) -> None:
        """The cap is checked while the line is still being buffered."""
        p = SSEParser(max_line_bytes=10)
        self.assertEqual(p.feed(b"data: 1234"), [])
        self.assertRaises(SSEProtocolError, p.feed, b"5")

    def test_huge_chunk_without_newline_raises(self) -> None:
        """A 10 MB chunk with no line end raises at once instead of being buffered."""
        p = SSEParser()
        self.assertRaises(SSEProtocolError, p.feed, b"x" * 10_000_000)

    def test_small_chunks_without_newline_stop_at_the_cap(self) -> None:
        """Buffering stops as soon as the cap is passed: the 65th KiB raises."""
        p = SSEParser()
        for _ in range(64):
            p.feed(b"x" * 1024)
        self.assertRaises(SSEProtocolError, p.feed, b"x")

    def test_event_cap_counts_data_buffer_including_line_feeds(self) -> None:
        """Two data values of 5 and 3 bytes fill a 10-byte buffer; one more LF overflows."""
        p = SSEParser(max_event_bytes=10)
        p.feed(b"data: 12345\ndata: 123\n")
        with self.assertRaises(SSEProtocolError) as caught:
            p.feed(b"data\n")
        self.assertIn("max_event_bytes=10", str(caught.exception))

    def test_event_cap_resets_after_dispatch(self) -> None:
        """Many events each under the cap never add up to an error."""
        p = SSEParser(max_event_bytes=10)
        events = p.feed(b"data: 123456789\n\n" * 100)
        self.assertEqual(len(events), 100)

    def test_parser_is_unusable_after_protocol_error(self) -> None:
        """After a cap error every later feed raises too, even of valid input."""
        p = SSEParser(max_line_bytes=4)
        self.assertRaises(SSEProtocolError, p.feed, b"data: x\n\n")
        with self.assertRaises(SSEProtocolError) as caught:
            p.feed(b"\n")
        self.assertIn("earlier error", str(caught.exception))

    def test_protocol_error_is_a_value_error(self) -> None:
        """Callers catching ValueError also catch SSEProtocolError."""
        self.assertTrue(issubclass(SSEProtocolError, ValueError))

    def test_non_positive_caps_are_rejected(self) -> None:
        """A cap below one byte is a programming error."""
        self.assertRaises(ValueError, SSEParser, max_line_bytes=0)
        self.assertRaises(ValueError, SSEParser, max_event_bytes=0)
