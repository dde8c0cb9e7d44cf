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
Activations: "float" keeps them in fp32 (compress.compress_model). "int8" runs the static-INT8
model that build would emit (compress.integer_model), through the generated C compiled for
the host (hostrun), so its numbers are the firmware's numbers. The int8 rows also record
on how many of the first `check_puzzles` puzzles the C output equals the numpy reference
(reference.solve) byte for byte, tokens and carry after every step. A float row of a
scheme that also has an int8 row records `agreement`: the share of puzzles whose final
answer equals the int8 row's answer, that is how well the float path predicts the firmware.
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

from . import compress, hostrun, plan
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
    activations: str = "float"          # "float" or "int8"
    agreement: float | None = None      # float rows: share of answers equal to the int8 row's
    reference_checked: int = 0          # int8 rows: puzzles compared with reference.solve
    reference_equal: int = 0            # ... of which tokens and carry were equal at every step


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


def build_weight_bytes(qm) -> int:
    from .build import weight_bytes

    return weight_bytes(qm)


def with_depth_qmodel(qm, h_cycles: int):
    other = copy.copy(qm)
    other.config = dataclasses.replace(qm.config, H_cycles=h_cycles)
    return other


def reference_equal(qm, tokens: np.ndarray, ids: np.ndarray, preds: np.ndarray,
                    carries: np.ndarray) -> int:
    """Count the puzzles whose C tokens and carry y equal reference.solve at every step."""
    from . import reference

    trace = reference.solve(qm, tokens, ids)
    same_tokens = (trace.tokens == preds).all(axis=(0, 2))
    ref_y = trace.y.reshape(trace.y.shape[0], trace.y.shape[1], -1).astype(np.float64)
    same_carry = (ref_y == carries).all(axis=(0, 2))
    return int((same_tokens & same_carry).sum())


def run(model: TRM, tokens: np.ndarray, labels: np.ndarray, ids: np.ndarray,
        rows: dict, schemes=compress.SCHEMES, progress=None,
        h_cycles: list[int] | None = None,
        calibration: tuple[np.ndarray, np.ndarray] | None = None,
        activations=("float",), qat_model: TRM | None = None,
        work_dir: Path | None = None, check_puzzles: int = 20,
        auto_qm=None) -> list[SchemeResult]:
    """Evaluate every scheme at every depth, with each kind of activations, on the same puzzles.

    Fidelity is always against the fp32 model at the trained depth. "int8" activations
    need `calibration`; "int4-qat" needs `qat_model`. `auto_qm`, the QModel of a
    `--bits auto` choice, adds a row "auto" with INT8 activations at every depth.
    """
    import tempfile

    if "int4-qat" in schemes and qat_model is None:
        raise ValueError("scheme int4-qat needs a fine-tuned model (qat_model)")
    if "int8" in activations and calibration is None:
        raise ValueError("int8 activations need calibration puzzles")
    steps = model.config.halt_max_steps
    _, reference = trajectory(model, tokens, ids, steps)
    results = []
    owned = tempfile.TemporaryDirectory(prefix="rrgen-sweep-") if work_dir is None else None
    work = Path(owned.name if owned else work_dir)

    def record(scheme, depth, acts, preds, carries, macs, peak):
        per_step = [accuracy(preds[s], labels) for s in range(steps)]
        fidelity = [float(cosine(carries[s], reference[s]).mean()) for s in range(steps)]
        if scheme == "auto":
            bits, size = auto_qm.bits, build_weight_bytes(auto_qm)
        else:
            bits = compress.INTEGER_SCHEMES[scheme] if acts == "int8" else compress.bits_of(scheme)
            size = compress.weight_bytes(model, scheme, bits)
        result = SchemeResult(
            scheme, depth, bits, per_step[-1][0], per_step[-1][1],
            float(np.mean(fidelity)), size, macs, peak,
            [c for c, _ in per_step], [e for _, e in per_step], fidelity, acts)
        results.append(result)
        return result

    def integer_row(scheme, depth, qm, macs, peak):
        qm = with_depth_qmodel(qm, depth)
        batch = hostrun.compile_batch(qm, work / f"{scheme}-h{depth}")
        preds, carries = hostrun.trajectory(batch, qm, tokens, ids)
        row = record(scheme, depth, "int8", preds, carries, macs, peak)
        n = min(check_puzzles, len(tokens))
        row.reference_checked = n
        row.reference_equal = reference_equal(qm, tokens[:n], ids[:n], preds[:, :n],
                                              carries[:, :n]) if n else 0
        if progress is not None:
            progress(row)
        return preds

    try:
        for depth in h_cycles or [model.config.H_cycles]:
            macs, peak = deployment_figures(with_depth(model, depth))
            for scheme in schemes:
                source = qat_model if scheme == "int4-qat" else model
                float_row = None
                if "float" in activations:
                    compressed = with_depth(compress.compress_model(source, scheme, rows), depth)
                    preds, carries = trajectory(compressed, tokens, ids, steps)
                    float_row = record(scheme, depth, "float", preds, carries, macs, peak)
                    float_preds = preds
                    if progress is not None:
                        progress(float_row)
                if "int8" in activations and scheme in compress.INTEGER_SCHEMES:
                    qm = compress.integer_model(source, scheme, calibration)
                    preds = integer_row(scheme, depth, qm, macs, peak)
                    if float_row is not None:
                        float_row.agreement = float((float_preds[-1] == preds[-1]).all(-1).mean())
            if auto_qm is not None:
                integer_row("auto", depth, auto_qm, macs, peak)
    finally:
        if owned is not None:
            owned.cleanup()
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


def label(r: SchemeResult) -> str:
    return r.scheme if r.activations == "float" else f"{r.scheme} a8"


def markdown(results: list[SchemeResult], title: str, trained_h_cycles: int,
             precision: dict | None = None, qat_steps: int = 0) -> str:
    lines = [f"# {title}", "",
             "Activations: float (fp32) or int8 (static INT8, the firmware's arithmetic: the "
             "generated C run on the host). Markers in the plots: circles float, squares int8.",
             "",
             "| scheme | activations | H cycles | bits | cell | puzzle-exact | fidelity (mean) | "
             "fidelity (last step) | weight bytes | MACs per puzzle | peak activation bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.scheme} | {r.activations} | {r.h_cycles} | {r.bits} | "
                     f"{100 * r.cell:.2f}% | {100 * r.exact:.2f}% | "
                     f"{r.fidelity:.4f} | {r.fidelity_per_step[-1]:.4f} | {r.weight_bytes:,} | "
                     f"{r.macs_per_puzzle:,} | {r.peak_activation_bytes:,} |")
    base = next((r for r in results if r.scheme == "fp32" and r.activations == "float"
                 and r.h_cycles == trained_h_cycles), None)
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
        lines += ["", "Float-activation answers equal to the firmware's answers (the int8 row "
                      "of the same scheme and depth):", ""]
        lines += [f"- {r.scheme}, H cycles {r.h_cycles}: {100 * r.agreement:.1f}% of puzzles"
                  for r in agreeing]
    checked = [r for r in results if r.reference_checked]
    if checked:
        lines += ["", "Int8 rows against the numpy integer reference (tokens and carry y after "
                      "every step, byte for byte):", ""]
        lines += [f"- {r.scheme}, H cycles {r.h_cycles}: {r.reference_equal} of "
                  f"{r.reference_checked} puzzles equal" for r in checked]
    if qat_steps:
        lines += ["", f"int4-qat: naive INT4 after {qat_steps} steps of quantization-aware "
                      "fine-tuning."]
    if precision is not None:
        lines += ["", "## --bits auto", "", precision["summary"], "", precision["table"]]
    lines += ["", "Puzzle-exact accuracy after each supervision step:", "",
              "| scheme | activations | H cycles | " + " | ".join(
                  str(s + 1) for s in range(len(results[0].exact_per_step)))
              + " |", "|---|---|---|" + "---|" * len(results[0].exact_per_step)]
    for r in results:
        lines.append(f"| {r.scheme} | {r.activations} | {r.h_cycles} | "
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
    colors = plt.get_cmap("tab20").colors
    for name, xlabel, xof in specs:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for index, r in enumerate(results):
            ax.scatter(xof(r), 100 * r.exact, color=colors[index % len(colors)],
                       marker="o" if r.activations == "float" else "s",
                       label=f"{label(r)} T{r.h_cycles}")
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=1 + len(results) // 24)
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
    (out_dir / "sweep.md").write_text(markdown(results, title, meta["config"]["H_cycles"],
                                               meta.get("precision"), meta.get("qat_steps", 0)))
    (out_dir / "sweep.json").write_text(json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return [out_dir / "sweep.md", out_dir / "sweep.json"] + plots(results, out_dir, title)
