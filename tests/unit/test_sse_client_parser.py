"""The test suite's own SSE client parser and chunked decoder (they judge the server's bytes)."""

from __future__ import annotations

from tests.support.sse_client import SSEParser, _Dechunker, parse


def test_whatwg_field_rules() -> None:
    body = b": comment\nid: 1\nevent: e\ndata: a\ndata:b\ndata\nretry: 15\nunknown: x\n\n"
    (m,) = parse(body)
    assert (m.id, m.event, m.data, m.retry, m.comments) == ("1", "e", "a\nb\n", 15, (" comment",))
    assert m.raw == body


def test_line_endings_and_split_feeds() -> None:
    body = b"data: x\r\n\r\ndata: y\r\rdata: z\n\n"
    whole = [(m.data, m.raw) for m in parse(body)]
    parser = SSEParser()
    pieces: list = []
    for i in range(len(body)):  # one byte at a time, a CR at a chunk edge included
        pieces += parser.feed(body[i : i + 1])
    pieces += parser.feed(b"", final=True)
    assert [(m.data, m.raw) for m in pieces] == whole
    assert [d for d, _ in whole] == ["x", "y", "z"]


def test_retry_only_block_is_recorded_but_not_an_event() -> None:
    (m,) = parse(b"retry: 3000\n\n")
    assert m.retry == 3000 and not m.is_event


def test_invalid_retry_is_ignored_and_last_event_id_persists() -> None:
    a, b = parse(b"retry: 1.5\nid: 9\ndata: 1\n\ndata: 2\n\n")
    assert a.retry is None
    assert (b.id, b.last_event_id) == (None, "9")


def test_multibyte_utf8_split_across_feeds() -> None:
    data = "data: é漢\n\n".encode()
    parser = SSEParser()
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert [m.data for m in out] == ["é漢"]


def test_dechunker_incremental() -> None:
    wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    d = _Dechunker()
    out = b"".join(d.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"hello, world" and d.done
