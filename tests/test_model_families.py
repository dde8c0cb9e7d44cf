"""Every model family and task of the zoo, built and checked bit-exactly.

Families: TRM with attention and RoPE (Sudoku), HRM (separate H and L stacks, one prefix
position), TRM-attention on 9x9 mazes, and on ARC grids (30x30, an 8-row puzzle table).
Each tiny seeded model is built for the host and for mps2-an500. The host build runs 60
puzzles (ARC: 4) and QEMU one puzzle. The tokens, halt logit and carry y and z after
every step must equal reference.solve byte for byte.
The integer attention kernel is also compared with float attention, so a kernel that
agrees with the reference but computes the wrong thing fails too.

Run: python -m pytest tests/test_model_families.py
"""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from rrgen import calibrate, checkpoint, cli, reference, tasks
from rrgen.build import BuildError, build
from rrgen.client import Client
from rrgen.config import TRMConfig
from rrgen.model import attention, rope_tables
from rrgen.qemu import run_qemu
from rrgen.run import run_batch, run_puzzles

from conftest import make_tiny_model
from test_bitexact_host import assert_same

TINY_ATT = TRMConfig(hidden_size=32, expansion=2.0, L_layers=2, H_cycles=1, L_cycles=2,
                     puzzle_emb_len=4, halt_max_steps=3, intermediate_multiple=8,
                     mlp_t=False, num_heads=2, pos_encodings="rope")
TINY_HRM = dataclasses.replace(TINY_ATT, arch="hrm", L_layers=1, H_layers=2, puzzle_emb_len=1)
TINY_MAZE = dataclasses.replace(TINY_ATT, task="maze", vocab_size=6)
TINY_ARC = dataclasses.replace(TINY_ATT, task="arc", vocab_size=12, seq_len=900,
                               num_puzzle_identifiers=8, hidden_size=16, L_layers=1)
FAMILIES = {"attention": TINY_ATT, "hrm": TINY_HRM, "maze-attention": TINY_MAZE,
            "arc-attention": TINY_ARC}
# ARC carries 916 positions: a few puzzles keep the numpy reference small.
PUZZLES = {"arc-attention": 4}

needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc or qemu-system-arm missing: install gcc-arm-none-eabi "
           "libnewlib-arm-none-eabi qemu-system-arm")


def make_family(name: str, folder) -> dict:
    config = FAMILIES[name]
    path = folder / "model.safetensors"
    checkpoint.save(make_tiny_model(0, config), path)
    task = tasks.get_task(config.task, config.seq_len)
    inputs, labels, _ = task.generate(PUZZLES.get(name, 60), 11)
    ids = np.arange(len(inputs)) % config.num_puzzle_identifiers
    return {"name": name, "config": config, "path": path, "folder": folder,
            "task": task, "inputs": inputs, "ids": ids}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    return make_family(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def maze_family(tmp_path_factory):
    return make_family("maze-attention", tmp_path_factory.mktemp("maze-cli"))


def check_every_step(result, tokens, ids, halt=False) -> int:
    qm = result.qmodel
    carry = qm.config.positions * qm.config.hidden_size
    records = run_batch(result.out_dir / "batch", tokens, carry_bytes=carry, halt=halt,
                        puzzle_ids=ids)
    ref = reference.solve(qm, tokens, ids, halt=halt)
    checked = 0
    for i, record in enumerate(records):
        assert record["status"] == 0
        assert record["steps_used"] == ref.steps_used[i]
        for step in range(record["steps_used"]):
            where = f"puzzle {i} step {step + 1}"
            assert_same(f"{where} tokens", record["tokens"][step], ref.tokens[step, i])
            assert_same(f"{where} q_halt", [record["q_halt"][step]], [ref.q_halt[step, i]])
            assert_same(f"{where} carry y", record["y"][step], ref.y[step, i].reshape(-1))
            assert_same(f"{where} carry z", record["z"][step], ref.z[step, i].reshape(-1))
            checked += 1
    return checked


@pytest.mark.parametrize("bits", [8, 4])
def test_host_build_matches_reference_every_step(family, bits):
    result = build(family["path"], "host", bits, family["folder"] / f"host-int{bits}",
                   calibration_puzzles=8)
    steps = check_every_step(result, family["inputs"], family["ids"])
    assert steps == len(family["inputs"]) * family["config"].halt_max_steps
    count = min(20, len(family["inputs"]))
    assert check_every_step(result, family["inputs"][:count], family["ids"][:count],
                            halt=True) >= count


@needs_arm
def test_qemu_build_matches_reference(family):
    result = build(family["path"], "mps2-an500", 4, family["folder"] / "mps2-int4",
                   calibration_puzzles=8)
    lines = []
    with run_qemu(result.out_dir / "firmware.elf", "mps2-an500") as session:
        client = Client(session.port, timeout=300.0)
        client.wait_ready(timeout=30.0)
        summary = run_puzzles(client, family["inputs"][-1:], result.qmodel,
                              printer=lines.append, task=family["task"],
                              puzzle_ids=family["ids"][-1:])
    assert summary.mismatches == [], "\n".join(lines)
    assert summary.steps_checked == family["config"].halt_max_steps


def test_hrm_uses_separate_networks():
    model = make_tiny_model(0, TINY_HRM)
    net_l, net_h = model.nets
    assert net_l is not net_h
    assert len(net_h.layers) == 2
    assert [list(r) for r in calibrate.net_layers(TINY_HRM)] == [[0], [1, 2]]
    assert [list(r) for r in calibrate.net_layers(TINY_ATT)] == [[0, 1], [0, 1]]


def test_integer_attention_tracks_float_attention():
    """The kernel's arithmetic against float RoPE + softmax attention on random data."""
    from rrgen.fixedpoint import rope_q14
    from rrgen.quantize import make_attention
    from rrgen.ir import Node

    rng = np.random.default_rng(0)
    positions, heads, dim = 20, 2, 16
    width = heads * dim
    # q and k up to 1.3 and v up to 6.4: scores of a few units, a softmax that is not one-hot.
    s_q, s_k, s_v = 0.01, 0.01, 0.05
    qkv = rng.integers(-127, 128, size=(3, positions, 3 * width))
    node = Node("attention", "attention", ["qkv"], "out",
                {"heads": heads, "head_dim": dim, "rope": True, "theta": 10000.0})
    scales = np.repeat([s_q, s_k, s_v], width)
    real = torch.from_numpy(qkv * scales).float()
    cos, sin = rope_tables(positions, dim, 10000.0)
    want = attention(real, cos, sin, heads).numpy()
    s_out = float(np.abs(want).max()) / 127
    params = make_attention(node, positions, s_q, s_k, s_v, s_out, "test")
    got = reference.attention(qkv, params) * s_out
    error = np.abs(got - want)
    assert error.max() < 2 * s_out
    assert error.mean() < 0.5 * s_out
    assert params.cos.shape == (positions, dim // 2)
    assert np.array_equal(rope_q14(positions, dim, 10000.0, False)[1], np.zeros((positions, dim // 2)))


def test_build_rejects_wrong_task(maze_family):
    family = maze_family
    with pytest.raises(BuildError, match=r"--task sudoku does not match the model.*'maze'"):
        build(family["path"], "host", 8, family["folder"] / "wrong-task", calibration_puzzles=2,
              task="sudoku")
    assert not (family["folder"] / "wrong-task").exists()


def test_run_reads_a_maze_file_and_prints_grids(maze_family, capsys):
    family = maze_family
    out = family["folder"] / "cli-host"
    assert cli.main(["build", "--board", "host", "--model", str(family["path"]), "--out",
                     str(out), "--calibration", "4", "--task", "maze"]) == 0
    puzzles = family["folder"] / "mazes.txt"
    assert cli.main(["puzzles", "--task", "maze", "--out", str(puzzles), "--count", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--board", "host", "--build", str(out), str(puzzles),
                     "--check"]) == 0
    text = capsys.readouterr().out
    assert "bit-exact check passed: 6 steps of 2 puzzles" in text
    grid_lines = [line for line in text.splitlines() if len(line) == 9 and set(line) <= set("# SGo?")]
    assert len(grid_lines) == 36      # two puzzles and two predicted grids, 9 rows each


def test_onnx_step_builds_to_the_same_integer_model(maze_family, capsys):
    """export-onnx, then build --model step.onnx: the same weights, so the same model id."""
    folder = maze_family["folder"]
    step = folder / "step.onnx"
    assert cli.main(["export-onnx", "--model", str(maze_family["path"]), "--out", str(step)]) == 0
    direct = build(maze_family["path"], "host", 8, folder / "from-checkpoint", calibration_puzzles=4)
    assert cli.main(["build", "--board", "host", "--model", str(step), "--out",
                     str(folder / "from-onnx"), "--calibration", "4"]) == 0
    assert f"model 0x{direct.qmodel.model_id():08x}" in capsys.readouterr().out


def test_public_checkpoint_builds_and_runs_bit_exact(tmp_path, capsys):
    """A public-code HRM checkpoint (synthetic, public key names) through build and run."""
    from test_public_import import HRM_NAME, arch_settings, public_state_dict, write_checkpoint

    settings = arch_settings(name=HRM_NAME, H_layers=1, L_layers=1, H_cycles=1, L_cycles=2)
    del settings["puzzle_emb_len"], settings["mlp_t"], settings["no_ACT_continue"]
    sd = public_state_dict(settings, seq_len=81, prefix="model.inner.")
    path, config = write_checkpoint(tmp_path, sd, settings)
    out = tmp_path / "host"
    assert cli.main(["build", "--board", "host", "--model", str(path), "--public-config",
                     str(config), "--out", str(out), "--calibration", "4", "--task", "sudoku"]) == 0
    puzzles = tmp_path / "sudoku.txt"
    assert cli.main(["puzzles", "--out", str(puzzles), "--count", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--board", "host", "--build", str(out), str(puzzles), "--check",
                     "--max-steps", "2"]) == 0
    assert "bit-exact check passed: 4 steps of 2 puzzles" in capsys.readouterr().out
