"""Checks codegen/rrgen/trace.py: torch.fx tracing of one TRM block into rrgen's IR.

On the tiny config the traced block must be the ten expected IR ops with the expected
shapes and attributes. Executing the IR in float (calibrate.run_block) must equal
model.Block's forward on random input. A block that uses an op rrgen cannot compile must
raise trace.UnsupportedOpError naming the offending node.

Run: cd codegen && python -m pytest ../tests/test_trace.py
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from rrgen import calibrate
from rrgen import model as model_module
from rrgen.model import Block, Linear
from rrgen.trace import UnsupportedOpError, trace_block


@pytest.fixture(scope="module")
def block(tiny_model):
    return copy.deepcopy(tiny_model.L_level.layers[0])


def test_tiny_block_traces_to_expected_ops(block, tiny_model):
    cfg = tiny_model.config
    graph = trace_block(block, cfg)
    positions, hidden = cfg.positions, cfg.hidden_size          # 85, 16
    tokens, channels = cfg.token_intermediate, cfg.channel_intermediate   # 120, 24
    assert (positions, hidden, tokens, channels) == (85, 16, 120, 24)

    expected = [
        ("transpose", (hidden, positions)),
        ("linear", (hidden, 2 * tokens)),
        ("glu", (hidden, tokens)),
        ("linear", (hidden, positions)),
        ("add_rmsnorm", (hidden, positions)),
        ("transpose", (positions, hidden)),
        ("linear", (positions, 2 * channels)),
        ("glu", (positions, channels)),
        ("linear", (positions, hidden)),
        ("add_rmsnorm", (positions, hidden)),
    ]
    actual = [(node.op, graph.values[node.output].shape) for node in graph.nodes]
    assert actual == expected
    assert graph.values[graph.input].shape == (positions, hidden)
    assert graph.output == graph.nodes[-1].output


def test_tiny_block_linear_and_norm_attributes(block, tiny_model):
    cfg = tiny_model.config
    graph = trace_block(block, cfg)
    linears = [node.attrs for node in graph.nodes if node.op == "linear"]
    assert [a["weight"] for a in linears] == ["mlp_t.gate_up_proj.weight", "mlp_t.down_proj.weight",
                                              "mlp.gate_up_proj.weight", "mlp.down_proj.weight"]
    assert [(a["in_features"], a["out_features"]) for a in linears] == [
        (85, 240), (120, 85), (16, 48), (24, 16)]
    assert [node.attrs["intermediate"] for node in graph.nodes if node.op == "glu"] == [120, 24]

    # Each add_rmsnorm reads the residual (the block's transposed input) and the sublayer.
    norms = [node for node in graph.nodes if node.op == "add_rmsnorm"]
    nodes = graph.nodes
    assert norms[0].inputs == [nodes[0].output, nodes[3].output]
    assert norms[1].inputs == [nodes[5].output, nodes[8].output]
    assert all(node.attrs["eps"] == cfg.rms_norm_eps for node in norms)
    assert nodes[0].inputs == [graph.input]
    assert nodes[5].inputs == [norms[0].output]


def test_ir_execution_equals_block_forward(block, tiny_model):
    graph = trace_block(block, tiny_model.config)
    weights = {k: v.detach() for k, v in block.state_dict().items()}
    torch.manual_seed(1)
    h = torch.randn(3, tiny_model.config.positions, tiny_model.config.hidden_size)
    with torch.no_grad():
        expected = block(h)
        actual = calibrate.run_block(graph, weights, h)
    assert actual.shape == expected.shape
    difference = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5), f"max difference {difference}"


def test_every_layer_of_tiny_model_traces_the_same(tiny_model):
    graphs = [trace_block(layer, tiny_model.config) for layer in tiny_model.L_level.layers]
    assert [n.op for n in graphs[0].nodes] == [n.op for n in graphs[1].nodes]


# Unsupported blocks ------------------------------------------------------------------------
# The blocks call model_module.rms_norm: torch.fx keeps it as one call node only when it is
# looked up in rrgen.model, where torch.fx.wrap registered it.

class TanhBlock(Block):
    """A block with a tanh between the two mixers."""

    def forward(self, h):
        t = h.transpose(1, 2)
        t = model_module.rms_norm(t + self.mlp_t(t), self.eps)
        h = torch.tanh(t.transpose(1, 2))
        return model_module.rms_norm(h + self.mlp(h), self.eps)


class GeluBlock(Block):
    """A block whose channel mixer uses GELU in place of SiLU."""

    def forward(self, h):
        gate, up = self.mlp.gate_up_proj(h).chunk(2, dim=-1)
        return model_module.rms_norm(h + self.mlp.down_proj(F.gelu(gate) * up), self.eps)


class WrongTransposeBlock(Block):
    def forward(self, h):
        t = h.transpose(0, 1)
        return model_module.rms_norm(t + t, self.eps)


class BareAddBlock(Block):
    """A residual add that does not feed rms_norm."""

    def forward(self, h):
        return h + self.mlp(h)


def block_with_bias(config):
    block = Block(config)
    width, intermediate = config.hidden_size, config.channel_intermediate
    block.mlp.gate_up_proj = Linear(width, 2 * intermediate, bias=True)
    return block


@pytest.mark.parametrize("make_block, node_name", [
    (TanhBlock, "tanh"),
    (GeluBlock, "gelu"),
    (block_with_bias, "mlp_gate_up_proj"),
    (WrongTransposeBlock, "transpose"),
])
def test_unsupported_op_raises_naming_node(tiny_model, make_block, node_name):
    block = make_block(tiny_model.config)
    with pytest.raises(UnsupportedOpError) as error:
        trace_block(block, tiny_model.config)
    assert f"'{node_name}'" in str(error.value), str(error.value)


def test_add_not_feeding_rms_norm_names_add(tiny_model):
    with pytest.raises(UnsupportedOpError) as error:
        trace_block(BareAddBlock(tiny_model.config), tiny_model.config)
    assert "'add'" in str(error.value), str(error.value)


def test_unsupported_op_error_is_value_error():
    assert issubclass(UnsupportedOpError, ValueError)
