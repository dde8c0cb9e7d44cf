"""Checks codegen/rrgen/protocol.py, the Python oracle of the serial protocol: COBS against
hand-encoded vectors and in seeded round trips, CRC-32 known values, and the byte layout of
every packet type.

Run: cd codegen && python -m pytest ../tests/test_protocol.py
"""

import random
import struct

import pytest

from rrgen import protocol
from rrgen.protocol import (Error, Info, ProtocolError, Ready, SolveRequest, SolveResult,
                            Trace, cobs_decode, cobs_encode)

RUN_254 = bytes(range(1, 255))   # 254 non-zero bytes: exactly one full block
RUN_255 = bytes(range(1, 256))   # 255 non-zero bytes: a full block and one more

# (data, encoding) pairs worked out by hand from the COBS rules.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (RUN_254, b"\xff" + RUN_254),
    (RUN_255, b"\xff" + RUN_254 + b"\x02\xff"),
    (b"\x00" + RUN_254, b"\x01\xff" + RUN_254),
    (RUN_254 + b"\x00", b"\xff" + RUN_254 + b"\x01\x01"),
    (RUN_254 + RUN_254, b"\xff" + RUN_254 + b"\xff" + RUN_254),
]


@pytest.mark.parametrize("data, encoded", COBS_VECTORS)
def test_cobs_encode_matches_hand_vectors(data, encoded):
    assert cobs_encode(data) == encoded


@pytest.mark.parametrize("data, encoded", COBS_VECTORS)
def test_cobs_decode_matches_hand_vectors(data, encoded):
    assert cobs_decode(encoded) == data


def test_cobs_round_trips_seeded_data():
    rng = random.Random(1234)
    lengths = list(range(0, 40)) + [253, 254, 255, 256, 507, 508, 509, 600, 2000]
    for length in lengths:
        for zero_share in (0.0, 0.05, 0.5, 1.0):
            data = bytes(0 if rng.random() < zero_share else rng.randrange(1, 256)
                         for _ in range(length))
            encoded = cobs_encode(data)
            assert 0 not in encoded, (length, zero_share)
            assert len(encoded) <= length + length // 254 + 1, (length, zero_share)
            assert cobs_decode(encoded) == data, (length, zero_share)


def test_cobs_decode_accepts_empty_block_after_full_block():
    assert cobs_decode(b"\xff" + RUN_254 + b"\x01") == RUN_254


@pytest.mark.parametrize("encoded", [b"\x05\x11\x22", b"\x03\x11\x00", b"\x00", b"\xff\x01"])
def test_cobs_decode_rejects_invalid_input(encoded):
    with pytest.raises(ProtocolError, match="invalid COBS"):
        cobs_decode(encoded)


def test_crc32_matches_known_values():
    assert protocol.crc32(b"") == 0
    assert protocol.crc32(b"123456789") == 0xCBF43926
    assert protocol.crc32(b"\x00") == 0xD202EF8D


def test_pack_packet_layout():
    packet = protocol.pack_packet(protocol.INFO, 0x1234)
    assert packet[:3] == b"\x01\x34\x12"
    assert packet[3:] == struct.pack("<I", protocol.crc32(b"\x01\x34\x12"))
    assert len(packet) == protocol.MIN_PACKET_BYTES


def test_unpack_packet_round_trip():
    packet = protocol.unpack_packet(protocol.pack_packet(0x02, 0xBEEF, b"abc"))
    assert packet.type == 0x02
    assert packet.request_id == 0xBEEF
    assert packet.body == b"abc"


def test_unpack_packet_rejects_bad_crc():
    packet = bytearray(protocol.pack_packet(0x01, 7, b"xyz"))
    packet[-1] ^= 0x01
    with pytest.raises(ProtocolError, match="bad CRC"):
        protocol.unpack_packet(bytes(packet))


def test_unpack_packet_rejects_short_packet():
    with pytest.raises(ProtocolError, match="shorter than the minimum 7"):
        protocol.unpack_packet(b"\x01\x00\x00\x00\x00\x00")


def test_pack_packet_rejects_out_of_range_id():
    with pytest.raises(ValueError, match="request id 65536"):
        protocol.pack_packet(0x01, 0x10000)


def test_solve_request_body_layout():
    request = SolveRequest(bytes([1, 2, 3]), puzzle_id=0x01020304, max_steps=5,
                           flags=protocol.FLAG_TRACE | protocol.FLAG_HALT)
    assert request.pack_body() == b"\x03\x05\x04\x03\x02\x01\x03\x00\x01\x02\x03"
    assert SolveRequest.unpack_body(request.pack_body()) == request


def test_solve_request_rejects_length_mismatch():
    body = SolveRequest(bytes(5)).pack_body()[:-1]
    with pytest.raises(ProtocolError, match="does not match n_tokens=5"):
        SolveRequest.unpack_body(body)


def test_info_body_layout():
    info = Info(1, 0xA1B2C3D4, 11, 81, 97, 64, 4, 3, 6, 2, 16, 123456, 1, 25_000_000, "m")
    body = info.pack_body()
    assert len(body) == 30 + 1
    assert body[:5] == b"\x01\xd4\xc3\xb2\xa1"
    assert body[-5:] == struct.pack("<I", 25_000_000) + b"m"
    assert Info.unpack_body(body) == info


def test_solve_result_body_layout():
    result = SolveResult(3, True, 0x11223344, -2, bytes([9, 8]))
    body = result.pack_body()
    assert body == b"\x03\x01\x44\x33\x22\x11\xfe\xff\x02\x00\x09\x08"
    assert SolveResult.unpack_body(body) == result


def test_solve_result_saturates_q_halt():
    body = SolveResult(1, False, 0, 100_000, b"").pack_body()
    assert SolveResult.unpack_body(body).q_halt == 32767


def test_trace_body_layout():
    trace = Trace(2, -300, bytes([4, 5]), bytes([1, 0xFF, 0]), bytes([0x80, 2, 3]))
    body = trace.pack_body()
    assert body[:5] == b"\x02\xd4\xfe\x02\x00"
    assert body[5:7] == b"\x04\x05"
    assert body[7:11] == struct.pack("<I", 3)
    assert body[11:] == bytes([1, 0xFF, 0, 0x80, 2, 3])
    assert Trace.unpack_body(body) == trace


def test_trace_rejects_length_mismatch():
    body = Trace(1, 0, b"\x01", b"\x01\x02", b"\x03\x04").pack_body() + b"\x00"
    with pytest.raises(ProtocolError, match="carry_bytes=2"):
        Trace.unpack_body(body)


def test_error_and_ready_round_trip():
    error = Error(protocol.ERR_INVALID_TOKEN, 17, "token id outside [0, vocab_size)")
    assert Error.unpack_body(error.pack_body()) == error
    assert error.code_name == "invalid token"
    ready = Ready(1, "sudoku-h64")
    assert Ready.unpack_body(ready.pack_body()) == ready


def test_parse_reply_rejects_request_type():
    packet = protocol.unpack_packet(protocol.pack_packet(protocol.SOLVE, 1, b""))
    with pytest.raises(ProtocolError, match="unexpected packet type 0x02"):
        protocol.parse_reply(packet)


def test_encode_message_frames_with_one_delimiter():
    frame = protocol.encode_message(Ready(1, "x"), 0)
    assert frame.endswith(b"\x00")
    assert frame.count(0) == 1
    packet = protocol.unpack_packet(cobs_decode(frame[:-1]))
    assert protocol.parse_reply(packet) == Ready(1, "x")
