"""rrgen's intermediate representation of one block of the recursive network.

Pipeline stage: trace -> quantize -> plan -> emit. A BlockGraph is a list of nodes in
execution order over named values. Shapes leave out the batch axis, so the channel-mixing
input is [positions, hidden] and the token-mixing input is [hidden, positions].

Ops (the same list in reference.py and templates/):
- transpose:   out[j, i] = in[i, j]
- linear:      out = in @ W.T, W [out_features, in_features] from the state dict key `weight`
- glu:         out = silu(in[:, :I]) * in[:, I:], I = attrs["intermediate"]
- add_rmsnorm: out = rms_norm(a + b) over the last axis, eps = attrs["eps"]
- attention:   in = [q heads | k heads | v heads] (a fused projection); RoPE on q and k
               (attrs["rope"], base attrs["theta"]), non-causal softmax(q k^T / sqrt(d)) v
               per head; out = the heads side by side, attrs["heads"] x attrs["head_dim"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPS = ("transpose", "linear", "glu", "add_rmsnorm", "attention")


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"          # "int8" once quantized


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    source: str = ""                 # the PyTorch module or function it came from


@dataclass
class BlockGraph:
    nodes: list[Node]
    values: dict[str, Value]
    input: str
    output: str

    def verify(self) -> None:
        """Check that ops are known, every input is defined before use, and shapes agree."""
        defined = {self.input}
        for node in self.nodes:
            if node.op not in OPS:
                raise ValueError(f"node {node.name!r}: unknown op {node.op!r}; known ops are {OPS}")
            for name in node.inputs:
                if name not in defined:
                    raise ValueError(f"node {node.name!r} reads {name!r} before it is defined")
            defined.add(node.output)
            shapes = [self.values[n].shape for n in node.inputs]
            out = self.values[node.output].shape
            expected = _output_shape(node, shapes)
            if out != expected:
                raise ValueError(f"node {node.name!r} ({node.op}): output shape {out}, "
                                 f"inputs {shapes} imply {expected}")
        if self.output not in defined:
            raise ValueError(f"graph output {self.output!r} is never computed")

    def describe(self) -> str:
        """Format one line per node: op, name, input and output shapes."""
        lines = []
        for node in self.nodes:
            ins = ", ".join(f"{n}{list(self.values[n].shape)}" for n in node.inputs)
            out = self.values[node.output]
            lines.append(f"{node.op:12s} {node.name:24s} {ins} -> {out.name}{list(out.shape)} "
                         f"{out.dtype}")
        return "\n".join(lines)


def _output_shape(node: Node, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if node.op == "transpose":
        (rows, cols), = shapes
        return (cols, rows)
    if node.op == "linear":
        (rows, _), = shapes
        return (rows, node.attrs["out_features"])
    if node.op == "glu":
        (rows, width), = shapes
        if width != 2 * node.attrs["intermediate"]:
            raise ValueError(f"node {node.name!r}: glu input width {width} is not "
                             f"2 * {node.attrs['intermediate']}")
        return (rows, node.attrs["intermediate"])
    if node.op == "add_rmsnorm":
        a, b = shapes
        if a != b:
            raise ValueError(f"node {node.name!r}: add_rmsnorm inputs differ in shape {a} vs {b}")
        return a
    if node.op == "attention":
        (rows, width), = shapes
        heads, head_dim = node.attrs["heads"], node.attrs["head_dim"]
        if width != 3 * heads * head_dim:
            raise ValueError(f"node {node.name!r}: attention input width {width} is not "
                             f"3 * {heads} heads * {head_dim}")
        return (rows, heads * head_dim)
    raise ValueError(f"unknown op {node.op!r}")


def scratch_bytes(node: Node, graph: BlockGraph) -> int:
    """Working memory an op's kernel needs besides its input and output (0 for most ops).

    attention: q and k of one head after RoPE, int16 [positions, head_dim] each, and one
    int32 row of scores [positions].
    """
    if node.op != "attention":
        return 0
    positions = graph.values[node.inputs[0]].shape[0]
    return 2 * positions * node.attrs["head_dim"] * 2 + positions * 4
