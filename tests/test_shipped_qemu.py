"""The shipped default model on the emulated Cortex-M7 (qemu-system-arm -M mps2-an500).

The firmware is built from the shipped checkpoint with arm-none-eabi-gcc, runs in QEMU
with its UART on a loopback socket, and is driven by the same pyserial client as a real
board. Every step of a Sudoku puzzle must equal the integer reference byte for byte
(tokens, halt logit, carry y and z), for INT8 and INT4 weights. Malformed input gets
error replies, and the next valid request still succeeds. The stm32h7 INT4 build must
link inside its flash and its ELF sizes must agree with the build report.

Run: python -m pytest tests/test_shipped_qemu.py   (about a minute)
"""

import shutil
import subprocess

import numpy as np
import pytest

from conftest import ARM_AND_QEMU
from rrgen import protocol, reference, sudoku
from rrgen.build import build
from rrgen.client import Client, DeviceError
from rrgen.qemu import run_qemu
from rrgen.run import run_puzzles

pytestmark = ARM_AND_QEMU

STEPS = 2   # supervision steps per puzzle here; each takes a few seconds in QEMU


@pytest.fixture(scope="module")
def puzzles():
    grids, _ = sudoku.generate(2, seed=sudoku.TEST_SEED)
    return grids


@pytest.fixture(scope="module", params=[8, 4], ids=["int8", "int4"])
def shipped_build(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / f"mps2-int{request.param}"
    return build(None, "mps2-an500", request.param, out, calibration_puzzles=16)


def test_shipped_model_matches_reference_in_qemu(shipped_build, puzzles):
    lines = []
    with run_qemu(shipped_build.out_dir / "firmware.elf", "mps2-an500") as session:
        client = Client(session.port, timeout=300.0)
        client.wait_ready(timeout=30.0)
        summary = run_puzzles(client, sudoku.to_tokens(puzzles[:1]), shipped_build.qmodel, max_steps=STEPS,
                              printer=lines.append)
    assert summary.mismatches == [], "\n".join(lines)
    assert summary.steps_checked == STEPS


def test_firmware_recovers_from_bad_frames(shipped_build, puzzles):
    qm = shipped_build.qmodel
    tokens = sudoku.to_tokens(puzzles[1:2])[0].astype(np.uint8)
    expected = reference.solve(qm, tokens[None], max_steps=1).tokens[0, 0]
    bad_tokens = tokens.copy()
    bad_tokens[40] = qm.config.vocab_size
    valid = protocol.pack_packet(protocol.INFO, 7)

    with run_qemu(shipped_build.out_dir / "firmware.elf", "mps2-an500") as session:
        client = Client(session.port, timeout=300.0)
        client.wait_ready(timeout=30.0)

        # Garbage without a delimiter, then a delimiter: one error reply.
        client.send_raw(bytes(range(1, 200)) + b"\x00")
        error = client.read_packet(timeout=30.0)
        assert error is not None and error.type == protocol.ERROR

        # A truncated packet flushed by the next frame's leading zero.
        client.send_raw(protocol.encode_frame(valid)[:4] + b"\x00")
        error = protocol.parse_reply(client.read_packet(timeout=30.0))
        assert error.code in (protocol.ERR_BAD_CRC, protocol.ERR_TOO_SHORT, protocol.ERR_INVALID_COBS)

        # An out-of-range token is named by its index.
        with pytest.raises(DeviceError) as caught:
            client.solve(bad_tokens, max_steps=1)
        assert caught.value.error.code == protocol.ERR_INVALID_TOKEN
        assert caught.value.error.detail == 40

        # And the next valid request still returns the reference tokens.
        result, _ = client.solve(tokens, max_steps=1)
        assert bytes(result.tokens) == expected.astype(np.uint8).tobytes()


@pytest.mark.skipif(shutil.which("arm-none-eabi-size") is None, reason="arm-none-eabi-size missing")
def test_stm32h7_int4_build_fits_and_report_agrees(tmp_path):
    result = build(None, "stm32h7", 4, tmp_path / "stm32h7", calibration_puzzles=16)
    elf = result.out_dir / "firmware.elf"
    berkeley = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True,
                              check=True).stdout.splitlines()[1].split()
    text, data, bss = map(int, berkeley[:3])
    sections = result.report["sections"]
    # Flash is the internal flash and the QSPI window (.rr_external, the embedding tables).
    flash = [r for r in result.report["regions"] if r["name"] in ("flash", "qspi")]
    in_flash = [name for name, s in sections.items() for r in flash
                if r["origin"] <= s["address"] < r["origin"] + r["length_bytes"]]
    assert ".rr_external" in in_flash
    assert text == sum(sections[name]["size"] for name in in_flash)
    assert data == sections.get(".data", {"size": 0})["size"]
    assert bss == sum(s["size"] for name, s in sections.items()
                      if name not in in_flash and name != ".data")
    assert sum(r["used_bytes"] for r in flash) == text + data
    for r in flash:
        assert r["used_bytes"] <= r["length_bytes"], r["name"]
    assert sections[".arena"]["size"] == result.report["arena"]["bytes"]
