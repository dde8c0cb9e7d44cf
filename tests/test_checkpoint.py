"""Checks codegen/rrgen/checkpoint.py: safetensors checkpoints with rrgen metadata.

A saved tiny model loads back with the same state dict, config and training notes. Every
unusable file raises CheckpointError with a message naming the file and the problem:
missing, truncated, random bytes, no rrgen metadata, wrong version, invalid config, a
tensor of the wrong shape, a missing or unexpected key, a NaN weight. A save that fails
part-way leaves neither a new file nor a temporary file, and keeps an older checkpoint.

Run: cd codegen && python -m pytest ../tests/test_checkpoint.py
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rrgen import checkpoint
from rrgen.checkpoint import CheckpointError


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def rrgen_metadata(model, **overrides) -> dict[str, str]:
    metadata = {"format": checkpoint.FORMAT, "version": str(checkpoint.VERSION),
                "config": model.config.to_json(), "training": "{}"}
    metadata.update(overrides)
    return metadata


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    checkpoint.save(tiny_model, path, training={"steps": 5, "loss": 1.25})
    return path


# Round trip ----------------------------------------------------------------------------------

def test_save_load_round_trip(tiny_model, saved):
    loaded = checkpoint.load(saved)
    assert loaded.config == tiny_model.config
    expected, actual = tiny_model.state_dict(), loaded.state_dict()
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    assert loaded.training_notes == {"steps": 5, "loss": 1.25}
    assert loaded.source_path == saved
    assert not loaded.training


def test_metadata_records_format_version_and_config(tiny_model, saved):
    metadata = checkpoint.read_metadata(saved)
    assert metadata["format"] == "rrgen-trm"
    assert metadata["version"] == "1"
    assert json.loads(metadata["config"]) == json.loads(tiny_model.config.to_json())


def test_save_replaces_existing_file(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old contents")
    checkpoint.save(tiny_model, path)
    assert checkpoint.load(path).config == tiny_model.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# Unusable files ------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match=r"absent.safetensors' not found"):
        checkpoint.load(path)


@pytest.mark.parametrize("keep_bytes", [4, 40, -100])
def test_truncated_file(saved, tmp_path, keep_bytes):
    data = saved.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[:keep_bytes])
    with pytest.raises(CheckpointError, match=r"truncated.safetensors"):
        checkpoint.load(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint.load(path)


def test_safetensors_without_rrgen_metadata(tiny_model, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(state_of(tiny_model), str(path))
    with pytest.raises(CheckpointError, match="has format None, expected 'rrgen-trm'"):
        checkpoint.load(path)


def test_wrong_format_string(tiny_model, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(state_of(tiny_model), str(path), metadata=rrgen_metadata(tiny_model, format="hf"))
    with pytest.raises(CheckpointError, match="has format 'hf'"):
        checkpoint.load(path)


def test_wrong_version(tiny_model, tmp_path):
    path = tmp_path / "v2.safetensors"
    save_file(state_of(tiny_model), str(path), metadata=rrgen_metadata(tiny_model, version="2"))
    with pytest.raises(CheckpointError, match="has version '2', this rrgen reads version 1"):
        checkpoint.load(path)


@pytest.mark.parametrize("config", ["{not json", json.dumps({"hidden_size": 16, "colour": 1}),
                                    json.dumps({"hidden_size": 1})])
def test_invalid_config(tiny_model, tmp_path, config):
    path = tmp_path / "config.safetensors"
    save_file(state_of(tiny_model), str(path), metadata=rrgen_metadata(tiny_model, config=config))
    with pytest.raises(CheckpointError, match="has an invalid config"):
        checkpoint.load(path)


def test_missing_config(tiny_model, tmp_path):
    path = tmp_path / "noconfig.safetensors"
    metadata = rrgen_metadata(tiny_model)
    del metadata["config"]
    save_file(state_of(tiny_model), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="has an invalid config"):
        checkpoint.load(path)


def test_tensor_with_wrong_shape(tiny_model, tmp_path):
    tensors = state_of(tiny_model)
    tensors["lm_head.weight"] = torch.zeros(11, 17)
    path = tmp_path / "shape.safetensors"
    save_file(tensors, str(path), metadata=rrgen_metadata(tiny_model))
    with pytest.raises(CheckpointError,
                       match=r"tensor 'lm_head.weight' has shape \(11, 17\), the config needs \(11, 16\)"):
        checkpoint.load(path)


def test_missing_key(tiny_model, tmp_path):
    tensors = state_of(tiny_model)
    del tensors["L_level.layers.1.mlp.down_proj.weight"]
    path = tmp_path / "missing.safetensors"
    save_file(tensors, str(path), metadata=rrgen_metadata(tiny_model))
    with pytest.raises(CheckpointError,
                       match=r"missing keys \['L_level.layers.1.mlp.down_proj.weight'\], "
                             r"unexpected keys \[\]"):
        checkpoint.load(path)


def test_unexpected_key(tiny_model, tmp_path):
    tensors = state_of(tiny_model)
    tensors["extra.weight"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    save_file(tensors, str(path), metadata=rrgen_metadata(tiny_model))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra.weight'\]"):
        checkpoint.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight(tiny_model, tmp_path, value):
    tensors = state_of(tiny_model)
    tensors["L_level.layers.0.mlp_t.gate_up_proj.weight"][3, 4] = value
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata=rrgen_metadata(tiny_model))
    with pytest.raises(CheckpointError, match=r"tensor 'L_level.layers.0.mlp_t.gate_up_proj.weight' "
                                              r"contains NaN or Inf"):
        checkpoint.load(path)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


# Failed saves --------------------------------------------------------------------------------

def test_failed_save_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", write_half_then_fail)
    path = tmp_path / "new.safetensors"
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tiny_model, path)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_older_checkpoint(tiny_model, saved, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(saved.read_bytes())

    def fail(tensors, filename, metadata=None):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint, "save_file", fail)
    with pytest.raises(OSError):
        checkpoint.save(tiny_model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert path.read_bytes() == saved.read_bytes()
