"""build --count-instructions: QEMU instruction counts per linear layer in the report.

The tiny model is built for mps2-an500 with the flag, which runs every linear layer's
shape once under qemu-system-arm -icount (codegen/rrgen/icount.py). The host board is
rejected with a one-line error, and stm32h7 maps to its QEMU twin.

Run: python -m pytest tests/test_icount.py
"""

import json
import shutil

import pytest

from rrgen import boards, icount
from rrgen.build import BuildError, build

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm missing: install qemu-system-arm")


# Board, block weight bits, its QEMU machine, its kernels and their floor: instructions
# per MAC of the widest multiply-accumulate (SMLAD does 2 MACs, VMLADAVA.S8 does 16).
BOARDS = [("mps2-an500", 8, "mps2-an500", "dsp", 0.5),
          ("mps2-an500", 4, "mps2-an500", "dsp", 0.5),
          ("corstone300", 8, "mps3-an547", "mve", 1 / 16)]


@needs_arm
@needs_qemu
@pytest.mark.parametrize(("board", "bits", "machine", "variant", "floor"), BOARDS)
def test_tiny_build_counts_instructions_per_layer(tiny_checkpoint, tmp_path, board, bits,
                                                  machine, variant, floor):
    out = tmp_path / f"{board}-int{bits}"
    result = build(tiny_checkpoint, board, bits, out, calibration_puzzles=8,
                   count_instructions=True)
    ic = result.report["instructions"]
    assert ic["qemu_machine"] == machine
    assert ic["kernel_variant"] == variant
    # The calibration loop of known length, to within one SysTick tick.
    for cal in ic["calibration"]:
        error = abs(cal["measured_instructions"] - cal["expected_instructions"])
        assert error <= ic["tick_instructions"]
    names = [row["layer"] for row in ic["layers"]]
    kernels = {row["layer"]: row["kernel"] for row in ic["layers"]}
    linears = list(result.report["layer_bits"])
    assert names == [*linears, "lm_head", "q_head"]
    assert {kernels[name] for name in linears} == {f"rr_linear_s{bits}"}
    assert kernels["lm_head"] == "rr_linear_s8_s16"
    for row in ic["layers"]:
        assert row["instructions_per_call"] > 0, row
        # Above the floor. The tiny layers (16 wide) pay a large per-call and per-row
        # overhead, but stay below ten times the naive loop's 5 to 12 per MAC.
        assert floor < row["instructions_per_mac"] < 50, row
        # Both figures are rounded from the same unrounded count.
        per_call_times_calls = row["instructions_per_call"] * row["calls_per_step"]
        assert abs(row["instructions_per_step"] - per_call_times_calls) <= row["calls_per_step"]
    # The layers' MACs per step are the report's MACs per step.
    assert ic["linear_macs_per_step"] == result.report["macs"]["total"]
    assert abs(ic["total_per_step"] - sum(r["instructions_per_step"] for r in ic["layers"])) \
        <= len(ic["layers"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["instructions"]["total_per_step"] == ic["total_per_step"]
    text = (out / "report.md").read_text()
    assert "## Instructions per linear layer (QEMU, kernel alone, not cycles)" in text
    assert text.index("## MACs per supervision step") < text.index("## Instructions per")
    assert not (out / "icount").exists()


def test_host_board_rejected(tiny_checkpoint, tmp_path):
    out = tmp_path / "host"
    with pytest.raises(BuildError, match="needs an Arm board that QEMU emulates; board 'host'"):
        build(tiny_checkpoint, "host", 8, out, calibration_puzzles=8, count_instructions=True)
    assert not out.exists()


def test_stm32h7_runs_on_its_qemu_twin():
    cpu = icount.twin_cpu(boards.load_board("stm32h7"))
    assert cpu.machine == "mps2-an500"
    assert cpu.variant == "dsp"
    cpu = icount.twin_cpu(boards.load_board("corstone300"))
    assert cpu.machine == "mps3-an547"
    assert cpu.variant == "mve"
