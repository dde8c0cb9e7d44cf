"""The shipped zoo: every named model loads, builds for the host and solves a few puzzles.

Each zoo checkpoint in codegen/rrgen/checkpoints/ is built at INT8 for the host, and 20
held-out puzzles of its task run on that build. The figure checked is a floor far below
the accuracy in docs/models.md, so the test catches a broken or swapped checkpoint, not
a small regression.

Run: python -m pytest tests/test_zoo.py
"""

import numpy as np
import pytest
import torch

from rrgen import frontend, tasks, zoo
from rrgen.build import build
from rrgen.run import run_batch
from rrgen.train import scores

# Fraction of supervised cells right on 20 held-out puzzles, far below docs/models.md.
CELL_FLOOR = {"sudoku-mlp": 0.95, "sudoku-att": 0.5, "maze-att": 0.8, "hrm-maze": 0.8}


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_model_builds_and_solves(name, tmp_path):
    model = frontend.load_model(name)
    assert model.config == zoo.config(name)
    task = tasks.get_task(model.config.task, model.config.seq_len)
    inputs, labels, _ = task.generate(20, tasks.TEST_SEED)
    result = build(name, "host", 8, tmp_path / "host", calibration_puzzles=8)
    records = run_batch(result.out_dir / "batch", inputs)
    final = torch.from_numpy(np.stack([r["tokens"][-1] for r in records]).astype(np.int64))
    right, _ = scores(final, torch.from_numpy(labels))
    cell = right.sum().item() / (labels != 0).sum()
    assert cell >= CELL_FLOOR[name], f"{name}: {cell:.3f} of cells right"


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(ValueError, match=r"'no-such-model' is neither a zoo name \(hrm-maze, "
                                         r"maze-att, sudoku-att, sudoku-mlp\)"):
        frontend.load_model("no-such-model")
