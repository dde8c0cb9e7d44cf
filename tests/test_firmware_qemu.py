"""Checks the firmware on the emulated Cortex-M7. The fake model fixture is built with
arm-none-eabi-gcc for mps2-an500 and run in qemu-system-arm with the UART on a loopback
socket. Client then checks READY, INFO, a SOLVE with traces, and a malformed packet
followed by a valid SOLVE. Needs arm-none-eabi-gcc and qemu-system-arm; takes a few seconds.

Run: cd codegen && python -m pytest ../tests/test_firmware_qemu.py
"""

import shutil

import pytest

from fixtures import fake_model_oracle as fake
from rrgen import protocol, toolchain
from rrgen.boards import REPO_ROOT, load_board
from rrgen.client import Client
from rrgen.protocol import Error
from rrgen.qemu import QemuError, run_qemu

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fake_model.c"

pytestmark = [
    pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                       reason="arm-none-eabi-gcc missing: install gcc-arm-none-eabi"),
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                       reason="qemu-system-arm missing: install the Debian package "
                              "qemu-system-arm"),
]


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    board = load_board("mps2-an500")
    sources = toolchain.firmware_sources(board) + [FIXTURE]
    result = toolchain.compile_and_link(board, sources, [toolchain.FIRMWARE_INCLUDE_DIR],
                                        tmp_path_factory.mktemp("mps2"), "firmware")
    return result["elf"]


@pytest.fixture(scope="module")
def device(elf):
    with run_qemu(elf, "mps2-an500", icount_shift=0) as session:
        client = Client(session.port, timeout=20.0)
        client.ready = client.wait_ready()
        yield client


def test_qemu_sends_ready(device):
    assert device.ready.name == fake.NAME


def test_qemu_info_reports_systick_frequency(device):
    info = device.info()
    assert info.seq_len == fake.SEQ_LEN
    assert info.positions == fake.POSITIONS
    assert info.cycles_hz == 25_000_000


def test_qemu_solve_with_trace_matches_fixture(device):
    tokens = fake.puzzle_tokens(6)
    result, traces = device.solve(tokens, puzzle_id=1, trace=True, halt=True)
    assert result.steps_used == 3
    assert result.halted_by_q
    assert result.tokens == fake.expected_tokens(tokens, 1, 3)
    assert result.cycles > 0
    assert [trace.step for trace in traces] == [1, 2, 3]
    y, z = fake.expected_carry(tokens, 1, 3)
    assert traces[-1].y == y
    assert traces[-1].z == z


def test_qemu_malformed_packet_then_valid_solve(device):
    packet = bytearray(protocol.pack_packet(protocol.INFO, 5))
    packet[-2] ^= 0xFF
    device.send_raw(b"\x00" + protocol.encode_frame(bytes(packet)))
    reply = device.read_packet()
    assert reply.request_id == protocol.UNTRUSTED_ID
    error = Error.unpack_body(reply.body)
    assert error.code == protocol.ERR_BAD_CRC

    tokens = fake.puzzle_tokens(7)
    result, _ = device.solve(tokens)
    assert result.steps_used == fake.HALT_MAX_STEPS
    assert result.tokens == fake.expected_tokens(tokens, 0, fake.HALT_MAX_STEPS)


def test_qemu_missing_image_raises(tmp_path):
    with pytest.raises(QemuError, match="not found; build it first"):
        run_qemu(tmp_path / "missing.elf", "mps2-an500")
