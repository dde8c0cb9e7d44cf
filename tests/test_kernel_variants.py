"""The DSP (Cortex-M7) and MVE (Cortex-M55) linear kernels in QEMU, byte for byte.

tools/bench_kernels.py builds firmware/bench/kernel_test.c with the variant and the portable
kernels rendered from templates/kernels.c.j2, for mps2-an500 (kernels = "dsp") and
mps3-an547 (kernels = "mve"), and runs it under qemu-system-arm with semihosting. The guest
draws each case's data with a seeded xorshift32 and writes both outputs to a host file.
The test draws the same data and checks both outputs against rrgen.reference.linear. The cases cover
odd rows and channels, in_features that leave tails for every vector width (4, 8, 16, 32),
no bias, left shifts and saturation. The guest also checks RR_ERR_ARGUMENT on bad calls.
Also: the board key `kernels` and its plumbing into the template.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rrgen import boards, emit

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "tools" / "bench_kernels.py")
bench_kernels = importlib.util.module_from_spec(_spec)
sys.modules["bench_kernels"] = bench_kernels      # dataclasses look their module up there
_spec.loader.exec_module(bench_kernels)
Case = bench_kernels.Case

needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc or qemu-system-arm not installed")

SHAPES = [  # rows, in_features, out_features
    (1, 1, 1), (2, 2, 2), (3, 5, 3), (2, 8, 2), (5, 97, 7), (4, 33, 17), (3, 64, 16),
    (7, 100, 33), (2, 256, 5), (1, 31, 4), (6, 47, 18), (9, 130, 31), (4, 200, 19),
    # The M55 4 x 2 tiles (in_features <= 256): 97 inputs as in the token mixing, every
    # row count modulo 4, odd channel counts and a block of 16 plus one; head blocks of
    # 16 and 1 element (INT8) or byte (INT4); and 257 inputs, past the tiles' limit.
    (4, 97, 16), (1, 97, 3), (2, 97, 17), (3, 97, 1), (8, 16, 6), (5, 17, 9), (4, 32, 4),
    (3, 33, 2), (6, 255, 7), (2, 257, 3),
]
CASES = [Case(r, k, n, bits) for bits in (8, 4) for r, k, n in SHAPES] + [
    Case(3, 40, 9, 8, has_bias=0), Case(3, 40, 9, 4, has_bias=0),
    Case(4, 6, 5, 8, shift_lo=-2, shift_hi=3),       # left shifts, heavy saturation
    Case(4, 9, 5, 4, shift_lo=-1, shift_hi=4),
    Case(2, 48, 6, 8, shift_lo=-31, shift_hi=-25),   # long right shifts: mostly 0 and -1
    Case(2, 48, 6, 4, shift_lo=-31, shift_hi=-20),
]


def read_report(path: Path, cases: list) -> list[tuple[int, np.ndarray, int, np.ndarray]]:
    data, pos, result = path.read_bytes(), 0, []
    for case in cases:
        entry = []
        for _ in range(2):       # variant, then portable
            status = int.from_bytes(data[pos:pos + 4], "little", signed=True)
            size = case.rows * case.out_features
            out = np.frombuffer(data[pos + 4:pos + 4 + size], dtype=np.int8)
            entry += [status, out.reshape(case.rows, case.out_features)]
            pos += 4 + size
        result.append(tuple(entry))
    assert pos == len(data), f"report has {len(data)} bytes, expected {pos}"
    return result


@needs_arm
@pytest.mark.parametrize("cpu_name", ["m7", "m55"])
def test_variant_and_portable_match_reference_in_qemu(cpu_name, tmp_path):
    cpu = bench_kernels.CPUS[cpu_name]
    elf = bench_kernels.build_image(cpu, "kernel_test", CASES, tmp_path)
    output = bench_kernels.run_image(cpu, elf, tmp_path, timeout=120)
    assert "ERRORS ok" in output, output
    report = read_report(tmp_path / "kernel_test.bin", CASES)
    for index, (case, (v_status, variant, p_status, portable)) in enumerate(zip(CASES, report)):
        expected = bench_kernels.reference_outputs(case, bench_kernels.kernel_test_seed(index))
        assert (v_status, p_status) == (0, 0), case
        np.testing.assert_array_equal(portable, expected, err_msg=f"portable {case}")
        np.testing.assert_array_equal(variant, expected, err_msg=f"{cpu.variant} {case}")
    # The cases reach both ends of the int8 range and values in between.
    outputs = np.concatenate([entry[1].ravel() for entry in report])
    assert outputs.min() == -128
    assert outputs.max() == 127
    assert len(np.unique(outputs)) > 100


def test_board_kernel_variants():
    assert boards.load_board("mps2-an500").kernels == "dsp"
    assert boards.load_board("stm32h7").kernels == "dsp"
    assert boards.load_board("host").kernels == "portable"


def test_board_rejects_unknown_variant_and_host_variant(tmp_path):
    data = boards.tomllib.loads(boards.load_board("mps2-an500").path.read_text())
    data["kernels"] = "neon"
    with pytest.raises(ValueError, match="kernels = 'neon' is not a kernel variant; use one of "
                                         "portable, dsp, mve"):
        boards.parse_board(data, tmp_path / "bad.toml")
    host = boards.tomllib.loads(boards.load_board("host").path.read_text())
    host["kernels"] = "dsp"
    with pytest.raises(ValueError, match="needs an Arm CPU"):
        boards.parse_board(host, tmp_path / "host.toml")


@pytest.mark.parametrize("variant", ["portable", "dsp", "mve"])
def test_template_renders_each_variant(variant):
    text = bench_kernels.render_kernels(variant)
    assert f"Kernel variant: {variant}." in text
    assert ("__smlad" in text) == (variant == "dsp")
    assert ("vmladava" in text) == (variant == "mve")
    # The portable kernels stay as static fallbacks in a variant build.
    public = "rr_status_t rr_linear_s4(" in text and "rr_status_t rr_linear_s8(" in text
    assert public
    assert ("static inline rr_status_t portable_linear_s4(" in text) == (variant != "portable")


def test_render_rejects_unknown_variant():
    # render checks the variant before it reads the model, so no model is needed here.
    with pytest.raises(ValueError, match="kernel variant 'sse' is unknown"):
        emit.render(None, None, "tiny", ["test"], kernel_variant="sse")


@needs_arm
@pytest.mark.parametrize("cpu_name", ["m7", "m55"])
def test_benchmark_image_counts_instructions(cpu_name, tmp_path):
    cpu = bench_kernels.CPUS[cpu_name]
    cases = [Case(6, 97, 10, 8), Case(6, 97, 10, 4)]
    elf = bench_kernels.build_image(cpu, "bench_main", cases, tmp_path)
    result = bench_kernels.parse_bench(bench_kernels.run_image(cpu, elf, tmp_path, timeout=120),
                                       cpu, cases)
    # The calibration loop's known length, measured to within one SysTick tick.
    for calibration in result["calibration"]:
        error = abs(calibration["measured_instructions"] - calibration["expected_instructions"])
        assert error <= 1e9 / cpu.clock_hz
    for entry in result["layers"]:
        for kernel in ("naive", "portable", cpu.variant):
            assert entry[f"{kernel}_same_bytes"], (kernel, entry)
        # The variant beats the naive loop; each layer has 5820 MACs, so counts are coarse.
        assert entry[cpu.variant] < entry["naive"]
        assert entry["floor"] < entry[cpu.variant]
