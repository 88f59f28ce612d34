"""The DD frame codec: layout, CRC, incremental decoding, errors (SPEC-NOTES section 1)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnt.wire import (
    MAX_FRAME_SIZE,
    NO_PKI,
    ChecksumError,
    FrameDecoder,
    FramingError,
    InfoCode,
    Request,
    Response,
    WireError,
    decode_bcd,
    describe_code,
    encode_bcd,
    response_header,
)

USER = bytes(range(16))


def test_dd01_layout() -> None:
    frame = Request(0xDD01, USER, 0, NO_PKI, b"").encode()
    body = USER + b"\x00" + b"\xff\xff\xff\xff" + b"\x00"
    assert frame == b"\xdd\x01\x01\x00\x16" + body + struct.pack(">I", zlib.crc32(body))
    assert len(frame) == 5 + 22 + 4


def test_dd02_layout_literal_info() -> None:
    frame = Response(0xDD02, USER, 0x00, 0x00, NO_PKI, bytes.fromhex("BB10000000")).encode()
    body = USER + b"\x00\x00" + b"\xff" * 4 + b"\x05" + bytes.fromhex("bb10000000")
    assert frame[:5] == b"\xdd\x02\x01\x00" + bytes((23 + 5,))
    assert frame[5:-4] == body
    assert frame[-4:] == zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("request_header", "answer"),
    [(0xDD01, 0xDD02), (0xDD09, 0xDD10), (0xDD19, 0xDD20), (0xDD21, 0xDD22),
     (0xDD73, 0xDD74), (0xDD75, 0xDD76), (0xDD1A, 0xDD1B), (0xDD99, 0xDD9A)],
)
def test_response_header_follows_dd_numbering(request_header: int, answer: int) -> None:
    assert response_header(request_header) == answer


def test_info_codes_have_meanings() -> None:
    assert InfoCode(0xA2).meaning == "frame check code (CRC) wrong"
    assert describe_code(0xBB) == "BB (terminal not signed in)"
    assert describe_code(0x3C) == "0x3C (unknown code)"
    assert all(code.meaning for code in InfoCode)


def test_field_validation() -> None:
    with pytest.raises(ValueError):
        Request(0xDD01, b"short", 0, NO_PKI, b"")
    with pytest.raises(ValueError):
        Request(0xDD01, USER, 0, NO_PKI, bytes(256))
    with pytest.raises(ValueError):
        Request(0xAB01, USER, 0, NO_PKI, b"")
    with pytest.raises(ValueError):
        Response(0xDD02, USER, 0x100, 0, NO_PKI, b"")


def test_split_at_every_boundary_and_coalesced() -> None:
    frames = [Request(0xDD01, USER, 0, NO_PKI, b""), Request(0xDD03, USER, 1, 7, bytes(14))]
    stream = b"".join(f.encode() for f in frames)
    for cut in range(len(stream) + 1):
        d = FrameDecoder(Request)
        got = list(d.feed(stream[:cut])) + list(d.feed(stream[cut:]))
        assert got == frames
        assert d.buffered == 0
    d = FrameDecoder(Request)
    assert [f for b in stream for f in d.feed(bytes((b,)))] == frames


def test_bad_crc_is_a_checksum_error_with_address() -> None:
    frame = bytearray(Request(0xDD05, USER, 1, 42, b"abc").encode())
    frame[-1] ^= 1
    with pytest.raises(ChecksumError) as e:
        list(FrameDecoder(Request).feed(bytes(frame)))
    assert (e.value.header, e.value.user_id, e.value.pki) == (0xDD05, USER, 42)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: b"\xdc" + f[1:], "0xDD"),
        (lambda f: f[:2] + b"\x02" + f[3:], "version"),
        (lambda f: f[:3] + b"\x00\x05" + f[5:], "length 5"),
        (lambda f: f[:3] + b"\xff\xff" + f[5:], "length 65535"),
    ],
)
def test_framing_errors(mutate, message: str) -> None:
    frame = Request(0xDD01, USER, 0, NO_PKI, b"").encode()
    with pytest.raises(FramingError, match=message):
        list(FrameDecoder(Request).feed(mutate(frame)))


def test_framing_error_detected_from_first_byte() -> None:
    with pytest.raises(FramingError):
        list(FrameDecoder(Request).feed(b"G"))  # e.g. an HTTP client on the wrong port


def test_info_length_disagreeing_with_frame_length() -> None:
    body = USER + b"\x00" + b"\xff" * 4 + b"\x05" + b"ab"  # says 5, carries 2
    frame = struct.pack(">HBH", 0xDD01, 1, len(body)) + body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(FramingError, match="info length"):
        list(FrameDecoder(Request).feed(frame))


def test_response_length_range_differs_from_request() -> None:
    # A request-sized length of 22 is too short for a response.
    frame = Request(0xDD01, USER, 0, NO_PKI, b"").encode()
    with pytest.raises(FramingError):
        list(FrameDecoder(Response).feed(frame))


def test_decoder_is_spent_after_error() -> None:
    d = FrameDecoder(Request)
    with pytest.raises(FramingError):
        list(d.feed(b"\x00"))
    with pytest.raises(FramingError):
        list(d.feed(Request(0xDD01, USER, 0, NO_PKI, b"").encode()))


def test_never_buffers_more_than_one_frame() -> None:
    big = Request(0xDD05, USER, 1, 1, bytes(255)).encode()
    assert len(big) == MAX_FRAME_SIZE - 1
    d = FrameDecoder(Request)
    stream = big * 5
    for i in range(0, len(stream), 100):
        list(d.feed(stream[i : i + 100]))
        assert d.buffered < MAX_FRAME_SIZE


def test_bcd() -> None:
    assert encode_bcd("20261123000000000001", 10).hex() == "20261123000000000001"
    assert encode_bcd("42", 4) == b"\x00\x00\x00\x42"
    assert decode_bcd(b"\x12\x34") == "1234"
    with pytest.raises(ValueError):
        encode_bcd("12a", 2)
    with pytest.raises(ValueError):
        encode_bcd("123456", 2)
    with pytest.raises(ValueError):
        decode_bcd(b"\x1a")


# -- properties ---------------------------------------------------------------------------------

headers = st.integers(0, 0xFF).map(lambda b: 0xDD00 | b)
users = st.binary(min_size=16, max_size=16)
pkis = st.integers(0, 0xFFFFFFFF)
infos = st.binary(max_size=255)

requests = st.builds(Request, headers, users, st.integers(0, 255), pkis, infos)
responses = st.builds(Response, headers, users, st.integers(0, 255), st.integers(0, 255), pkis,
                      infos)


@given(st.lists(requests, min_size=1, max_size=5), st.data())
def test_request_round_trip_any_split(frames: list[Request], data: st.DataObject) -> None:
    stream = b"".join(f.encode() for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    d = FrameDecoder(Request)
    got: list[Request] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got.extend(d.feed(stream[last:cut]))
        last = cut
    assert got == frames


@given(responses)
def test_response_round_trip(frame: Response) -> None:
    assert list(FrameDecoder(Response).feed(frame.encode())) == [frame]


@settings(max_examples=300)
@given(st.binary(max_size=600), st.sampled_from([Request, Response]))
def test_random_streams_raise_only_wire_errors(stream: bytes, kind: type) -> None:
    d = FrameDecoder(kind)
    try:
        for i in range(0, len(stream), 37):
            list(d.feed(stream[i : i + 37]))
    except WireError:
        pass


@settings(max_examples=300)
@given(st.lists(requests, min_size=1, max_size=3), st.data())
def test_mutated_streams_raise_only_wire_errors(frames: list[Request], data: st.DataObject) -> None:
    stream = bytearray(b"".join(f.encode() for f in frames))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        out = list(FrameDecoder(Request).feed(bytes(stream)))
    except WireError:
        return
    assert all(isinstance(f, Request) for f in out)
