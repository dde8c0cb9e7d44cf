"""Trace one PyTorch block with torch.fx into rrgen's IR (ir.BlockGraph).

Pipeline stage: model -> trace -> quantize. The fx graph is first mapped node by node to
primitives (transpose, linear, chunk, getitem, silu, mul, add, rms_norm), then fused into
the IR ops that the integer kernels implement:
  chunk + getitem + silu + mul -> glu
  add + rms_norm               -> add_rmsnorm
model.attention (one fx call node, like rms_norm) becomes the attention op; its RoPE
tables are get_attr nodes that the op rebuilds from the config.
A node that maps to no primitive, or a primitive left over after fusion, raises
UnsupportedOpError naming the node, so a changed model fails at build time, not on a board.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import model as model_module
from .config import TRMConfig
from .ir import BlockGraph, Node, Value


class UnsupportedOpError(ValueError):
    """The traced model uses an op rrgen cannot compile."""


def _primitive(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
        return "linear"
    if node.op == "call_method" and node.target in ("transpose", "chunk"):
        return node.target
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        if node.target in (F.silu,):
            return "silu"
        if node.target in (operator.mul, torch.mul):
            return "mul"
        if node.target in (operator.add, torch.add):
            return "add"
        if node.target is model_module.rms_norm:
            return "rms_norm"
        if node.target is model_module.attention:
            return "attention"
    if node.op == "get_attr" and node.target.rsplit(".", 1)[-1] in ("cos", "sin"):
        return "rope_table"
    target = getattr(node.target, "__name__", node.target)
    raise UnsupportedOpError(f"traced node {node.name!r} ({node.op} {target}) is not supported "
                             "by rrgen; supported: Linear, transpose(1, 2), chunk, SiLU, mul, "
                             "add followed by rms_norm, attention")


class _Tracer(torch.fx.Tracer):
    """Keeps every nn.Linear (subclasses included) as one call node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.Linear) or super().is_leaf_module(module, qualified_name)


def trace_block(block: nn.Module, config: TRMConfig) -> BlockGraph:
    """Trace `block` (input [B, positions, hidden]) and lower it to an IR BlockGraph."""
    gm = torch.fx.GraphModule(block, _Tracer().trace(block))
    modules = dict(gm.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    values: dict[str, Value] = {}
    nodes: list[Node] = []
    alias: dict[str, tuple] = {}      # fx node name -> (kind, ...) for nodes fused away
    graph_input = graph_output = None

    def value(name: str, shape: tuple[int, ...]) -> str:
        values[name] = Value(name, shape)
        shapes[name] = shape
        return name

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            graph_input = value(node.name, (config.positions, config.hidden_size))
            continue
        if node.op == "output":
            graph_output = node.args[0].name
            continue
        prim = _primitive(node, modules)
        args = node.args
        if prim == "transpose":
            dims = tuple(d % 3 for d in args[1:3])
            if sorted(dims) != [1, 2]:
                raise UnsupportedOpError(f"node {node.name!r}: only transpose(1, 2) is supported, "
                                         f"got transpose{tuple(args[1:3])}")
            src = args[0].name
            rows, cols = shapes[src]
            nodes.append(Node("transpose", node.name, [src], value(node.name, (cols, rows)),
                              source="Tensor.transpose"))
        elif prim == "linear":
            layer = modules[node.target]
            if layer.bias is not None:
                raise UnsupportedOpError(f"node {node.name!r}: Linear with bias inside a block "
                                         "is not supported")
            src = args[0].name
            rows, width = shapes[src]
            if width != layer.in_features:
                raise ValueError(f"node {node.name!r}: input width {width} != in_features "
                                 f"{layer.in_features}")
            nodes.append(Node("linear", node.name, [src],
                              value(node.name, (rows, layer.out_features)),
                              {"weight": f"{node.target}.weight",
                               "in_features": layer.in_features,
                               "out_features": layer.out_features},
                              source=node.target))
        elif prim == "chunk":
            chunks = args[1] if len(args) > 1 else node.kwargs.get("chunks")
            dim = node.kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if chunks != 2 or dim != -1:
                raise UnsupportedOpError(f"node {node.name!r}: only chunk(2, dim=-1) is supported")
            alias[node.name] = ("chunk", args[0].name)
        elif prim == "getitem":
            kind, src = alias.get(args[0].name, (None, None))
            if kind != "chunk":
                raise UnsupportedOpError(f"node {node.name!r}: indexing is only supported on chunk")
            alias[node.name] = ("half", src, args[1])
        elif prim == "silu":
            a = alias.get(args[0].name)
            if not a or a[0] != "half" or a[2] != 0:
                raise UnsupportedOpError(f"node {node.name!r}: silu is only supported on the "
                                         "gate half of a chunked projection (SwiGLU)")
            alias[node.name] = ("silu_gate", a[1])
        elif prim == "mul":
            a, b = (alias.get(x.name) if isinstance(x, torch.fx.Node) else None for x in args)
            if not (a and b and a[0] == "silu_gate" and b[0] == "half" and b[2] == 1 and a[1] == b[1]):
                raise UnsupportedOpError(f"node {node.name!r}: mul is only supported as "
                                         "silu(gate) * up of one chunked projection (SwiGLU)")
            src = a[1]
            rows, width = shapes[src]
            nodes.append(Node("glu", node.name, [src], value(node.name, (rows, width // 2)),
                              {"intermediate": width // 2}, source="SwiGLU silu(gate) * up"))
        elif prim == "add":
            users = list(node.users)
            feeds_norm = (len(users) == 1 and users[0].op == "call_function"
                          and users[0].target is model_module.rms_norm)
            if not feeds_norm:
                raise UnsupportedOpError(f"node {node.name!r}: add is only supported as the "
                                         "residual feeding rms_norm")
            alias[node.name] = ("add", args[0].name, args[1].name)
        elif prim == "rope_table":
            continue
        elif prim == "attention":
            src = args[0].name
            heads = args[3] if len(args) > 3 else node.kwargs["num_heads"]
            rows, width = shapes[src]
            if width % (3 * heads) or (width // (3 * heads)) % 2:
                raise UnsupportedOpError(f"node {node.name!r}: attention input width {width} "
                                         f"does not split into q, k, v of {heads} heads of "
                                         "even size")
            head_dim = width // (3 * heads)
            nodes.append(Node("attention", node.name, [src],
                              value(node.name, (rows, heads * head_dim)),
                              {"heads": heads, "head_dim": head_dim,
                               "rope": config.pos_encodings == "rope",
                               "theta": float(config.rope_theta)},
                              source="attention (RoPE, softmax, non-causal)"))
        elif prim == "rms_norm":
            a = alias.get(args[0].name)
            if not a or a[0] != "add":
                raise UnsupportedOpError(f"node {node.name!r}: rms_norm must follow a residual add")
            eps = args[1] if len(args) > 1 else node.kwargs["eps"]
            nodes.append(Node("add_rmsnorm", node.name, [a[1], a[2]],
                              value(node.name, shapes[a[1]]), {"eps": float(eps)},
                              source="rms_norm(residual + sublayer)"))

    graph = BlockGraph(nodes, values, graph_input, graph_output)
    graph.verify()
    return graph
