"""Fuzz the firmware's protocol handler: the host build, or the Arm build in QEMU.

Usage (from the repository root):

    PYTHONPATH=codegen python tools/fuzz.py --frames 10000
    PYTHONPATH=codegen python tools/fuzz.py --frames 1000 --qemu
    RRGEN_SANITIZE=1 PYTHONPATH=codegen python tools/fuzz.py --frames 10000

The script builds a model (default: a seeded tiny TRM, hidden 16, so that SOLVE requests
are cheap) for the host, or for mps2-an500 with --qemu, into a temporary folder. It then
starts the firmware (the host executable over pipes, or qemu-system-arm with the UART on
a loopback socket opened with pyserial) and sends --frames seeded inputs: valid INFO and
SOLVE requests, replays of the last valid frame, random bytes, mutated, truncated,
unterminated and oversized frames, and frames with a valid CRC but invalid content.
rrgen.fuzz predicts the reply each input must get and compares every reply, SOLVE
answers and TRACE packets against the numpy integer reference. A reply missing after
--reply-timeout seconds counts as a hang and ends the run. With RRGEN_SANITIZE=1 the
host firmware is built with AddressSanitizer and UndefinedBehaviorSanitizer, and any
report ends it with a non-zero status.

Exit status: 0 when every reply matched, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from rrgen import checkpoint
from rrgen.build import build, load_build, load_reference
from rrgen.config import TRMConfig
from rrgen.fuzz import open_target, run_fuzz
from rrgen.model import TRM

TINY = TRMConfig(hidden_size=16, expansion=2.0, L_layers=2, H_cycles=1, L_cycles=2,
                 puzzle_emb_len=4, halt_max_steps=3, intermediate_multiple=8)


def save_tiny_model(path: Path) -> Path:
    """Save a seeded tiny TRM whose halt logit varies by puzzle (random q_head)."""
    torch.manual_seed(0)
    model = TRM(TINY)
    with torch.no_grad():
        model.q_head.weight.normal_(0.0, 0.5)
        model.q_head.bias.fill_(0.0)
        model.puzzle_emb.normal_(0.0, 0.25)
    return checkpoint.save(model.eval(), path)


def prepare_build(args, work: Path) -> Path:
    """Return the build folder to run: --build, or a fresh build of --model."""
    if args.build:
        return Path(args.build)
    model = args.model
    if model == "tiny":
        model = save_tiny_model(work / "tiny.safetensors")
    board = "mps2-an500" if args.qemu else "host"
    out = work / board
    print(f"building {args.model} for {board} into {out}", flush=True)
    build(model, board, args.bits, out, calibration_puzzles=8)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10000, help="inputs to send")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated inputs")
    parser.add_argument("--qemu", action="store_true",
                        help="run the mps2-an500 build in qemu-system-arm (default: host build)")
    parser.add_argument("--model", default="tiny",
                        help="tiny (default), a zoo name or a .safetensors checkpoint")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=8, help="weight bits")
    parser.add_argument("--build", help="use this existing build folder instead of building")
    parser.add_argument("--reply-timeout", type=float, default=30.0,
                        help="seconds to wait for each reply before calling it a hang")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.frames < 1:
        print(f"fuzz: error: --frames {args.frames} is invalid; use 1 or more", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    # The reference's matrices are small: one thread avoids contention on a busy machine.
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="rrgen-fuzz-") as tmp:
        build_dir = prepare_build(args, Path(tmp))
        info = load_build(build_dir)
        qm = load_reference(info)
        target = "QEMU " + info["qemu_machine"] if args.qemu else "host build"
        print(f"fuzzing the {target} with {args.frames} inputs, seed {args.seed}", flush=True)

        def progress(done, report):
            print(f"  {done} inputs, {report.valid_answered} valid answered, "
                  f"{len(report.failures)} failures", flush=True)

        with open_target(build_dir, args.qemu, args.reply_timeout,
                         info.get("qemu_machine")) as client:
            report = run_fuzz(client, qm, args.frames, args.seed, args.reply_timeout, progress)
    print(report.summary())
    for failure in report.failures:
        print(f"FAILED: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
