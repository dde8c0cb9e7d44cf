"""Frontends: every way a model enters rrgen, resolved to one PyTorch TRM.

First stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
`--model` accepts:
- a zoo name (sudoku-mlp, sudoku-att, maze-att, hrm-maze): its shipped checkpoint;
- a `.safetensors` checkpoint written by `python -m rrgen train`;
- a `.onnx` recursion step (onnx_io.import_step), from rrgen or another framework;
- a checkpoint of the public TRM or HRM code (public_import.load_public), chosen by
  `--public-config YAML` or by any other file suffix (the public code writes `step_N`).
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoint, zoo
from .model import TRM


def load_model(spec: str | Path | None, public_config: str | Path | None = None,
               task: str | None = None) -> TRM:
    """Load the model named by a `--model` value; None is the shipped default.

    task is used only by public checkpoints, whose vocabulary may not name the task.
    Raises CheckpointError when the model's vocabulary or sequence length does not fit
    the task its config names.
    """
    model = _load(spec, public_config, task)
    check_task_shape(model)
    return model


def check_task_shape(model: TRM) -> None:
    """Raise CheckpointError when vocab_size or seq_len differs from the model's task."""
    from . import tasks

    cfg = model.config
    where = f"model {str(getattr(model, 'source_path', 'in memory'))!r}"
    try:
        task = tasks.get_task(cfg.task, cfg.seq_len if cfg.task == "maze" else None)
    except ValueError as err:
        raise checkpoint.CheckpointError(f"{where}: {err}") from None
    if cfg.seq_len != task.seq_len:
        raise checkpoint.CheckpointError(
            f"{where} has seq_len {cfg.seq_len}, but task {cfg.task!r} uses {task.seq_len} "
            f"positions; pass a model trained for {cfg.task}")
    if cfg.vocab_size != task.vocab_size:
        raise checkpoint.CheckpointError(
            f"{where} has vocab_size {cfg.vocab_size}, but task {cfg.task!r} uses "
            f"{task.vocab_size} tokens; pass a model trained for {cfg.task}")


def _load(spec, public_config, task) -> TRM:
    if spec is not None and str(spec) in zoo.ZOO:
        path = zoo.checkpoint_path(str(spec))
        if not path.is_file():
            raise checkpoint.CheckpointError(
                f"zoo model {spec!r} has no shipped checkpoint at {path}; train one with "
                f"`python -m rrgen train --arch {spec} --out FILE` and pass --model FILE")
        return checkpoint.load(path)
    path = zoo.resolve(None if spec is None else str(spec))
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        raise checkpoint.CheckpointError(
            f"--model {str(spec)!r} is neither a zoo name ({', '.join(sorted(zoo.ZOO))}) "
            "nor an existing file; pass one of those names or a checkpoint path")
    overrides = {"task": task} if task else None
    if public_config is not None:
        from .public_import import load_public
        return load_public(path, public_config, overrides)
    if path.suffix == ".onnx":
        from .onnx_io import import_step
        return import_step(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return checkpoint.load(path)   # also names a missing file or a folder clearly
    from .public_import import load_public
    return load_public(path, None, overrides)
