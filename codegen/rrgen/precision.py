"""Per-layer weight precision: INT4 or INT8 for each block linear, chosen to fit a budget.

Pipeline stage: calibrate -> precision -> quantize (used by `build --bits auto`). Each
block linear, keyed "L{block}.{weight name}" as in QModel.errors, is INT8 or INT4 on its
own; the heads stay INT8. choose_precision() picks the bits:

1. Start from all INT8. If its block weights fit the budget, return it.
2. Otherwise measure each layer's sensitivity: the carry fidelity of all-INT8 minus the
   fidelity with only that layer at INT4.
3. Demote layers to INT4 in order of increasing sensitivity per byte saved (ties in layer
   order) until the block weights fit, then measure the fidelity of the chosen mixture.

When even all-INT4 does not fit, it raises ValueError. Block weight bytes of a layer are
rows * cols at INT8 and rows * ceil(cols / 2) at INT4 (two weights per byte), as
build.weight_bytes counts them.

Fidelity is the cosine similarity of the integer reference's carry y (reference.solve:
INT8 activations, the bits the firmware computes) with the fp32 model's carry y after each
supervision step, averaged over steps and puzzles. It needs no labels, and the cosine
does not depend on the carry's scale. Sensitivities are measured one layer at a time, so
the order ignores interactions between layers; the final fidelity is measured, not
predicted. Cost: one calibration, then 2 + (block linears) quantizations and reference runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import calibrate, quantize, reference
from .calibrate import Stats
from .ir import BlockGraph
from .model import TRM


FIDELITY_PUZZLES = 16   # calibration puzzles that measure fidelity in choose_precision


@dataclass
class PrecisionChoice:
    """Weight bits chosen for each block linear, with the measurements behind the choice."""

    layer_bits: dict[str, int]          # every block linear -> 4 or 8
    weight_budget_bytes: int            # bytes available for block weights
    weight_bytes: int                   # block weight bytes of the choice
    fidelity: float                     # carry fidelity of the choice
    sensitivity: dict[str, float]       # fidelity lost when only that layer is INT4; {} if all-INT8 fits
    layer_bytes: dict[str, int] = field(default_factory=dict)  # weight bytes per layer at its bits
    int8_fidelity: float | None = None  # carry fidelity of all-INT8

    @property
    def int4_layers(self) -> list[str]:
        """Keys of the layers at INT4, in layer order."""
        return [key for key, bits in self.layer_bits.items() if bits == 4]

    def table(self) -> str:
        """Format a markdown table, one row per layer: bits, weight bytes and sensitivity."""
        return precision_table(self.layer_bits, self.layer_bytes, self.sensitivity)


def precision_table(layer_bits: dict[str, int], layer_bytes: dict[str, int],
                    sensitivity: dict[str, float]) -> str:
    """Format the markdown table of PrecisionChoice.table() from its fields or their JSON copies."""
    lines = ["| layer | bits | weight bytes | sensitivity |", "|---|---|---|---|"]
    for key, bits in layer_bits.items():
        loss = sensitivity.get(key)
        text = "not measured" if loss is None else f"{loss:.6f}"
        lines.append(f"| {key} | {bits} | {layer_bytes.get(key, 0):,} | {text} |")
    return "\n".join(lines) + "\n"


def layer_weight_bytes(rows: int, cols: int, bits: int) -> int:
    """Count the bytes of one [rows, cols] weight matrix; INT4 packs two weights per byte."""
    return rows * (math.ceil(cols / 2) if bits == 4 else cols)


def linear_shapes(model: TRM, graph: BlockGraph) -> dict[str, tuple[int, int]]:
    """Map every block linear's layer_bits key to [out_features, in_features], in layer order."""
    return {quantize.linear_key(layer, node):
            (node.attrs["out_features"], node.attrs["in_features"])
            for layer in range(calibrate.block_count(model.config))
            for node in graph.nodes if node.op == "linear"}


def total_weight_bytes(shapes: dict[str, tuple[int, int]], layer_bits: dict[str, int]) -> int:
    """Sum the block weight bytes of a layer_bits map."""
    return sum(layer_weight_bytes(*shapes[key], bits) for key, bits in layer_bits.items())


@torch.no_grad()
def fp32_carries(model: TRM, tokens: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Run the fp32 model and return its carry y after each supervision step.

    Shape [steps, B, positions * hidden], float64.
    """
    x = model.input_embeddings(torch.from_numpy(np.asarray(tokens, dtype=np.int64)),
                               torch.from_numpy(np.asarray(ids, dtype=np.int64)))
    y, z = model.initial_carry(len(tokens))
    carries = []
    for _ in range(model.config.halt_max_steps):
        y, z, _, _ = model.step(y, z, x)
        carries.append(y.reshape(len(tokens), -1).numpy().astype(np.float64))
    return np.stack(carries)


def carry_fidelity(qm: quantize.QModel, tokens: np.ndarray, ids: np.ndarray,
                   fp32: np.ndarray) -> float:
    """Average the cosine similarity of the integer carry y with `fp32` (from fp32_carries)."""
    ints = reference.solve(qm, tokens, ids).y
    ints = ints.reshape(ints.shape[0], ints.shape[1], -1).astype(np.float64)
    norms = np.linalg.norm(ints, axis=-1) * np.linalg.norm(fp32, axis=-1)
    return float(((ints * fp32).sum(-1) / np.maximum(norms, 1e-30)).mean())


def choose_precision(model: TRM, weight_budget_bytes: int,
                     calibration: tuple[np.ndarray, np.ndarray],
                     puzzles: int = FIDELITY_PUZZLES) -> PrecisionChoice:
    """Choose each block linear's weight bits so the block weights fit weight_budget_bytes.

    calibration: (tokens, puzzle ids) of the calibration puzzles; all of them calibrate
    the activation scales, the first `puzzles` measure fidelity. See the module docstring
    for the algorithm. Raises ValueError when even all-INT4 exceeds the budget.
    """
    if puzzles < 1:
        raise ValueError(f"puzzles {puzzles} is invalid; use 1 or more fidelity puzzles")
    tokens, ids = calibration
    graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens,
                                            calibration_ids=ids)
    return choose_with_stats(model, graph, stats, weight_budget_bytes, tokens[:puzzles],
                             ids[:puzzles])


def choose_with_stats(model: TRM, graph: BlockGraph, stats: Stats, weight_budget_bytes: int,
                      tokens: np.ndarray, ids: np.ndarray,
                      uniform: dict[int, quantize.QModel] | None = None) -> PrecisionChoice:
    """Choose as choose_precision does, from the statistics of quantize.calibrate_model.

    tokens and ids are the fidelity puzzles. uniform: the all-INT8 and all-INT4 QModels of
    these statistics, {8: ..., 4: ...}, when the caller has them already; they are
    quantized here otherwise.
    """
    if len(tokens) < 1:
        raise ValueError("precision choice needs at least 1 calibration puzzle to measure "
                         "fidelity; pass more calibration puzzles")
    shapes = linear_shapes(model, graph)
    all8 = dict.fromkeys(shapes, 8)
    all4 = dict.fromkeys(shapes, 4)
    needed = total_weight_bytes(shapes, all4)
    if needed > weight_budget_bytes:
        raise ValueError(f"the block weights need {needed:,} bytes even at INT4, over the "
                         f"weight budget of {weight_budget_bytes:,} bytes; use a smaller "
                         "model or a board with more flash")

    fp32 = fp32_carries(model, tokens, ids)
    uniform = dict(uniform or {})
    for bits in (8, 4):
        if bits not in uniform:
            uniform[bits] = quantize.quantize_with_stats(model, graph, stats, bits)

    def fidelity(layer_bits: dict[str, int]) -> float:
        return carry_fidelity(quantize.mix_bits(uniform, layer_bits), tokens, ids, fp32)

    def choice(layer_bits: dict[str, int], value: float,
               sensitivity: dict[str, float]) -> PrecisionChoice:
        layer_bytes = {key: layer_weight_bytes(*shapes[key], bits)
                       for key, bits in layer_bits.items()}
        return PrecisionChoice(layer_bits=dict(layer_bits),
                               weight_budget_bytes=weight_budget_bytes,
                               weight_bytes=sum(layer_bytes.values()), fidelity=value,
                               sensitivity=sensitivity, layer_bytes=layer_bytes,
                               int8_fidelity=int8_value)

    int8_value = fidelity(all8)
    if total_weight_bytes(shapes, all8) <= weight_budget_bytes:
        return choice(all8, int8_value, {})

    sensitivity = {key: int8_value - fidelity({key: 4}) for key in shapes}

    def loss_per_byte(key: str) -> float:
        saved = layer_weight_bytes(*shapes[key], 8) - layer_weight_bytes(*shapes[key], 4)
        return sensitivity[key] / saved

    # A [rows, 1] matrix saves nothing at INT4, so it is never demoted.
    candidates = [key for key in shapes
                  if layer_weight_bytes(*shapes[key], 4) < layer_weight_bytes(*shapes[key], 8)]
    layer_bits = dict(all8)
    for key in sorted(candidates, key=loss_per_byte):   # sorted() is stable: ties keep layer order
        if total_weight_bytes(shapes, layer_bits) <= weight_budget_bytes:
            break
        layer_bits[key] = 4
    return choice(layer_bits, fidelity(layer_bits), sensitivity)
