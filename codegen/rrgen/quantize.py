"""Post-training quantization of a TRM into integer parameters (a QModel).

Pipeline stage: model -> trace -> calibrate -> quantize -> plan -> emit.
Convention: real = scale * q, zero point 0, everywhere.

- Weights: symmetric per output channel, INT8 ([-127, 127]) or INT4 ([-7, 7]). Each
  channel's scale is calibrated: clip ratios from 1.0 down to 0.5 of the channel's max
  |w| are tried, and the one that minimizes the squared output error on sampled
  calibration inputs (||X w - X w_q||^2) is kept.
- Activations: INT8 with one scale per tensor, max |value| / 127 over every recursion
  step of the calibration puzzles. A model too big for calibrate.CALIBRATION_MAC_BUDGET
  calibrates on fewer puzzles, then fewer steps (calibrate.plan_calibration). Logits and the halt logit are INT16 (max / 32767), so
  saturation rarely creates a tie for argmax.
- Attention: q, k and v of the fused projection get one scale each. RoPE uses Q14 tables,
  scores are exact int32 dot products, the softmax works on integer score differences
  with a two-table exponential, probabilities are Q15, and the weighted sum of v is
  requantized to INT8 (see reference.attention for the arithmetic).
- Residual adds keep each input in a common base (s_base = max input scale / 2^12) with
  small integer weights, so add + RMSNorm is one integer op and the sum is never rounded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import calibrate
from .calibrate import Stats
from .config import TRMConfig
from .fixedpoint import (INT8_MAX, INT16_MAX, PROB_BITS, quantize_multiplier, rope_q14,
                         score_multiplier, silu_table)
from .ir import BlockGraph
from .model import TRM
from .trace import trace_block

log = logging.getLogger("rrgen.quantize")

ADD_BASE_BITS = 12       # integer weights of a residual or injection add are at most 2^12
RMS_RECIPROCAL_BITS = 30  # fraction bits of the per-row RMSNorm multiplier
CLIP_RATIOS = np.linspace(1.0, 0.5, 11)


@dataclass
class QLinear:
    weight: np.ndarray        # [out_features, in_features] int8 holding values in [-qmax, qmax]
    bits: int                 # 4 or 8
    weight_scale: np.ndarray  # [out_features] float64
    multiplier: np.ndarray    # [out_features] int32, requantize() multiplier
    shift: np.ndarray         # [out_features] int32, requantize() shift
    bias: np.ndarray | None   # [out_features] int32 in accumulator units, or None
    out_min: int
    out_max: int


@dataclass
class QGlu:
    table: np.ndarray         # [256] int8, SiLU of the gate, indexed by gate + 128
    multiplier: int
    shift: int


@dataclass
class QAddNorm:
    weight_a: int             # residual weight in the common base
    weight_b: int             # sublayer weight in the common base
    eps_term: int             # n * eps / s_base^2, rounded
    multiplier: int           # sqrt(n) / s_out as multiplier * 2^(-total_shift + R)
    total_shift: int          # right shift applied to r * row_multiplier


@dataclass
class QAttention:
    heads: int
    head_dim: int
    cos: np.ndarray           # [positions, head_dim / 2] int16, Q14
    sin: np.ndarray           # [positions, head_dim / 2] int16, Q14
    score_multiplier: int     # u = (d * score_multiplier + 2^(score_shift - 1)) >> score_shift
    score_shift: int          # 1..62
    multiplier: int           # requantize() of sum_t p_t v_t (p in Q15) to the output scale
    shift: int


@dataclass
class QAdd:
    weights: list[int]        # integer weight of each input in the common base
    multiplier: int
    shift: int


@dataclass
class QModel:
    config: TRMConfig
    bits: int                              # block weight bits; the smallest one when layers mix
    graph: BlockGraph
    blocks: list[dict]                     # per block (L blocks, then HRM's H blocks): node -> params
    scales: dict = field(default_factory=dict)
    embed: np.ndarray = None               # [vocab, hidden] int8, x rows (scale x)
    puzzle: np.ndarray = None              # [num_puzzle_identifiers, hidden] int8 (scale x)
    h_init: np.ndarray = None              # [hidden] int8 (scale carry)
    l_init: np.ndarray = None              # [hidden] int8 (scale carry)
    add_z: QAdd = None                     # z + y + x -> net input
    add_y: QAdd = None                     # y + z -> net input
    lm_head: QLinear = None                # int16 logits
    q_head: QLinear = None                 # int16 (halt, continue) logits, with bias
    errors: dict = field(default_factory=dict)  # per-weight relative quantization error

    def model_id(self) -> int:
        """First 4 bytes (little-endian) of a SHA-256 over every integer parameter.

        A mixture of INT4 and INT8 layers also hashes its per-layer bits. A uniform model
        hashes only `bits`, so its id is the same as before mixtures existed.
        """
        h = hashlib.sha256()
        h.update(self.config.to_json().encode())
        h.update(bytes([self.bits]))
        if self.is_mixed():
            h.update(json.dumps(self.layer_bits(), sort_keys=True).encode())
        for arr in self.arrays():
            h.update(np.ascontiguousarray(arr).tobytes())
        return int.from_bytes(h.digest()[:4], "little")

    def layer_bits(self) -> dict[str, int]:
        """Map every block linear, keyed as `errors` ("L{block}.{weight name}"), to its bits."""
        return {linear_key(layer, node): block[node.name].bits
                for layer, block in enumerate(self.blocks)
                for node in self.graph.nodes if node.op == "linear"}

    def is_mixed(self) -> bool:
        """Return True when the block linears do not all have the same weight bits."""
        return len(set(self.layer_bits().values())) > 1

    def arrays(self):
        for a in (self.embed, self.puzzle, self.h_init, self.l_init):
            yield a
        for block in self.blocks:
            for name in sorted(block):
                p = block[name]
                if isinstance(p, QLinear):
                    yield from (p.weight, p.multiplier, p.shift)
                elif isinstance(p, QGlu):
                    yield p.table
                    yield np.array([p.multiplier, p.shift])
                elif isinstance(p, QAttention):
                    yield from (p.cos, p.sin)
                    yield np.array([p.heads, p.head_dim, p.score_multiplier, p.score_shift,
                                    p.multiplier, p.shift])
                else:
                    yield np.array([p.weight_a, p.weight_b, p.eps_term, p.multiplier,
                                    p.total_shift])
        for head in (self.lm_head, self.q_head):
            yield from (head.weight, head.multiplier, head.shift)
        yield self.q_head.bias
        for add in (self.add_z, self.add_y):
            yield np.array(add.weights + [add.multiplier, add.shift])


def linear_key(layer: int, node) -> str:
    """Return the key of one block linear in layer_bits and QModel.errors: "L{layer}.{weight}"."""
    return f"L{layer}.{node.attrs['weight']}"


def linear_keys(config: TRMConfig, graph: BlockGraph) -> list[str]:
    """List every block linear's key, block by block in graph order."""
    return [linear_key(layer, node) for layer in range(calibrate.block_count(config))
            for node in graph.nodes if node.op == "linear"]


def resolve_layer_bits(config: TRMConfig, graph: BlockGraph, bits: int,
                       layer_bits: dict[str, int] | None) -> dict[str, int]:
    """Resolve the bits of every block linear: `bits`, overridden per key by `layer_bits`.

    Raises ValueError for an unknown key (naming the valid keys) or bits other than 4 or 8.
    """
    if bits not in (4, 8):
        raise ValueError(f"--bits {bits} is not supported; use 4 or 8")
    keys = linear_keys(config, graph)
    resolved = dict.fromkeys(keys, bits)
    for key, value in (layer_bits or {}).items():
        if key not in resolved:
            raise ValueError(f"layer_bits names unknown layer {key!r}; valid layers: "
                             f"{', '.join(keys)}")
        if value not in (4, 8):
            raise ValueError(f"layer_bits[{key!r}] = {value!r} is not supported; use 4 or 8")
        resolved[key] = value
    return resolved


def act_scale(maxabs: float, qmax: int = INT8_MAX) -> float:
    """Per-tensor scale from the largest magnitude; a zero tensor gets scale 1."""
    return maxabs / qmax if maxabs > 0 else 1.0


def choose_weight_scales(weight: np.ndarray, inputs: np.ndarray | None, qmax: int,
                         name: str = "") -> np.ndarray:
    """Per-channel scales: the clip ratio that minimizes ||X (w - w_q)||^2, channel by channel."""
    w = weight.astype(np.float64)
    maxabs = np.abs(w).max(axis=1)
    if np.any(maxabs == 0):
        # Expected for q_head's "continue" row, which TRM's default loss never trains.
        dead = np.flatnonzero(maxabs == 0)[:5].tolist()
        log.info("weight %s: channels %s are all zero; they get scale 1", name, dead)
    maxabs = np.where(maxabs > 0, maxabs, qmax)
    if inputs is None or len(inputs) == 0:
        return maxabs / qmax
    x = np.asarray(inputs, dtype=np.float64)
    if len(x) > w.shape[1]:
        # ||X d||^2 = d^T (X^T X) d: with more rows than inputs, the Gram matrix is cheaper.
        gram = x.T @ x

        def error(d: np.ndarray) -> np.ndarray:
            return np.einsum("oi,oi->o", d @ gram, d)
    else:
        def error(d: np.ndarray) -> np.ndarray:
            return ((x @ d.T) ** 2).sum(axis=0)
    best_err = np.full(w.shape[0], np.inf)
    best = maxabs / qmax
    for ratio in CLIP_RATIOS:
        scale = ratio * maxabs / qmax
        wq = np.clip(np.round(w / scale[:, None]), -qmax, qmax) * scale[:, None]
        err = error(w - wq)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, scale, best)
    return best


def quantize_linear(weight: np.ndarray, bits: int, in_scale: float, out_scales: np.ndarray,
                    inputs: np.ndarray | None, bias: np.ndarray | None = None,
                    out_range: tuple[int, int] = (-128, 127), name: str = "") -> QLinear:
    qmax = 7 if bits == 4 else 127
    if not np.all(np.isfinite(weight)):
        raise ValueError(f"weight {name!r} contains NaN or Inf; the checkpoint is unusable")
    w_scale = choose_weight_scales(weight, inputs, qmax, name)
    # An all-zero channel outputs only its bias: a scale that makes its multiplier 1 keeps
    # the bias exact in output units and the multiplier in range.
    dead = np.abs(weight).max(axis=1) == 0
    w_scale = np.where(dead, out_scales / in_scale, w_scale)
    wq = np.clip(np.round(weight / w_scale[:, None]), -qmax, qmax).astype(np.int8)
    mult = np.zeros(len(w_scale), dtype=np.int64)
    shift = np.zeros(len(w_scale), dtype=np.int64)
    max_acc = 128 * qmax * weight.shape[1]
    for c, real in enumerate(in_scale * w_scale / out_scales):
        mult[c], shift[c] = quantize_multiplier(float(real))
        if shift[c] > 0 and max_acc << int(shift[c]) >= 1 << 31:
            raise ValueError(f"layer {name!r} channel {c}: output multiplier {real:.3g} is too "
                             "large for int32 requantization; recalibrate on more puzzles")
    qbias = None
    if bias is not None:
        qbias = np.round(bias / (in_scale * w_scale)).astype(np.int64)
        if np.abs(qbias).max() >= 1 << 30:
            raise ValueError(f"layer {name!r}: bias does not fit int32 accumulator units")
    return QLinear(wq, bits, w_scale, mult.astype(np.int32), shift.astype(np.int32),
                   None if qbias is None else qbias.astype(np.int32), *out_range)


def make_add(in_scales: list[float], out_scale: float, name: str) -> QAdd:
    base = max(in_scales) / (1 << ADD_BASE_BITS)
    weights = [int(round(s / base)) for s in in_scales]
    mult, shift = quantize_multiplier(base / out_scale)
    max_sum = 128 * sum(weights)
    if shift > 0 and max_sum << shift >= 1 << 31:
        raise ValueError(f"add {name!r}: output scale too small for int32 requantization")
    return QAdd(weights, mult, shift)


def make_add_norm(scale_a: float, scale_b: float, out_scale: float, n: int,
                  eps: float) -> QAddNorm:
    base = max(scale_a, scale_b) / (1 << ADD_BASE_BITS)
    k = math.sqrt(n) / out_scale
    mult, exponent = quantize_multiplier(k)
    total_shift = RMS_RECIPROCAL_BITS + 31 - exponent
    if not 1 <= total_shift <= 62:
        raise ValueError(f"RMSNorm output scale {out_scale:.3g} over {n} values is out of range")
    return QAddNorm(int(round(scale_a / base)), int(round(scale_b / base)),
                    int(round(n * eps / base ** 2)), mult, total_shift)


def make_attention(node, positions: int, s_q: float, s_k: float, s_v: float,
                   s_out: float, name: str) -> QAttention:
    heads, head_dim = node.attrs["heads"], node.attrs["head_dim"]
    cos, sin = rope_q14(positions, head_dim, node.attrs["theta"], node.attrs["rope"])
    # Scores in u units (1/256 of a nat): d * s_q * s_k / sqrt(d_head) * 256.
    score_mult, score_shift = score_multiplier(s_q * s_k / math.sqrt(head_dim) * 256)
    mult, shift = quantize_multiplier(s_v / (1 << PROB_BITS) / s_out)
    max_acc = ((1 << PROB_BITS) + positions) * 128
    if shift > 0 and max_acc << shift >= 1 << 31:
        raise ValueError(f"attention {name!r}: output scale too small for int32 requantization")
    return QAttention(heads, head_dim, cos, sin, score_mult, score_shift, mult, shift)


def quantize_model(model: TRM, bits: int = 8, calibration_puzzles: int = 64,
                   calibration_tokens: np.ndarray | None = None,
                   calibration_ids: np.ndarray | None = None,
                   layer_bits: dict[str, int] | None = None) -> QModel:
    """Trace, calibrate and quantize `model`; weights INT8 or INT4, activations INT8.

    layer_bits sets the weight bits of single block linears ({"L0.mlp.down_proj.weight":
    4, ...}, the keys of QModel.errors); the others get `bits`.
    """
    if bits not in (4, 8):
        raise ValueError(f"--bits {bits} is not supported; use 4 or 8")
    graph, stats = calibrate_model(model, calibration_puzzles, calibration_tokens,
                                   calibration_ids)
    return quantize_with_stats(model, graph, stats, bits, layer_bits)


def calibrate_model(model: TRM, calibration_puzzles: int = 64,
                    calibration_tokens: np.ndarray | None = None,
                    calibration_ids: np.ndarray | None = None,
                    mac_budget: float | None = calibrate.CALIBRATION_MAC_BUDGET
                    ) -> tuple[BlockGraph, Stats]:
    """Check and trace `model`, then collect its activation statistics.

    The statistics do not depend on the weight bits, so one call serves any number of
    quantize_with_stats calls with different layer_bits. mac_budget caps the float
    recursion (calibrate.plan_calibration); stats.puzzles and stats.steps say what ran.
    """
    cfg = model.config
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"weight {name!r} contains NaN or Inf; the checkpoint is unusable, "
                             "use an earlier one or retrain")
    graph = trace_block(model.L_level.layers[0], cfg)
    for layer in range(1, calibrate.block_count(cfg)):
        other = trace_block(calibrate.block_module(model, layer), cfg)
        if [(n.op, n.name) for n in other.nodes] != [(n.op, n.name) for n in graph.nodes]:
            raise ValueError(f"block {layer} differs in structure from block 0; rrgen emits "
                             "one block body for every layer")
    if calibration_tokens is None:
        calibration_tokens, calibration_ids = calibrate.calibration_data(cfg, calibration_puzzles)
    asked = len(calibration_tokens)
    puzzles, steps = calibrate.plan_calibration(cfg, graph, asked, mac_budget)
    if (puzzles, steps) != (asked, cfg.halt_max_steps):
        log.warning("calibrating on %d of %d puzzles x %d of %d supervision steps: the "
                    "float recursion of all of them would take %.0f G MACs, over the "
                    "calibration budget of %.0f G", puzzles, asked, steps, cfg.halt_max_steps,
                    asked * cfg.halt_max_steps * calibrate.step_macs(cfg, graph) / 1e9,
                    mac_budget / 1e9)
    else:
        log.info("calibrating on %d puzzles x %d supervision steps", puzzles, steps)
    ids = None if calibration_ids is None else torch.from_numpy(
        np.asarray(calibration_ids)[:puzzles])
    stats = calibrate.collect(model, graph, torch.from_numpy(calibration_tokens[:puzzles]),
                              steps=steps, puzzle_ids=ids)
    return graph, stats


def quantize_with_stats(model: TRM, graph: BlockGraph, stats: Stats, bits: int,
                        layer_bits: dict[str, int] | None = None) -> QModel:
    """Quantize `model` with the statistics of calibrate_model; layer_bits as in quantize_model."""
    cfg = model.config
    resolved = resolve_layer_bits(cfg, graph, bits, layer_bits)
    m = stats.maxabs
    s_x = act_scale(m["x_table"])
    s_c = act_scale(m["carry"])
    s_in = act_scale(m["net_in"])
    qm = QModel(cfg, min(resolved.values()), graph, [],
                scales={"x": s_x, "carry": s_c, "net_in": s_in})
    for node in graph.nodes:
        graph.values[node.output].dtype = "int8"
    graph.values[graph.input].dtype = "int8"

    net_l, net_h = calibrate.net_layers(cfg)
    firsts = {net_l[0], net_h[0]}
    lasts = {net_l[-1], net_h[-1]}
    layer_in = s_in
    for layer in range(calibrate.block_count(cfg)):
        if layer in firsts:
            layer_in = s_in
        weights = calibrate.layer_weights(model, layer)
        scale = {graph.input: layer_in}
        params = {}
        for node in graph.nodes:
            key = (layer, node.name)
            if node.op == "transpose":
                scale[node.output] = scale[node.inputs[0]]
            elif node.op == "linear":
                w = weights[node.attrs["weight"]].numpy().astype(np.float64)
                feeds_glu = any(n.op == "glu" and n.inputs[0] == node.output for n in graph.nodes)
                feeds_attention = any(n.op == "attention" and n.inputs[0] == node.output
                                      for n in graph.nodes)
                if feeds_attention:
                    third = node.attrs["out_features"] // 3
                    parts = tuple(act_scale(m[(layer, node.name, part)]) for part in "qkv")
                    out_scales = np.repeat(np.array(parts), third)
                    scale[node.output] = parts
                elif feeds_glu:
                    half = node.attrs["out_features"] // 2
                    g, u = act_scale(m[(layer, node.name, "gate")]), act_scale(m[(layer, node.name, "up")])
                    out_scales = np.array([g] * half + [u] * half)
                    scale[node.output] = (g, u)
                else:
                    out_scales = np.full(node.attrs["out_features"], act_scale(m[key]))
                    scale[node.output] = out_scales[0]
                rows = stats.rows.get(key)
                inputs = np.concatenate(rows) if rows else None
                params[node.name] = quantize_linear(w, resolved[linear_key(layer, node)],
                                                    scale[node.inputs[0]], out_scales,
                                                    inputs, name=f"layer {layer} {node.name}")
                qw = params[node.name]
                err = np.linalg.norm(qw.weight * qw.weight_scale[:, None] - w) / np.linalg.norm(w)
                qm.errors[linear_key(layer, node)] = float(err)
            elif node.op == "glu":
                s_gate, s_up = scale[node.inputs[0]]
                s_silu = act_scale(m[(layer, node.name, "silu")])
                s_out = act_scale(m[key])
                mult, shift = quantize_multiplier(s_silu * s_up / s_out)
                params[node.name] = QGlu(silu_table(s_gate, s_silu), mult, shift)
                scale[node.output] = s_out
            elif node.op == "attention":
                s_q, s_k, s_v = scale[node.inputs[0]]
                s_out = act_scale(m[key])
                positions = graph.values[node.inputs[0]].shape[0]
                params[node.name] = make_attention(node, positions, s_q, s_k, s_v, s_out,
                                                   f"layer {layer} {node.name}")
                scale[node.output] = s_out
            elif node.op == "add_rmsnorm":
                s_out = act_scale(m[key])
                if node.output == graph.output and layer in lasts:
                    s_out = s_c   # the last layer writes the carry
                n = graph.values[node.output].shape[-1]
                params[node.name] = make_add_norm(scale[node.inputs[0]], scale[node.inputs[1]],
                                                  s_out, n, node.attrs["eps"])
                scale[node.output] = s_out
        layer_in = scale[graph.output]
        qm.blocks.append(params)
        qm.scales[f"layer{layer}"] = {k: v for k, v in scale.items()}

    # Input embedding rows, already multiplied by sqrt(hidden).
    embed = model.embed_tokens.weight.detach().numpy() * cfg.embed_scale
    puzzle = model.puzzle_emb.detach().numpy() * cfg.embed_scale
    qm.embed = np.clip(np.round(embed / s_x), -127, 127).astype(np.int8)
    qm.puzzle = np.clip(np.round(puzzle / s_x), -127, 127).astype(np.int8)
    qm.h_init = np.clip(np.round(model.H_init.numpy() / s_c), -127, 127).astype(np.int8)
    qm.l_init = np.clip(np.round(model.L_init.numpy() / s_c), -127, 127).astype(np.int8)
    qm.add_z = make_add([s_c, s_c, s_x], s_in, "z + y + x")
    qm.add_y = make_add([s_c, s_c], s_in, "y + z")

    # Heads read the carry y.
    s_logit = act_scale(m["logits"], INT16_MAX)
    s_q = act_scale(m["q"], INT16_MAX)
    lm_w = model.lm_head.weight.detach().numpy().astype(np.float64)
    q_w = model.q_head.weight.detach().numpy().astype(np.float64)
    q_b = model.q_head.bias.detach().numpy().astype(np.float64)
    # Heads keep INT8 weights at every --bits: they are tiny and set the output tokens directly.
    qm.lm_head = quantize_linear(lm_w, 8, s_c, np.full(cfg.vocab_size, s_logit), None,
                                 out_range=(-32768, 32767), name="lm_head")
    qm.q_head = quantize_linear(q_w, 8, s_c, np.full(2, s_q), None, bias=q_b,
                                out_range=(-32768, 32767), name="q_head")
    qm.scales.update({"logits": s_logit, "q": s_q})
    for name, err in qm.errors.items():
        log.info("weight %-36s INT%d relative error %.4f", name, resolved[name], err)
    return qm


def mix_bits(uniform: dict[int, QModel], layer_bits: dict[str, int]) -> QModel:
    """Assemble a mixture from the all-INT8 and all-INT4 QModels of one calibration.

    uniform: {8: QModel, 4: QModel} from quantize_with_stats with the same Stats. The result
    equals quantize_with_stats(..., 8, layer_bits): a linear's quantization depends on its
    weight and on activation scales, never on the bits of other layers. This saves the
    weight-scale search when many mixtures are tried.
    """
    base = uniform[8]
    resolved = resolve_layer_bits(base.config, base.graph, 8, layer_bits)
    qm = dataclasses.replace(base, bits=min(resolved.values()),
                             blocks=[dict(params) for params in base.blocks],
                             errors=dict(base.errors))
    for layer, params in enumerate(qm.blocks):
        for node in qm.graph.nodes:
            if node.op != "linear":
                continue
            key = linear_key(layer, node)
            source = uniform[resolved[key]]
            params[node.name] = source.blocks[layer][node.name]
            qm.errors[key] = source.errors[key]
    return qm


def pack_int4(weight: np.ndarray) -> np.ndarray:
    """Pack int4 values two per byte along each row: element 2i in the low nibble.

    Example: a row [1, -2, 3] packs to bytes [0xE1, 0x03] (-2 is 0xE; the odd tail pads with 0).
    """
    rows, cols = weight.shape
    padded = np.zeros((rows, cols + (cols & 1)), dtype=np.int16)
    padded[:, :cols] = weight
    low = padded[:, 0::2] & 0xF
    high = padded[:, 1::2] & 0xF
    return (low | (high << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of pack_int4: sign-extend each nibble."""
    low = (packed & 0xF).astype(np.int16)
    high = (packed >> 4).astype(np.int16)
    both = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int16)
    both[:, 0::2], both[:, 1::2] = low, high
    both = np.where(both >= 8, both - 16, both)
    return both[:, :cols].astype(np.int8)


def save_qmodel(qm: QModel, path) -> None:
    """Write the integer model as .npz (arrays) plus JSON metadata; loads without pickle."""
    arrays, meta = {}, {"config": json.loads(qm.config.to_json()), "bits": qm.bits,
                        "scales": {k: v for k, v in qm.scales.items() if isinstance(v, float)},
                        "errors": qm.errors, "blocks": [], "adds": {}}

    def put_linear(prefix, p: QLinear):
        for field_name in ("weight", "weight_scale", "multiplier", "shift"):
            arrays[f"{prefix}.{field_name}"] = getattr(p, field_name)
        if p.bias is not None:
            arrays[f"{prefix}.bias"] = p.bias
        return {"kind": "linear", "bits": p.bits, "out_min": p.out_min, "out_max": p.out_max,
                "bias": p.bias is not None}

    for i, block in enumerate(qm.blocks):
        entry = {}
        for name, p in block.items():
            prefix = f"block{i}.{name}"
            if isinstance(p, QLinear):
                entry[name] = put_linear(prefix, p)
            elif isinstance(p, QGlu):
                arrays[f"{prefix}.table"] = p.table
                entry[name] = {"kind": "glu", "multiplier": p.multiplier, "shift": p.shift}
            elif isinstance(p, QAttention):
                arrays[f"{prefix}.cos"], arrays[f"{prefix}.sin"] = p.cos, p.sin
                entry[name] = {"kind": "attention", **{k: v for k, v in vars(p).items()
                                                        if k not in ("cos", "sin")}}
            else:
                entry[name] = {"kind": "add_rmsnorm", **vars(p)}
        meta["blocks"].append(entry)
    meta["lm_head"] = put_linear("lm_head", qm.lm_head)
    meta["q_head"] = put_linear("q_head", qm.q_head)
    for name in ("embed", "puzzle", "h_init", "l_init"):
        arrays[name] = getattr(qm, name)
    meta["adds"] = {"add_z": vars(qm.add_z), "add_y": vars(qm.add_y)}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_qmodel(path) -> QModel:
    """Read a file written by save_qmodel; the block graph is traced again from the config."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    cfg = TRMConfig.from_dict(meta["config"])

    def get_linear(prefix, m):
        return QLinear(arrays[f"{prefix}.weight"], m["bits"], arrays[f"{prefix}.weight_scale"],
                       arrays[f"{prefix}.multiplier"], arrays[f"{prefix}.shift"],
                       arrays.get(f"{prefix}.bias") if m["bias"] else None,
                       m["out_min"], m["out_max"])

    graph = trace_block(TRM(cfg).L_level.layers[0], cfg)
    for value in graph.values.values():
        value.dtype = "int8"
    qm = QModel(cfg, meta["bits"], graph, [], scales=meta["scales"], errors=meta["errors"])
    for i, entry in enumerate(meta["blocks"]):
        block = {}
        for name, m in entry.items():
            prefix = f"block{i}.{name}"
            if m["kind"] == "linear":
                block[name] = get_linear(prefix, m)
            elif m["kind"] == "glu":
                block[name] = QGlu(arrays[f"{prefix}.table"], m["multiplier"], m["shift"])
            elif m["kind"] == "attention":
                fields = {k: v for k, v in m.items() if k != "kind"}
                block[name] = QAttention(cos=arrays[f"{prefix}.cos"], sin=arrays[f"{prefix}.sin"],
                                         **fields)
            else:
                block[name] = QAddNorm(**{k: v for k, v in m.items() if k != "kind"})
        qm.blocks.append(block)
    qm.lm_head = get_linear("lm_head", meta["lm_head"])
    qm.q_head = get_linear("q_head", meta["q_head"])
    for name in ("embed", "puzzle", "h_init", "l_init"):
        setattr(qm, name, arrays[name])
    qm.add_z = QAdd(**meta["adds"]["add_z"])
    qm.add_y = QAdd(**meta["adds"]["add_y"])
    return qm
