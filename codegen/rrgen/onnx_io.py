"""ONNX export and import of one supervision step of a TRM or HRM.

The step graph maps (y, z, tokens, puzzle_row) to (y_out, z_out, logits, q_halt). It embeds
the tokens, runs H_cycles x {L_cycles x z = L(z + y + x); y = H(y + z)} unrolled and applies
the heads. The halting loop, the initial carry and the puzzle-embedding table stay outside
the graph, in the model's metadata_props:

- rrgen.config: TRMConfig as JSON.
- rrgen.H_init, rrgen.L_init: JSON lists of hidden_size floats, the initial y and z.
- rrgen.puzzle_emb: JSON list of table rows; puzzle_row is one row of it.
- rrgen.loop: the halting loop in words.
- rrgen.training: the model's training notes as JSON (optional on import).

H_init, L_init and the table are metadata rather than initializers because no node uses
them, and onnxruntime and graph optimizers drop initializers that no node uses.
NOTE: JSON text takes about 10 bytes per float, which suits the one-row tables of the zoo
but makes a file with thousands of puzzle identifiers large.

import_step() accepts such a graph from any producer. It finds the weights by graph
structure, not by name, and checks the rebuilt model against onnxruntime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from . import __version__
from .config import TRMConfig
from .model import TRM, rope_tables

INPUTS = ("y", "z", "tokens", "puzzle_row")
OUTPUTS = ("y_out", "z_out", "logits", "q_halt")
METADATA_KEYS = ("rrgen.config", "rrgen.H_init", "rrgen.L_init", "rrgen.puzzle_emb")
LOOP = ("y = H_init and z = L_init at every position; puzzle_row = rrgen.puzzle_emb[puzzle_id]; "
        "for step in 1..halt_max_steps: (y, z, logits, q_halt) = step(y, z, tokens, puzzle_row); "
        "stop when q_halt > 0 or steps exhausted; the answer is argmax(logits, -1)")
# Op types that a step graph may contain: the step's arithmetic, plus the indexing and shape
# ops that exporters such as torch.onnx emit around it.
SUPPORTED_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "Sigmoid",
    "Softmax", "MatMul", "Gemm", "Gather", "Concat", "Split", "Slice", "Pad", "Reshape",
    "Transpose", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast", "Constant",
    "ConstantOfShape", "Shape", "ScatterND", "Where", "Equal"})


class _StepBuilder:
    """Nodes and initializers of one step graph, with generated names for intermediates."""

    def __init__(self, model: TRM, opset: int):
        self.cfg = model.config
        self.opset = opset
        self.params = {key: value.detach().cpu().float().numpy()
                       for key, value in model.state_dict().items()}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constants: dict[tuple, str] = {}   # (dtype, shape, bytes) -> initializer name
        self.transposed: dict[str, str] = {}    # weight name -> name of its Transpose output

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs):
        """Append a node and return its output name, or a list of names for several outputs."""
        index = len(self.nodes)
        if isinstance(outputs, int):
            outputs = [f"{op_type}_{index}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=f"{op_type}_{index}", **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, value, dtype=np.float32) -> str:
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            self.constants[key] = f"const_{len(self.inits)}"
            self.inits.append(numpy_helper.from_array(array, self.constants[key]))
        return self.constants[key]

    def param(self, name: str) -> str:
        """Add the model tensor `name` as an initializer of the same name."""
        self.inits.append(numpy_helper.from_array(self.params[name], name))
        return name

    def linear(self, x: str, name: str) -> str:
        # The initializer keeps PyTorch's [out, in] layout, so one Transpose feeds every call.
        if name not in self.transposed:
            self.transposed[name] = self.op("Transpose", self.param(name), outputs=[name + "_T"])
        return self.op("MatMul", x, self.transposed[name])

    def rms_norm(self, x: str) -> str:
        square = self.op("Mul", x, x)
        if self.opset >= 18:
            mean = self.op("ReduceMean", square, self.const([-1], np.int64), keepdims=1)
        else:
            mean = self.op("ReduceMean", square, axes=[-1], keepdims=1)
        root = self.op("Sqrt", self.op("Add", mean, self.const(self.cfg.rms_norm_eps)))
        return self.op("Div", x, root)

    def swiglu(self, x: str, prefix: str) -> str:
        width = self.params[prefix + ".down_proj.weight"].shape[1]
        fused = self.linear(x, prefix + ".gate_up_proj.weight")
        gate, up = self.op("Split", fused, self.const([width, width], np.int64), axis=-1, outputs=2)
        product = self.op("Mul", self.op("Mul", gate, self.op("Sigmoid", gate)), up)
        return self.linear(product, prefix + ".down_proj.weight")

    def rope(self, x: str) -> str:
        half = self.cfg.head_dim // 2
        first, second = self.op("Split", x, self.const([half, half], np.int64), axis=-1, outputs=2)
        rotated = self.op("Concat", self.op("Neg", second), first, axis=-1)
        cos, sin = rope_tables(self.cfg.positions, self.cfg.head_dim, self.cfg.rope_theta)
        return self.op("Add", self.op("Mul", x, self.const(cos[:, None, :])),
                       self.op("Mul", rotated, self.const(sin[:, None, :])))

    def attention(self, h: str, prefix: str) -> str:
        heads, head_dim = self.cfg.num_heads, self.cfg.head_dim
        qkv = self.linear(h, prefix + ".qkv_proj.weight")
        qkv = self.op("Reshape", qkv, self.const([0, 0, 3 * heads, head_dim], np.int64))
        q, k, v = self.op("Split", qkv, self.const([heads] * 3, np.int64), axis=2, outputs=3)
        if self.cfg.pos_encodings == "rope":
            q, k = self.rope(q), self.rope(k)
        q = self.op("Transpose", q, perm=[0, 2, 1, 3])
        k = self.op("Transpose", k, perm=[0, 2, 3, 1])
        v = self.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = self.op("Mul", self.op("MatMul", q, k), self.const(1.0 / math.sqrt(head_dim)))
        out = self.op("MatMul", self.op("Softmax", scores, axis=-1), v)
        out = self.op("Transpose", out, perm=[0, 2, 1, 3])
        out = self.op("Reshape", out, self.const([0, 0, heads * head_dim], np.int64))
        return self.linear(out, prefix + ".o_proj.weight")

    def block(self, h: str, prefix: str) -> str:
        if self.cfg.mlp_t:
            t = self.op("Transpose", h, perm=[0, 2, 1])
            t = self.rms_norm(self.op("Add", t, self.swiglu(t, prefix + ".mlp_t")))
            h = self.op("Transpose", t, perm=[0, 2, 1])
        else:
            h = self.rms_norm(self.op("Add", h, self.attention(h, prefix + ".self_attn")))
        return self.rms_norm(self.op("Add", h, self.swiglu(h, prefix + ".mlp")))

    def net(self, level: str, layers: int, hidden: str, injection: str) -> str:
        hidden = self.op("Add", hidden, injection)
        for i in range(layers):
            hidden = self.block(hidden, f"{level}.layers.{i}")
        return hidden

    def build(self) -> None:
        cfg = self.cfg
        prefix_len, positions = cfg.puzzle_emb_len, cfg.positions
        tokens = self.op("Gather", self.param("embed_tokens.weight"), "tokens", axis=0)
        prefix = self.op("Unsqueeze", "puzzle_row", self.const([1], np.int64))
        if prefix_len > 1:
            pads = self.const([0, 0, 0, 0, prefix_len - 1, 0], np.int64)
            prefix = self.op("Pad", prefix, pads)
        x = self.op("Mul", self.op("Concat", prefix, tokens, axis=1), self.const(cfg.embed_scale))

        hrm = cfg.arch == "hrm"
        h_level, h_layers = ("H_level", cfg.H_layers) if hrm else ("L_level", cfg.L_layers)
        y, z = "y", "z"
        for _ in range(cfg.H_cycles):
            for _ in range(cfg.L_cycles):
                z = self.net("L_level", cfg.L_layers, z, self.op("Add", y, x))
            y = self.net(h_level, h_layers, y, z)

        cells = self.op("Slice", y, self.const([prefix_len], np.int64),
                        self.const([positions], np.int64), self.const([1], np.int64))
        self.op("Identity", self.linear(cells, "lm_head.weight"), outputs=["logits"])
        first = self.op("Gather", y, self.const(0, np.int64), axis=1)
        q = self.op("Gemm", first, self.param("q_head.weight"), self.param("q_head.bias"), transB=1)
        self.op("Gather", q, self.const(0, np.int64), axis=1, outputs=["q_halt"])
        self.op("Identity", y, outputs=["y_out"])
        self.op("Identity", z, outputs=["z_out"])


def export_step(model: TRM, path: str | Path, opset: int = 17) -> Path:
    """Write one supervision step of `model` as an ONNX file with a dynamic batch dimension.

    Raise ValueError for an opset below 17 or above the installed onnx package's maximum.
    """
    if not 17 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is not supported. Use an opset from 17 to "
                         f"{onnx.defs.onnx_opset_version()}")
    cfg = model.config
    builder = _StepBuilder(model, opset)
    builder.build()

    carry = ["batch", cfg.positions, cfg.hidden_size]
    shapes = dict(zip(INPUTS + OUTPUTS, [
        carry, carry, ["batch", cfg.seq_len], ["batch", cfg.hidden_size],
        carry, carry, ["batch", cfg.seq_len, cfg.vocab_size], ["batch"]]))
    values = {name: helper.make_tensor_value_info(
        name, TensorProto.INT64 if name == "tokens" else TensorProto.FLOAT, shape)
        for name, shape in shapes.items()}
    graph = helper.make_graph(builder.nodes, f"rrgen_{cfg.arch}_step", [values[n] for n in INPUTS],
                              [values[n] for n in OUTPUTS], builder.inits,
                              doc_string="One supervision step of a recursive reasoner. The "
                              "metadata entry rrgen.loop describes the halting loop around it.")

    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="rrgen",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    params = builder.params
    helper.set_model_props(proto, {
        "rrgen.config": cfg.to_json(),
        "rrgen.H_init": json.dumps(params["H_init"].tolist()),
        "rrgen.L_init": json.dumps(params["L_init"].tolist()),
        "rrgen.puzzle_emb": json.dumps(params["puzzle_emb"].tolist()),
        "rrgen.loop": LOOP,
        "rrgen.training": json.dumps(getattr(model, "training_notes", {}), sort_keys=True),
    })

    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    onnx.save(proto, str(path))
    return path


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ValueError(f"ONNX file {str(path)!r} not found; write one with "
                         "`python -m rrgen export-onnx --out FILE`")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not an ONNX model ({err}); pass a file written by "
                         "`python -m rrgen export-onnx` or another ONNX exporter") from None
    if proto.ir_version == 0 or not proto.graph.node:
        raise ValueError(f"{str(path)!r} is not an ONNX model: it has no IR version or no "
                         "graph nodes")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"{str(path)!r} is an invalid ONNX model: {err}") from None
    return proto


def _read_metadata(proto: onnx.ModelProto, where: str) -> tuple[TRMConfig, dict, dict]:
    """Return the config, the tensors H_init, L_init and puzzle_emb, and the training notes."""
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"{where}: metadata_props is missing {missing}. A producer other than "
                         "rrgen.onnx_io.export_step must add the config and the initial carry "
                         "under these keys")
    try:
        config = TRMConfig.from_dict(json.loads(metadata["rrgen.config"]))
        tensors = {key: np.asarray(json.loads(metadata["rrgen." + key]), np.float32)
                   for key in ("H_init", "L_init", "puzzle_emb")}
        notes = json.loads(metadata.get("rrgen.training", "{}"))
        if not isinstance(notes, dict):
            raise TypeError(f"rrgen.training must be a JSON object, got {notes!r}")
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: invalid rrgen metadata: {err}") from None
    shapes = {"H_init": (config.hidden_size,), "L_init": (config.hidden_size,),
              "puzzle_emb": (config.num_puzzle_identifiers, config.hidden_size)}
    for key, shape in shapes.items():
        if tensors[key].shape != shape:
            raise ValueError(f"{where}: metadata rrgen.{key} has shape {tensors[key].shape}, "
                             f"the config needs {shape}")
    return config, tensors, notes


def _check_interface(graph: onnx.GraphProto, config: TRMConfig,
                     where: str) -> list[onnx.ValueInfoProto]:
    """Check the graph inputs against the config by position and type, and return them."""
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    floating, integer = (TensorProto.FLOAT,), (TensorProto.INT64, TensorProto.INT32)
    carry = (None, config.positions, config.hidden_size)
    expected = [(carry, floating), (carry, floating), ((None, config.seq_len), integer),
                ((None, config.hidden_size), floating)]
    if len(inputs) != 4 or len(graph.output) != 4:
        raise ValueError(f"{where}: a step graph has 4 inputs {INPUTS} and 4 outputs {OUTPUTS}, "
                         f"this one has {len(inputs)} inputs and {len(graph.output)} outputs")
    for name, value, (shape, types) in zip(INPUTS, inputs, expected):
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value or None for d in tensor.shape.dim)
        matches = len(dims) == len(shape) and all(a is None or b is None or a == b
                                                   for a, b in zip(dims, shape))
        if tensor.elem_type not in types or not matches:
            type_name = TensorProto.DataType.Name(tensor.elem_type)
            allowed = " or ".join(TensorProto.DataType.Name(t) for t in types)
            raise ValueError(f"{where}: graph input {value.name!r} (the {name} input) has type "
                             f"{type_name} and shape {dims}, the config needs type {allowed} "
                             f"and shape {shape}")
    return inputs


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Fold initializers and Constant nodes through Identity, Cast and Transpose."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # the ONNX checker requires topological order
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and len(attrs) == 1:
            value = next(iter(attrs.values()))
            values[node.output[0]] = (numpy_helper.to_array(value)
                                      if isinstance(value, onnx.TensorProto) else np.asarray(value))
        elif node.op_type in ("Identity", "Cast", "Transpose") and node.input[0] in values:
            value = values[node.input[0]]
            if node.op_type == "Cast":
                value = value.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
            elif node.op_type == "Transpose":
                value = np.transpose(value, attrs.get("perm"))
            values[node.output[0]] = value
    return values


def _linears(graph: onnx.GraphProto, values: dict) -> list[tuple]:
    """Return (node, weight [out, in], bias) of each MatMul or Gemm x @ W with a constant W."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in graph.node:
        operands = [values.get(name) for name in node.input]
        bias = None
        if node.op_type == "MatMul" and operands[0] is None and operands[1] is not None:
            weight = operands[1].T  # the graph computes x @ B, so the [out, in] weight is B.T
            # A bias is an Add of a constant as the only consumer.
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                bias = next((values[n] for n in users[0].input if n in values), None)
        elif node.op_type == "Gemm" and operands[0] is None and operands[1] is not None:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                continue
            weight = operands[1] if attrs.get("transB", 0) else operands[1].T
            weight = attrs.get("alpha", 1.0) * weight
            if len(operands) > 2 and operands[2] is not None:
                bias = attrs.get("beta", 1.0) * operands[2]
        else:
            continue
        if weight.ndim == 2:
            found.append((node, weight.astype(np.float32), bias))
    return found


def _linear_calls(model: TRM) -> list[str]:
    """Return the weight names of the nn.Linear calls of one step, in call order."""
    cfg = model.config
    names = {id(module): name for name, module in model.named_modules()}
    # NOTE: module registration order is the call order in Block, Attention and SwiGLU.
    per_net = [[names[id(m)] + ".weight" for m in net.modules() if isinstance(m, nn.Linear)]
               for net in model.nets]
    cycle = per_net[0] * cfg.L_cycles + per_net[1]
    return cycle * cfg.H_cycles + ["lm_head.weight", "q_head.weight"]


def _ancestors(graph: onnx.GraphProto, output: str) -> set[str]:
    producers = {name: node for node in graph.node for name in node.output}
    seen, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(producers[name].input if name in producers else [])
    return seen


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _match_weights(graph: onnx.GraphProto, model: TRM, tokens: str,
                   where: str) -> tuple[dict, list]:
    """Map the graph's constant-weight MatMul/Gemm nodes onto the model's linear calls.

    Return the recovered state (embedding and linear weights, q_head bias) and the
    (weight name, node) pairs in call order.
    """
    values = _constants(graph)
    linears = _linears(graph, values)
    calls = _linear_calls(model)
    cfg = model.config
    if len(linears) != len(calls):
        raise ValueError(f"{where}: the graph has {len(linears)} MatMul/Gemm nodes with a constant "
                         f"weight, one step of the config (arch={cfg.arch}, mlp_t={cfg.mlp_t}, "
                         f"H_cycles={cfg.H_cycles}, L_cycles={cfg.L_cycles}, "
                         f"L_layers={cfg.L_layers}, H_layers={cfg.H_layers}) calls {len(calls)} "
                         "linear layers, so the graph is not a recognisable recursion step")
    # lm_head and q_head both read the final y, so order them by which one feeds q_halt.
    if linears[-2][0].output[0] in _ancestors(graph, graph.output[3].name):
        linears[-2], linears[-1] = linears[-1], linears[-2]

    expected = model.state_dict()
    state: dict[str, np.ndarray] = {}
    for call, (name, (node, weight, _)) in enumerate(zip(calls, linears)):
        if weight.shape != tuple(expected[name].shape):
            raise ValueError(f"{where}: {_label(node)} is linear call {call} ({name}) but has "
                             f"weight shape {weight.shape}, the config needs "
                             f"{tuple(expected[name].shape)}")
        if name in state and not np.array_equal(state[name], weight):
            raise ValueError(f"{where}: {_label(node)} ({name}, call {call}) has a different "
                             "weight than an earlier call of the same layer, but rrgen needs every "
                             "recursion to reuse one set of weights")
        state[name] = weight
    bias = np.zeros(2, np.float32) if linears[-1][2] is None else linears[-1][2].reshape(-1)
    if bias.shape != (2,):
        raise ValueError(f"{where}: the q_head bias at {_label(linears[-1][0])} has "
                         f"{bias.size} values, expected 2 (halt, continue)")
    state["q_head.bias"] = bias.astype(np.float32)

    token_values = {tokens}
    embeddings = []
    for node in graph.node:
        passes_tokens = node.op_type in ("Cast", "Identity", "Reshape", "Unsqueeze")
        if passes_tokens and node.input[0] in token_values:
            token_values.add(node.output[0])
        elif node.op_type == "Gather" and node.input[1] in token_values and node.input[0] in values:
            embeddings.append(values[node.input[0]])
    vocab_shape = tuple(expected["embed_tokens.weight"].shape)
    if len(embeddings) != 1 or embeddings[0].shape != vocab_shape:
        raise ValueError(f"{where}: expected one Gather of a constant {vocab_shape} table on the "
                         f"tokens input, found shapes {[e.shape for e in embeddings]}")
    state["embed_tokens.weight"] = embeddings[0]
    return state, [(name, node) for name, (node, _, _) in zip(calls, linears)]


def _verify(proto: onnx.ModelProto, model: TRM, inputs: list, matched: list, where: str) -> None:
    """Run the graph in onnxruntime and the rebuilt step in PyTorch on three seeded inputs.

    The first check starts from the initial carry, the others from random carries. Raise
    ValueError naming the first output, and the first linear call, that differ.
    """
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    ort_errors = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph,
                  ort_state.InvalidProtobuf, ort_state.NotImplemented, ort_state.RuntimeException)

    # Expose each matched linear call's output to locate a divergence.
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = [value.name for value in proto.graph.output]
    extra = [node.output[0] for _, node in matched if node.output[0] not in outputs]
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in extra)
    try:
        session = onnxruntime.InferenceSession(probe.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
    except ort_errors as err:
        raise ValueError(f"{where}: onnxruntime cannot load the graph: {err}") from None

    cfg = model.config
    records: list[np.ndarray] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: records.append(out.numpy()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    batch = inputs[0].type.tensor_type.shape.dim[0].dim_value or 2
    token_type = helper.tensor_dtype_to_np_dtype(inputs[2].type.tensor_type.elem_type)
    generator = torch.Generator().manual_seed(0)
    carry = (batch, cfg.positions, cfg.hidden_size)
    try:
        for check in range(3):
            tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=generator)
            rows = torch.randn(batch, cfg.hidden_size, generator=generator)
            if check == 0:
                y, z = model.initial_carry(batch)
            else:
                y = torch.randn(carry, generator=generator)
                z = torch.randn(carry, generator=generator)
            records.clear()
            with torch.no_grad():
                # Position 0 is the puzzle-row slot, so put the random rows there.
                x = model.input_embeddings(tokens, torch.zeros(batch, dtype=torch.long))
                x[:, 0] = cfg.embed_scale * rows
                y_out, z_out, logits, q = model.step(y, z, x)
            expected = [t.numpy() for t in (y_out, z_out, logits, q[:, 0])]
            arrays = [y.numpy(), z.numpy(), tokens.numpy().astype(token_type), rows.numpy()]
            feed = dict(zip([value.name for value in inputs], arrays))
            try:
                got = dict(zip(outputs + extra, session.run(outputs + extra, feed)))
            except ort_errors as err:
                raise ValueError(f"{where}: onnxruntime failed to run the graph: {err}") from None
            for role, name, want in zip(OUTPUTS, outputs, expected):
                if not _close(got[name], want):
                    raise ValueError(f"{where} is not a recognisable recursion step: output "
                                     f"{name!r} ({role}) differs from the rebuilt rrgen step on "
                                     f"check {check + 1} of 3"
                                     f"{_first_divergence(matched, records, got)}")
    finally:
        for hook in hooks:
            hook.remove()


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Return whether the shapes agree and max |got - want| <= 1e-3 * max(1, max |got|)."""
    if got.shape != want.shape:
        return False
    return float(np.abs(got - want).max()) <= 1e-3 * max(1.0, float(np.abs(got).max()))


def _first_divergence(matched: list, records: list, got: dict) -> str:
    for call, ((name, node), mine) in enumerate(zip(matched, records)):
        theirs = got[node.output[0]]
        if theirs.shape == mine.shape and not _close(theirs, mine):
            return f". The first linear call that differs is call {call} ({name}) at {_label(node)}"
    return ". Every linear call matches, so the difference lies after the last one"


def import_step(path: str | Path) -> TRM:
    """Rebuild a TRM from a step graph: config from metadata, weights from graph structure.

    Raise ValueError when the file is not an ONNX model, lacks rrgen metadata, uses an op type
    that a step does not use, or computes something other than the rebuilt PyTorch step.
    """
    try:
        import onnxruntime  # noqa: F401  (used by _verify)
    except ImportError:
        raise ImportError("import_step verifies the graph with onnxruntime, which is not "
                          "installed. Install it with `pip install onnxruntime`") from None
    path = Path(path)
    where = f"ONNX file {str(path)!r}"
    proto = _load(path)
    config, tensors, notes = _read_metadata(proto, where)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            raise ValueError(f"{where}: {_label(node)} has op type {node.domain or 'ai.onnx'}."
                             f"{node.op_type}, which an rrgen recursion step does not use. "
                             f"Supported op types: {', '.join(sorted(SUPPORTED_OPS))}")
    inputs = _check_interface(proto.graph, config, where)
    model = TRM(config).eval()
    state, matched = _match_weights(proto.graph, model, inputs[2].name, where)
    state.update(tensors)
    model.load_state_dict({key: torch.from_numpy(np.array(value, np.float32))
                           for key, value in state.items()})
    _verify(proto, model, inputs, matched, where)

    model.source_path = path
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    model.training_notes = {**notes, "imported_from": str(path), "onnx_producer": producer}
    return model
