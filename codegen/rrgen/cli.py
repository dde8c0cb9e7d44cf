"""Command-line interface: train, eval, build, run.

Every subcommand reports a user error as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from . import __version__

log = logging.getLogger("rrgen")


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


def cmd_train(args) -> int:
    import torch

    from .config import SUDOKU_SMALL
    from .train import TrainOptions, train

    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in {"hidden_size": args.hidden, "H_cycles": args.h_cycles,
                                   "L_cycles": args.l_cycles,
                                   "halt_max_steps": args.max_steps}.items() if v is not None}
    config = dataclasses.replace(SUDOKU_SMALL, **overrides)
    opts = TrainOptions(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                        pool=args.pool, eval_every=args.eval_every)
    print(f"training {config} for {opts.steps} steps, batch {opts.batch}", flush=True)
    train(config, opts, Path(args.out), progress=lambda line: print(line, flush=True))
    print(f"checkpoint: {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrgen", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rrgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each pipeline stage")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a Sudoku TRM on the CPU and save a checkpoint")
    p.add_argument("--out", required=True, help="checkpoint path to write (.safetensors)")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    p.add_argument("--batch", type=int, default=128, help="puzzles per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and sampling")
    p.add_argument("--pool", type=int, default=20000, help="generated training puzzles")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--hidden", type=int, help="hidden size (default 64)")
    p.add_argument("--h-cycles", type=int, help="T, outer cycles per step (default 2)")
    p.add_argument("--l-cycles", type=int, help="n, z updates per cycle (default 3)")
    p.add_argument("--max-steps", type=int, help="supervision steps (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as err:
        print(f"rrgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        # Input validation in the library raises ValueError subclasses with a full message.
        print(f"rrgen {args.command}: error: {err}", file=sys.stderr)
        return 2
