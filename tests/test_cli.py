"""The command line on bad input: each error is one line naming the value and the fix,
the exit status is 2, and no output folder (or staging folder) is left behind.

Run: python -m pytest tests/test_cli.py
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrgen import checkpoint
from rrgen.config import TRMConfig
from rrgen.model import TRM

REPO = Path(__file__).resolve().parents[1]


def rrgen(*args, env=None, cwd=None):
    environment = dict(os.environ, PYTHONPATH=str(REPO / "codegen"))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "rrgen", *map(str, args)], capture_output=True,
                          text=True, env=environment, cwd=cwd, timeout=600)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def assert_nothing_written(folder: Path):
    assert not folder.exists()
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert leftovers == []


def test_unknown_board_is_rejected(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = rrgen("build", "--board", "nucleo-f4", "--model", tiny_checkpoint, "--out", out)
    assert_user_error(result, "nucleo-f4", "stm32h7")
    assert_nothing_written(out)


def test_unsupported_bits_are_rejected(tmp_path):
    result = rrgen("build", "--board", "host", "--bits", "3", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "--bits" in result.stderr
    assert "3" in result.stderr


def test_missing_checkpoint_is_named(tmp_path):
    out = tmp_path / "out"
    result = rrgen("build", "--board", "host", "--model", tmp_path / "nope.safetensors",
                   "--out", out)
    assert_user_error(result, "nope.safetensors", "not found")
    assert_nothing_written(out)


def test_truncated_checkpoint_is_rejected(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(Path(tiny_checkpoint).read_bytes()[:1000])
    out = tmp_path / "out"
    result = rrgen("build", "--board", "host", "--model", broken, "--out", out)
    assert_user_error(result, "broken.safetensors")
    assert_nothing_written(out)


def test_nan_weight_is_rejected(tmp_path):
    torch.manual_seed(0)
    model = TRM(TRMConfig(hidden_size=16, expansion=2.0, H_cycles=1, L_cycles=1,
                          puzzle_emb_len=2, halt_max_steps=1, intermediate_multiple=8))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    path = checkpoint.save(model, tmp_path / "nan.safetensors")
    out = tmp_path / "out"
    result = rrgen("build", "--board", "host", "--model", path, "--out", out)
    assert_user_error(result, "lm_head.weight", "NaN")
    assert_nothing_written(out)


def test_model_that_does_not_fit_flash_is_rejected(tmp_path):
    # About 5 MB of INT8 weights against the 4 MB of flash of the STM32H743 (2 MB internal
    # and the 2 MB QSPI window).
    torch.manual_seed(0)
    model = TRM(TRMConfig(hidden_size=512, H_cycles=1, L_cycles=1, halt_max_steps=1))
    path = checkpoint.save(model, tmp_path / "big.safetensors")
    out = tmp_path / "out"
    result = rrgen("build", "--board", "stm32h7", "--bits", "8", "--model", path,
                   "--calibration", "1", "--out", out)
    assert_user_error(result, "does not fit", "stm32h7", "--bits 4")
    assert_nothing_written(out)


def test_missing_cross_compiler_names_the_package(tmp_path, tiny_checkpoint):
    # A PATH with python only: no arm-none-eabi-gcc, no gcc.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    out = tmp_path / "out"
    result = rrgen("build", "--board", "mps2-an500", "--model", tiny_checkpoint, "--out", out,
                   env={"PATH": str(bin_dir)})
    assert_user_error(result, "arm-none-eabi-gcc", "gcc-arm-none-eabi")
    assert_nothing_written(out)


def test_unreadable_puzzle_file_is_named(tmp_path, tiny_host_build):
    result = rrgen("run", "--board", "host", "--build", tiny_host_build.out_dir,
                   tmp_path / "missing.txt")
    assert_user_error(result, "missing.txt", "cannot read")


def test_bad_puzzle_line_names_file_and_line(tmp_path, tiny_host_build):
    puzzles = tmp_path / "bad.txt"
    puzzles.write_text("# comment\n" + "1" * 80 + "x\n")
    result = rrgen("run", "--board", "host", "--build", tiny_host_build.out_dir, puzzles)
    assert_user_error(result, "bad.txt:2", "invalid characters")


def test_run_without_build_says_how_to_build(tmp_path):
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("." * 81 + "\n")
    result = rrgen("run", "--board", "host", "--build", tmp_path / "nobuild", puzzles)
    assert_user_error(result, "no build found", "rrgen build")


def test_host_run_with_check_passes(tmp_path, tiny_host_build):
    puzzles = tmp_path / "p.txt"
    result = rrgen("puzzles", "--out", puzzles, "--count", "3")
    assert result.returncode == 0, result.stderr
    result = rrgen("run", "--board", "host", "--build", tiny_host_build.out_dir, "--check",
                   puzzles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-exact check passed: 9 steps of 3 puzzles" in result.stdout


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing")
def test_build_writes_report_and_sources(tmp_path, tiny_checkpoint):
    out = tmp_path / "host"
    result = rrgen("build", "--board", "host", "--model", tiny_checkpoint, "--out", out,
                   "--calibration", "4")
    assert result.returncode == 0, result.stderr
    for name in ("firmware", "batch", "report.md", "report.json", "build.json", "qmodel.npz",
                 "src/model.c", "src/weights.c", "src/kernels.c", "src/rr_model_config.h"):
        assert (out / name).exists(), name
    assert "MACs per supervision step" in result.stdout


def test_build_keeps_a_folder_that_is_not_a_build(tmp_path, tiny_checkpoint):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = rrgen("build", "--board", "host", "--model", tiny_checkpoint, "--out", out)
    assert_user_error(result, "not an rrgen build", "--out")
    assert (out / "notes.txt").read_text() == "keep me"


def test_build_rejects_a_file_as_output(tmp_path, tiny_checkpoint):
    out = tmp_path / "file"
    out.write_text("x")
    result = rrgen("build", "--board", "host", "--model", tiny_checkpoint, "--out", out)
    assert_user_error(result, "is a file")


@pytest.mark.parametrize("args, fragment", [
    (["puzzles", "--count", "0", "--out", "p.txt"], "--count 0"),
    (["eval", "--puzzles", "0"], "--puzzles 0"),
    (["run", "--board", "nucleo", "p.txt"], "nucleo"),
    (["run", "--board", "host", "--limit", "-1", "p.txt"], "--limit -1"),
    (["run", "--board", "host", "--max-steps", "300", "p.txt"], "--max-steps 300"),
    (["run", "--board", "corstone300", "--timeout", "0", "p.txt"], "--timeout 0"),
])
def test_invalid_counts_and_names_are_rejected(tmp_path, args, fragment):
    (tmp_path / "p.txt").write_text("." * 81 + "\n")
    result = rrgen(*args, cwd=tmp_path)
    assert_user_error(result, fragment)
    assert not (tmp_path / "build").exists()


def test_puzzles_into_a_folder_leaves_nothing(tmp_path):
    result = rrgen("puzzles", "--out", tmp_path, "--count", "2")
    assert_user_error(result, "is a folder")
    assert list(tmp_path.iterdir()) == []
