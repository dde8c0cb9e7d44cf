"""Import checkpoints written by the public TRM and HRM training code.

The public `pretrain.py` of TRM (SamsungSAILMontreal/TinyRecursiveModels) and HRM
(sapientinc/HRM) saves `torch.save(model.state_dict())` of the compiled loss head, so every
key starts with `_orig_mod.model.inner.` (`model.inner.` when compilation was off), and it
writes `all_config.yaml` into the same folder. The prefixes are stripped (keys without them
are accepted too) and the rest maps to rrgen's `TRM` like this:

    embed_tokens.embedding_weight  ->  embed_tokens.weight   [vocab, hidden]
    puzzle_emb.weights             ->  puzzle_emb            [identifiers, hidden]
    lm_head.weight, q_head.weight, q_head.bias, H_init, L_init             same name
    L_level.layers.N.self_attn.{qkv_proj,o_proj}.weight                    same name
    L_level.layers.N.{mlp_t,mlp}.{gate_up_proj,down_proj}.weight           same name
    H_level.layers.N.*  (HRM only)                                         same name

The RoPE tables and the training buffers of the sparse puzzle embedding are non-persistent in
the public code. A file that contains them anyway loads, and they are skipped because rrgen
recomputes RoPE from the config. All tensors are converted to fp32, the bf16 H_init and
L_init exactly. rrgen computes the float RoPE tables in float32 as the public code does.

The arch settings come from YAML: an arch file such as `config/arch/trm.yaml` (the
`${.hidden_size}` interpolation is resolved) or the `arch:` section of `all_config.yaml`.
The tensors give vocab_size, num_puzzle_identifiers, the SwiGLU rounding multiple and, for
mlp_t models, seq_len (token-mixer width minus puzzle_emb_len). Attention weights do not
depend on seq_len, so it comes from an override, a `seq_len` arch key or the task.

Not supported (ValueError naming the setting): learned position encodings,
num_key_value_heads != num_heads, puzzle_emb_ndim other than hidden_size, and model files
other than TRM (`recursive_reasoning.trm`) and HRM (`hrm.hrm_act_v1`, `recursive_reasoning.hrm`).
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from .checkpoint import CheckpointError
from .config import TRMConfig, swiglu_intermediate
from .model import TRM

WRAPPER_PREFIXES = ("_orig_mod.", "model.", "inner.")
RENAMED = {"embed_tokens.embedding_weight": "embed_tokens.weight",
           "puzzle_emb.weights": "puzzle_emb"}
PUBLIC_NAME = {ours: public for public, ours in RENAMED.items()}
NON_PERSISTENT = {"rotary_emb.cos_cached", "rotary_emb.sin_cached",
                  "puzzle_emb.local_weights", "puzzle_emb.local_ids"}
# Vocabulary sizes of rrgen's token encodings (sudoku.py, maze.py, arc.py). They differ per
# task, so vocab_size identifies the task.
TASK_VOCAB = {"sudoku": 11, "maze": 6, "arc": 12}
# NOTE: maze assumes the public 30x30 dataset; pass seq_len for other maze sizes.
TASK_SEQ_LEN = {"sudoku": 81, "maze": 900, "arc": 900}
REQUIRED = ("hidden_size", "expansion", "num_heads", "H_cycles", "L_cycles", "L_layers",
            "pos_encodings", "halt_max_steps")
TRM_DEFAULT_PUZZLE_EMB_LEN = 16  # default of the public TRM config class
# The public SwiGLU rounds to 256; other multiples are tried, largest first, for forks.
MULTIPLES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
INTERPOLATION = re.compile(r"^\$\{(?:\.|arch\.)?(\w+)\}$")
MAX_LISTED = 5


def load_public(state_dict_path: str | Path, config_path: str | Path | None = None,
                overrides: dict | None = None) -> TRM:
    """Load a public TRM/HRM checkpoint and its YAML config into an rrgen TRM in eval mode.

    config_path defaults to `all_config.yaml` next to the checkpoint. overrides are TRMConfig
    fields (e.g. seq_len, task, halt_max_steps) that replace the inferred values.
    """
    path = Path(state_dict_path)
    config_file = Path(config_path) if config_path is not None else path.parent / "all_config.yaml"
    arch_config = read_arch_config(config_file, explicit=config_path is not None)
    state_dict = read_state_dict(path)
    try:
        model = convert(state_dict, arch_config, None, overrides,
                        source=f"checkpoint {str(path)!r}")
    except CheckpointError:
        raise
    except ValueError as err:
        raise ValueError(f"config {str(config_file)!r}: {err}") from None
    model.source_path = path
    model.training_notes = {"imported_from": str(path), "public_config": str(config_file),
                            "public_arch": arch_config.get("name")}
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; pass the file that the "
                              "public pretrain.py saves (step_N in its checkpoint folder)")
    try:
        # weights_only=True rebuilds only tensors, containers and allowlisted torch types, so
        # no code in the file runs.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch 2.13 names a rejected class or function this way; other failures are bad bytes.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(f"checkpoint {str(path)!r} contains Python objects other "
                                  f"than tensors ({found.group(1)}), which rrgen does not load "
                                  "because unpickling them could run code; save the "
                                  "model's state_dict() only") from None
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint (the unpickler "
                              "failed); pass the file that the public pretrain.py writes "
                              "with torch.save") from None
    # Arbitrary bytes make the zip reader or the legacy unpickler fail with any of these.
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint or is truncated "
                              f"({type(err).__name__}: {str(err)[:120]}); pass the file "
                              "that the public pretrain.py writes with torch.save") from None
    tensors = isinstance(loaded, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    if not tensors:
        raise CheckpointError(f"checkpoint {str(path)!r} contains a {type(loaded).__name__}, "
                              "not a state dict that maps names to tensors")
    return dict(loaded)


def read_arch_config(path: Path, explicit: bool = True) -> dict:
    """Read the arch settings from an arch YAML or from the `arch:` section of all_config.yaml."""
    if not path.is_file():
        hint = "" if explicit else "no --public-config was given and "
        raise ValueError(f"{hint}config {str(path)!r} not found; pass the all_config.yaml "
                         "that the public pretrain.py writes next to its checkpoints, or "
                         "the arch YAML (config/arch/trm.yaml, hrm_v1.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config {str(path)!r} is not valid YAML: {err}") from None
    if isinstance(raw, dict) and isinstance(raw.get("arch"), dict):
        raw = raw["arch"]
    if not isinstance(raw, dict):
        raise ValueError(f"config {str(path)!r} contains no mapping of arch settings "
                         "(hidden_size, H_cycles, ...)")
    return raw


def convert(state_dict: dict[str, torch.Tensor], arch_config: dict, task: str | None = None,
            overrides: dict | None = None, *, source: str = "state dict") -> TRM:
    """Build an rrgen TRM from a public state dict and public arch settings.

    Raises CheckpointError, which names `source` and the offending keys, for problems with
    the tensors, and ValueError naming the setting for invalid or unsupported settings.
    """
    tensors, origin = rename_keys(state_dict, source)
    settings = resolve_interpolations(arch_config)
    fields = config_fields(settings, tensors, task, dict(overrides or {}), source)
    config = TRMConfig.from_dict(fields)
    model = TRM(config)
    check_tensors(tensors, origin, model, source)
    model.load_state_dict({name: value.float() for name, value in tensors.items()})
    return model.eval()


def rename_keys(state_dict: Mapping, source: str) -> tuple[dict, dict]:
    """Map public keys to rrgen names; returns (tensors, rrgen name -> key in the file)."""
    tensors, origin = {}, {}
    for key, value in state_dict.items():
        name = key
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in NON_PERSISTENT:
            continue
        name = RENAMED.get(name, name)
        if name in tensors:
            raise CheckpointError(f"{source}: keys {origin[name]} and {key} both map to "
                                  f"{name}; keep one state dict per file")
        tensors[name], origin[name] = value, key
    return tensors, origin


def resolve_interpolations(arch_config: dict) -> dict:
    """Replace values like `${.hidden_size}` (Hydra interpolation) by the referenced value."""
    settings = dict(arch_config)
    for key, value in arch_config.items():
        match = INTERPOLATION.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            continue
        target = match.group(1)
        if target not in arch_config or isinstance(arch_config[target], str):
            raise ValueError(f"arch setting {key}={value!r} refers to {target!r}, which the "
                             "arch config does not set to a value")
        settings[key] = arch_config[target]
    return settings


def read_setting(settings: dict, key: str, kind: type, default=None):
    """Read settings[key] (or `default`) and check that it has type `kind`. Ints pass as floats."""
    value = settings.get(key, default)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ValueError(f"arch setting {key}={value!r} is invalid; expected {kind.__name__}")
    return value


def arch_from_name(name, tensors: dict) -> str:
    if name is None:
        return "hrm" if any(k.startswith("H_level.") for k in tensors) else "trm"
    module = str(name).split("@")[0].rsplit(".", 1)[-1]
    if module == "trm":
        return "trm"
    if module in ("hrm", "hrm_act_v1"):
        return "hrm"
    raise ValueError(f"arch name {name!r} is not supported; rrgen imports "
                     "recursive_reasoning.trm (TRM) and hrm.hrm_act_v1 or "
                     "recursive_reasoning.hrm (HRM)")


def config_fields(settings: dict, tensors: dict, task: str | None, overrides: dict,
                  source: str) -> dict:
    """Derive TRMConfig fields from the public settings, the tensor shapes, task and overrides."""
    arch = arch_from_name(settings.get("name"), tensors)
    required = REQUIRED + (("H_layers",) if arch == "hrm" else ())
    missing = [key for key in required if key not in settings]
    if missing:
        raise ValueError(f"arch config is missing {', '.join(missing)}; pass the arch "
                         "YAML or the all_config.yaml of the training run")
    hidden = read_setting(settings, "hidden_size", int)
    num_heads = read_setting(settings, "num_heads", int)
    expansion = read_setting(settings, "expansion", float)
    mlp_t = read_setting(settings, "mlp_t", bool, False)

    ndim = read_setting(settings, "puzzle_emb_ndim", int, 0)
    if ndim != hidden:
        raise ValueError(f"puzzle_emb_ndim={ndim} is not supported; rrgen supports one "
                         f"puzzle vector of hidden_size ({hidden}) in prefix slot 0")
    kv_heads = read_setting(settings, "num_key_value_heads", int, num_heads)
    if kv_heads != num_heads:
        raise ValueError(f"num_key_value_heads={kv_heads} is not supported; rrgen supports "
                         f"only num_key_value_heads equal to num_heads ({num_heads})")
    pos = read_setting(settings, "pos_encodings", str)
    if pos == "learned":
        raise ValueError("pos_encodings='learned' is not supported; rrgen supports 'rope' "
                         "and no position encoding (any other value, as in the public TRM)")
    # The MLP token mixer never reads the RoPE tables, so an mlp_t model has none in effect.
    pos = "rope" if pos == "rope" and not mlp_t else "none"

    # HRM always derives the prefix length, TRM only when puzzle_emb_len is 0.
    prefix = math.ceil(ndim / hidden)
    if arch == "trm":
        prefix = read_setting(settings, "puzzle_emb_len", int, TRM_DEFAULT_PUZZLE_EMB_LEN) or prefix

    def rows(name: str) -> int | None:
        value = tensors.get(name)
        return value.shape[0] if value is not None and value.ndim == 2 else None

    vocab = rows("embed_tokens.weight") or rows("lm_head.weight")
    if task is None:
        task = overrides.get("task")
    elif overrides.get("task", task) != task:
        raise ValueError(f"task {task!r} and override task {overrides['task']!r} disagree")
    if task is None:
        if vocab is None:
            raise CheckpointError(f"{source}: missing embed_tokens.embedding_weight and "
                                  "lm_head.weight, so the vocabulary size is unknown")
        task = next((t for t, size in TASK_VOCAB.items() if size == vocab), None)
        if task is None:
            raise CheckpointError(f"{source}: vocab_size {vocab} matches no rrgen task "
                                  f"{TASK_VOCAB}; rrgen can only deploy a model trained on "
                                  "one of these token encodings")
    elif task not in TASK_VOCAB:
        raise ValueError(f"task {task!r} is invalid; use one of {sorted(TASK_VOCAB)}")
    elif vocab is not None and vocab != TASK_VOCAB[task]:
        raise CheckpointError(f"{source}: vocab_size {vocab} (rows of embed_tokens) does not "
                              f"fit task {task!r}, whose token encoding has {TASK_VOCAB[task]} ids")

    token_mixer = tensors.get("L_level.layers.0.mlp_t.gate_up_proj.weight")
    if "seq_len" in overrides:
        seq_len = overrides["seq_len"]
    elif "seq_len" in settings:
        seq_len = read_setting(settings, "seq_len", int)
    elif mlp_t and token_mixer is not None and token_mixer.ndim == 2:
        seq_len = token_mixer.shape[1] - prefix
    else:
        seq_len = TASK_SEQ_LEN[task]

    multiple = infer_multiple(tensors, expansion, {"mlp": hidden, "mlp_t": seq_len + prefix})
    fields = dict(vocab_size=vocab or TASK_VOCAB[task], seq_len=seq_len, hidden_size=hidden,
                  expansion=expansion, L_layers=read_setting(settings, "L_layers", int),
                  H_cycles=read_setting(settings, "H_cycles", int),
                  L_cycles=read_setting(settings, "L_cycles", int), puzzle_emb_len=prefix,
                  num_puzzle_identifiers=rows("puzzle_emb") or 1,
                  halt_max_steps=read_setting(settings, "halt_max_steps", int),
                  rms_norm_eps=read_setting(settings, "rms_norm_eps", float, 1e-5),
                  intermediate_multiple=multiple, mlp_t=mlp_t, num_heads=num_heads,
                  pos_encodings=pos,
                  rope_theta=read_setting(settings, "rope_theta", float, 10000.0), arch=arch,
                  H_layers=read_setting(settings, "H_layers", int) if arch == "hrm" else 0,
                  task=task)
    fields.update(overrides)
    return fields


def infer_multiple(tensors: dict, expansion: float, widths: dict[str, int]) -> int:
    """Find the SwiGLU rounding multiple that explains the layer-0 down_proj widths (or 256)."""
    observed = {}
    for sublayer, width in widths.items():
        down = tensors.get(f"L_level.layers.0.{sublayer}.down_proj.weight")
        if down is not None and down.ndim == 2:
            observed[width] = down.shape[1]
    for multiple in MULTIPLES:
        matches = [swiglu_intermediate(width, expansion, multiple) == inter
                   for width, inter in observed.items()]
        if all(matches):
            return multiple
    return MULTIPLES[0]


def listed(keys: list[str]) -> str:
    names = ", ".join(keys[:MAX_LISTED])
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''}: {names}{more}"


def shape_reason(name: str, config: TRMConfig) -> str:
    """Describe the config values that decide the expected shape of tensor `name`."""
    c = config
    if ".mlp_t." in name:
        return (f"positions {c.positions} = seq_len {c.seq_len} + puzzle_emb_len "
                f"{c.puzzle_emb_len}, intermediate {c.token_intermediate} for expansion "
                f"{c.expansion} rounded up to a multiple of {c.intermediate_multiple}")
    if ".mlp." in name:
        return (f"hidden_size {c.hidden_size}, intermediate {c.channel_intermediate} for "
                f"expansion {c.expansion} rounded up to a multiple of {c.intermediate_multiple}")
    if name in ("embed_tokens.weight", "lm_head.weight"):
        return f"vocab_size {c.vocab_size}, hidden_size {c.hidden_size}"
    if name == "puzzle_emb":
        return f"num_puzzle_identifiers {c.num_puzzle_identifiers}, hidden_size {c.hidden_size}"
    if name.startswith("q_head"):
        return f"2 outputs (halt, continue), hidden_size {c.hidden_size}"
    return f"hidden_size {c.hidden_size}"


def check_tensors(tensors: dict, origin: dict, model: TRM, source: str) -> None:
    """Raise CheckpointError for missing, unexpected, mis-shaped or non-finite tensors."""
    config = model.config
    expected = model.state_dict()
    missing = sorted(PUBLIC_NAME.get(k, k) for k in set(expected) - set(tensors))
    unexpected = sorted(origin[k] for k in set(tensors) - set(expected))
    if missing or unexpected:
        parts = [f"missing {listed(missing)}"] if missing else []
        parts += [f"unexpected {listed(unexpected)}"] if unexpected else []
        raise CheckpointError(
            f"{source}: {'; '.join(parts)}. The arch config describes arch {config.arch}, "
            f"L_layers {config.L_layers}, H_layers {config.H_layers}, mlp_t {config.mlp_t}; "
            "check that it is the config of this training run")

    wrong = []
    for name in expected:
        value, want = tensors[name], list(expected[name].shape)
        if list(value.shape) != want:
            wrong.append(f"key {origin[name]} has shape {list(value.shape)}, expected {want} "
                         f"for {shape_reason(name, config)}")
        elif not value.is_floating_point():
            wrong.append(f"key {origin[name]} has dtype {value.dtype}, expected a float tensor")
    if wrong:
        more = f" (and {len(wrong) - MAX_LISTED} more)" if len(wrong) > MAX_LISTED else ""
        raise CheckpointError(f"{source}: {'; '.join(wrong[:MAX_LISTED])}{more}")

    bad = [origin[name] for name in expected if not torch.isfinite(tensors[name]).all()]
    if bad:
        raise CheckpointError(f"{source}: NaN or Inf values in {listed(bad)}; the training "
                              "run diverged, so use an earlier checkpoint")
