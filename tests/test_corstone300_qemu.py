"""Firmware on the emulated Cortex-M55: board corstone300 in qemu-system-arm -M mps3-an547.

The fake model fixture checks the board code: start-up from the vector table in the ITCM,
the UART on a loopback socket and the 32 MHz SysTick. The tiny seeded model, built with
INT8 weights, must equal the integer reference byte for byte after every
supervision step (tokens, halt logit, carry y and z). The Sudoku-MLP configuration at
one H cycle of one L cycle is built twice. At full width (hidden 512, over 5 MB of INT8
weights in the QSPI flash) it must link and boot. At hidden 128 its first step must
equal the reference. tools/bench_fullsize.py runs the full-size model at full depth.

Run: python -m pytest tests/test_corstone300_qemu.py   (under a minute)
"""


import pytest
import torch

from conftest import ARM_AND_QEMU
from fixtures import fake_model_oracle as fake
from rrgen import checkpoint, sudoku, toolchain
from rrgen.boards import REPO_ROOT, load_board
from rrgen.build import build
from rrgen.client import Client
from rrgen.config import TRMConfig
from rrgen.model import TRM
from rrgen.qemu import run_qemu
from rrgen.run import run_puzzles

BOARD = "corstone300"
MACHINE = "mps3-an547"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fake_model.c"

pytestmark = ARM_AND_QEMU


@pytest.fixture(scope="module")
def fixture_firmware(tmp_path_factory):
    board = load_board(BOARD)
    sources = toolchain.firmware_sources(board) + [FIXTURE]
    return toolchain.compile_and_link(board, sources, [toolchain.FIRMWARE_INCLUDE_DIR],
                                      tmp_path_factory.mktemp("corstone300"), "firmware")


def test_vector_table_in_itcm_code_in_qspi(fixture_firmware):
    sections = fixture_firmware["sections"]
    assert sections[".isr_vector"]["address"] == 0x10000000
    assert sections[".isr_vector"]["size"] == 4 * (16 + 96)
    assert sections[".text"]["address"] == 0x38000000
    assert sections[".bss"]["address"] == 0x30000000
    assert sections[".arena"]["address"] == 0x31000000


def test_fixture_firmware_in_qemu(fixture_firmware):
    with run_qemu(fixture_firmware["elf"], MACHINE, icount_shift=0) as session:
        client = Client(session.port, timeout=20.0)
        assert client.wait_ready().name == fake.NAME
        info = client.info()
        assert info.cycles_hz == 32_000_000
        assert info.positions == fake.POSITIONS

        tokens = fake.puzzle_tokens(6)
        result, traces = client.solve(tokens, puzzle_id=1, trace=True, halt=True)
        assert result.steps_used == 3
        assert result.tokens == fake.expected_tokens(tokens, 1, 3)
        assert result.cycles > 0
        y, z = fake.expected_carry(tokens, 1, 3)
        assert traces[-1].y == y
        assert traces[-1].z == z


def solve_and_check(result, tokens, max_steps=0):
    """Run tokens on the build in QEMU, checking every step; return the run summary and log."""
    lines = []
    with run_qemu(result.out_dir / "firmware.elf", MACHINE) as session:
        client = Client(session.port, timeout=300.0)
        client.wait_ready(timeout=30.0)
        summary = run_puzzles(client, tokens, result.qmodel, max_steps=max_steps,
                              printer=lines.append)
    return summary, "\n".join(lines)


@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_model_matches_reference(tiny_checkpoint, tmp_path, bits):
    """INT8 and INT4-only builds: each links only the MVE kernels it needs."""
    result = build(tiny_checkpoint, BOARD, bits, tmp_path / f"int{bits}", calibration_puzzles=8)
    grids, _ = sudoku.generate(2, seed=sudoku.TEST_SEED)
    summary, log = solve_and_check(result, sudoku.to_tokens(grids))
    assert summary.mismatches == [], log
    assert summary.steps_checked == 2 * result.qmodel.config.halt_max_steps


def save_sudoku_mlp(path, hidden_size):
    """Save the public Sudoku-MLP configuration at one H cycle of one L cycle, seeded."""
    config = TRMConfig(vocab_size=11, seq_len=81, hidden_size=hidden_size, expansion=4.0,
                       L_layers=2, H_cycles=1, L_cycles=1, puzzle_emb_len=16, mlp_t=True,
                       halt_max_steps=1, task="sudoku")
    torch.manual_seed(0)
    checkpoint.save(TRM(config).eval(), path)


def test_full_size_build_fits_and_boots(tmp_path):
    # Hidden 512 gives the 5.03 M parameters of the full-size model, because depth adds
    # no weights. One step takes about a minute in QEMU, so this test only boots the
    # image; tools/bench_fullsize.py runs and checks the steps.
    save_sudoku_mlp(tmp_path / "full-size.safetensors", 512)
    result = build(tmp_path / "full-size.safetensors", BOARD, 8, tmp_path / "int8",
                   calibration_puzzles=2)
    regions = {region["name"]: region for region in result.report["regions"]}
    assert 5_000_000 < regions["qspi"]["used_bytes"] <= regions["qspi"]["length_bytes"]
    assert regions["isram"]["used_bytes"] == result.report["arena"]["bytes"]

    with run_qemu(result.out_dir / "firmware.elf", MACHINE) as session:
        client = Client(session.port, timeout=60.0)
        client.wait_ready(timeout=30.0)
        info = client.info()
    assert info.model_id == result.qmodel.model_id()
    assert info.hidden_size == 512
    assert info.arena_bytes == result.report["arena"]["bytes"]


def test_quarter_width_step_matches_reference(tmp_path):
    # Hidden 128 keeps one step to seconds in QEMU.
    save_sudoku_mlp(tmp_path / "quarter-width.safetensors", 128)
    result = build(tmp_path / "quarter-width.safetensors", BOARD, 8, tmp_path / "int8",
                   calibration_puzzles=2)
    grids, _ = sudoku.generate(1, seed=sudoku.TEST_SEED)
    summary, log = solve_and_check(result, sudoku.to_tokens(grids), max_steps=1)
    assert summary.mismatches == [], log
    assert summary.steps_checked == 1
