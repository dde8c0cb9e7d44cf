"""Checks the calibration budget and the faster calibration code.

plan_calibration must keep a model within the budget as asked, then cut puzzles, then
steps. A build over the budget must record what it ran. The Gram-matrix form of the
clip-ratio search must choose the scales that the direct ||X d||^2 form chooses, and the
chunked row storage must hold the same rows as one array per call would.

Run: python -m pytest tests/test_calibration_budget.py
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rrgen import calibrate, quantize
from rrgen.build import build, stage
from rrgen.quantize import CLIP_RATIOS, choose_weight_scales
from rrgen.trace import trace_block


@pytest.fixture(scope="module")
def graph(tiny_model):
    return trace_block(tiny_model.L_level.layers[0], tiny_model.config)


def test_within_budget_runs_as_asked(tiny_model, graph):
    cfg = tiny_model.config
    assert calibrate.plan_calibration(cfg, graph, 64) == (64, cfg.halt_max_steps)
    assert calibrate.plan_calibration(cfg, graph, 64, None) == (64, cfg.halt_max_steps)


def test_over_budget_cuts_puzzles_then_steps(tiny_model, graph):
    cfg = tiny_model.config
    per_step = calibrate.step_macs(cfg, graph)
    per_puzzle = per_step * cfg.halt_max_steps
    assert calibrate.plan_calibration(cfg, graph, 64, 5.5 * per_puzzle) == (5, cfg.halt_max_steps)
    assert calibrate.plan_calibration(cfg, graph, 64, per_puzzle) == (1, cfg.halt_max_steps)
    assert calibrate.plan_calibration(cfg, graph, 64, 2.5 * per_step) == (1, 2)
    assert calibrate.plan_calibration(cfg, graph, 64, 1) == (1, 1)


def test_every_shipped_model_is_within_the_default_budget():
    from rrgen import frontend, zoo

    for name in zoo.ZOO:
        model = frontend.load_model(name)
        cfg = model.config
        g = trace_block(model.L_level.layers[0], cfg)
        assert calibrate.plan_calibration(cfg, g, 64) == (64, cfg.halt_max_steps), name


def test_build_over_budget_records_what_ran(tiny_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rrgen")
    result = build(tiny_checkpoint, "host", 8, tmp_path / "b", calibration_puzzles=4,
                   calibration_macs=1)
    info = json.loads((tmp_path / "b" / "build.json").read_text())
    assert info["calibration_used"] == [1, 1]
    assert result.report["calibration"]["puzzles"] == 1
    assert "1 of 4 calibration puzzles x 1 of 3 steps" in (tmp_path / "b/src/model.c").read_text()
    assert any("calibrating on 1 of 4 puzzles" in r.getMessage() for r in caplog.records)
    stages = [r.getMessage().split(":")[0] for r in caplog.records
              if r.getMessage().startswith("stage ")]
    assert stages == ["stage load", "stage calibrate", "stage quantize", "stage plan+emit",
                      "stage compile+link", "stage finish"]


def test_stage_reports_the_memory_it_allocates(caplog):
    caplog.set_level(logging.INFO, logger="rrgen.build")
    with stage("probe"):
        block = np.ones(64 << 20, dtype=np.uint8)   # 64 MiB, touched
        time.sleep(0.2)   # long enough for the 5 ms sampler on a loaded machine
        del block
    line = caplog.records[-1].getMessage()
    before = int(line.split("peak RSS ")[1].split()[0])
    caplog.clear()
    with stage("idle"):
        pass
    after = int(caplog.records[-1].getMessage().split("peak RSS ")[1].split()[0])
    assert before >= after + 60, (before, after)


def direct_scales(w, x, qmax):
    """The clip-ratio search with the error in its direct form ||X (w - w_q)^T||^2."""
    maxabs = np.abs(w).max(axis=1)
    best_err, best = np.full(len(w), np.inf), maxabs / qmax
    for ratio in CLIP_RATIOS:
        scale = ratio * maxabs / qmax
        wq = np.clip(np.round(w / scale[:, None]), -qmax, qmax) * scale[:, None]
        err = ((x @ (w - wq).T) ** 2).sum(axis=0)
        best = np.where(err < best_err, scale, best)
        best_err = np.minimum(err, best_err)
    return best


@pytest.mark.parametrize("qmax", [7, 127])
def test_gram_search_chooses_the_direct_scales(qmax):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((48, 24))
    x = rng.standard_normal((300, 24)) * rng.uniform(0.1, 3.0, 24)   # more rows: Gram form
    assert np.array_equal(choose_weight_scales(w, x, qmax), direct_scales(w, x, qmax))
    few = x[:10]                                                       # fewer rows: direct
    assert np.array_equal(choose_weight_scales(w, few, qmax), direct_scales(w, few, qmax))


def test_chunked_rows_equal_one_array_per_call(monkeypatch):
    monkeypatch.setattr(calibrate, "ROW_CHUNK", 5)
    stats = calibrate.Stats(rows_per_call=3)
    naive, rng = [], np.random.default_rng(0)
    for call in range(7):
        tensor = torch.randn(2, 4 + call % 2, 6)
        stats.sample_rows("k", tensor)
        flat = tensor.reshape(-1, 6)
        naive.append(flat[torch.from_numpy(rng.choice(len(flat), size=3, replace=False))].numpy())
    stats.finish()
    assert [len(c) for c in stats.rows["k"]] == [5, 5, 5, 5, 1]
    assert np.array_equal(np.concatenate(stats.rows["k"]), np.concatenate(naive))


def test_observe_equals_abs_max():
    stats = calibrate.Stats()
    for values in ([-3.0, 2.0], [1.0, 2.5], [-0.0, 0.0]):
        stats.observe(str(values), torch.tensor(values))
        assert stats.maxabs[str(values)] == float(torch.tensor(values).abs().max())
    with pytest.raises(ValueError, match="NaN or Inf"):
        stats.observe("bad", torch.tensor([1.0, float("nan")]))


def test_quantize_model_reports_rows_in_float32(tiny_model, tiny_calibration_tokens):
    graph, stats = quantize.calibrate_model(tiny_model, calibration_tokens=tiny_calibration_tokens)
    assert (stats.puzzles, stats.steps) == (8, tiny_model.config.halt_max_steps)
    assert all(c.dtype == np.float32 for rows in stats.rows.values() for c in rows)


def test_negative_calibration_macs_rejected(tmp_path):
    codegen = Path(__file__).resolve().parents[1] / "codegen"
    result = subprocess.run([sys.executable, "-m", "rrgen", "build", "--board", "host",
                             "--calibration-macs", "-1", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(codegen)))
    assert result.returncode == 2
    assert "--calibration-macs -1 is invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
