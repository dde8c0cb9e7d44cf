"""Time per puzzle of the generated C on the host against PyTorch fp32 and onnxruntime.

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_host.py [--models sudoku-mlp,full-size] [--bits 8]
                               [--puzzles 100] [--full-size-puzzles 2] [--steps N]
                               [--keep DIR]

For each model the script

1. builds the host board as a user would (`rrgen.build.build`, the same code as
   `python -m rrgen build --board host --bits BITS`), with 64 calibration puzzles for a
   zoo model and 8 for the full-size model (the calibration budget then applies, see
   rrgen/calibrate.py);
2. generates the same seeded test puzzles (seed 7, a different seed from calibration)
   for all three runtimes;
3. times three runtimes, one puzzle at a time, each through all halt_max_steps supervision
   steps (or --steps, if fewer) without early halting, on one thread:
   - "C": the host build's bulk runner (`batch`, gcc -O3 -march=native, integer model),
     one process for all puzzles; the time includes its start and the pipe I/O;
   - "PyTorch": `TRM.solve` in fp32 eager mode, torch.set_num_threads(1), no_grad;
   - "onnxruntime": the step graph of `rrgen export-onnx` (rrgen/onnx_io.py) on the CPU
     provider, intra_op_num_threads=1 and inter_op_num_threads=1, with the loop over the
     supervision steps in Python as the graph's metadata describes;
   PyTorch and onnxruntime first solve one puzzle untimed (warm-up);
4. reports milliseconds per puzzle, each runtime's time against the C build, the share of
   puzzles each runtime solves (every cell equal to the solution), and for each pair of
   runtimes the share of cells and of whole puzzles on which the predicted tokens agree
   and the mean cosine similarity of the carry y after the last step (the C carry is
   int8 times its scale).

The full-size model is the seeded random checkpoint of tools/bench_build.py (hidden 512,
5.03 M parameters). It is untrained, so its logits are nearly tied and its predicted
tokens differ between any two runtimes, fp32 ones included. Its recursion also amplifies
rounding differences: PyTorch and onnxruntime agree to a carry cosine of 1.0000 after 2
supervision steps and drift apart after that. Compare the runtimes on it with --steps 2.

This is a benchmark, not a test: the numbers depend on the machine and its load, which the
script prints. Single runs on a shared machine vary.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PUZZLE_SEED = 7
FULL_SIZE = "full-size"


def onnxruntime_or_exit():
    try:
        import onnxruntime
    except ImportError:
        sys.exit("bench_host: onnxruntime is not installed; install it with "
                 "`pip install onnxruntime` (rrgen declares onnxruntime>=1.17)")
    return onnxruntime


def time_c(batch: Path, tokens: np.ndarray, ids: np.ndarray, qm,
           steps: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Run every puzzle through the bulk runner.

    Returns seconds, the final tokens [N, seq_len] and the final carry y [N, positions *
    hidden] in real units. The runner writes the int8 carry after every step (about
    100 KB per step at full size), which the time includes.
    """
    from rrgen.run import run_batch

    carry = qm.config.positions * qm.config.hidden_size
    start = time.perf_counter()
    records = run_batch(batch, tokens, carry_bytes=carry, max_steps=steps, halt=False, jobs=1,
                        puzzle_ids=ids)
    seconds = time.perf_counter() - start
    bad = [r["status"] for r in records if r["status"] != 0]
    if bad:
        raise RuntimeError(f"the host bulk runner returned status {bad[0]} on "
                           f"{len(bad)} puzzles")
    answers = np.stack([r["tokens"][-1] for r in records]).astype(np.int64)
    y = np.stack([r["y"][-1] for r in records]).astype(np.float64) * qm.scales["carry"]
    return seconds, answers, y


def time_solves(solve, count: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Time solve(i) for every puzzle after one warm-up call; return seconds, tokens, final y."""
    solve(0)
    start = time.perf_counter()
    results = [solve(i) for i in range(count)]
    seconds = time.perf_counter() - start
    answers = np.concatenate([r[0] for r in results]).astype(np.int64)
    return seconds, answers, np.concatenate([r[1] for r in results]).astype(np.float64)


def time_torch(model, tokens: np.ndarray, ids: np.ndarray,
               steps: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Solve one puzzle at a time as TRM.solve does; return seconds, tokens and final y."""
    import torch

    torch.set_num_threads(1)
    tok, pid = torch.from_numpy(tokens), torch.from_numpy(ids)

    def solve(i: int):
        x = model.input_embeddings(tok[i:i + 1], pid[i:i + 1])
        y, z = model.initial_carry(1)
        logits = None
        for _ in range(steps):
            y, z, logits, _ = model.step(y, z, x)
        return logits.argmax(-1).numpy(), y.reshape(1, -1).numpy()

    with torch.inference_mode():
        return time_solves(solve, len(tokens))


def time_onnxruntime(model, path: Path, tokens: np.ndarray, ids: np.ndarray,
                     steps: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Solve one puzzle at a time with the step graph; return seconds, tokens and final y."""
    ort = onnxruntime_or_exit()
    cfg = model.config
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    h_init = model.H_init.detach().numpy().astype(np.float32)
    l_init = model.L_init.detach().numpy().astype(np.float32)
    table = model.puzzle_emb.detach().numpy().astype(np.float32)
    shape = (1, cfg.positions, cfg.hidden_size)

    def solve(i: int) -> np.ndarray:
        y, z = np.broadcast_to(h_init, shape).copy(), np.broadcast_to(l_init, shape).copy()
        feed = {"tokens": tokens[i:i + 1].astype(np.int64), "puzzle_row": table[ids[i:i + 1]]}
        logits = None
        for _ in range(steps):
            y, z, logits, _ = session.run(None, {"y": y, "z": z, **feed})
        return logits.argmax(-1), y.reshape(1, -1)

    return time_solves(solve, len(tokens))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over puzzles of the cosine similarity of two carries [N, values]."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / norms))


def agreement(a: np.ndarray, b: np.ndarray) -> str:
    cells = 100.0 * np.mean(a == b)
    puzzles = 100.0 * np.mean((a == b).all(axis=1))
    return f"{cells:.2f} % of cells, {puzzles:.1f} % of puzzles"


def bench_model(name: str, count: int, bits: int, folder: Path, steps: int | None) -> None:
    from rrgen import checkpoint, onnx_io, tasks, zoo
    from rrgen.build import build

    if name == FULL_SIZE:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_build import save_full_size_checkpoint

        path = folder / "sudoku_mlp_h512.safetensors"
        save_full_size_checkpoint(path)
        calibration = 8
    else:
        path = zoo.checkpoint_path(name)
        calibration = 64
    model = checkpoint.load(path).eval()
    cfg = model.config
    steps = min(steps or cfg.halt_max_steps, cfg.halt_max_steps)

    start = time.perf_counter()
    built = build(path, "host", bits, folder / f"build-{name}", calibration)
    build_seconds = time.perf_counter() - start
    onnx_path = onnx_io.export_step(model, folder / f"{name}.onnx")

    task = tasks.get_task(cfg.task, cfg.seq_len)
    tokens, labels, ids = task.generate(count, PUZZLE_SEED)
    ids = np.where(ids < cfg.num_puzzle_identifiers, ids, 0).astype(np.int64)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n== {name}: {params} parameters, {steps} of {cfg.halt_max_steps} supervision steps, "
          f"{built.report['macs']['total']} MACs per step; {count} puzzles (seed "
          f"{PUZZLE_SEED}); host build INT{bits} in {build_seconds:.1f} s; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)

    results = {}
    results["C"] = time_c(built.out_dir / "batch", tokens, ids, built.qmodel, steps)
    results["PyTorch"] = time_torch(model, tokens, ids, steps)
    results["onnxruntime"] = time_onnxruntime(model, onnx_path, tokens, ids, steps)
    c_seconds = results["C"][0]
    print(f"   {'runtime':<13}{'ms per puzzle':>14}{'time / C':>10}   solved")
    for runtime, (seconds, answers, _) in results.items():
        solved = 100.0 * np.mean((answers == labels).all(axis=1))
        print(f"   {runtime:<13}{1000 * seconds / count:>14.2f}{seconds / c_seconds:>10.2f}"
              f"   {solved:5.1f} %")
    pairs = [("C", "PyTorch"), ("C", "onnxruntime"), ("PyTorch", "onnxruntime")]
    for first, second in pairs:
        (_, tokens_a, y_a), (_, tokens_b, y_b) = results[first], results[second]
        print(f"   {first} and {second}: tokens agree on {agreement(tokens_a, tokens_b)}; "
              f"final carry y cosine {cosine(y_a, y_b):.4f}")
    print(f"   load average after: {os.getloadavg()[0]:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"sudoku-mlp,{FULL_SIZE}",
                        help=f"comma-separated zoo names and {FULL_SIZE} "
                        f"(default sudoku-mlp,{FULL_SIZE})")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=8,
                        help="block weight bits of the host build (default 8)")
    parser.add_argument("--puzzles", type=int, default=100,
                        help="puzzles per zoo model (default 100)")
    parser.add_argument("--full-size-puzzles", type=int, default=2,
                        help=f"puzzles for the {FULL_SIZE} model (default 2)")
    parser.add_argument("--steps", type=int,
                        help="supervision steps per puzzle (default: each model's "
                        "halt_max_steps, the most it runs)")
    parser.add_argument("--keep", type=Path,
                        help="folder that keeps the builds and ONNX files "
                             "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    onnxruntime_or_exit()
    from rrgen import zoo

    models = args.models.split(",")
    for name in models:
        if name != FULL_SIZE and name not in zoo.ZOO:
            parser.error(f"--models: unknown model {name!r}; use {FULL_SIZE} or one of "
                         f"{', '.join(sorted(zoo.ZOO))}")
    if args.puzzles < 1 or args.full_size_puzzles < 1:
        parser.error("--puzzles and --full-size-puzzles must be 1 or more")
    if args.steps is not None and not 1 <= args.steps <= 255:
        parser.error(f"--steps {args.steps} is invalid; use 1 to 255 (the bulk runner's "
                     "limit), or leave it out for every supervision step")
    print(f"{os.cpu_count()} CPUs; one thread per runtime")
    with tempfile.TemporaryDirectory(prefix="rrgen-bench-host-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in models:
            count = args.full_size_puzzles if name == FULL_SIZE else args.puzzles
            bench_model(name, count, args.bits, folder, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
