"""Bad models and bad command-line input, one row per case, through the real command line.

Every row checks the same contract: stderr is one line that names the bad value and the
fix, the exit status is 2, there is no traceback, and no output folder (or staging folder)
is left behind. docs/reliability.md lists the rows.

Run: python -m pytest tests/test_bad_input.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from conftest import make_tiny_model
from rrgen import checkpoint

REPO = Path(__file__).resolve().parents[1]


def rrgen(*args, env=None):
    environment = dict(os.environ, PYTHONPATH=str(REPO / "codegen"))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "rrgen", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=600)


def assert_one_line_error(result, *fragments):
    """Exit status 2, no traceback, and exactly one non-empty stderr line with each fragment."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(folder: Path):
    assert not folder.exists()
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert leftovers == []


def rewrite_checkpoint(source: Path, target: Path, edit) -> Path:
    """Copy a checkpoint with its metadata, after edit(tensors) changed the tensor dict."""
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(source))
    edit(tensors)
    save_file(tensors, str(target), metadata=metadata)
    return target


def build_host(model, out):
    return rrgen("build", "--board", "host", "--model", model, "--out", out,
                 "--calibration", "4")


# ---- Checkpoints ----

def test_random_bytes_checkpoint(tmp_path):
    bad = tmp_path / "noise.safetensors"
    bad.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    assert_one_line_error(build_host(bad, out), "noise.safetensors", "re-create it")
    assert_nothing_written(out)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    data = Path(tiny_checkpoint).read_bytes()
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out"
    assert_one_line_error(build_host(bad, out), "half.safetensors", "re-create it")
    assert_nothing_written(out)


def test_missing_key_checkpoint(tmp_path, tiny_checkpoint):
    bad = rewrite_checkpoint(tiny_checkpoint, tmp_path / "nokey.safetensors",
                             lambda t: t.pop("lm_head.weight"))
    out = tmp_path / "out"
    assert_one_line_error(build_host(bad, out), "nokey.safetensors", "missing keys",
                          "lm_head.weight")
    assert_nothing_written(out)


def test_misshaped_key_checkpoint(tmp_path, tiny_checkpoint):
    def shrink(tensors):
        tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :-1].contiguous()

    bad = rewrite_checkpoint(tiny_checkpoint, tmp_path / "shape.safetensors", shrink)
    out = tmp_path / "out"
    assert_one_line_error(build_host(bad, out), "shape.safetensors", "lm_head.weight",
                          "has shape")
    assert_nothing_written(out)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight(tmp_path, value):
    model = make_tiny_model()
    with torch.no_grad():
        model.lm_head.weight[1, 2] = value
    path = checkpoint.save(model, tmp_path / "nonfinite.safetensors")
    out = tmp_path / "out"
    assert_one_line_error(build_host(path, out), "lm_head.weight", "NaN or Inf",
                          "earlier checkpoint")
    assert_nothing_written(out)


def test_calibration_overflow_to_inf(tmp_path):
    # Finite weights whose activations overflow float32 on the calibration puzzles.
    model = make_tiny_model()
    with torch.no_grad():
        model.embed_tokens.weight.fill_(3e38)
    path = checkpoint.save(model, tmp_path / "overflow.safetensors")
    out = tmp_path / "out"
    assert_one_line_error(build_host(path, out), "overflow.safetensors", "NaN or Inf",
                          "calibration")
    assert_nothing_written(out)


def test_zero_weight_channel_builds_bit_exact(tmp_path):
    # A pruned (all-zero) output channel is valid input: the build must succeed and match
    # the integer reference, with no division by a zero scale.
    model = make_tiny_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() == 2 and "blocks" in name:
                param[0].zero_()
    path = checkpoint.save(model, tmp_path / "zero.safetensors")
    out = tmp_path / "out"
    built = build_host(path, out)
    assert built.returncode == 0, built.stderr
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("." * 81 + "\n" + "1" + "." * 80 + "\n")
    result = rrgen("run", "--board", "host", "--build", out, "--check", puzzles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-exact check passed" in result.stdout


def test_unsupported_onnx_op(tmp_path, tiny_checkpoint):
    import onnx

    step = tmp_path / "step.onnx"
    exported = rrgen("export-onnx", "--model", tiny_checkpoint, "--out", step)
    assert exported.returncode == 0, exported.stderr
    proto = onnx.load(str(step))
    unary = next(n for n in proto.graph.node if n.op_type in ("Sigmoid", "Sqrt", "Neg"))
    unary.op_type = "Erf"
    bad = tmp_path / "erf.onnx"
    onnx.save(proto, str(bad))
    out = tmp_path / "out"
    assert_one_line_error(build_host(bad, out), "erf.onnx", "Erf", "Supported op types")
    assert_nothing_written(out)


@pytest.mark.parametrize("field, value, fragment", [
    ("vocab_size", 7, "vocab_size 7"),
    ("seq_len", 64, "seq_len 64"),
])
def test_config_that_does_not_match_task(tmp_path, tiny_checkpoint, field, value, fragment):
    # A checkpoint whose config claims the Sudoku task with the wrong vocabulary or length.
    config = json.loads(make_tiny_model().config.to_json())
    config[field] = value
    from rrgen.config import TRMConfig
    from rrgen.model import TRM

    torch.manual_seed(0)
    model = TRM(TRMConfig.from_dict(config))
    path = checkpoint.save(model, tmp_path / f"{field}.safetensors")
    out = tmp_path / "out"
    assert_one_line_error(build_host(path, out), f"{field}.safetensors", fragment, "sudoku")
    assert_nothing_written(out)


# ---- Command line and environment ----

def test_unknown_board(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = rrgen("build", "--board", "esp32", "--model", tiny_checkpoint, "--out", out)
    assert_one_line_error(result, "esp32", "stm32h7")
    assert_nothing_written(out)


def test_model_that_does_not_fit(tmp_path):
    # hidden 256 INT8 SwiGLU weights: about 1 MB of block weights against a 256 KB budget.
    from rrgen.config import TRMConfig
    from rrgen.model import TRM

    torch.manual_seed(0)
    model = TRM(TRMConfig(hidden_size=256, H_cycles=1, L_cycles=1, halt_max_steps=1,
                          intermediate_multiple=32))
    path = checkpoint.save(model, tmp_path / "big.safetensors")
    out = tmp_path / "out"
    result = rrgen("build", "--board", "mps2-an500", "--model", path, "--calibration", "1",
                   "--flash-budget", "262144", "--out", out)
    assert_one_line_error(result, "262144", "flash budget", "--bits")
    assert_nothing_written(out)


def path_with_python_only(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return {"PATH": str(bin_dir)}


def test_missing_cross_compiler(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = rrgen("build", "--board", "mps2-an500", "--model", tiny_checkpoint, "--out", out,
                   "--calibration", "4", env=path_with_python_only(tmp_path))
    assert_one_line_error(result, "arm-none-eabi-gcc", "apt-get install")
    assert_nothing_written(out)


def test_missing_qemu(tmp_path, tiny_arm_build):
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("." * 81 + "\n")
    result = rrgen("run", "--board", "mps2-an500", "--build", tiny_arm_build, puzzles,
                   env=path_with_python_only(tmp_path))
    assert_one_line_error(result, "qemu-system-arm", "install")


@pytest.mark.parametrize("kind, fragment", [
    ("missing", "cannot read"),
    ("folder", "cannot read"),
    ("binary", "not UTF-8"),
    ("empty", "no puzzles"),
])
def test_unreadable_puzzle_file(tmp_path, tiny_host_build, kind, fragment):
    puzzles = tmp_path / f"{kind}.txt"
    if kind == "folder":
        puzzles.mkdir()
    elif kind == "binary":
        puzzles.write_bytes(bytes(range(128, 256)) * 4)
    elif kind == "empty":
        puzzles.write_text("# only a comment\n")
    result = rrgen("run", "--board", "host", "--build", tiny_host_build.out_dir, puzzles)
    assert_one_line_error(result, f"{kind}.txt", fragment)


def test_failed_build_keeps_earlier_build(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    first = build_host(tiny_checkpoint, out)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "noise.safetensors"
    bad.write_bytes(os.urandom(1024))
    assert_one_line_error(build_host(bad, out), "noise.safetensors")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == []
