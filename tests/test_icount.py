"""build --count-instructions: QEMU instruction counts per linear layer in the report.

The tiny model is built for mps2-an500 with the flag, which runs every linear layer's
shape once under qemu-system-arm -icount (codegen/rrgen/icount.py). The host board is
refused with a one-line error, and stm32h7 maps to its QEMU twin.

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


@needs_arm
@needs_qemu
def test_tiny_build_counts_instructions_per_layer(tiny_checkpoint, tmp_path):
    out = tmp_path / "mps2"
    result = build(tiny_checkpoint, "mps2-an500", 8, out, calibration_puzzles=8,
                   count_instructions=True)
    ic = result.report["instructions"]
    assert ic["qemu_machine"] == "mps2-an500" and ic["kernel_variant"] == "dsp"
    # The calibration loop of known length, to within one SysTick tick.
    for cal in ic["calibration"]:
        assert abs(cal["measured_instructions"] - cal["expected_instructions"]) <= 40
    names = [row["layer"] for row in ic["layers"]]
    linears = list(result.report["layer_bits"])
    assert names == [*linears, "lm_head", "q_head"]
    for row in ic["layers"]:
        assert row["instructions_per_call"] > 0, row
        # At least the SMLAD floor of 0.5; the tiny layers (16 wide) pay a large per-call
        # and per-row overhead, but stay far below the naive loop's ~5 per MAC times ten.
        assert 0.5 < row["instructions_per_mac"] < 50, row
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


def test_host_board_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "host"
    with pytest.raises(BuildError, match="needs an Arm board that QEMU emulates; board 'host'"):
        build(tiny_checkpoint, "host", 8, out, calibration_puzzles=8, count_instructions=True)
    assert not out.exists()


def test_stm32h7_runs_on_its_qemu_twin():
    cpu = icount.twin_cpu(boards.load_board("stm32h7"))
    assert (cpu.machine, cpu.variant, cpu.core) == ("mps2-an500", "dsp", "cortex-m7")
    cpu = icount.twin_cpu(boards.load_board("corstone300"))
    assert (cpu.machine, cpu.variant) == ("mps3-an547", "mve")
