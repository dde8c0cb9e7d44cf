"""The precision sweep: accuracy and carry-trajectory fidelity of each weight scheme.

For every scheme of compress.SCHEMES the fake-quantized model solves the same held-out
puzzles as the fp32 model, and after every supervision step the sweep records:
- cell accuracy (supervised cells) and puzzle-exact accuracy,
- fidelity: the cosine similarity of the compressed carry y to the fp32 carry y of the
  same puzzle (flattened over positions and channels), averaged over puzzles. It needs
  no labels.
Per scheme it also reports the weight bytes of the recursive blocks, the MACs per puzzle
and the peak activation bytes of the INT8 deployment (the arena's lower bound). With
several H_cycles values (depth), every scheme runs at each depth. The per-step columns
give the accuracy at every number of supervision steps, so both kinds of depth are covered.
For int8 and int4 at the trained depth, `agreement` is the fraction of puzzles whose final
answer from this float-activation path equals the answer of the integer reference that
the firmware matches (INT8 activations, INT8 heads), so the sweep's numbers can be read
as predictions for the deployed firmware.
Outputs: sweep.md (a table), sweep.json and three PNG plots.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import compress, plan
from .model import TRM
from .trace import trace_block


@dataclass
class SchemeResult:
    scheme: str
    h_cycles: int
    bits: int
    cell: float                         # after the last supervision step
    exact: float
    fidelity: float                     # mean over steps and puzzles
    weight_bytes: int
    macs_per_puzzle: int
    peak_activation_bytes: int
    cell_per_step: list = field(default_factory=list)
    exact_per_step: list = field(default_factory=list)
    fidelity_per_step: list = field(default_factory=list)
    agreement: float | None = None      # int8, int4: share of outputs equal to the integer reference


@torch.no_grad()
def trajectory(model: TRM, tokens: np.ndarray, ids: np.ndarray, steps: int,
               batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Predictions [steps, B, seq_len] and carry y [steps, B, positions * hidden] per step."""
    preds, carries = [], []
    for start in range(0, len(tokens), batch):
        tok = torch.from_numpy(tokens[start:start + batch])
        x = model.input_embeddings(tok, torch.from_numpy(ids[start:start + batch]))
        y, z = model.initial_carry(tok.shape[0])
        p, c = [], []
        for _ in range(steps):
            y, z, logits, _ = model.step(y, z, x)
            p.append(logits.argmax(-1).numpy())
            c.append(y.reshape(y.shape[0], -1).numpy().astype(np.float64))
        preds.append(np.stack(p))
        carries.append(np.stack(c))
    return np.concatenate(preds, axis=1), np.concatenate(carries, axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(norms, 1e-30)


def accuracy(preds: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    supervised = labels != 0
    right = ((preds == labels) & supervised).sum(-1)
    return float(right.sum() / supervised.sum()), float((right == supervised.sum(-1)).mean())


def deployment_figures(model: TRM) -> tuple[int, int]:
    """MACs per puzzle (all supervision steps) and the INT8 arena's lower bound in bytes."""
    from .build import macs_per_step

    graph = trace_block(model.L_level.layers[0], model.config)
    view = SimpleNamespace(config=model.config, graph=graph)
    macs = macs_per_step(view)["total"] * model.config.halt_max_steps
    return macs, plan.plan_arena(view).lower_bound_bytes


def with_depth(model: TRM, h_cycles: int) -> TRM:
    """Return the model with the same weights and another number of outer cycles per step."""
    if h_cycles < 1:
        raise ValueError(f"H_cycles {h_cycles} is invalid; use 1 or more")
    other = copy.copy(model)
    other.config = dataclasses.replace(model.config, H_cycles=h_cycles)
    return other


def deployed_answers(model: TRM, bits: int, tokens: np.ndarray, ids: np.ndarray,
                     calibration: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Return the final predicted tokens [B, seq_len] of the integer reference, quantized as `build` does."""
    from . import quantize, reference

    qm = quantize.quantize_model(model, bits, calibration_tokens=calibration[0],
                                 calibration_ids=calibration[1])
    return reference.solve(qm, tokens, ids).tokens[-1]


def run(model: TRM, tokens: np.ndarray, labels: np.ndarray, ids: np.ndarray,
        rows: dict, schemes=compress.SCHEMES, progress=None,
        h_cycles: list[int] | None = None,
        calibration: tuple[np.ndarray, np.ndarray] | None = None) -> list[SchemeResult]:
    """Evaluate every scheme (at every depth) on the same puzzles.

    Fidelity is always against the fp32 model at the trained depth.
    """
    steps = model.config.halt_max_steps
    _, reference = trajectory(model, tokens, ids, steps)
    results = []
    for depth in h_cycles or [model.config.H_cycles]:
        macs, peak = deployment_figures(with_depth(model, depth))
        for scheme in schemes:
            compressed = with_depth(compress.compress_model(model, scheme, rows), depth)
            preds, carries = trajectory(compressed, tokens, ids, steps)
            per_step = [accuracy(preds[s], labels) for s in range(steps)]
            fidelity = [float(cosine(carries[s], reference[s]).mean()) for s in range(steps)]
            agreement = None
            if (calibration is not None and scheme in ("int8", "int4")
                    and depth == model.config.H_cycles):
                deployed = deployed_answers(model, compress.bits_of(scheme), tokens, ids,
                                            calibration)
                agreement = float((deployed == preds[-1]).all(-1).mean())
            results.append(SchemeResult(
                scheme, depth, compress.bits_of(scheme), per_step[-1][0], per_step[-1][1],
                float(np.mean(fidelity)), compress.weight_bytes(model, scheme), macs, peak,
                [c for c, _ in per_step], [e for _, e in per_step], fidelity, agreement))
            if progress is not None:
                progress(results[-1])
    return results


def spearman(a, b) -> float:
    """Rank correlation of two sequences (average ranks for ties)."""
    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        order = values.argsort()
        out = np.empty(len(values))
        out[order] = np.arange(len(values))
        for v in np.unique(values):
            out[values == v] = out[values == v].mean()
        return out
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def markdown(results: list[SchemeResult], title: str, trained_h_cycles: int) -> str:
    lines = [f"# {title}", "",
             "| scheme | H cycles | bits | cell | puzzle-exact | fidelity (mean) | "
             "fidelity (last step) | weight bytes | MACs per puzzle | peak activation bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.scheme} | {r.h_cycles} | {r.bits} | {100 * r.cell:.2f}% | "
                     f"{100 * r.exact:.2f}% | "
                     f"{r.fidelity:.4f} | {r.fidelity_per_step[-1]:.4f} | {r.weight_bytes:,} | "
                     f"{r.macs_per_puzzle:,} | {r.peak_activation_bytes:,} |")
    base = next((r for r in results
                 if r.scheme == "fp32" and r.h_cycles == trained_h_cycles), None)
    if base is not None and len(results) > 2:
        loss = [base.exact - r.exact for r in results]
        rho = spearman([-r.fidelity for r in results], loss)
        if math.isfinite(rho):
            text = (f"Rank correlation (Spearman) of 1 - fidelity with the loss of puzzle-exact "
                    f"accuracy against fp32 at H_cycles {trained_h_cycles}, over "
                    f"{len(results)} configurations: {rho:.3f}")
        else:
            text = "Rank correlation undefined: every configuration has the same loss or fidelity."
        lines += ["", text]
    agreeing = [r for r in results if r.agreement is not None]
    if agreeing:
        lines += ["", "Answers of this float-activation path that equal the integer reference "
                      "(the firmware's bits, INT8 activations):", ""]
        lines += [f"- {r.scheme}: {100 * r.agreement:.1f}% of puzzles" for r in agreeing]
    lines += ["", "Puzzle-exact accuracy after each supervision step:", "",
              "| scheme | H cycles | " + " | ".join(str(s + 1) for s in
                                                  range(len(results[0].exact_per_step)))
              + " |", "|---|---|" + "---|" * len(results[0].exact_per_step)]
    for r in results:
        lines.append(f"| {r.scheme} | {r.h_cycles} | "
                     + " | ".join(f"{100 * e:.1f}%" for e in r.exact_per_step) + " |")
    return "\n".join(lines) + "\n"


def plots(results: list[SchemeResult], out_dir: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    specs = [("accuracy_vs_bits.png", "weight bits", lambda r: r.bits),
             ("fidelity_vs_exact.png", "fidelity (mean cosine of carry y)", lambda r: r.fidelity),
             ("accuracy_vs_macs.png", "MACs per puzzle", lambda r: r.macs_per_puzzle)]
    for name, xlabel, xof in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            ax.scatter(xof(r), 100 * r.exact, label=r.scheme)
            ax.annotate(f"{r.scheme} T{r.h_cycles}", (xof(r), 100 * r.exact), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("puzzle-exact accuracy (%)")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        figures.append(path)
    return figures


def write(results: list[SchemeResult], out_dir: Path, title: str, meta: dict) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.md").write_text(markdown(results, title, meta["config"]["H_cycles"]))
    (out_dir / "sweep.json").write_text(json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return [out_dir / "sweep.md", out_dir / "sweep.json"] + plots(results, out_dir, title)
