"""The model zoo: named configurations and the checkpoints shipped for them.

First stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
`--model` takes a zoo name or a checkpoint path; `train --arch` takes a zoo name.
"""

from __future__ import annotations

from pathlib import Path

from .config import (HRM_MAZE_SMALL, MAZE_ATT_SMALL, SUDOKU_ATT_SMALL, SUDOKU_SMALL,
                     TRMConfig)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

# name -> (config, shipped checkpoint file)
ZOO: dict[str, tuple[TRMConfig, str]] = {
    "sudoku-mlp": (SUDOKU_SMALL, "sudoku_mlp_h64.safetensors"),
    "sudoku-att": (SUDOKU_ATT_SMALL, "sudoku_att_h64.safetensors"),
    "maze-att": (MAZE_ATT_SMALL, "maze9_att_h64.safetensors"),
    "hrm-maze": (HRM_MAZE_SMALL, "maze9_hrm_h64.safetensors"),
}
DEFAULT = "sudoku-mlp"


def config(name: str) -> TRMConfig:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known models are {sorted(ZOO)}")
    return ZOO[name][0]


def checkpoint_path(name: str) -> Path:
    """Return the path of a zoo model's shipped checkpoint."""
    config(name)
    return CHECKPOINT_DIR / ZOO[name][1]


def resolve(model: str | None) -> Path:
    """Resolve a `--model` value (zoo name, checkpoint path, or None for the default) to a path."""
    if model is None:
        return checkpoint_path(DEFAULT)
    if model in ZOO:
        return checkpoint_path(model)
    return Path(model)
