"""The precision sweep: accuracy and carry-trajectory fidelity of each weight scheme.

For every scheme of compress.SCHEMES the fake-quantized model solves the same held-out
puzzles as the fp32 model, and after every supervision step the sweep records:
- cell accuracy (supervised cells) and puzzle-exact accuracy,
- fidelity: the cosine similarity of the compressed carry y to the fp32 carry y of the
  same puzzle (flattened over positions and channels), averaged over puzzles. It needs
  no labels.
Per scheme it also reports the weight bytes of the recursive blocks, the MACs per puzzle
and the peak activation bytes of the INT8 deployment (the arena's lower bound).
Outputs: sweep.md (a table), sweep.json and three PNG plots.
"""

from __future__ import annotations

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


def run(model: TRM, tokens: np.ndarray, labels: np.ndarray, ids: np.ndarray,
        rows: dict, schemes=compress.SCHEMES, progress=None) -> list[SchemeResult]:
    """Evaluate every scheme on the same puzzles; fidelity is against the fp32 model."""
    steps = model.config.halt_max_steps
    _, reference = trajectory(model, tokens, ids, steps)
    macs, peak = deployment_figures(model)
    results = []
    for scheme in schemes:
        compressed = compress.compress_model(model, scheme, rows)
        preds, carries = trajectory(compressed, tokens, ids, steps)
        per_step = [accuracy(preds[s], labels) for s in range(steps)]
        fidelity = [float(cosine(carries[s], reference[s]).mean()) for s in range(steps)]
        results.append(SchemeResult(
            scheme, compress.bits_of(scheme), per_step[-1][0], per_step[-1][1],
            float(np.mean(fidelity)), compress.weight_bytes(model, scheme), macs, peak,
            [c for c, _ in per_step], [e for _, e in per_step], fidelity))
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


def markdown(results: list[SchemeResult], title: str) -> str:
    lines = [f"# {title}", "",
             "| scheme | bits | cell | puzzle-exact | fidelity (mean) | fidelity (last step) "
             "| weight bytes | MACs per puzzle | peak activation bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.scheme} | {r.bits} | {100 * r.cell:.2f}% | {100 * r.exact:.2f}% | "
                     f"{r.fidelity:.4f} | {r.fidelity_per_step[-1]:.4f} | {r.weight_bytes:,} | "
                     f"{r.macs_per_puzzle:,} | {r.peak_activation_bytes:,} |")
    base = next((r for r in results if r.scheme == "fp32"), None)
    if base is not None and len(results) > 2:
        loss = [base.exact - r.exact for r in results]
        rho = spearman([-r.fidelity for r in results], loss)
        lines += ["", f"Rank correlation (Spearman) of 1 - fidelity with the loss of "
                      f"puzzle-exact accuracy against fp32, over {len(results)} schemes: "
                      f"{rho:.3f}" if math.isfinite(rho) else
                  "Rank correlation undefined: every scheme has the same loss or fidelity."]
    lines += ["", "Puzzle-exact accuracy after each supervision step:", "",
              "| scheme | " + " | ".join(str(s + 1) for s in range(len(results[0].exact_per_step)))
              + " |", "|---|" + "---|" * len(results[0].exact_per_step)]
    for r in results:
        lines.append(f"| {r.scheme} | " + " | ".join(f"{100 * e:.1f}%" for e in r.exact_per_step)
                     + " |")
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
            ax.annotate(r.scheme, (xof(r), 100 * r.exact), fontsize=7)
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
    (out_dir / "sweep.md").write_text(markdown(results, title))
    (out_dir / "sweep.json").write_text(json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return [out_dir / "sweep.md", out_dir / "sweep.json"] + plots(results, out_dir, title)
