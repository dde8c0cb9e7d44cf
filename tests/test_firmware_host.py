"""Checks the firmware's protocol handler (firmware/src) built for the host with the system
gcc (-Wall -Wextra -Werror -O2) around the fake model fixture, driven through Client over
the process's pipes: READY, INFO, SOLVE, TRACE, then malformed input of every kind. Each
malformed frame must get the documented ERROR code, and a valid SOLVE must still succeed
after it.

Run: cd codegen && python -m pytest ../tests/test_firmware_host.py
"""

import random
import struct

import pytest

from fixtures import fake_model_oracle as fake
from rrgen import protocol, toolchain
from rrgen.boards import REPO_ROOT, load_board
from rrgen.client import Client, DeviceError, ProcessPort
from rrgen.protocol import Error, SolveRequest

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fake_model.c"

# Longest encoded frame the handler accepts for seq_len 81: a SOLVE of 7 + 8 + 81 bytes
# plus one COBS code byte (RR_COBS_MAX_ENCODED in rr_protocol.h).
RX_LIMIT = 7 + 8 + fake.SEQ_LEN + 1


@pytest.fixture(scope="module")
def executable(tmp_path_factory):
    board = load_board("host")
    sources = toolchain.firmware_sources(board) + [FIXTURE]
    out_dir = tmp_path_factory.mktemp("host_build")
    result = toolchain.compile_and_link(board, sources, [toolchain.FIRMWARE_INCLUDE_DIR],
                                        out_dir, "rr_host")
    return result["elf"]


@pytest.fixture
def device(executable):
    port = ProcessPort(executable)
    client = Client(port, timeout=10.0)
    client.ready = client.wait_ready()
    yield client
    assert port.close() == 0


def solve_frame(request_id, tokens, puzzle_id=0, max_steps=0, flags=0):
    body = SolveRequest(bytes(tokens), puzzle_id, max_steps, flags).pack_body()
    return protocol.pack_packet(protocol.SOLVE, request_id, body)


def read_error(client) -> tuple[int, Error]:
    packet = client.read_packet()
    assert packet is not None, "no reply to the malformed frame"
    assert packet.type == protocol.ERROR, f"expected ERROR, got {packet.type_name}"
    return packet.request_id, Error.unpack_body(packet.body)


def assert_solve_still_works(client):
    tokens = fake.puzzle_tokens(3)
    result, traces = client.solve(tokens, max_steps=1)
    assert result.steps_used == 1
    assert result.tokens == fake.expected_tokens(tokens, 0, 1)
    assert traces == []


def test_ready_names_fixture(device):
    assert device.ready.version == protocol.PROTOCOL_VERSION
    assert device.ready.name == fake.NAME


def test_info_reports_fixture_shape(device):
    info = device.info()
    assert info.version == 1
    assert info.seq_len == fake.SEQ_LEN
    assert info.vocab_size == fake.VOCAB
    assert info.positions == fake.POSITIONS
    assert info.hidden_size == fake.HIDDEN
    assert info.halt_max_steps == fake.HALT_MAX_STEPS
    assert info.num_puzzle_identifiers == fake.NUM_PUZZLE_IDENTIFIERS
    assert info.arena_bytes == 2 * fake.CARRY_BYTES
    assert info.cycles_hz == 1_000_000
    assert info.name == fake.NAME


def test_solve_runs_all_steps_without_halt(device):
    tokens = fake.puzzle_tokens(0)
    result, traces = device.solve(tokens, puzzle_id=1)
    assert result.steps_used == fake.HALT_MAX_STEPS
    assert not result.halted_by_q
    assert result.q_halt == fake.expected_q_halt(fake.HALT_MAX_STEPS)
    assert result.tokens == fake.expected_tokens(tokens, 1, fake.HALT_MAX_STEPS)
    assert traces == []


def test_solve_halts_when_q_positive(device):
    tokens = fake.puzzle_tokens(1)
    result, _ = device.solve(tokens, halt=True)
    assert result.steps_used == 3
    assert result.halted_by_q
    assert result.q_halt == fake.expected_q_halt(3)


def test_solve_max_steps_limits_steps(device):
    result, _ = device.solve(fake.puzzle_tokens(2), max_steps=2, halt=True)
    assert result.steps_used == 2
    assert not result.halted_by_q


def test_trace_packets_match_fixture(device):
    tokens = fake.puzzle_tokens(4)
    result, traces = device.solve(tokens, puzzle_id=1, max_steps=4, trace=True)
    assert result.steps_used == 4
    assert [trace.step for trace in traces] == [1, 2, 3, 4]
    for trace in traces:
        y, z = fake.expected_carry(tokens, 1, trace.step)
        assert trace.q_halt == fake.expected_q_halt(trace.step)
        assert trace.tokens == fake.expected_tokens(tokens, 1, trace.step)
        assert trace.y == y, f"step {trace.step}: y differs"
        assert trace.z == z, f"step {trace.step}: z differs"


def test_trace_stops_at_halt(device):
    _, traces = device.solve(fake.puzzle_tokens(5), trace=True, halt=True)
    assert [trace.step for trace in traces] == [1, 2, 3]


def test_info_then_solve_reuse_request_ids(device):
    for _ in range(3):
        assert device.info().seq_len == fake.SEQ_LEN
        assert_solve_still_works(device)


VALID = solve_frame(9, fake.puzzle_tokens(0))
BAD_TOKEN = bytearray(fake.puzzle_tokens(0))
BAD_TOKEN[17] = fake.VOCAB

# (name, raw bytes to send, expected request id, error code, detail)
MALFORMED = [
    ("invalid COBS", b"\x05\x11\x22\x00", protocol.UNTRUSTED_ID, protocol.ERR_INVALID_COBS, 3),
    ("too short", protocol.encode_frame(b"\x01\x02\x03"), protocol.UNTRUSTED_ID,
     protocol.ERR_TOO_SHORT, 3),
    ("truncated packet", protocol.encode_frame(VALID[:-5]), protocol.UNTRUSTED_ID,
     protocol.ERR_BAD_CRC, len(VALID) - 5),
    ("bad CRC", protocol.encode_frame(VALID[:-1] + bytes([VALID[-1] ^ 0x80])),
     protocol.UNTRUSTED_ID, protocol.ERR_BAD_CRC, len(VALID)),
    ("too long", bytes([0x55]) * 2000 + b"\x00", protocol.UNTRUSTED_ID,
     protocol.ERR_TOO_LONG, 2000),
    ("one byte over the limit", bytes([0x55]) * (RX_LIMIT + 1) + b"\x00",
     protocol.UNTRUSTED_ID, protocol.ERR_TOO_LONG, RX_LIMIT + 1),
    ("unknown type", protocol.encode_frame(protocol.pack_packet(0x07, 21)), 21,
     protocol.ERR_UNKNOWN_TYPE, 7),
    ("INFO with a body", protocol.encode_frame(protocol.pack_packet(protocol.INFO, 22, b"x")),
     22, protocol.ERR_BODY_LENGTH, 1),
    ("SOLVE head cut short", protocol.encode_frame(protocol.pack_packet(protocol.SOLVE, 23,
                                                                        b"\x00\x00\x00")),
     23, protocol.ERR_BODY_LENGTH, 3),
    ("body length wrong", protocol.encode_frame(protocol.pack_packet(
        protocol.SOLVE, 24, struct.pack("<BBIH", 0, 0, 0, 81) + bytes(80))),
     24, protocol.ERR_BODY_LENGTH, 88),
    ("n_tokens differs from seq_len", protocol.encode_frame(solve_frame(25, bytes([2]) * 80)),
     25, protocol.ERR_BODY_LENGTH, 80),
    ("invalid token", protocol.encode_frame(solve_frame(26, BAD_TOKEN)), 26,
     protocol.ERR_INVALID_TOKEN, 17),
    ("invalid puzzle id", protocol.encode_frame(solve_frame(27, fake.puzzle_tokens(0),
                                                            puzzle_id=2)),
     27, protocol.ERR_INVALID_PUZZLE_ID, 2),
    ("unknown flag bit", protocol.encode_frame(solve_frame(28, fake.puzzle_tokens(0),
                                                           flags=0x04)),
     28, protocol.ERR_INVALID_ARGUMENT, 4),
]


@pytest.mark.parametrize("name, data, request_id, code, detail", MALFORMED,
                         ids=[case[0] for case in MALFORMED])
def test_malformed_frame_gets_error(device, name, data, request_id, code, detail):
    device.send_raw(data)
    reply_id, error = read_error(device)
    assert error.code == code, f"{name}: got {error.code_name}: {error.message}"
    assert error.detail == detail
    assert reply_id == request_id
    assert_solve_still_works(device)


def test_partial_frame_flushed_by_zero(device):
    frame = protocol.encode_frame(VALID)
    partial = frame[:len(frame) // 2]
    device.send_raw(partial + b"\x00")
    _, error = read_error(device)
    try:
        protocol.unpack_packet(protocol.cobs_decode(partial))
        expected = None
    except protocol.ProtocolError as problem:
        expected = (protocol.ERR_INVALID_COBS if "COBS" in str(problem)
                    else protocol.ERR_BAD_CRC)
    assert error.code == expected
    assert_solve_still_works(device)


def test_empty_frames_get_no_reply(device):
    device.send_raw(b"\x00\x00\x00")
    assert device.info().seq_len == fake.SEQ_LEN
    assert device.read_packet(timeout=0.3) is None


def expected_error_code(frame: bytes) -> int:
    """The ERROR code the handler owes a frame of random non-zero bytes."""
    if len(frame) > RX_LIMIT:
        return protocol.ERR_TOO_LONG
    try:
        packet = protocol.cobs_decode(frame)
    except protocol.ProtocolError:
        return protocol.ERR_INVALID_COBS
    if len(packet) < protocol.MIN_PACKET_BYTES:
        return protocol.ERR_TOO_SHORT
    return protocol.ERR_BAD_CRC


def test_seeded_garbage_gets_one_reply_per_frame(device):
    rng = random.Random(99)
    frames = [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 300)))
              for _ in range(20)]
    device.send_raw(b"".join(frame + b"\x00" for frame in frames))
    for index in range(len(frames)):
        reply_id, error = read_error(device)
        assert reply_id == protocol.UNTRUSTED_ID, f"frame {index}"
        assert error.code == expected_error_code(frames[index]), f"frame {index}: {error}"
    assert device.read_packet(timeout=0.3) is None
    assert_solve_still_works(device)


def test_client_raises_device_error_for_bad_token(device):
    with pytest.raises(DeviceError, match="invalid token .code 6, detail 17"):
        device.solve(BAD_TOKEN)


def test_host_exits_zero_on_eof(executable):
    port = ProcessPort(executable)
    Client(port).wait_ready()
    assert port.close() == 0
