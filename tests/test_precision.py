"""Per-layer mixed precision (INT4 and INT8 block linears in one model) and --bits auto.

A hand-set mixture, with one linear whose bits differ between blocks, must build for the
host and for QEMU's Cortex-M7 and equal the integer reference at every step.
choose_precision must fit its budget by demoting layers in order of their measured
sensitivity per byte saved. `build --bits auto` must fit the flash budget it is given,
report its per-layer choice and link for the STM32H743, and bad options must fail with
one line and leave no output folder.

Run: python -m pytest tests/test_precision.py   (about 40 seconds)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rrgen import calibrate, precision, quantize, reference, sudoku
from rrgen.build import BuildError, build, weight_bytes
from rrgen.run import compare, run_batch

REPO = Path(__file__).resolve().parents[1]

# mlp_t_gate_up_proj is INT4 in both blocks, mlp_gate_up_proj and mlp_t_down_proj INT8 in
# both, and mlp_down_proj INT4 in block 0 but INT8 in block 1 (dispatched at run time).
MIXTURE = {"L0.mlp_t.gate_up_proj.weight": 4, "L1.mlp_t.gate_up_proj.weight": 4,
           "L0.mlp.down_proj.weight": 4}

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm missing: install qemu-system-arm")


def rrgen(*args):
    environment = dict(os.environ, PYTHONPATH=str(REPO / "codegen"))
    return subprocess.run([sys.executable, "-m", "rrgen", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=600)


def assert_nothing_written(folder: Path):
    assert not folder.exists()
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert leftovers == []


def check_every_step(qm, batch: Path, tokens: np.ndarray) -> int:
    """Compare the host build's tokens, q_halt and carry with the reference; return steps."""
    carry = qm.config.positions * qm.config.hidden_size
    records = run_batch(batch, tokens, carry_bytes=carry)
    ref = reference.solve(qm, tokens)
    checked = 0
    for i, record in enumerate(records):
        assert record["status"] == 0
        for step in range(record["steps_used"]):
            pairs = (("tokens", record["tokens"][step], ref.tokens[step, i]),
                     ("q_halt", [record["q_halt"][step]], [ref.q_halt[step, i]]),
                     ("carry y", record["y"][step], ref.y[step, i]),
                     ("carry z", record["z"][step], ref.z[step, i]))
            for name, actual, expected in pairs:
                mismatch = compare(name, i, step + 1, actual, expected)
                assert mismatch is None, str(mismatch)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def mixed_qmodel(tiny_model, tiny_calibration_tokens):
    return quantize.quantize_model(tiny_model, 8, calibration_tokens=tiny_calibration_tokens,
                                   layer_bits=MIXTURE)


@pytest.fixture(scope="module")
def calibration(tiny_model):
    return calibrate.calibration_data(tiny_model.config, 4)


@pytest.fixture(scope="module")
def sizes(tiny_qmodels):
    return {bits: weight_bytes(tiny_qmodels[bits]) for bits in (8, 4)}


# ---------------------------------------------------------------------------------------
# The mixed QModel
# ---------------------------------------------------------------------------------------

def test_mixture_takes_each_layer_from_its_bits(mixed_qmodel, tiny_qmodels):
    layer_bits = mixed_qmodel.layer_bits()
    assert len(layer_bits) == 8
    for key, bits in layer_bits.items():
        assert bits == MIXTURE.get(key, 8), key
    assert mixed_qmodel.is_mixed()
    assert mixed_qmodel.bits == 4
    for layer, params in enumerate(mixed_qmodel.blocks):
        for node in mixed_qmodel.graph.nodes:
            if node.op == "linear":
                bits = layer_bits[quantize.linear_key(layer, node)]
                expected = tiny_qmodels[bits].blocks[layer][node.name]
                np.testing.assert_array_equal(params[node.name].weight, expected.weight)
                np.testing.assert_array_equal(params[node.name].multiplier, expected.multiplier)


def test_model_id_differs_between_mixtures(mixed_qmodel, tiny_model, tiny_calibration_tokens,
                                           tiny_qmodels):
    other = quantize.quantize_model(tiny_model, 8, calibration_tokens=tiny_calibration_tokens,
                                    layer_bits={**MIXTURE, "L1.mlp.down_proj.weight": 4,
                                                "L0.mlp.down_proj.weight": 8})
    ids = {mixed_qmodel.model_id(), other.model_id(), tiny_qmodels[8].model_id(),
           tiny_qmodels[4].model_id()}
    assert len(ids) == 4


def test_layer_bits_of_every_layer_equal_uniform_bits(tiny_model, tiny_calibration_tokens,
                                                      tiny_qmodels):
    keys = tiny_qmodels[8].layer_bits()
    all4 = quantize.quantize_model(tiny_model, 8, calibration_tokens=tiny_calibration_tokens,
                                   layer_bits=dict.fromkeys(keys, 4))
    assert not all4.is_mixed()
    assert all4.bits == 4
    assert all4.model_id() == tiny_qmodels[4].model_id()


def test_mix_bits_equals_quantizing_the_mixture(mixed_qmodel, tiny_model,
                                                tiny_calibration_tokens):
    graph, stats = quantize.calibrate_model(tiny_model, calibration_tokens=tiny_calibration_tokens)
    uniform = {bits: quantize.quantize_with_stats(tiny_model, graph, stats, bits)
               for bits in (8, 4)}
    mixed = quantize.mix_bits(uniform, MIXTURE)
    assert mixed.model_id() == mixed_qmodel.model_id()
    assert mixed.errors == mixed_qmodel.errors
    assert uniform[8].layer_bits() == dict.fromkeys(mixed.layer_bits(), 8)


def test_mixture_save_load_round_trip(mixed_qmodel, tmp_path):
    path = tmp_path / "mixed.npz"
    quantize.save_qmodel(mixed_qmodel, path)
    loaded = quantize.load_qmodel(path)
    assert loaded.layer_bits() == mixed_qmodel.layer_bits()
    assert loaded.bits == 4
    assert loaded.model_id() == mixed_qmodel.model_id()


def test_unknown_layer_key_is_rejected(tiny_model, tiny_calibration_tokens):
    with pytest.raises(ValueError, match=r"unknown layer 'L7\.mlp\.down_proj\.weight'.*"
                                         r"L0\.mlp_t\.gate_up_proj\.weight"):
        quantize.quantize_model(tiny_model, 8, calibration_tokens=tiny_calibration_tokens,
                                layer_bits={"L7.mlp.down_proj.weight": 4})


def test_invalid_layer_bits_value_rejected(tiny_model, tiny_calibration_tokens):
    with pytest.raises(ValueError, match="= 5 is not supported; use 4 or 8"):
        quantize.quantize_model(tiny_model, 8, calibration_tokens=tiny_calibration_tokens,
                                layer_bits={"L0.mlp.down_proj.weight": 5})


# ---------------------------------------------------------------------------------------
# Builds of a hand-set mixture
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_host_build(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "host"
    return build(tiny_checkpoint, "host", 8, out, calibration_puzzles=8, layer_bits=MIXTURE)


def test_mixed_build_calls_each_kernel_kind(mixed_host_build):
    model_c = (mixed_host_build.out_dir / "src" / "model.c").read_text()
    assert "rr_linear_s4(&p->mlp_t_gate_up_proj," in model_c
    assert "rr_linear_s8(&p->mlp_gate_up_proj," in model_c
    assert "linear_by_bits(&p->mlp_down_proj, p->mlp_down_proj_bits," in model_c
    weights_c = (mixed_host_build.out_dir / "src" / "weights.c").read_text()
    assert [line.strip() for line in weights_c.splitlines() if "mlp_down_proj_bits" in line] == [
        ".mlp_down_proj_bits = 4,", ".mlp_down_proj_bits = 8,"]


def test_mixed_host_build_matches_reference_every_step(mixed_host_build):
    puzzles, _ = sudoku.generate(40, seed=11)
    tokens = sudoku.to_tokens(puzzles)
    qm = mixed_host_build.qmodel
    assert qm.is_mixed()
    assert check_every_step(qm, mixed_host_build.out_dir / "batch", tokens) == \
        40 * qm.config.halt_max_steps


def test_mixed_build_records_layer_bits(mixed_host_build):
    info = json.loads((mixed_host_build.out_dir / "build.json").read_text())
    assert info["bits"] == 8
    assert info["layer_bits"] == mixed_host_build.qmodel.layer_bits()
    report = json.loads((mixed_host_build.out_dir / "report.json").read_text())
    assert report["weight_bits"] == 4
    assert report["weight_precision"] == "INT4 and INT8"
    assert report["layer_bits"] == info["layer_bits"]
    assert "precision" not in report


def test_mixed_host_build_run_check_passes(mixed_host_build, tmp_path):
    puzzles = tmp_path / "p.txt"
    grids, _ = sudoku.generate(2, seed=sudoku.TEST_SEED)
    puzzles.write_text("".join(sudoku.format_grid(g) + "\n" for g in grids))
    result = rrgen("run", "--board", "host", "--build", mixed_host_build.out_dir, "--check",
                   puzzles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-exact check passed: 6 steps of 2 puzzles" in result.stdout
    assert "INT4 and INT8 weights" in result.stdout


@needs_arm
@needs_qemu
def test_mixed_build_matches_reference_in_qemu(tiny_checkpoint, tmp_path):
    from rrgen.client import Client
    from rrgen.qemu import run_qemu
    from rrgen.run import run_puzzles

    result = build(tiny_checkpoint, "mps2-an500", 8, tmp_path / "mps2", calibration_puzzles=8,
                   layer_bits=MIXTURE)
    grids, _ = sudoku.generate(2, seed=sudoku.TEST_SEED)
    lines = []
    with run_qemu(result.out_dir / "firmware.elf", "mps2-an500") as session:
        client = Client(session.port, timeout=120.0)
        client.wait_ready(timeout=30.0)
        summary = run_puzzles(client, sudoku.to_tokens(grids), result.qmodel,
                              printer=lines.append)
    assert summary.mismatches == [], "\n".join(lines)
    assert summary.steps_checked == 2 * result.qmodel.config.halt_max_steps


# ---------------------------------------------------------------------------------------
# The chooser
# ---------------------------------------------------------------------------------------

def independent_fidelity(model, calibration, layer_bits) -> float:
    """Carry fidelity through quantize_model and the fp32 model, without precision.py."""
    tokens, ids = calibration
    qm = quantize.quantize_model(model, 8, calibration_tokens=tokens, calibration_ids=ids,
                                 layer_bits=layer_bits)
    ints = reference.solve(qm, tokens, ids).y.astype(np.float64)
    with torch.no_grad():
        x = model.input_embeddings(torch.from_numpy(tokens), torch.from_numpy(ids))
        y, z = model.initial_carry(len(tokens))
        cosines = []
        for step in range(model.config.halt_max_steps):
            y, z, _, _ = model.step(y, z, x)
            for i in range(len(tokens)):
                a, b = ints[step, i].ravel(), y[i].numpy().astype(np.float64).ravel()
                cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(cosines))


@pytest.fixture(scope="module")
def between_choice(tiny_model, calibration, sizes):
    budget = (sizes[4] + sizes[8]) // 2
    return precision.choose_precision(tiny_model, budget, calibration, puzzles=4)


def test_chooser_fits_with_a_real_mixture(between_choice, sizes):
    choice = between_choice
    assert choice.weight_budget_bytes == (sizes[4] + sizes[8]) // 2
    assert choice.weight_bytes <= choice.weight_budget_bytes
    assert set(choice.layer_bits.values()) == {4, 8}
    assert choice.weight_bytes == sum(choice.layer_bytes.values())
    assert len(choice.sensitivity) == len(choice.layer_bits) == 8


def test_chooser_demotes_in_order_of_sensitivity_per_byte(between_choice, tiny_qmodels):
    choice = between_choice
    saved = {}
    for layer, params in enumerate(tiny_qmodels[8].blocks):
        for node in tiny_qmodels[8].graph.nodes:
            if node.op == "linear":
                rows, cols = params[node.name].weight.shape
                saved[quantize.linear_key(layer, node)] = rows * cols - rows * ((cols + 1) // 2)
    ratio = {key: choice.sensitivity[key] / saved[key] for key in saved}
    int4 = [key for key, bits in choice.layer_bits.items() if bits == 4]
    int8 = [key for key, bits in choice.layer_bits.items() if bits == 8]
    assert max(ratio[key] for key in int4) <= min(ratio[key] for key in int8)
    # It stops at the first fit: without its last demotion the weights would not fit.
    last = max(int4, key=lambda key: ratio[key])
    assert choice.weight_bytes + saved[last] > choice.weight_budget_bytes


def test_chooser_fidelities_match_independent_measurement(between_choice, tiny_model,
                                                         calibration):
    choice = between_choice
    int8 = independent_fidelity(tiny_model, calibration, {})
    assert choice.int8_fidelity == pytest.approx(int8, abs=1e-9)
    key = next(iter(choice.layer_bits))
    alone = independent_fidelity(tiny_model, calibration, {key: 4})
    assert choice.sensitivity[key] == pytest.approx(int8 - alone, abs=1e-9)
    assert choice.fidelity == pytest.approx(
        independent_fidelity(tiny_model, calibration, choice.layer_bits), abs=1e-9)


def test_chooser_table_lists_every_layer(between_choice):
    rows = between_choice.table().splitlines()[2:]
    assert len(rows) == 8
    for row, (key, bits) in zip(rows, between_choice.layer_bits.items()):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:2] == [key, str(bits)]
        assert float(cells[3]) == pytest.approx(between_choice.sensitivity[key], abs=1e-6)


def test_chooser_keeps_int8_when_it_fits(tiny_model, calibration, sizes):
    choice = precision.choose_precision(tiny_model, 10 * sizes[8], calibration, puzzles=4)
    assert set(choice.layer_bits.values()) == {8}
    assert choice.weight_bytes == sizes[8]
    assert choice.sensitivity == {}
    assert choice.fidelity == choice.int8_fidelity


def test_chooser_rejects_budget_below_int4(tiny_model, calibration, sizes):
    with pytest.raises(ValueError, match=f"need {sizes[4]:,} bytes even at INT4.*budget of "
                                         f"{sizes[4] - 1:,} bytes.*smaller model"):
        precision.choose_precision(tiny_model, sizes[4] - 1, calibration, puzzles=4)


# ---------------------------------------------------------------------------------------
# build --bits auto from the command line
# ---------------------------------------------------------------------------------------

@needs_arm
def test_auto_build_fits_stm32h7_flash_budget(tiny_checkpoint, tmp_path, sizes):
    int4 = build(tiny_checkpoint, "stm32h7", 4, tmp_path / "int4", calibration_puzzles=4)
    flash_int4 = next(r["used_bytes"] for r in int4.report["regions"] if r["name"] == "flash")
    budget = flash_int4 + (sizes[8] - sizes[4]) // 2
    out = tmp_path / "auto"
    result = rrgen("build", "--board", "stm32h7", "--bits", "auto", "--flash-budget", budget,
                   "--model", tiny_checkpoint, "--calibration", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "auto precision:" in result.stdout
    assert (out / "firmware.elf").is_file()

    report = json.loads((out / "report.json").read_text())
    flash = next(r for r in report["regions"] if r["name"] == "flash")
    assert flash["used_bytes"] <= budget
    chosen = report["precision"]
    assert set(chosen["layer_bits"].values()) == {4, 8}
    assert chosen["layer_bits"] == report["layer_bits"]
    assert chosen["flash_budget_bytes"] == budget
    assert chosen["weight_bytes"] == report["weight_bytes"] <= chosen["weight_budget_bytes"]
    assert set(chosen["sensitivity"]) == set(chosen["layer_bits"])
    assert 0 < chosen["fidelity"] <= 1
    assert f"{chosen['int4_layers']} of 8 layers INT4" in result.stdout

    info = json.loads((out / "build.json").read_text())
    assert info["bits"] == "auto"
    assert info["layer_bits"] == chosen["layer_bits"]
    assert "## Precision (--bits auto)" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, fragments", [
    (["--board", "host", "--bits", "5"], ["--bits 5", "4, 8 or auto"]),
    (["--board", "host", "--bits", "auto", "--flash-budget", "-1"], ["--flash-budget -1"]),
    (["--board", "host", "--bits", "auto", "--flash-budget", "abc"], ["--flash-budget abc"]),
    (["--board", "stm32h7", "--bits", "auto", "--flash-budget", "5000000"],
     ["5000000", "4194304"]),
    (["--board", "host", "--bits", "auto", "--flash-budget", "1000"],
     ["even at INT4", "1000"]),
], ids=["bits-5", "negative-budget", "text-budget", "budget-over-flash", "host-budget-too-small"])
def test_bad_auto_options_fail_in_one_line(tmp_path, tiny_checkpoint, args, fragments):
    out = tmp_path / "out"
    result = rrgen("build", *args, "--model", tiny_checkpoint, "--calibration", "4", "--out", out)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert_nothing_written(out)


@needs_arm
def test_auto_build_over_flash_budget_fails(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    result = rrgen("build", "--board", "stm32h7", "--bits", "auto", "--flash-budget", "30000",
                   "--model", tiny_checkpoint, "--calibration", "4", "--out", out)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in ("does not fit the flash budget of 30000 bytes", "stm32h7",
                     "even with INT4", "smaller model"):
        assert fragment in result.stderr
    assert_nothing_written(out)


def test_build_rejects_layer_bits_with_auto(tiny_checkpoint, tmp_path):
    with pytest.raises(BuildError, match="pass only one"):
        build(tiny_checkpoint, "host", "auto", tmp_path / "out", layer_bits=MIXTURE)
