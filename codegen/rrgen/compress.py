"""Weight compression schemes for the precision sweep, as fake quantization in PyTorch.

Pipeline stage: model -> compress (the study path) beside quantize (the deployed path).
compress_model() returns a copy of the model whose weights are rounded to a scheme and
stored back in fp32, so the float forward pass shows the effect of the weight format
alone. Activations stay in float.

Schemes (weights of every Linear inside the recursive blocks):
- fp32, fp16, bf16: a cast to the format and back. fp16 and bf16 also apply to the
  embeddings, the heads and H_init/L_init.
- int8: symmetric per output channel, scale = max|w| / 127.
- int4-naive: one symmetric scale for the whole tensor, max|w| / 7, no calibration.
- int4: per output channel, the clip ratio (1.0 down to 0.5 of max|w|) that minimizes
  the layer's output error on calibration inputs; quantize.choose_weight_scales, as
  the deployed build does.
- int4-g32, int4-g128: per output channel and per group of 32 or 128 inputs,
  scale = max|w| / 7 of the group.
- int4-qat: int4-naive applied to a model fine-tuned with quantization-aware training
  (straight-through fake quantization of the block weights, train.TrainOptions.fake_quant).
- prune25: fp32 weights with 25% structured pruning: in every SwiGLU (token and channel
  mixing) the intermediate channels with the smallest ||gate_j|| * ||up_j|| * ||down_j||
  are removed (their gate and up rows and down column set to zero).
The INT schemes keep the embeddings and heads in fp32 (the deployed build keeps the heads
at INT8), so they measure the recursive network, where errors compound.

compress_model() keeps float activations. integer_model() gives the same weight formats
with static INT8 activations: the QModel that build would emit (quantize.quantize_model),
with the weight scales of the scheme. Schemes the firmware's per-channel kernels cannot
store (fp16, bf16, group-wise INT4) have no integer model.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import calibrate
from .model import TRM, SwiGLU
from .quantize import choose_weight_scales
from .trace import trace_block

SCHEMES = ("fp32", "fp16", "bf16", "int8", "int4-naive", "int4", "int4-g128", "int4-g32",
           "int4-qat", "prune25")
# Schemes with static INT8 activations, and their weight bits in the firmware.
INTEGER_SCHEMES = {"int8": 8, "int4-naive": 4, "int4": 4, "int4-qat": 4, "prune25": 8}
PRUNE_FRACTION = 0.25
FLOAT_FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def bits_of(scheme: str) -> int:
    return {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "prune25": 32}.get(scheme, 4)


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def round_symmetric(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """w rounded to integers in [-qmax, qmax] times scale (broadcast), back in fp32."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def fake_quantize(weight: torch.Tensor, scheme: str,
                  inputs: np.ndarray | None = None) -> torch.Tensor:
    """Round the weight [out, in] as the scheme stores it; return it in fp32."""
    check_scheme(scheme)
    w = weight.detach().float()
    if scheme in ("fp32", "prune25"):
        return w.clone()     # pruning works on whole SwiGLUs, see prune_swiglu
    if scheme in FLOAT_FORMATS:
        return w.to(FLOAT_FORMATS[scheme]).float()
    if scheme == "int8":
        return round_symmetric(w, w.abs().amax(dim=1, keepdim=True) / 127, 127)
    if scheme in ("int4-naive", "int4-qat"):
        return round_symmetric(w, w.abs().max() / 7, 7)
    if scheme == "int4":
        scale = choose_weight_scales(w.numpy().astype(np.float64), inputs, 7)
        return round_symmetric(w, torch.from_numpy(scale).float()[:, None], 7)
    group = int(scheme.rsplit("g", 1)[1])
    rows, cols = w.shape
    padded = torch.zeros(rows, -(-cols // group) * group)
    padded[:, :cols] = w
    grouped = padded.view(rows, -1, group)
    out = round_symmetric(grouped, grouped.abs().amax(dim=2, keepdim=True) / 7, 7)
    return out.view(rows, -1)[:, :cols].contiguous()


def weight_bytes(model: TRM, scheme: str, bits: int | None = None) -> int:
    """Bytes of the recursive blocks' Linear weights in the scheme, scales included.

    Scales count as fp16: one per tensor, per channel or per group. `bits` overrides the
    scheme's element bits (prune25 with INT8 weights: bits=8, per-channel scales).
    """
    total = 0
    for key, module in block_linears(model).items():
        rows, cols = module.weight.shape
        bits = bits or bits_of(scheme)
        if scheme == "prune25" and key.endswith(("gate_up_proj", "down_proj")):
            inter = rows // 2 if key.endswith("gate_up_proj") else cols
            kept = inter - int(PRUNE_FRACTION * inter)
            total += rows * cols * kept // inter * bits // 8 + (2 * rows if bits == 8 else 0)
            continue
        total += rows * cols * bits // 8
        if scheme in ("int8", "int4") or (scheme == "prune25" and bits == 8):
            total += 2 * rows
        elif scheme in ("int4-naive", "int4-qat"):
            total += 2
        elif scheme.startswith("int4-g"):
            total += 2 * rows * -(-cols // int(scheme.rsplit("g", 1)[1]))
    return total


def block_linears(model: TRM) -> dict[str, nn.Linear]:
    """Map "block.module" names to every Linear of the recursive blocks."""
    found = {}
    for layer in range(calibrate.block_count(model.config)):
        block = calibrate.block_module(model, layer)
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                found[f"{layer}.{name}"] = module
    return found


def calibration_rows(model: TRM, tokens: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Sampled input rows of every block Linear over the recursion, keyed as block_linears."""
    graph = trace_block(model.L_level.layers[0], model.config)
    stats = calibrate.collect(model, graph, torch.from_numpy(tokens),
                              puzzle_ids=torch.from_numpy(ids))
    rows = {}
    for node in graph.nodes:
        if node.op != "linear":
            continue
        module_name = node.attrs["weight"].rsplit(".", 1)[0]
        for layer in range(calibrate.block_count(model.config)):
            sample = stats.rows.get((layer, node.name))
            if sample:
                rows[f"{layer}.{module_name}"] = np.concatenate(sample).astype(np.float64)
    return rows


@torch.no_grad()
def prune_swiglu(mlp: SwiGLU, fraction: float) -> None:
    """Zero the `fraction` of intermediate channels with the smallest norm product."""
    inter = mlp.down_proj.in_features
    gate, up = mlp.gate_up_proj.weight[:inter], mlp.gate_up_proj.weight[inter:]
    down = mlp.down_proj.weight
    importance = gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)
    drop = importance.argsort()[:int(fraction * inter)]
    mlp.gate_up_proj.weight[drop] = 0
    mlp.gate_up_proj.weight[drop + inter] = 0
    mlp.down_proj.weight[:, drop] = 0


@torch.no_grad()
def compress_model(model: TRM, scheme: str, rows: dict[str, np.ndarray] | None = None) -> TRM:
    """Copy `model` with fake-quantized weights; `rows` are needed for "int4"."""
    check_scheme(scheme)
    if scheme == "int4" and rows is None:
        raise ValueError("scheme int4 needs calibration rows (compress.calibration_rows)")
    out = copy.deepcopy(model).eval()
    for key, module in block_linears(out).items():
        module.weight.copy_(fake_quantize(module.weight, scheme, (rows or {}).get(key)))
    if scheme == "prune25":
        for layer in range(calibrate.block_count(out.config)):
            for module in calibrate.block_module(out, layer).modules():
                if isinstance(module, SwiGLU):
                    prune_swiglu(module, PRUNE_FRACTION)
    if scheme in FLOAT_FORMATS:
        dtype = FLOAT_FORMATS[scheme]
        for name, tensor in list(out.named_parameters()) + list(out.named_buffers()):
            if tensor.is_floating_point() and not name.endswith(("cos", "sin")):
                tensor.copy_(tensor.to(dtype).float())
    return out


class StraightThrough(nn.Module):
    """Parametrization for quantization-aware training.

    The forward pass uses the weight rounded as `scheme` stores it. The backward pass
    treats the rounding as identity.
    """

    def __init__(self, scheme: str):
        super().__init__()
        if scheme not in ("int8", "int4-naive", "int4-qat", "int4-g32", "int4-g128"):
            raise ValueError(f"quantization-aware training supports int8, int4-naive and "
                             f"group-wise INT4, not {scheme!r}")
        self.scheme = "int4-naive" if scheme == "int4-qat" else scheme

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (fake_quantize(weight, self.scheme) - weight).detach()


def integer_model(model: TRM, scheme: str, calibration: tuple[np.ndarray, np.ndarray]):
    """Quantize `model` into the integer QModel of `scheme`: its block weights, INT8 activations.

    int8 and int4 are quantize.quantize_model at 8 and 4 bits (what build emits); prune25
    prunes, then quantizes to INT8; int4-naive and int4-qat give every row of a block
    weight the tensor's scale max|w| / 7.
    """
    from . import quantize
    from .fixedpoint import quantize_multiplier

    if scheme not in INTEGER_SCHEMES:
        raise ValueError(f"scheme {scheme!r} has no integer model; use one of "
                         f"{', '.join(INTEGER_SCHEMES)}")
    source = compress_model(model, "prune25") if scheme == "prune25" else model
    qm = quantize.quantize_model(source, INTEGER_SCHEMES[scheme], calibration_tokens=calibration[0],
                                 calibration_ids=calibration[1])
    if scheme not in ("int4-naive", "int4-qat"):
        return qm
    for layer, params in enumerate(qm.blocks):
        weights = calibrate.layer_weights(source, layer)
        for node in qm.graph.nodes:
            if node.op != "linear":
                continue
            p = params[node.name]
            w = weights[node.attrs["weight"]].numpy().astype(np.float64)
            scale = np.abs(w).max() / 7 if np.abs(w).max() > 0 else 1.0
            # The real multiplier in_scale * w_scale / out_scale, rescaled to the new w_scale.
            real = (p.multiplier.astype(np.float64) * 2.0 ** (p.shift.astype(np.float64) - 31)
                    * scale / p.weight_scale)
            for c, value in enumerate(real):
                p.multiplier[c], p.shift[c] = quantize_multiplier(float(value))
                if p.shift[c] > 0 and 128 * 7 * w.shape[1] << int(p.shift[c]) >= 1 << 31:
                    raise ValueError(f"layer {layer} {node.name}: per-tensor INT4 scale gives a "
                                     "multiplier too large for int32 requantization")
            p.weight = np.clip(np.round(w / scale), -7, 7).astype(np.int8)
            p.weight_scale = np.full(len(real), scale)
    return qm
