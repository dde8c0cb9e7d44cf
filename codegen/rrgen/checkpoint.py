"""Checkpoints: weights plus config in safetensors, which cannot run code when loaded.

The file's metadata contains `format` (the magic string "rrgen-trm"), `version` (an integer
that the loader checks), `config` (TRMConfig as JSON) and free-form `training` notes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .config import TRMConfig
from .model import TRM

FORMAT = "rrgen-trm"
VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = PACKAGE_DIR / "checkpoints" / "sudoku_mlp_h64.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and the fix in the message."""


def save(model: TRM, path: str | Path, training: dict | None = None) -> Path:
    """Write `model` atomically: a temporary file is renamed only once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "version": str(VERSION), "config": model.config.to_json(),
                "training": json.dumps(training or {}, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp creates the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; pass a .safetensors "
                              "file with --model")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; pass an existing "
                              "file with --model or omit --model for the shipped default")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file "
                              f"({err}); re-create it with `python -m rrgen train`") from None


def load(path: str | Path | None = None) -> TRM:
    """Load a checkpoint written by save(); the shipped default when `path` is None."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}, "
                              f"expected {FORMAT!r}; it was not written by rrgen, so train "
                              "one with `python -m rrgen train`")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(f"checkpoint {str(path)!r} has version {meta.get('version')!r}, "
                              f"this rrgen reads version {VERSION}; re-train or convert it")
    try:
        config = TRMConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid config: {err}") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({err}); "
                              "re-create it with `python -m rrgen train`") from None
    model = TRM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its config: "
                              f"missing keys {missing}, unexpected keys {unexpected}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"checkpoint {str(path)!r}: tensor {key!r} has shape "
                                  f"{tuple(value.shape)}, the config needs {tuple(expected[key].shape)}")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {str(path)!r}: tensor {key!r} contains NaN or Inf; "
                                  "the training run diverged, use an earlier checkpoint")
    model.load_state_dict(tensors)
    model.eval()
    model.training_notes = json.loads(meta.get("training", "{}"))
    model.source_path = path
    return model
