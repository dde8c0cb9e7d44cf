"""Compare the budgeted calibration of the full-size model with a calibration on every puzzle.

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_calibration.py [--calibration 8] [--puzzles 4] [--bits 8]

The script saves the seeded full-size Sudoku-MLP checkpoint of tools/bench_build.py and
quantizes it twice from --calibration puzzles: once within the default calibration budget
(rrgen/calibrate.py, plan_calibration: 1 puzzle for this model) and once with no budget
(every puzzle). For each, it builds the host bulk runner from the generated C and runs
--puzzles test puzzles (seed 7) for 2 supervision steps. It prints the mean cosine
similarity between the C carry y (int8 times its scale) and the fp32 PyTorch carry y
after steps 1 and 2, and the time each calibration took.

This is a benchmark, not a test. The checkpoint is untrained, so the figures show how
closely the integer model follows fp32 on it, not how accurate a trained model would be.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = 2
PUZZLE_SEED = 7


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / norms))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=8,
                        help="calibration puzzles requested (default 8)")
    parser.add_argument("--puzzles", type=int, default=4, help="test puzzles (default 4)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=8,
                        help="block weight bits (default 8)")
    args = parser.parse_args(argv)
    if args.calibration < 1 or args.puzzles < 1:
        parser.error("--calibration and --puzzles must be 1 or more")

    import torch

    from rrgen import calibrate, checkpoint, hostrun, quantize, tasks
    from rrgen.run import run_batch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_build import save_full_size_checkpoint

    with tempfile.TemporaryDirectory(prefix="rrgen-bench-calibration-") as temp:
        folder = Path(temp)
        save_full_size_checkpoint(folder / "full.safetensors")
        model = checkpoint.load(folder / "full.safetensors").eval()
        cfg = model.config
        tokens, _, ids = tasks.get_task(cfg.task, cfg.seq_len).generate(args.puzzles,
                                                                        PUZZLE_SEED)
        ids = np.zeros_like(ids)
        calibration_tokens, calibration_ids = calibrate.calibration_data(cfg, args.calibration)

        torch.set_num_threads(1)
        fp32 = []
        with torch.inference_mode():
            x = model.input_embeddings(torch.from_numpy(tokens), torch.from_numpy(ids))
            y, z = model.initial_carry(len(tokens))
            for _ in range(STEPS):
                y, z, _, _ = model.step(y, z, x)
                fp32.append(y.reshape(len(tokens), -1).numpy().astype(np.float64))

        for label, budget in (("default budget", calibrate.CALIBRATION_MAC_BUDGET),
                              ("no budget", 0)):
            start = time.perf_counter()
            graph, stats = quantize.calibrate_model(model, calibration_tokens=calibration_tokens,
                                                    calibration_ids=calibration_ids,
                                                    mac_budget=budget)
            seconds = time.perf_counter() - start
            qm = quantize.quantize_with_stats(model, graph, stats, args.bits)
            batch = hostrun.compile_batch(qm, folder / f"batch-{stats.puzzles}")
            records = run_batch(batch, tokens, carry_bytes=cfg.positions * cfg.hidden_size,
                                max_steps=STEPS, puzzle_ids=ids)
            cosines = []
            for step in range(STEPS):
                carry = np.stack([r["y"][step] for r in records]).astype(np.float64)
                cosines.append(mean_cosine(carry * qm.scales["carry"], fp32[step]))
            print(f"{label}: calibration on {stats.puzzles} of {args.calibration} puzzles x "
                  f"{stats.steps} steps took {seconds:.1f} s; INT{args.bits} C carry y "
                  "cosine with fp32: " + ", ".join(f"step {i + 1} {c:.4f}"
                                                   for i, c in enumerate(cosines)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
