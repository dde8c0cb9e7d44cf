"""Weight schemes (compress.py) and the precision sweep (sweep.py, `rrgen sweep`).

Each scheme is checked for what it stores: the number of distinct levels per tensor,
channel or group, and the float casts. The sweep runs on the tiny model through the CLI
and must write its table, JSON and three plots, with fp32 at fidelity 1 against itself.

Run: python -m pytest tests/test_sweep.py
"""

import json

import numpy as np
import pytest
import torch

from rrgen import cli, compress, sweep


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return torch.randn(12, 70)


def levels(values: torch.Tensor) -> int:
    return len(torch.unique(values))


def test_int8_per_channel_levels(weight):
    q = compress.fake_quantize(weight, "int8")
    for row, original in zip(q, weight):
        assert levels(row) <= 255
        step = original.abs().max() / 127
        assert torch.allclose(row / step, torch.round(row / step), atol=1e-4)


def test_int4_naive_one_scale_per_tensor(weight):
    q = compress.fake_quantize(weight, "int4-naive")
    assert levels(q) <= 15
    assert torch.isclose(q.abs().max(), weight.abs().max())


def test_int4_groups_have_own_scales(weight):
    q = compress.fake_quantize(weight, "int4-g32")
    assert q.shape == weight.shape
    assert levels(q) > 15                      # more than one scale in the tensor
    for start in range(0, 70, 32):
        assert levels(q[0, start:start + 32]) <= 15


def test_int4_calibrated_never_worse_than_max_scale(weight):
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(200, 70))
    calibrated = compress.fake_quantize(weight, "int4", inputs)
    plain = compress.round_symmetric(weight, weight.abs().amax(dim=1, keepdim=True) / 7, 7)
    x = torch.from_numpy(inputs).float()
    error_calibrated = ((x @ (weight - calibrated).T) ** 2).sum()
    error_plain = ((x @ (weight - plain).T) ** 2).sum()
    assert error_calibrated <= error_plain * 1.0001


def test_float_formats_are_casts(weight):
    assert torch.equal(compress.fake_quantize(weight, "fp16"), weight.half().float())
    assert torch.equal(compress.fake_quantize(weight, "bf16"), weight.bfloat16().float())
    assert torch.equal(compress.fake_quantize(weight, "fp32"), weight)


def test_unknown_scheme_rejected(weight):
    with pytest.raises(ValueError, match=r"unknown weight scheme 'int3'; use one of fp32"):
        compress.fake_quantize(weight, "int3")


def test_weight_bytes_shrink_with_bits(tiny_model):
    sizes = {s: compress.weight_bytes(tiny_model, s) for s in compress.SCHEMES}
    assert sizes["fp16"] * 2 == sizes["fp32"]
    assert sizes["int8"] < sizes["fp16"]
    assert sizes["int4-naive"] < sizes["int4"] < sizes["int4-g32"] < sizes["int8"]


def test_cosine_and_rank_correlation():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert np.allclose(sweep.cosine(a, b), [0.0, 1.0])
    assert sweep.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sweep.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_sweep_command_writes_table_json_plots(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--model", str(tiny_checkpoint), "--out", str(out), "--puzzles",
                     "12", "--calibration", "4", "--quiet", "--threads", "1",
                     "--h-cycles", "1,2", "--qat-steps", "2", "--check-puzzles", "6"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy_vs_bits.png", "accuracy_vs_macs.png", "fidelity_vs_exact.png",
                     "sweep.json", "sweep.md"]
    data = json.loads((out / "sweep.json").read_text())
    rows = len(compress.SCHEMES) + len(compress.INTEGER_SCHEMES)
    assert len(data["results"]) == 2 * rows
    results = {r["scheme"]: r for r in data["results"]
               if r["h_cycles"] == 1 and r["activations"] == "float"}
    deeper = {r["scheme"]: r for r in data["results"]
              if r["h_cycles"] == 2 and r["activations"] == "float"}
    integer = {(r["scheme"], r["h_cycles"]): r for r in data["results"]
               if r["activations"] == "int8"}
    assert sorted(results) == sorted(compress.SCHEMES)
    assert sorted({s for s, _ in integer}) == sorted(compress.INTEGER_SCHEMES)
    assert deeper["fp32"]["macs_per_puzzle"] > results["fp32"]["macs_per_puzzle"]
    assert deeper["fp32"]["fidelity"] < 1.0       # a different depth moves the carry
    assert results["fp32"]["fidelity"] == pytest.approx(1.0)
    assert results["int4-naive"]["fidelity"] < 1.0
    assert len(results["int8"]["fidelity_per_step"]) == 3
    assert 0.0 <= results["int4"]["agreement"] <= 1.0
    assert results["fp16"]["agreement"] is None
    for row in integer.values():
        # The generated C against the numpy reference: one differing byte fails.
        assert row["reference_checked"] == 6
        assert row["reference_equal"] == 6, row["scheme"]
        assert 0.0 < row["fidelity"] < 1.0
    assert integer[("prune25", 2)]["bits"] == 8
    assert integer[("prune25", 2)]["weight_bytes"] < integer[("int8", 2)]["weight_bytes"]
    assert data["meta"]["qat_steps"] == 2
    text = (out / "sweep.md").read_text()
    assert "| int4-g32 | float | 2 | 4 |" in text
    assert "| int4-qat | int8 | 2 | 4 |" in text
    assert "6 of 6 puzzles equal" in text
    assert (out / "accuracy_vs_bits.png").read_bytes()[:4] == b"\x89PNG"


def test_integer_model_naive_has_one_scale_per_tensor(tiny_model):
    from rrgen import calibrate

    cal = calibrate.calibration_data(tiny_model.config, 4)
    naive = compress.integer_model(tiny_model, "int4-naive", cal)
    calibrated = compress.integer_model(tiny_model, "int4", cal)
    for node in naive.graph.nodes:
        if node.op == "linear":
            p, c = naive.blocks[0][node.name], calibrated.blocks[0][node.name]
            assert len(np.unique(p.weight_scale)) == 1
            assert np.abs(p.weight).max() == 7
            assert len(np.unique(c.weight_scale)) > 1
    with pytest.raises(ValueError, match="has no integer model"):
        compress.integer_model(tiny_model, "bf16", cal)


def test_straight_through_rounds_forward_and_passes_gradient(weight):
    w = weight.clone().requires_grad_(True)
    q = compress.StraightThrough("int4-naive")(w)
    assert torch.equal(q.detach(), compress.fake_quantize(weight, "int4-naive"))
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_qat_fine_tune_saves_float_weights(tiny_model, tmp_path):
    from rrgen import checkpoint
    from rrgen.train import TrainOptions, train

    opts = TrainOptions(steps=2, batch=4, lr=1e-3, ema=0.0, pool=20, warmup_steps=1,
                        eval_every=2, eval_puzzles=4, fake_quant="int4-naive")
    tuned = train(tiny_model.config, opts, tmp_path / "qat.safetensors", progress=lambda _: None,
                  start=tiny_model)
    names = set(checkpoint.load(tmp_path / "qat.safetensors").state_dict())
    assert names == set(tiny_model.state_dict())          # no parametrization keys
    before = compress.block_linears(tiny_model)
    after = compress.block_linears(tuned)
    changed = [k for k in before if not torch.equal(before[k].weight, after[k].weight)]
    assert changed                                          # the fine-tune moved the weights
    assert levels(after[changed[0]].weight) > 15           # float master weights, not rounded


def test_sweep_rejects_bad_activations(tiny_checkpoint, tmp_path, capsys):
    code = cli.main(["sweep", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "s"),
                     "--activations", "int16", "--quiet"])
    assert code == 2
    assert "--activations 'int16' is invalid; use float, int8" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sweep_rejects_foreign_folder(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code = cli.main(["sweep", "--model", str(tiny_checkpoint), "--out", str(tmp_path),
                     "--puzzles", "2", "--quiet"])
    assert code == 2
    assert "is not an earlier sweep" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_prune25_zeroes_a_quarter_of_swiglu_channels(tiny_model):
    pruned = compress.compress_model(tiny_model, "prune25")
    mlp = pruned.L_level.layers[0].mlp
    inter = mlp.down_proj.in_features
    dead = (mlp.down_proj.weight.abs().sum(0) == 0)
    assert int(dead.sum()) == int(0.25 * inter)
    assert torch.all(mlp.gate_up_proj.weight[:inter][dead] == 0)
    assert torch.all(mlp.gate_up_proj.weight[inter:][dead] == 0)
    original = tiny_model.L_level.layers[0].mlp
    assert torch.equal(mlp.down_proj.weight[:, ~dead], original.down_proj.weight[:, ~dead])
    assert compress.weight_bytes(tiny_model, "prune25") < compress.weight_bytes(tiny_model, "fp32")


def test_sweep_bits_auto_adds_the_mixed_row(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "auto"
    assert cli.main(["sweep", "--model", str(tiny_checkpoint), "--out", str(out), "--puzzles",
                     "8", "--calibration", "4", "--quiet", "--threads", "1", "--schemes",
                     "fp32", "--bits", "auto", "--board", "stm32h7", "--flash-budget", "55000",
                     "--check-puzzles", "4"]) == 0
    data = json.loads((out / "sweep.json").read_text())
    auto = [r for r in data["results"] if r["scheme"] == "auto"]
    assert len(auto) == 1
    assert auto[0]["activations"] == "int8"
    assert auto[0]["reference_equal"] == auto[0]["reference_checked"] == 4
    precision = data["meta"]["precision"]
    assert precision["board"] == "stm32h7"
    assert 0 < precision["int4_layers"] < precision["layers"]    # a real mixture
    assert auto[0]["weight_bytes"] == precision["weight_bytes"] <= precision["weight_budget_bytes"]
    assert "## --bits auto" in (out / "sweep.md").read_text()


def test_sweep_rejects_uniform_bits(tiny_checkpoint, tmp_path, capsys):
    code = cli.main(["sweep", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "s"),
                     "--bits", "4", "--quiet"])
    assert code == 2
    assert "--bits 4 is not supported by sweep; use --bits auto" in capsys.readouterr().err


def test_train_init_errors_name_the_option(tmp_path, capsys):
    code = cli.main(["train", "--init", str(tmp_path / "none.safetensors"), "--out",
                     str(tmp_path / "x.safetensors"), "--steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--init" in err
    assert "not found" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_train_init_mismatch_lists_fields(tmp_path, capsys):
    from rrgen import zoo

    code = cli.main(["train", "--arch", "maze-att", "--init", str(zoo.checkpoint_path("sudoku-mlp")),
                     "--out", str(tmp_path / "y.safetensors"), "--steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "differs from the training config in vocab_size 11" in err
    assert "TRMConfig(" not in err
