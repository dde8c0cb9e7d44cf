"""Print the arena plan of every shipped configuration and of the full-size Sudoku-MLP.

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_plan.py [--board stm32h7]

For each model the script traces one block of a seeded model (torch.manual_seed(0)). The
plan depends on shapes only, not on weights. It prints one Markdown table row: the
arena of rrgen's planner in one region, its lower bound (the most bytes live at one
step, module docstring of codegen/rrgen/plan.py), greedy by size (first fit, as
TensorFlow Lite Micro's GreedyMemoryPlanner) on the same loop-aware buffers, no reuse
(every buffer its own bytes), and which method placed the buffers. A second table
shows the arrays per region when the model is planned for --board: the arena region
alone, or a split over the board's arena_regions. Planning only: nothing is built.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from rrgen import boards, plan, zoo
from rrgen.build import BuildError, plan_for_board
from rrgen.config import TRMConfig
from rrgen.model import TRM
from rrgen.trace import trace_block

# The public full-size Sudoku-MLP (5.03 M parameters), as tools/bench_build.py builds it.
FULL_SIZE = TRMConfig(vocab_size=11, seq_len=81, hidden_size=512, expansion=4.0, L_layers=2,
                      H_cycles=3, L_cycles=6, puzzle_emb_len=16, mlp_t=True, task="sudoku")


def traced(config: TRMConfig) -> SimpleNamespace:
    """Trace one block of a seeded model; the planner reads only config and graph."""
    torch.manual_seed(0)
    return SimpleNamespace(config=config, graph=trace_block(TRM(config).L_level.layers[0], config))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="stm32h7", help="board for the per-region table")
    args = parser.parse_args()
    board = boards.load_board(args.board)
    models = [(name, zoo.config(name)) for name in zoo.ZOO] + [("sudoku-mlp full size", FULL_SIZE)]

    print("| model | arena bytes | lower bound | greedy by size | no reuse | placed by | plan seconds |")
    print("|---|---|---|---|---|---|---|")
    split_rows = []
    for name, config in models:
        model = traced(config)
        start = time.perf_counter()
        layout = plan.plan_arena(model)
        seconds = time.perf_counter() - start
        arena = layout.arenas[0]
        print(f"| {name} | {layout.arena_bytes} | {layout.lower_bound_bytes} | "
              f"{layout.greedy_bytes} | {layout.no_reuse_bytes} | {arena.plan.method} | "
              f"{seconds:.2f} |")
        try:
            on_board = plan_for_board(model, board)
            arrays = ", ".join(f"{a.region} {a.bytes} of {a.available_bytes}"
                               for a in on_board.arenas)
            split_rows.append(f"| {name} | {on_board.arena_bytes} | "
                              f"{on_board.lower_bound_bytes} | {arrays} |")
        except BuildError as err:
            split_rows.append(f"| {name} | does not fit | {layout.lower_bound_bytes} | {err} |")

    print(f"\nOn board {board.name} (bytes available: the region less the stack and the "
          ".data/.bss reserve where it holds them):\n")
    print("| model | arena bytes | lower bound | arrays: region bytes of available |")
    print("|---|---|---|---|")
    print("\n".join(split_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
