"""Fuzzing of the firmware's protocol handler, small runs of tools/fuzz.py.

The host build of the tiny model gets 600 seeded inputs and the mps2-an500 build in QEMU
gets 100: random, mutated, truncated, oversized, replayed and valid frames, each reply
checked against the predicted ERROR code or the integer reference. A QEMU test replays
the hostile sequence by hand and then solves a puzzle. The QEMU tests need
arm-none-eabi-gcc and qemu-system-arm.

Run: python -m pytest tests/test_fuzz.py
"""

import shutil

import numpy as np
import pytest
import torch

from rrgen import protocol, reference
from rrgen.build import load_build, load_reference
from rrgen.fuzz import ReceiverModel, open_target, run_fuzz, rx_limit_bytes
from rrgen.protocol import Error, Info

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm missing: install qemu-system-arm")


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_receiver_model_predicts_each_error():
    info = Info(1, 7, 11, 81, 85, 16, 8, 1, 2, 2, 3, 1000, 1, 1000000, "m")
    model = ReceiverModel(info)
    good = protocol.pack_packet(protocol.SOLVE, 9, bytes([0, 0, 0, 0, 0, 0, 81, 0]) + bytes(81))
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    cases = [
        (protocol.encode_frame(good), "solve"),
        (protocol.encode_frame(bytes(bad_crc)), protocol.ERR_BAD_CRC),
        (b"\x05ab\x00", protocol.ERR_INVALID_COBS),
        (protocol.encode_frame(b"\x01\x02"), protocol.ERR_TOO_SHORT),
        (b"\x01" * (rx_limit_bytes(81) + 1) + b"\x00", protocol.ERR_TOO_LONG),
        (protocol.encode_frame(protocol.pack_packet(0x33, 4)), protocol.ERR_UNKNOWN_TYPE),
        (protocol.encode_frame(protocol.pack_packet(protocol.INFO, 4, b"x")),
         protocol.ERR_BODY_LENGTH),
    ]
    for data, want in cases:
        (expected,) = model.feed(data)
        assert (expected.kind if want == "solve" else expected.code) == want


def test_host_fuzz_all_replies_match(tiny_host_build):
    qm = tiny_host_build.qmodel
    with open_target(tiny_host_build.out_dir, False, 10.0) as client:
        report = run_fuzz(client, qm, 600, seed=7, reply_timeout=10.0)
    assert report.failures == []
    assert report.valid_answered > 100
    assert sum(v for k, v in report.replies.items() if k.startswith("error")) > 250


@needs_qemu
def test_qemu_fuzz_all_replies_match(tiny_arm_build):
    qm = load_reference(load_build(tiny_arm_build))
    with open_target(tiny_arm_build, True, 30.0) as client:
        report = run_fuzz(client, qm, 100, seed=11, reply_timeout=30.0)
    assert report.failures == []
    assert report.valid_answered > 15


@needs_qemu
def test_qemu_hostile_frames_then_right_answer(tiny_arm_build):
    from rrgen import quantize, sudoku

    qm = quantize.load_qmodel(tiny_arm_build / "qmodel.npz")
    puzzles, _ = sudoku.generate(1, seed=5)
    tokens = sudoku.to_tokens(puzzles)[0].astype(np.uint8)
    valid = protocol.encode_frame(protocol.pack_packet(
        protocol.SOLVE, 77, bytes([0, 0, 0, 0, 0, 0, 81, 0]) + tokens.tobytes()))
    with open_target(tiny_arm_build, True, 30.0) as client:
        limit = rx_limit_bytes(81)
        garbage = b"\xfe" + b"boot noise\r\n" * 4 + b"\x00"  # first block runs past the end
        truncated = valid[:40] + b"\x00"
        oversized = b"\x7f" * (3 * limit) + b"\x00"
        # The cut may fall inside a COBS block or after it: the model names the code.
        truncated_code = ReceiverModel(client.info()).predict(truncated[:-1]).code
        assert truncated_code in (protocol.ERR_BAD_CRC, protocol.ERR_INVALID_COBS)
        for data, code in ((garbage, protocol.ERR_INVALID_COBS),
                           (truncated, truncated_code),
                           (oversized, protocol.ERR_TOO_LONG)):
            client.send_raw(data)
            reply = client.read_packet(30.0)
            assert reply.request_id == protocol.UNTRUSTED_ID
            assert Error.unpack_body(reply.body).code == code

        # A replayed frame gets a second reply, with the same id and the same tokens.
        ref = reference.solve(qm, tokens[None].astype(np.int64))
        steps = int(ref.steps_used[0])
        expected = ref.tokens[steps - 1, 0].astype(np.uint8).tobytes()
        for _ in range(2):
            client.send_raw(valid)
            reply = client.read_packet(30.0)
            assert reply.type == protocol.SOLVE_REPLY
            assert reply.request_id == 77
            assert protocol.SolveResult.unpack_body(reply.body).tokens == expected

        result, _ = client.solve(tokens)
        assert result.tokens == expected
        assert result.steps_used == steps
