"""Run the full-size Sudoku-MLP at full depth in QEMU, checked against the integer reference.

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_fullsize.py [--board corstone300] [--bits 8] [--steps 1]
                                   [--puzzles examples/sudoku_test10.txt] [--count 1]
                                   [--calibration 8] [--build DIR] [--keep DIR]
                                   [--timeout 3600]

The script saves the seeded full-size checkpoint of tools/bench_build.py (hidden 512,
expansion 4, 2 layers, MLP token mixing, 16 prefix positions, H_cycles 3, L_cycles 6:
5.03 M parameters) and builds it as a user would:

    python -m rrgen build --board BOARD --bits BITS --model FILE --calibration N --out DIR

With --build DIR it skips both and runs that build instead. It then starts QEMU with
`-icount shift=0`, solves --count puzzles for --steps supervision steps each (no early
halt), and compares tokens, halt logit and carry y and z after every step with the
numpy integer reference. It prints, per puzzle: the wall time of the solve and the
reference check, the device's cycle count and, from it, the emulated instructions.
With -icount shift=0 every instruction takes 1 ns of emulated time, so instructions =
ticks * 1e9 / cycles_hz. The exit status is 1 when any byte differs from the reference.

NOTE: the device counts SysTick ticks in 32 bits, which wrap every 2^32 ticks (134 s of
emulated time, about 134 G instructions, at 32 MHz). The script reports the count modulo
2^32 and prints a warning when the run was long enough to wrap.

This is a benchmark, not a test: one full-depth step of the full-size model (12.8 G
MACs) takes minutes of wall time in QEMU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_build import save_full_size_checkpoint  # noqa: E402

from rrgen import run, tasks  # noqa: E402
from rrgen.build import load_build, load_reference  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTER_WRAP = 2**32


def build_full_size(folder: Path, board: str, bits: str, calibration: int) -> Path:
    """Save the seeded checkpoint into folder and build it for board; return the build folder."""
    model = folder / "sudoku_mlp_h512.safetensors"
    parameters = save_full_size_checkpoint(model)
    print(f"checkpoint {model}: {parameters} parameters, seed 0")
    out = folder / f"build-{board}"
    command = [sys.executable, "-m", "rrgen", "build", "--board", board, "--bits", bits,
               "--model", str(model), "--calibration", str(calibration), "--out", str(out)]
    print("$ " + " ".join(command))
    start = time.monotonic()
    subprocess.run(command, check=True)
    print(f"build: {time.monotonic() - start:.1f} s wall")
    return out


def run_checked(build_dir: Path, puzzles: Path, count: int, steps: int, timeout: float) -> int:
    """Solve and check count puzzles in QEMU with -icount shift=0; return the exit status."""
    info = load_build(build_dir)
    qm = load_reference(info)
    task = tasks.get_task(qm.config.task)
    tokens = task.read_puzzle_file(puzzles)[:count]
    puzzle_ids = np.zeros(len(tokens), dtype=np.int64)
    report = json.loads((build_dir / "report.json").read_text())
    macs = report["macs"]["total"]
    print(f"board {info['board']}, QEMU machine {info['qemu_machine']}, {macs} MACs per "
          f"supervision step, {steps} step(s) per puzzle, H_cycles {qm.config.H_cycles}, "
          f"L_cycles {qm.config.L_cycles}; load average {os.getloadavg()[0]:.2f}")

    failed = False
    with run.open_device(build_dir, None, icount=True, timeout=timeout) as client:
        cycles_hz = client.info().cycles_hz
        for index in range(len(tokens)):
            start = time.monotonic()
            summary = run.run_puzzles(client, tokens[index:index + 1], qm, max_steps=steps,
                                      printer=lambda line: None, task=task,
                                      puzzle_ids=puzzle_ids[index:index + 1])
            wall = time.monotonic() - start
            ticks = summary.cycles[0]
            emulated = ticks / cycles_hz
            instructions = ticks * 1e9 / cycles_hz
            print(f"puzzle {index + 1}: {summary.steps_checked} step(s) checked, "
                  f"{len(summary.mismatches)} mismatch(es), {wall:.1f} s wall (solve and "
                  f"reference), {ticks} ticks at {cycles_hz} Hz = {emulated:.2f} s emulated "
                  f"= {instructions / 1e9:.2f} G instructions, "
                  f"{instructions / (macs * steps):.2f} instructions per MAC")
            if wall > COUNTER_WRAP / cycles_hz:
                print(f"   the run took over {COUNTER_WRAP / cycles_hz:.0f} s of wall time, so "
                      f"the 32-bit tick count may have wrapped: it is modulo 2^32")
            for mismatch in summary.mismatches:
                print(f"   {mismatch}")
            failed |= bool(summary.mismatches)
    print("bit-exact: " + ("NO, see the mismatches above" if failed else
                           "every step equals the integer reference"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="corstone300", help="board (default corstone300)")
    parser.add_argument("--bits", default="8", help="--bits of the build (default 8)")
    parser.add_argument("--calibration", type=int, default=8,
                        help="calibration puzzles of the build (default 8)")
    parser.add_argument("--steps", type=int, default=1,
                        help="supervision steps per puzzle (default 1)")
    parser.add_argument("--puzzles", type=Path, default=REPO_ROOT / "examples" / "sudoku_test10.txt",
                        help="puzzle file (default examples/sudoku_test10.txt)")
    parser.add_argument("--count", type=int, default=1, help="puzzles to solve (default 1)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for each puzzle's SOLVE reply (default 3600)")
    parser.add_argument("--build", type=Path,
                        help="run this existing build folder instead of building")
    parser.add_argument("--keep", type=Path,
                        help="folder that keeps the checkpoint and the build "
                             "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.count < 1:
        parser.error(f"--steps {args.steps} and --count {args.count} must be at least 1")

    if args.build is not None:
        return run_checked(args.build, args.puzzles, args.count, args.steps, args.timeout)
    with tempfile.TemporaryDirectory(prefix="rrgen-fullsize-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        build_dir = build_full_size(folder, args.board, args.bits, args.calibration)
        return run_checked(build_dir, args.puzzles, args.count, args.steps, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
