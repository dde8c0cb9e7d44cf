"""Checks codegen/rrgen/onnx_io.py: ONNX export and import of one supervision step.

Export: the graph passes the full ONNX check, keeps the model's weight names, records the
config, the initial carry and the loop in metadata_props, and matches model.step in
onnxruntime over two chained steps for TRM-MLP, TRM-attention with RoPE and HRM.
Import: a round trip restores every tensor exactly, also after all names in the graph are
replaced, from a graph written by torch.onnx's TorchScript exporter and with q_head as MatMul
plus Add. A perturbed weight is imported as stored. Files that are not ONNX, lack metadata,
have inputs or a config that do not fit, contain an unsupported op, compute something else
or untie the shared weights raise ValueError naming the problem.

Run from the repository root: python3 -m pytest -q tests/test_onnx_io.py
"""

import dataclasses
import json
import math
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

import rrgen
from rrgen.config import TRMConfig
from rrgen.model import TRM
from rrgen.onnx_io import INPUTS, METADATA_KEYS, OUTPUTS, export_step, import_step

MLP = TRMConfig(seq_len=16, hidden_size=32, expansion=2.0, H_cycles=2, L_cycles=2,
                puzzle_emb_len=4, num_puzzle_identifiers=3, halt_max_steps=4,
                intermediate_multiple=16)
ATTENTION = dataclasses.replace(MLP, mlp_t=False, num_heads=2, pos_encodings="rope")
HRM = dataclasses.replace(ATTENTION, arch="hrm", L_layers=1, H_layers=2, puzzle_emb_len=1)
CONFIGS = {"trm-mlp": MLP, "trm-attention": ATTENTION, "hrm": HRM}
TOLERANCE = 1e-4


def make_model(config: TRMConfig, seed: int = 0) -> TRM:
    """A seeded TRM with random q_head and puzzle rows, so that every tensor matters."""
    torch.manual_seed(seed)
    model = TRM(config)
    with torch.no_grad():
        model.q_head.weight.normal_(0.0, 0.5)
        model.q_head.bias.normal_(0.0, 0.5)
        model.puzzle_emb.normal_(0.0, 0.5)
    return model.eval()


def session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def sample_inputs(config: TRMConfig, batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, config.seq_len), generator=generator)
    puzzle_ids = torch.randint(0, config.num_puzzle_identifiers, (batch,), generator=generator)
    return tokens, puzzle_ids


def rewrite(path, out, edit):
    """Load an ONNX file, apply edit(proto) and save the result as `out`."""
    proto = onnx.load(str(path))
    edit(proto)
    onnx.save(proto, str(out))
    return out


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    prop = next(prop for prop in proto.metadata_props if prop.key == key)
    prop.value = value


def assert_same_state(actual: TRM, expected: TRM) -> None:
    actual_state, expected_state = actual.state_dict(), expected.state_dict()
    assert sorted(actual_state) == sorted(expected_state)
    for key, value in expected_state.items():
        assert torch.equal(actual_state[key], value), key


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    model = make_model(CONFIGS[request.param])
    model.training_notes = {"steps": 5, "loss": 1.25}
    path = export_step(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return model, path


@pytest.fixture(scope="module")
def exported_mlp(tmp_path_factory):
    model = make_model(MLP)
    return model, export_step(model, tmp_path_factory.mktemp("onnx") / "mlp.onnx")


# Export --------------------------------------------------------------------------------------

def test_export_passes_full_check(exported):
    _, path = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_export_interface(exported):
    model, path = exported
    cfg = model.config
    graph = onnx.load(str(path)).graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    carry = ["batch", cfg.positions, cfg.hidden_size]
    assert [value.name for value in graph.input] == list(INPUTS)
    assert [value.name for value in graph.output] == list(OUTPUTS)
    assert [shape(value) for value in graph.input] == [
        carry, carry, ["batch", cfg.seq_len], ["batch", cfg.hidden_size]]
    assert [shape(value) for value in graph.output] == [
        carry, carry, ["batch", cfg.seq_len, cfg.vocab_size], ["batch"]]
    assert graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_export_keeps_weight_names(exported):
    model, path = exported
    initializers = {init.name: numpy_helper.to_array(init)
                    for init in onnx.load(str(path)).graph.initializer}
    outside_graph = {"puzzle_emb", "H_init", "L_init"}
    for key, value in model.state_dict().items():
        if key in outside_graph:
            assert key not in initializers, key
        else:
            assert np.array_equal(initializers[key], value.numpy()), key


def test_export_metadata(exported):
    model, path = exported
    proto = onnx.load(str(path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert proto.producer_name == "rrgen"
    assert TRMConfig.from_dict(json.loads(metadata["rrgen.config"])) == model.config
    for key in ("H_init", "L_init", "puzzle_emb"):
        stored = np.asarray(json.loads(metadata["rrgen." + key]), np.float32)
        assert np.array_equal(stored, getattr(model, key).detach().numpy()), key
    assert json.loads(metadata["rrgen.training"]) == {"steps": 5, "loss": 1.25}
    assert "halt_max_steps" in metadata["rrgen.loop"]
    assert "q_halt > 0" in metadata["rrgen.loop"]


def test_export_matches_torch_two_steps(exported):
    model, path = exported
    tokens, puzzle_ids = sample_inputs(model.config, batch=3)
    runner = session(path)
    feed_static = {"tokens": tokens.numpy(),
                   "puzzle_row": model.puzzle_emb[puzzle_ids].detach().numpy()}
    with torch.no_grad():
        x = model.input_embeddings(tokens, puzzle_ids)
        y, z = model.initial_carry(3)
        onnx_y, onnx_z = y.numpy(), z.numpy()
        for step in range(2):
            y, z, logits, q = model.step(y, z, x)
            got = runner.run(None, {"y": onnx_y, "z": onnx_z, **feed_static})
            expected = [y, z, logits, q[:, 0]]
            for name, have, want in zip(OUTPUTS, got, expected):
                assert have.shape == tuple(want.shape), (step, name)
                assert np.abs(have - want.numpy()).max() <= TOLERANCE, (step, name)
            onnx_y, onnx_z = got[0], got[1]


@pytest.mark.parametrize("batch", [1, 5])
def test_export_batch_is_dynamic(exported_mlp, batch):
    model, path = exported_mlp
    tokens, puzzle_ids = sample_inputs(MLP, batch)
    y, z = model.initial_carry(batch)
    logits = session(path).run(["logits"], {
        "y": y.numpy(), "z": z.numpy(), "tokens": tokens.numpy(),
        "puzzle_row": model.puzzle_emb[puzzle_ids].detach().numpy()})[0]
    with torch.no_grad():
        _, _, expected, _ = model.step(y, z, model.input_embeddings(tokens, puzzle_ids))
    assert np.abs(logits - expected.numpy()).max() <= TOLERANCE


def test_export_opset_18(tmp_path):
    # Opset 18 moves ReduceMean's axes from an attribute to an input.
    model = make_model(MLP)
    path = export_step(model, tmp_path / "step18.onnx", opset=18)
    assert onnx.load(str(path)).opset_import[0].version == 18
    tokens, puzzle_ids = sample_inputs(MLP, 2)
    y, z = model.initial_carry(2)
    got = session(path).run(["z_out"], {
        "y": y.numpy(), "z": z.numpy(), "tokens": tokens.numpy(),
        "puzzle_row": model.puzzle_emb[puzzle_ids].detach().numpy()})[0]
    with torch.no_grad():
        _, expected, _, _ = model.step(y, z, model.input_embeddings(tokens, puzzle_ids))
    assert np.abs(got - expected.numpy()).max() <= TOLERANCE


def test_export_rejects_old_opset(tmp_path):
    with pytest.raises(ValueError, match="opset 16 is not supported"):
        export_step(make_model(MLP), tmp_path / "old.onnx", opset=16)


# Import: accepted graphs ---------------------------------------------------------------------

def test_import_round_trip(exported):
    model, path = exported
    imported = import_step(path)
    assert imported.config == model.config
    assert_same_state(imported, model)
    assert imported.source_path == path
    assert imported.training_notes == {"steps": 5, "loss": 1.25, "imported_from": str(path),
                                       "onnx_producer": f"rrgen {rrgen.__version__}"}
    tokens, puzzle_ids = sample_inputs(model.config, 4)
    assert torch.equal(imported.solve(tokens, puzzle_ids), model.solve(tokens, puzzle_ids))


def rename_everything(proto: onnx.ModelProto) -> None:
    """Replace every initializer, value, input, output and node name with a random one."""
    rng = np.random.default_rng(7)
    names: dict[str, str] = {}

    def fresh(name: str) -> str:
        if not name:
            return name  # an omitted optional input
        return names.setdefault(name, f"v{rng.integers(10**9)}_{len(names)}")

    graph = proto.graph
    for value in [*graph.initializer, *graph.input, *graph.output]:
        value.name = fresh(value.name)
    for node in graph.node:
        node.input[:] = [fresh(name) for name in node.input]
        node.output[:] = [fresh(name) for name in node.output]
        node.name = f"n{rng.integers(10**9)}"


def test_import_renamed_graph(exported, tmp_path):
    model, path = exported
    renamed = rewrite(path, tmp_path / "renamed.onnx", rename_everything)
    graph = onnx.load(str(renamed)).graph
    assert not {init.name for init in graph.initializer} & set(model.state_dict())
    assert_same_state(import_step(renamed), model)


def test_import_perturbed_weight(exported_mlp, tmp_path):
    model, path = exported_mlp
    name = "L_level.layers.1.mlp.down_proj.weight"
    rng = np.random.default_rng(3)

    def perturb(proto):
        init = next(init for init in proto.graph.initializer if init.name == name)
        value = numpy_helper.to_array(init)
        value = value + rng.normal(0.0, 0.1, value.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(value, name))

    perturbed = rewrite(path, tmp_path / "perturbed.onnx", perturb)
    stored = next(numpy_helper.to_array(init)
                  for init in onnx.load(str(perturbed)).graph.initializer if init.name == name)
    imported = import_step(perturbed)
    assert np.array_equal(imported.state_dict()[name].numpy(), stored)
    assert not np.array_equal(stored, model.state_dict()[name].numpy())

    tokens, puzzle_ids = sample_inputs(MLP, 2)
    y, z = imported.initial_carry(2)
    logits = session(perturbed).run(["logits"], {
        "y": y.numpy(), "z": z.numpy(), "tokens": tokens.numpy(),
        "puzzle_row": imported.puzzle_emb[puzzle_ids].detach().numpy()})[0]
    with torch.no_grad():
        _, _, expected, _ = imported.step(y, z, imported.input_embeddings(tokens, puzzle_ids))
    assert np.abs(logits - expected.numpy()).max() <= TOLERANCE


def test_import_head_as_matmul_add(exported_mlp, tmp_path):
    # A biased linear layer may also come as MatMul then Add instead of one Gemm.
    model, path = exported_mlp

    def split_gemm(proto):
        nodes = list(proto.graph.node)
        index = next(i for i, node in enumerate(nodes) if node.op_type == "Gemm")
        gemm = nodes[index]
        first, weight, bias = gemm.input
        nodes[index:index + 1] = [
            helper.make_node("Transpose", [weight], ["q_weight_T"]),
            helper.make_node("MatMul", [first, "q_weight_T"], ["q_no_bias"]),
            helper.make_node("Add", ["q_no_bias", bias], [gemm.output[0]]),
        ]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)

    rewritten = rewrite(path, tmp_path / "matmul_add.onnx", split_gemm)
    assert "Gemm" not in {node.op_type for node in onnx.load(str(rewritten)).graph.node}
    assert_same_state(import_step(rewritten), model)


class StepModule(torch.nn.Module):
    """model.step with the puzzle row as an input, for torch.onnx.export."""

    def __init__(self, model: TRM):
        super().__init__()
        self.model = model

    def forward(self, y, z, tokens, puzzle_row):
        cfg = self.model.config
        prefix = F.pad(puzzle_row[:, None], (0, 0, 0, cfg.puzzle_emb_len - 1))
        x = cfg.embed_scale * torch.cat([prefix, self.model.embed_tokens(tokens)], dim=1)
        y, z, logits, q = self.model.step(y, z, x)
        return y, z, logits, q[:, 0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_import_torchscript_export(exported, tmp_path):
    # torch.onnx's TorchScript exporter names bias-free weights onnx::MatMul_N and stores
    # them transposed, so the import has to find them by structure.
    model, path = exported
    cfg = model.config
    y, z = model.initial_carry(2)
    example = (y, z, torch.zeros(2, cfg.seq_len, dtype=torch.long), torch.zeros(2, cfg.hidden_size))
    foreign = tmp_path / "torchscript.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(StepModule(model), example, str(foreign), dynamo=False, opset_version=17,
                          input_names=["a", "b", "c", "d"], output_names=["e", "f", "g", "h"],
                          dynamic_axes={name: {0: "batch"} for name in "abcdefgh"})
    metadata = onnx.load(str(path)).metadata_props
    rewrite(foreign, foreign, lambda proto: proto.metadata_props.extend(metadata))
    initializers = {init.name for init in onnx.load(str(foreign)).graph.initializer}
    assert any(name.startswith("onnx::MatMul") for name in initializers)
    assert_same_state(import_step(foreign), model)


# Import: rejected files ----------------------------------------------------------------------

def test_import_rejects_unsupported_op(exported_mlp, tmp_path):
    _, path = exported_mlp

    def insert_tanh(proto):
        nodes = list(proto.graph.node)
        index = next(i for i, node in enumerate(nodes) if node.op_type == "Sigmoid")
        original = nodes[index].output[0]
        nodes[index].output[0] = "before_tanh"
        tanh = helper.make_node("Tanh", ["before_tanh"], [original], name="inserted")
        nodes.insert(index + 1, tanh)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)

    broken = rewrite(path, tmp_path / "tanh.onnx", insert_tanh)
    with pytest.raises(ValueError, match=r"Tanh node 'inserted' has op type ai\.onnx\.Tanh, "
                                         r"which an rrgen recursion step does not use"):
        import_step(broken)


@pytest.mark.parametrize("content", [b"this is not an ONNX model\n", b"", b"\x08\x07\xff\xff"])
def test_import_rejects_non_onnx_file(tmp_path, content):
    path = tmp_path / "notes.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"notes\.onnx' is not an ONNX model"):
        import_step(path)


def test_import_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"absent\.onnx' not found"):
        import_step(tmp_path / "absent.onnx")


@pytest.mark.parametrize("key", METADATA_KEYS)
def test_import_rejects_missing_metadata(exported_mlp, tmp_path, key):
    _, path = exported_mlp

    def drop(proto):
        remaining = [prop for prop in proto.metadata_props if prop.key != key]
        del proto.metadata_props[:]
        proto.metadata_props.extend(remaining)

    stripped = rewrite(path, tmp_path / "stripped.onnx", drop)
    with pytest.raises(ValueError, match=f"metadata_props is missing \\['{key}'\\]"):
        import_step(stripped)


def test_import_rejects_wrong_input_shape(exported_mlp, tmp_path):
    _, path = exported_mlp

    def lengthen_tokens(proto):
        proto.graph.input[2].type.tensor_type.shape.dim[1].dim_value = MLP.seq_len + 1

    wrong = rewrite(path, tmp_path / "wrong_shape.onnx", lengthen_tokens)
    with pytest.raises(ValueError, match=r"graph input 'tokens' \(the tokens input\) has type "
                                         r"INT64 and shape \(None, 17\), the config needs type "
                                         r"INT64 or INT32 and shape \(None, 16\)"):
        import_step(wrong)


def test_import_rejects_invalid_config(exported_mlp, tmp_path):
    _, path = exported_mlp
    bad = rewrite(path, tmp_path / "bad.onnx",
                  lambda proto: set_metadata(proto, "rrgen.config", "{not json"))
    with pytest.raises(ValueError, match="invalid rrgen metadata"):
        import_step(bad)


def test_import_rejects_config_of_other_model(exported_mlp, tmp_path):
    _, path = exported_mlp
    # Per cycle: 2 L calls and 1 H call of 2 blocks, each with 4 linear layers.
    longer = dataclasses.replace(MLP, H_cycles=3).to_json()
    relabelled = rewrite(path, tmp_path / "relabelled.onnx",
                         lambda proto: set_metadata(proto, "rrgen.config", longer))
    with pytest.raises(ValueError, match="the graph has 50 MatMul/Gemm nodes with a constant "
                                         "weight, one step of the config .* calls 74 linear"):
        import_step(relabelled)


def test_import_rejects_changed_computation(exported_mlp, tmp_path):
    # Only the input-embedding scale changes: every weight still matches, the outputs do not.
    _, path = exported_mlp

    def rescale(proto):
        scale = next(node for node in proto.graph.node if node.op_type == "Mul")
        init = next(init for init in proto.graph.initializer if init.name == scale.input[1])
        assert math.isclose(float(numpy_helper.to_array(init)), math.sqrt(MLP.hidden_size),
                            rel_tol=1e-6)
        init.CopyFrom(numpy_helper.from_array(np.asarray(1.0, np.float32), init.name))

    changed = rewrite(path, tmp_path / "rescaled.onnx", rescale)
    with pytest.raises(ValueError, match=r"is not a recognisable recursion step: output 'y_out' "
                                         r"\(y_out\) differs .* call 0 "
                                         r"\(L_level\.layers\.0\.mlp_t\.gate_up_proj\.weight\)"):
        import_step(changed)


def test_import_rejects_untied_weights(exported_mlp, tmp_path):
    _, path = exported_mlp
    name = "L_level.layers.0.mlp.down_proj.weight"

    def untie_last_use(proto):
        graph = proto.graph
        weight = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == name)
        graph.initializer.append(numpy_helper.from_array(weight + 0.01, "untied"))
        graph.node.insert(0, helper.make_node("Transpose", ["untied"], ["untied_T"]))
        last = [node for node in graph.node if name + "_T" in node.input][-1]
        last.input[list(last.input).index(name + "_T")] = "untied_T"

    untied = rewrite(path, tmp_path / "untied.onnx", untie_last_use)
    # The last use is in the H call of the second cycle: 24 + 16 calls before it, then the
    # layer's mlp_t.gate_up_proj, mlp_t.down_proj and mlp.gate_up_proj.
    with pytest.raises(ValueError, match=f"\\({name}, call 43\\) has a different weight"):
        import_step(untied)
