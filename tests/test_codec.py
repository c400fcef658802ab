"""Codec and frame decoder: round trips, and fuzzing with hostile bytes.

Contract under test: `decode_message` and `FrameDecoder` either produce a
message/frame or raise `ProtocolError` (its subclass `FrameTooLarge`
included), whatever bytes they are fed, whole or split at random points.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from message_strategies import for_struct, random_instance
from prismfs.errors import FrameTooLarge, ProtocolError
from prismfs.wire import messages
from prismfs.wire.codec import Message, decode_message, encode_message, registered_messages
from prismfs.wire.frames import (
    HEAD_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    FrameLimits,
    encode_frame,
)

FUZZ = settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
SPLITS = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))

from prismfs.meta import commands as meta_commands  # noqa: E402,F401 - registers the meta family
from prismfs.node import consensus_messages  # noqa: E402,F401 - registers the consensus family
from prismfs.raft import messages as raft_messages  # noqa: E402,F401 - registers the raft family
from prismfs.raft import state_machine  # noqa: E402,F401 - registers ClientCommand

CORE_FAMILIES = ("handshake", "control", "node", "raft", "consensus", "meta")


def _family(name: str) -> list[type[Message]]:
    return [cls for cls in registered_messages().values() if cls.family == name]


def _instances(family: str) -> st.SearchStrategy[Message]:
    return st.one_of([for_struct(cls) for cls in _family(family)])


def test_every_core_family_has_messages() -> None:
    for family in CORE_FAMILIES:
        assert _family(family), family
    tags = registered_messages()
    for name in (
        "Hello",
        "AuthProof",
        "AuthOk",
        "ErrorReply",
        "Cancel",
        "Ping",
        "Pong",
        "Echo",
        "EchoReply",
    ):
        assert name in tags


@pytest.mark.parametrize("family", CORE_FAMILIES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_trip_every_message_type(family: str, data: st.DataObject) -> None:
    message = data.draw(_instances(family))
    decoded = decode_message(encode_message(message))
    assert decoded == message
    assert type(decoded) is type(message)


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        result = decode_message(data)
    except ProtocolError:
        return
    assert isinstance(result, Message)


_SEED_POOLS: dict[str, list[bytes]] = {}


def _seed_pool(family: str) -> list[bytes]:
    """Valid encodings of every message of a family, made once (cheap to draw from)."""
    if family not in _SEED_POOLS:
        rng = random.Random(family)
        _SEED_POOLS[family] = [
            encode_message(random_instance(cls, rng)) for cls in _family(family) for _ in range(20)
        ]
    return _SEED_POOLS[family]


@st.composite
def _mutated(draw: st.DrawFn, family: str) -> bytes:
    """A valid encoding of the family with bytes flipped, cut or inserted."""
    raw = bytearray(draw(st.sampled_from(_seed_pool(family))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= draw(st.integers(1, 255))
        elif op == "cut" and raw:
            del raw[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[pos:]
    return bytes(raw)


@pytest.mark.parametrize("family", CORE_FAMILIES)
@FUZZ
@given(data=st.data())
def test_fuzz_decode_message_family(family: str, data: st.DataObject) -> None:
    """5,000 hostile byte strings per family, fed whole and in random splits."""
    blob = data.draw(st.one_of(st.binary(max_size=256), _mutated(family)))
    _decode_or_protocol_error(blob)
    # The same bytes as a frame header, and as a raw stream, split at random.
    cuts = data.draw(st.lists(st.integers(0, 1024), max_size=6))
    framed = encode_frame(FrameKind.REQUEST, 1, blob, blob[:16])
    for stream in (framed, blob):
        decoder = FrameDecoder(FrameLimits(max_header=1024, max_payload=1024))
        try:
            for frame in _feed_in_splits(decoder, stream, cuts):
                _decode_or_protocol_error(frame.header)
        except ProtocolError:
            pass


@FUZZ
@given(blob=st.binary(max_size=512))
def test_fuzz_decode_message_random_bytes(blob: bytes) -> None:
    _decode_or_protocol_error(blob)


def _feed_in_splits(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        decoder.feed(stream[a:b])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


@st.composite
def _frame_streams(draw: st.DrawFn) -> tuple[bytes, list[Frame]]:
    frames = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(list(FrameKind)))
        rid = draw(st.integers(0, 2**64 - 1))
        header = draw(st.sampled_from(_seed_pool(draw(st.sampled_from(CORE_FAMILIES)))))
        payload = draw(st.binary(max_size=3000))
        frames.append(Frame(kind, rid, header, payload))
    stream = b"".join(encode_frame(f.kind, f.request_id, f.header, f.payload) for f in frames)
    return stream, frames


@SPLITS
@given(case=_frame_streams(), cuts=st.lists(st.integers(0, 100_000), max_size=12))
def test_frames_survive_any_split(case: tuple[bytes, list[Frame]], cuts: list[int]) -> None:
    stream, expected = case
    got = _feed_in_splits(FrameDecoder(), stream, cuts)
    assert [(f.kind, f.request_id, f.header, bytes(f.payload)) for f in got] == [
        (f.kind, f.request_id, f.header, bytes(f.payload)) for f in expected
    ]
    for frame in got:
        decode_message(frame.header)


@SPLITS
@given(
    case=_frame_streams(),
    noise=st.binary(min_size=1, max_size=64),
    where=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 100_000), max_size=8),
)
def test_fuzz_frame_decoder_corrupted_streams(
    case: tuple[bytes, list[Frame]], noise: bytes, where: int, cuts: list[int]
) -> None:
    stream, _ = case
    pos = where % (len(stream) + 1)
    corrupted = stream[:pos] + noise + stream[pos:]
    decoder = FrameDecoder(FrameLimits(max_header=4096, max_payload=8192))
    try:
        for frame in _feed_in_splits(decoder, corrupted, cuts):
            assert isinstance(frame.kind, FrameKind)
            _decode_or_protocol_error(frame.header)
    except ProtocolError:
        pass


@FUZZ
@given(blob=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_fuzz_frame_decoder_random_bytes(blob: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(FrameLimits(max_header=1024, max_payload=1024))
    with contextlib.suppress(ProtocolError):
        _feed_in_splits(decoder, blob, cuts)


def test_oversize_length_is_refused_before_allocating() -> None:
    decoder = FrameDecoder(FrameLimits(max_header=100, max_payload=1000))
    decoder.feed(struct.pack(">I", 10_000_000))
    with pytest.raises(FrameTooLarge, match="exceeds the limit"):
        decoder.next_frame()


def test_wrong_version_and_kind_are_refused() -> None:
    good = encode_frame(FrameKind.REQUEST, 1, encode_message(messages.Ping()))
    bad_version = good[:4] + b"\x09" + good[5:]
    bad_kind = good[:5] + b"\x63" + good[6:]
    for blob, match in (
        (bad_version, "unsupported protocol version 9"),
        (bad_kind, "unknown frame kind 99"),
    ):
        decoder = FrameDecoder()
        decoder.feed(blob)
        with pytest.raises(ProtocolError, match=match):
            decoder.next_frame()


def test_header_longer_than_frame_is_refused() -> None:
    blob = struct.pack(">IBBQI", 14, 1, int(FrameKind.REQUEST), 1, 100)
    decoder = FrameDecoder()
    decoder.feed(blob)
    with pytest.raises(ProtocolError, match="bad header length"):
        decoder.next_frame()


def test_payload_view_receives_without_feed_copy() -> None:
    payload = bytes(range(256)) * 4096
    blob = encode_frame(FrameKind.RESPONSE, 5, encode_message(messages.Ping()), payload)
    decoder = FrameDecoder()
    decoder.feed(blob[: HEAD_SIZE + 10])
    assert decoder.next_frame() is None
    received = 0
    while (view := decoder.payload_view()) is not None:
        chunk = blob[HEAD_SIZE + 10 + received :][: min(len(view), 50_000)]
        view[: len(chunk)] = chunk
        decoder.payload_received(len(chunk))
        received += len(chunk)
    frame = decoder.next_frame()
    assert frame is not None and bytes(frame.payload) == payload
    assert decoder.at_boundary


def test_eof_boundary_tracking() -> None:
    decoder = FrameDecoder()
    assert decoder.at_boundary
    blob = encode_frame(FrameKind.REQUEST, 1, encode_message(messages.Ping()), b"abc")
    decoder.feed(blob[:-1])
    assert decoder.next_frame() is None and not decoder.at_boundary
    decoder.feed(blob[-1:])
    assert decoder.next_frame() is not None and decoder.at_boundary


def test_wanted_stops_at_the_end_of_the_header() -> None:
    header = encode_message(messages.Echo(mode="sink"))
    blob = encode_frame(FrameKind.REQUEST, 1, header, bytes(1 << 20))
    decoder = FrameDecoder()
    decoder.feed(blob[:10])
    assert decoder.wanted == HEAD_SIZE - 10
    decoder.feed(blob[10:HEAD_SIZE])
    # The head says how long the header is; the 1 MiB payload is not asked for yet.
    assert decoder.wanted == len(header)
    decoder.feed(blob[HEAD_SIZE : HEAD_SIZE + len(header)])
    assert decoder.next_frame() is None
    assert decoder.wanted == 1 << 20
    assert decoder.payload_view() is not None
