"""Import of checkpoints in the public TRM/HRM format (rrgen.public_import).

Each test writes a synthetic public checkpoint: random tensors under the public key names
(`_orig_mod.model.inner.*`, CastedEmbedding `embedding_weight`, sparse table `weights`,
bf16 H_init and L_init), saved with torch.save, plus a YAML config. The imported model
must reproduce `public_forward`, an independent fp32 re-implementation of the public
forward pass (TRM `models/recursive_reasoning/trm.py`, HRM `models/hrm/hrm_act_v1.py`).
"""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from rrgen import checkpoint
from rrgen.checkpoint import CheckpointError
from rrgen.public_import import convert, load_public

PREFIX = "_orig_mod.model.inner."
HIDDEN, HEADS, SEQ, VOCAB, IDENTIFIERS = 32, 2, 16, 11, 3
TRM_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
HRM_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"


def arch_settings(**changes) -> dict:
    """Public arch settings of a tiny TRM with attention and RoPE, puzzle prefix 4."""
    settings = dict(name=TRM_NAME, loss={"name": "losses@ACTLossHead"},
                    halt_exploration_prob=0.1, halt_max_steps=4, H_cycles=2, L_cycles=2,
                    H_layers=0, L_layers=2, hidden_size=HIDDEN, num_heads=HEADS, expansion=4,
                    puzzle_emb_ndim=HIDDEN, pos_encodings="rope", forward_dtype="bfloat16",
                    mlp_t=False, puzzle_emb_len=4, no_ACT_continue=True)
    settings.update(changes)
    return settings


def public_intermediate(width: int, expansion: float, multiple: int = 256) -> int:
    """SwiGLU width of the public code: round(expansion * width * 2/3) rounded up to 256."""
    return -(-round(expansion * width * 2 / 3) // multiple) * multiple


def public_prefix_len(settings: dict) -> int:
    ceil = -(settings["puzzle_emb_ndim"] // -settings["hidden_size"])
    if "hrm_act_v1" in settings["name"]:
        return ceil
    return settings.get("puzzle_emb_len", 16) or ceil


def linear_weight(out_features: int, in_features: int) -> torch.Tensor:
    return torch.randn(out_features, in_features) / math.sqrt(in_features)


def public_state_dict(settings: dict, seq_len: int = SEQ, seed: int = 0,
                      prefix: str = PREFIX, multiple: int = 256) -> dict:
    """Random weights for `settings` under the key names of the public training checkpoint.

    `multiple` replaces the public SwiGLU rounding multiple, as some forks do.
    """
    torch.manual_seed(seed)
    hidden, expansion = settings["hidden_size"], settings["expansion"]
    positions = seq_len + public_prefix_len(settings)
    inter = public_intermediate(hidden, expansion, multiple)
    sd = {
        "embed_tokens.embedding_weight": torch.randn(VOCAB, hidden) / math.sqrt(hidden),
        "lm_head.weight": linear_weight(VOCAB, hidden),
        "q_head.weight": linear_weight(2, hidden),
        "q_head.bias": torch.randn(2),
        "puzzle_emb.weights": torch.randn(IDENTIFIERS, hidden) * 0.5,
        "H_init": torch.randn(hidden).to(torch.bfloat16),
        "L_init": torch.randn(hidden).to(torch.bfloat16),
    }
    levels = [("L_level", settings["L_layers"])]
    if "hrm" in settings["name"].split("@")[0]:
        levels.append(("H_level", settings["H_layers"]))
    for level, layers in levels:
        for i in range(layers):
            block = f"{level}.layers.{i}."
            if settings.get("mlp_t", False):
                token_inter = public_intermediate(positions, expansion, multiple)
                sd[block + "mlp_t.gate_up_proj.weight"] = linear_weight(2 * token_inter, positions)
                sd[block + "mlp_t.down_proj.weight"] = linear_weight(positions, token_inter)
            else:
                sd[block + "self_attn.qkv_proj.weight"] = linear_weight(3 * hidden, hidden)
                sd[block + "self_attn.o_proj.weight"] = linear_weight(hidden, hidden)
            sd[block + "mlp.gate_up_proj.weight"] = linear_weight(2 * inter, hidden)
            sd[block + "mlp.down_proj.weight"] = linear_weight(hidden, inter)
    return {prefix + key: value for key, value in sd.items()}


def public_forward(sd: dict, settings: dict, inputs: torch.Tensor, puzzle_ids: torch.Tensor,
                   steps: int, prefix: str = PREFIX) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, q) after each of `steps` supervision steps, computed as the public code does.

    Written from the public TRM and HRM sources with forward_dtype float32, in eval mode
    (no halting, every row runs all steps from H_init and L_init).
    """
    def w(name):
        return sd[prefix + name].float()

    hidden, eps = settings["hidden_size"], settings.get("rms_norm_eps", 1e-5)
    heads, mlp_t = settings["num_heads"], settings.get("mlp_t", False)
    puzzle_len = public_prefix_len(settings)
    hrm = "hrm" in settings["name"].split("@")[0]

    def rms_norm(x):
        x = x.to(torch.float32)
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)

    def swiglu(x, name):
        gate, up = F.linear(x, w(name + "gate_up_proj.weight")).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w(name + "down_proj.weight"))

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    positions = inputs.shape[1] + puzzle_len
    head_dim = hidden // heads
    inv_freq = 1.0 / (settings.get("rope_theta", 10000.0)
                      ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos_sin = (emb.cos(), emb.sin()) if settings["pos_encodings"] == "rope" else None

    def attention(x, name):
        batch, seq, _ = x.shape
        qkv = F.linear(x, w(name + "qkv_proj.weight")).view(batch, seq, 3 * heads, head_dim)
        q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
        if cos_sin is not None:
            cos, sin = cos_sin
            q = q * cos.unsqueeze(-2) + rotate_half(q) * sin.unsqueeze(-2)
            k = k * cos.unsqueeze(-2) + rotate_half(k) * sin.unsqueeze(-2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=False)
        out = out.transpose(1, 2).reshape(batch, seq, heads * head_dim)
        return F.linear(out, w(name + "o_proj.weight"))

    def block(x, name):
        if mlp_t:
            t = x.transpose(1, 2)
            t = rms_norm(t + swiglu(t, name + "mlp_t."))
            x = t.transpose(1, 2)
        else:
            x = rms_norm(x + attention(x, name + "self_attn."))
        return rms_norm(x + swiglu(x, name + "mlp."))

    def level(name, hidden_states, injection):
        hidden_states = hidden_states + injection
        for i in range(settings[name.split("_")[0] + "_layers"]):
            hidden_states = block(hidden_states, f"{name}.layers.{i}.")
        return hidden_states

    tokens = F.embedding(inputs, w("embed_tokens.embedding_weight"))
    puzzle = w("puzzle_emb.weights")[puzzle_ids]
    puzzle = F.pad(puzzle, (0, puzzle_len * hidden - puzzle.shape[-1]))
    x = math.sqrt(hidden) * torch.cat((puzzle.view(-1, puzzle_len, hidden), tokens), dim=-2)

    shape = (inputs.shape[0], positions, hidden)
    z_h, z_l = w("H_init").expand(shape), w("L_init").expand(shape)
    h_cycles, l_cycles = settings["H_cycles"], settings["L_cycles"]
    outputs = []
    for _ in range(steps):
        if hrm:
            for h in range(h_cycles):
                for i in range(l_cycles):
                    if not (h == h_cycles - 1 and i == l_cycles - 1):
                        z_l = level("L_level", z_l, z_h + x)
                if h != h_cycles - 1:
                    z_h = level("H_level", z_h, z_l)
            z_l = level("L_level", z_l, z_h + x)
            z_h = level("H_level", z_h, z_l)
        else:
            for _h in range(h_cycles - 1):
                for _i in range(l_cycles):
                    z_l = level("L_level", z_l, z_h + x)
                z_h = level("L_level", z_h, z_l)
            for _i in range(l_cycles):
                z_l = level("L_level", z_l, z_h + x)
            z_h = level("L_level", z_h, z_l)
        logits = F.linear(z_h, w("lm_head.weight"))[:, puzzle_len:]
        q = F.linear(z_h[:, 0], w("q_head.weight"), w("q_head.bias"))
        outputs.append((logits, q))
    return outputs


def rrgen_forward(model, inputs, puzzle_ids, steps):
    with torch.no_grad():
        x = model.input_embeddings(inputs, puzzle_ids)
        y, z = model.initial_carry(inputs.shape[0])
        outputs = []
        for _ in range(steps):
            y, z, logits, q = model.step(y, z, x)
            outputs.append((logits, q))
    return outputs


def random_batch(seq_len: int = SEQ, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, VOCAB, (3, seq_len), generator=generator)
    return inputs, torch.tensor([0, 2, 1])


def write_checkpoint(folder, state_dict, settings, wrapped: bool = False):
    """Write step_10 and a config: the arch YAML, or all_config.yaml when `wrapped`."""
    path = folder / "step_10"
    torch.save(state_dict, path)
    if wrapped:
        config = folder / "all_config.yaml"
        config.write_text(yaml.safe_dump({"arch": settings, "data_paths": ["data/x"],
                                          "global_batch_size": 768, "lr": 1e-4}))
    else:
        config = folder / "arch.yaml"
        config.write_text(yaml.safe_dump(settings))
    return path, config


def assert_matches_public(model, state_dict, settings, steps=3, prefix=PREFIX,
                          tolerance=1e-6):
    inputs, puzzle_ids = random_batch(model.config.seq_len)
    expected = public_forward(state_dict, settings, inputs, puzzle_ids, steps, prefix)
    actual = rrgen_forward(model, inputs, puzzle_ids, steps)
    for step, ((logits, q), (want_logits, want_q)) in enumerate(zip(actual, expected)):
        assert logits.shape == want_logits.shape == (3, model.config.seq_len, VOCAB)
        assert torch.allclose(logits, want_logits, rtol=tolerance, atol=tolerance), \
            f"step {step}: logits differ by {(logits - want_logits).abs().max()}"
        assert torch.allclose(q, want_q, rtol=tolerance, atol=tolerance), \
            f"step {step}: q differs by {(q - want_q).abs().max()}"
    # Later steps must differ, or the carry would not be exercised.
    assert not torch.allclose(actual[0][0], actual[-1][0])


def test_trm_mlp_matches_public_forward(tmp_path):
    settings = arch_settings(mlp_t=True, pos_encodings="none")
    sd = public_state_dict(settings)
    yaml_settings = dict(settings, puzzle_emb_ndim="${.hidden_size}")
    path, config = write_checkpoint(tmp_path, sd, yaml_settings)

    model = load_public(path, config)

    assert model.config.seq_len == SEQ
    assert model.config.mlp_t
    assert model.config.pos_encodings == "none"
    assert_matches_public(model, sd, settings)


def test_trm_attention_rope_matches_public_forward(tmp_path):
    settings = arch_settings()
    sd = public_state_dict(settings)
    path, _ = write_checkpoint(tmp_path, sd, settings, wrapped=True)

    model = load_public(path, overrides={"seq_len": SEQ})

    assert model.config.pos_encodings == "rope"
    assert model.config.puzzle_emb_len == 4
    # Both compute the RoPE tables in float32, so the logits agree to rounding.
    assert_matches_public(model, sd, settings)


def test_hrm_matches_public_forward(tmp_path):
    settings = arch_settings(name=HRM_NAME, H_layers=2, L_layers=1, H_cycles=2, L_cycles=3)
    del settings["puzzle_emb_len"], settings["mlp_t"], settings["no_ACT_continue"]
    # Without torch.compile the public keys start with model.inner.
    sd = public_state_dict(settings, prefix="model.inner.")
    path, config = write_checkpoint(tmp_path, sd, settings)

    model = load_public(path, config, overrides={"seq_len": SEQ})

    assert model.config.arch == "hrm"
    assert model.config.puzzle_emb_len == 1
    assert model.config.H_layers == 2
    assert_matches_public(model, sd, settings, prefix="model.inner.")


def test_inferred_config_fields(tmp_path):
    settings = arch_settings(mlp_t=True, pos_encodings="rope", puzzle_emb_len=0)
    sd = public_state_dict(settings)

    model = convert(sd, settings)

    config = model.config
    assert config.vocab_size == VOCAB
    assert config.task == "sudoku"
    assert config.num_puzzle_identifiers == IDENTIFIERS
    assert config.puzzle_emb_len == 1
    assert config.seq_len == SEQ
    assert config.intermediate_multiple == 256
    # The public MLP mixer ignores RoPE tables, so rrgen builds it without them.
    assert config.pos_encodings == "none"
    assert config.H_cycles == 2
    assert config.L_cycles == 2
    assert config.halt_max_steps == 4


def test_fork_rounding_multiple_inferred():
    settings = arch_settings(mlp_t=True, pos_encodings="none")
    sd = public_state_dict(settings, multiple=32)

    model = convert(sd, settings)

    assert model.config.intermediate_multiple == 32
    assert model.config.channel_intermediate == 96
    assert model.config.token_intermediate == 64
    assert_matches_public(model, sd, settings)


def test_attention_seq_len_from_task():
    settings = arch_settings()
    model = convert(public_state_dict(settings), settings)
    assert model.config.seq_len == 81
    assert model.config.positions == 85


def test_overrides_replace_inferred_fields():
    settings = arch_settings()
    model = convert(public_state_dict(settings), settings,
                    overrides={"seq_len": SEQ, "halt_max_steps": 2})
    assert model.config.seq_len == SEQ
    assert model.config.halt_max_steps == 2


def test_round_trip_through_rrgen_checkpoint(tmp_path):
    settings = arch_settings()
    sd = public_state_dict(settings)
    model = convert(sd, settings, overrides={"seq_len": SEQ})

    saved = checkpoint.save(model, tmp_path / "imported.safetensors")
    reloaded = checkpoint.load(saved)

    assert reloaded.config == model.config
    inputs, puzzle_ids = random_batch()
    before = rrgen_forward(model, inputs, puzzle_ids, 2)
    after = rrgen_forward(reloaded, inputs, puzzle_ids, 2)
    for (logits, q), (logits2, q2) in zip(before, after):
        assert torch.equal(logits, logits2)
        assert torch.equal(q, q2)


def test_missing_key_named():
    settings = arch_settings()
    sd = public_state_dict(settings)
    del sd[PREFIX + "L_level.layers.1.mlp.down_proj.weight"]
    del sd[PREFIX + "puzzle_emb.weights"]

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    assert "missing 2 keys" in str(err.value)
    assert "L_level.layers.1.mlp.down_proj.weight" in str(err.value)
    assert "puzzle_emb.weights" in str(err.value)


def test_unexpected_key_named():
    settings = arch_settings()
    sd = public_state_dict(settings)
    sd[PREFIX + "L_level.layers.2.mlp.down_proj.weight"] = torch.zeros(HIDDEN, 256)

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    assert "unexpected 1 key" in str(err.value)
    assert PREFIX + "L_level.layers.2.mlp.down_proj.weight" in str(err.value)
    assert "L_layers 2" in str(err.value)


def test_many_missing_keys_listed_with_count():
    settings = arch_settings()
    sd = public_state_dict(settings)
    for key in [k for k in sd if ".layers." in k]:
        del sd[key]

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    assert "missing 8 keys" in str(err.value)
    assert "and 3 more" in str(err.value)


def test_misshaped_key_named_with_expected_shape():
    settings = arch_settings()
    sd = public_state_dict(settings)
    sd[PREFIX + "L_level.layers.1.mlp.down_proj.weight"] = torch.zeros(HIDDEN, 100)

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    message = str(err.value)
    assert "L_level.layers.1.mlp.down_proj.weight has shape [32, 100]" in message
    assert "expected [32, 256]" in message
    assert "hidden_size 32" in message


def test_hidden_size_mismatch_names_embedding():
    settings = arch_settings(hidden_size=64, puzzle_emb_ndim=64)
    sd = public_state_dict(arch_settings())

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    assert "embed_tokens.embedding_weight has shape [11, 32], expected [11, 64]" in str(err.value)


def test_nan_weight_named():
    settings = arch_settings()
    sd = public_state_dict(settings)
    sd[PREFIX + "L_level.layers.0.self_attn.o_proj.weight"][3, 5] = float("nan")
    sd[PREFIX + "H_init"][0] = float("inf")

    with pytest.raises(CheckpointError) as err:
        convert(sd, settings)

    assert "NaN or Inf" in str(err.value)
    assert PREFIX + "L_level.layers.0.self_attn.o_proj.weight" in str(err.value)
    assert PREFIX + "H_init" in str(err.value)


@pytest.mark.parametrize("change, named", [
    ({"pos_encodings": "learned"}, "pos_encodings='learned'"),
    ({"num_key_value_heads": 1}, "num_key_value_heads=1"),
    ({"puzzle_emb_ndim": 64}, "puzzle_emb_ndim=64"),
    ({"puzzle_emb_ndim": 0}, "puzzle_emb_ndim=0"),
    ({"name": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"},
     "trm_singlez"),
    ({"hidden_size": "big"}, "hidden_size='big'"),
])
def test_unsupported_setting_rejected(tmp_path, change, named):
    settings = arch_settings()
    path, config = write_checkpoint(tmp_path, public_state_dict(settings),
                                    dict(settings, **change))

    with pytest.raises(ValueError) as err:
        load_public(path, config)

    assert named in str(err.value)
    assert str(config) in str(err.value)


def test_missing_arch_setting_named():
    settings = arch_settings()
    del settings["H_cycles"]
    with pytest.raises(ValueError, match="missing H_cycles"):
        convert(public_state_dict(arch_settings()), settings)


def test_task_with_wrong_vocab_rejected():
    settings = arch_settings()
    with pytest.raises(ValueError, match="vocab_size 11 .* task 'maze'"):
        convert(public_state_dict(settings), settings, task="maze")


def test_not_a_checkpoint_named(tmp_path):
    settings = arch_settings()
    config = tmp_path / "arch.yaml"
    config.write_text(yaml.safe_dump(settings))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pt"
    torch.save(public_state_dict(settings), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])

    for path in (text_file, truncated):
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as err:
            load_public(path, config)
        assert str(path) in str(err.value)

    with pytest.raises(CheckpointError, match="not found"):
        load_public(tmp_path / "absent.pt", config)


class Payload:
    """A pickled object; weights_only loading must reject it without calling it."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_not_run(tmp_path, capsys):
    settings = arch_settings()
    config = tmp_path / "arch.yaml"
    config.write_text(yaml.safe_dump(settings))
    path = tmp_path / "step_1"
    torch.save({"payload": Payload()}, path)

    with pytest.raises(CheckpointError, match="Python objects other than tensors") as err:
        load_public(path, config)

    assert str(path) in str(err.value)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_state_dict_of_non_tensors_rejected(tmp_path):
    path = tmp_path / "step_1"
    torch.save([1, 2, 3], path)
    config = tmp_path / "arch.yaml"
    config.write_text(yaml.safe_dump(arch_settings()))
    with pytest.raises(CheckpointError, match="contains a list, not a state dict"):
        load_public(path, config)


def test_config_errors_name_the_file(tmp_path):
    path = tmp_path / "step_1"
    torch.save(public_state_dict(arch_settings()), path)

    with pytest.raises(ValueError, match="all_config.yaml' not found"):
        load_public(path)

    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden_size: [1, 2\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_public(path, bad)

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ValueError, match="contains no mapping of arch settings"):
        load_public(path, scalar)


def test_duplicate_key_forms_rejected():
    settings = arch_settings()
    sd = public_state_dict(settings)
    sd["lm_head.weight"] = sd[PREFIX + "lm_head.weight"].clone()
    with pytest.raises(CheckpointError, match="both map to lm_head.weight"):
        convert(sd, settings)


def test_non_persistent_buffers_skipped():
    settings = arch_settings()
    sd = public_state_dict(settings)
    sd[PREFIX + "rotary_emb.cos_cached"] = torch.zeros(20, HIDDEN // HEADS)
    sd[PREFIX + "puzzle_emb.local_weights"] = torch.zeros(8, HIDDEN)
    model = convert(sd, settings, overrides={"seq_len": SEQ})
    assert torch.equal(model.puzzle_emb, sd[PREFIX + "puzzle_emb.weights"])
