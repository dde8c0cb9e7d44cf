"""Float execution of the traced IR, with activation statistics for calibration.

Pipeline stage: trace -> calibrate -> quantize. run_block() executes an ir.BlockGraph in
float32 torch on a batch, with the same math as model.Block; collect() runs the whole
recursion (all supervision steps) on sample puzzles and records, for every value of every
layer, the largest magnitude seen, plus a row sample of every linear layer's input for the
weight-scale search in quantize.py.

Calibration work is capped (plan_calibration): the float recursion of `puzzles` puzzles
through `steps` supervision steps costs puzzles * steps * step_macs multiply-accumulates.
When that exceeds CALIBRATION_MAC_BUDGET, the build calibrates on the first
floor(budget / (steps * step_macs)) puzzles of the calibration split (at least one), and
when even one puzzle exceeds it, on one puzzle and the first floor(budget / step_macs)
supervision steps (at least one). Models within the budget calibrate exactly as asked:
every shipped model does at the default 64 puzzles (73 G MACs at most, against 256 G).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import tasks
from .config import TRMConfig
from .ir import BlockGraph
from .model import TRM, attention, rms_norm, rope_tables

# About 8 s of float32 matrix products at 30 G MAC/s, the rate that one x86-64 core
# reached on the full-size Sudoku-MLP (docs/benchmarks.md).
CALIBRATION_MAC_BUDGET = 256e9
ROW_CHUNK = 1024
# One thread: PyTorch's OpenMP threads spin while they wait, so on a 2-core machine busy
# with other jobs two threads made calibration 8 to 17 times slower than one
# (docs/benchmarks.md). On an idle machine one thread costs up to 2x.
CALIBRATION_THREADS = 1


class CalibrationError(ValueError):
    """A calibration run whose float activations are not finite."""


@dataclass
class Stats:
    """Largest |value| per key, and sampled input rows per linear layer."""
    maxabs: dict = field(default_factory=lambda: defaultdict(float))
    rows: dict = field(default_factory=lambda: defaultdict(list))
    rows_per_call: int = 16
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    puzzles: int = 0          # calibration puzzles and supervision steps that were run
    steps: int = 0
    _filled: dict = field(default_factory=dict)   # rows written in each key's last chunk

    def observe(self, key, tensor: torch.Tensor) -> None:
        # max(-min, max) equals abs().max() without allocating the |tensor| temporary.
        low, high = torch.aminmax(tensor.detach())
        value = max(-float(low), float(high))
        if not np.isfinite(value):
            raise CalibrationError(f"calibration produced NaN or Inf at {key}, so the float "
                                   "activations overflow; check the checkpoint for very large "
                                   "weights or use an earlier checkpoint")
        self.maxabs[key] = max(self.maxabs[key], value)

    def sample_rows(self, key, tensor: torch.Tensor) -> None:
        flat = tensor.detach().reshape(-1, tensor.shape[-1])
        pick = self.rng.choice(flat.shape[0], size=min(self.rows_per_call, flat.shape[0]),
                               replace=False)
        part = flat[torch.from_numpy(pick)].numpy()
        # Rows go into float32 chunks of ROW_CHUNK rows (widening to float64 later is
        # exact). Thousands of small arrays that outlive the activations around them
        # would fragment the heap: that doubled the peak memory of a full-size build.
        chunks, done = self.rows[key], 0
        while done < len(part):
            filled = self._filled.get(key, ROW_CHUNK)
            if filled == ROW_CHUNK:
                chunks.append(np.empty((ROW_CHUNK, part.shape[1]), dtype=np.float32))
                filled = 0
            take = min(ROW_CHUNK - filled, len(part) - done)
            chunks[-1][filled:filled + take] = part[done:done + take]
            self._filled[key] = filled + take
            done += take

    def finish(self) -> None:
        """Trim the last chunk of every row sample to the rows written."""
        for key, filled in self._filled.items():
            self.rows[key][-1] = self.rows[key][-1][:filled]
        self._filled = {}


def run_block(graph: BlockGraph, weights: dict[str, torch.Tensor], h: torch.Tensor,
              layer: int | None = None, stats: Stats | None = None) -> torch.Tensor:
    """Execute `graph` on h [B, positions, hidden] in float32; returns the block output."""
    env = {graph.input: h}
    for node in graph.nodes:
        args = [env[name] for name in node.inputs]
        if node.op == "transpose":
            out = args[0].transpose(1, 2)
        elif node.op == "linear":
            if stats is not None:
                stats.sample_rows((layer, node.name), args[0])
            out = args[0] @ weights[node.attrs["weight"]].T
        elif node.op == "glu":
            i = node.attrs["intermediate"]
            gate, up = args[0][..., :i], args[0][..., i:]
            silu = F.silu(gate)
            if stats is not None:
                stats.observe((layer, node.inputs[0], "gate"), gate)
                stats.observe((layer, node.inputs[0], "up"), up)
                stats.observe((layer, node.name, "silu"), silu)
            out = silu * up
        elif node.op == "add_rmsnorm":
            out = rms_norm(args[0] + args[1], node.attrs["eps"])
        elif node.op == "attention":
            heads, head_dim = node.attrs["heads"], node.attrs["head_dim"]
            width = heads * head_dim
            if stats is not None:
                for part, index in (("q", 0), ("k", 1), ("v", 2)):
                    stats.observe((layer, node.inputs[0], part),
                                  args[0][..., index * width:(index + 1) * width])
            cos, sin = rope_tables(args[0].shape[1], head_dim, node.attrs["theta"],
                                   node.attrs["rope"])
            out = attention(args[0], cos, sin, heads)
        else:
            raise ValueError(f"unknown op {node.op!r} in node {node.name!r}")
        if stats is not None:
            stats.observe((layer, node.name), out)
        env[node.output] = out
    return env[graph.output]


def calibration_data(config: TRMConfig, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and puzzle ids of the task's calibration split (seed tasks.CALIBRATION_SEED).

    Puzzle ids beyond the model's table (ARC data against a smaller table) fall back to 0.
    """
    task = tasks.get_task(config.task, config.seq_len)
    inputs, _, ids = task.generate(count, tasks.CALIBRATION_SEED)
    return inputs, np.where(ids < config.num_puzzle_identifiers, ids, 0)


def block_macs(graph: BlockGraph) -> dict[str, int]:
    """Multiply-accumulates of one block call per matrix-product node, for one puzzle."""
    per_block = {}
    for node in graph.nodes:
        if node.op == "linear":
            rows = graph.values[node.inputs[0]].shape[0]
            per_block[node.name] = rows * node.attrs["in_features"] * node.attrs["out_features"]
        elif node.op == "attention":
            # q k^T and p v: two [positions x positions x head_dim] products per head.
            rows = graph.values[node.inputs[0]].shape[0]
            per_block[node.name] = 2 * rows * rows * node.attrs["heads"] * node.attrs["head_dim"]
    return per_block


def block_calls_per_step(config: TRMConfig) -> int:
    n_l, n_h = config.net_layers
    return config.H_cycles * (config.L_cycles * n_l + (n_h or n_l))


def step_macs(config: TRMConfig, graph: BlockGraph) -> int:
    """Multiply-accumulates of one supervision step of one puzzle, the two heads included."""
    heads = config.seq_len * config.hidden_size * config.vocab_size + config.hidden_size * 2
    return sum(block_macs(graph).values()) * block_calls_per_step(config) + heads


def plan_calibration(config: TRMConfig, graph: BlockGraph, puzzles: int,
                     budget: float | None = CALIBRATION_MAC_BUDGET) -> tuple[int, int]:
    """Return (puzzles, supervision steps) to calibrate on; see the module docstring.

    budget None or 0 means no cap: every puzzle through config.halt_max_steps steps.
    """
    steps = config.halt_max_steps
    if not budget or puzzles * steps * step_macs(config, graph) <= budget:
        return puzzles, steps
    per_puzzle = steps * step_macs(config, graph)
    if per_puzzle <= budget:
        return max(1, min(puzzles, int(budget // per_puzzle))), steps
    return 1, max(1, int(budget // step_macs(config, graph)))


def net_layers(config: TRMConfig) -> tuple[range, range]:
    """Block indices of the z network (L) and the y network (H) in one flat list.

    The list is L_level's blocks, then HRM's H_level blocks; TRM's H network is L.
    """
    n_l, n_h = config.net_layers
    return range(n_l), (range(n_l, n_l + n_h) if n_h else range(n_l))


def block_count(config: TRMConfig) -> int:
    return sum(config.net_layers)


def block_module(model: TRM, layer: int) -> torch.nn.Module:
    n_l = model.config.L_layers
    return model.L_level.layers[layer] if layer < n_l else model.H_level.layers[layer - n_l]


def layer_weights(model: TRM, layer: int) -> dict[str, torch.Tensor]:
    """State dict of block `layer` (flat index), keyed as in the traced graph."""
    return {k: v.detach() for k, v in block_module(model, layer).state_dict().items()}


@torch.no_grad()
def run_net(graph: BlockGraph, weights: list[dict], hidden: torch.Tensor,
            injection: torch.Tensor, stats: Stats | None = None,
            layers: range | None = None) -> torch.Tensor:
    """net(hidden + injection) through the blocks `layers` (default: all of `weights`)."""
    h = hidden + injection
    if stats is not None:
        stats.observe("net_in", h)
    for layer in layers if layers is not None else range(len(weights)):
        h = run_block(graph, weights[layer], h, layer, stats)
    return h


@torch.no_grad()
def collect(model: TRM, graph: BlockGraph, tokens: torch.Tensor, steps: int | None = None,
            batch: int = 64, puzzle_ids: torch.Tensor | None = None) -> Stats:
    """Statistics over every net call of `steps` supervision steps (default halt_max_steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(CALIBRATION_THREADS)
    try:
        return _collect(model, graph, tokens, steps, batch, puzzle_ids)
    finally:
        torch.set_num_threads(threads)


def _collect(model: TRM, graph: BlockGraph, tokens: torch.Tensor, steps: int | None,
             batch: int, puzzle_ids: torch.Tensor | None) -> Stats:
    cfg = model.config
    stats = Stats(puzzles=tokens.shape[0], steps=steps or cfg.halt_max_steps)
    weights = [layer_weights(model, i) for i in range(block_count(cfg))]
    net_l, net_h = net_layers(cfg)
    stats.observe("x_table", model.embed_tokens.weight * cfg.embed_scale)
    stats.observe("x_table", model.puzzle_emb * cfg.embed_scale)
    stats.observe("carry", model.H_init)
    stats.observe("carry", model.L_init)
    for start in range(0, tokens.shape[0], batch):
        tok = tokens[start:start + batch]
        ids = (torch.zeros(tok.shape[0], dtype=torch.long) if puzzle_ids is None
               else puzzle_ids[start:start + batch].long())
        x = model.input_embeddings(tok, ids)
        y, z = model.initial_carry(tok.shape[0])
        for _ in range(steps or cfg.halt_max_steps):
            for _ in range(cfg.H_cycles):
                for _ in range(cfg.L_cycles):
                    z = run_net(graph, weights, z, y + x, stats, net_l)
                    stats.observe("carry", z)
                y = run_net(graph, weights, y, z, stats, net_h)
                stats.observe("carry", y)
            logits, q = model.heads(y)
            stats.observe("logits", logits)
            stats.observe("q", q)
    stats.finish()
    return stats
