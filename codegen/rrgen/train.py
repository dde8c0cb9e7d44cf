"""Train a TRM or HRM on generated puzzles (Sudoku, Maze) on the CPU, with deep supervision.

First stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
As in the public training loop, a batch of slots keeps its carry between optimizer
steps: every optimizer step advances each slot by one supervision step, and a slot whose
puzzle halted (q_halt > 0, or halt_max_steps reached) is refilled with a new puzzle.
Departures from the public recipe, for a short CPU run: softmax cross-entropy instead of
stablemax, AdamW with a higher learning rate and a cosine decay, and fresh augmented
puzzles from a generated pool instead of a fixed dataset.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from . import checkpoint, compress, tasks
from .config import TRMConfig
from .model import TRM

log = logging.getLogger("rrgen.train")


@dataclass
class TrainOptions:
    steps: int = 6000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    ema: float = 0.995               # weight EMA decay (0 disables); the EMA copy is saved
    pool: int = 20000                # base puzzles generated for training
    halt_exploration: float = 0.1    # chance that a slot gets a random minimum step count
    eval_every: int = 500
    eval_puzzles: int = 500
    seed: int = 0
    init: str | None = None          # checkpoint whose weights start the run (fine-tuning)
    fake_quant: str | None = None    # QAT: block weights fake-quantized in this compress scheme


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    progress = (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps)
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


TRAIN_SEED, TEST_SEED = tasks.TRAIN_SEED, tasks.TEST_SEED


def scores(pred: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per puzzle: correct supervised cells, and whether all are correct. Label 0 is pad."""
    supervised = labels != 0
    right = (pred == labels) & supervised
    return right.sum(-1), right.sum(-1) == supervised.sum(-1)


@torch.no_grad()
def evaluate(model: TRM, inputs: np.ndarray, labels: np.ndarray, steps: int | None = None,
             batch: int = 250, puzzle_ids: np.ndarray | None = None) -> tuple[float, float]:
    """Cell accuracy (supervised cells) and puzzle-exact accuracy after `steps` steps (all run)."""
    model.eval()
    cells = exact = 0
    for start in range(0, len(inputs), batch):
        tokens = torch.from_numpy(inputs[start:start + batch])
        lab = torch.from_numpy(labels[start:start + batch])
        pids = None if puzzle_ids is None else torch.from_numpy(puzzle_ids[start:start + batch])
        right, solved = scores(model.solve(tokens, pids, steps=steps), lab)
        cells += right.sum().item()
        exact += solved.sum().item()
    return cells / max(1, int((labels != 0).sum())), exact / len(inputs)


class PuzzleStream:
    """Endless augmented puzzles from a seeded pool of generated ones."""

    def __init__(self, task: tasks.Task, opts: TrainOptions):
        log.info("generating %d training %s puzzles (seed %d)", opts.pool, task.name, TRAIN_SEED)
        t0 = time.time()
        self.task = task
        self.inputs, self.labels, _ = task.generate(opts.pool, TRAIN_SEED)
        log.info("generated in %.0f s", time.time() - t0)
        self.rng = np.random.default_rng(opts.seed)

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rng.integers(0, len(self.inputs), n)
        p, s = self.task.augment(self.inputs[idx], self.labels[idx], self.rng)
        return torch.from_numpy(np.ascontiguousarray(p)), torch.from_numpy(np.ascontiguousarray(s))


def plain_copy(model: TRM) -> TRM:
    """Return a copy of `model` without QAT parametrizations, holding the float master weights."""
    out = copy.deepcopy(model)
    for module in out.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return out


def train(config: TRMConfig, opts: TrainOptions, out_path, progress=print,
          start: TRM | None = None) -> TRM:
    """Train from seeded weights, from opts.init, or from the model `start`.

    With opts.fake_quant the block weights go through compress.StraightThrough in every
    forward pass (quantization-aware training: straight-through rounding, no EMA), and
    the evaluation uses the rounded weights. The checkpoint contains the float weights.
    """
    torch.manual_seed(opts.seed)
    model = TRM(config)
    if start is not None:
        model.load_state_dict(start.state_dict())
    elif opts.init is not None:
        start = checkpoint.load(opts.init)
        if start.config != config:
            raise ValueError(f"--init {opts.init!r} has config {start.config}, which differs "
                             f"from the training config {config}; pass the same --arch and sizes")
        model.load_state_dict(start.state_dict())
    if opts.fake_quant is not None:
        for module in compress.block_linears(model).values():
            parametrize.register_parametrization(module, "weight",
                                                 compress.StraightThrough(opts.fake_quant))
    ema = None
    if opts.ema > 0 and opts.fake_quant is None:
        ema = TRM(config)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "puzzle_emb" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=opts.lr, betas=(0.9, 0.95))

    task = tasks.get_task(config.task, config.seq_len)
    if task.vocab_size != config.vocab_size:
        raise ValueError(f"task {task.name!r} has {task.vocab_size} tokens but the model "
                         f"config has vocab_size={config.vocab_size}")
    if config.num_puzzle_identifiers != 1:
        raise ValueError("training supports one shared puzzle identifier (Sudoku, Maze); "
                         f"the config has num_puzzle_identifiers={config.num_puzzle_identifiers}")
    stream = PuzzleStream(task, opts)
    test_p, test_s, _ = task.generate(opts.eval_puzzles, TEST_SEED)
    rng = np.random.default_rng(opts.seed + 1)

    # Slot state. steps = supervision steps taken; min_steps from halt exploration.
    B = opts.batch
    tokens, labels = stream.take(B)
    pids = torch.zeros(B, dtype=torch.long)
    y, z = model.initial_carry(B)
    steps = torch.zeros(B, dtype=torch.long)
    min_steps = torch.zeros(B, dtype=torch.long)
    best = -1.0
    t0 = time.time()
    window = {"loss": 0.0, "cell": 0.0, "exact": 0.0, "n": 0}

    for it in range(opts.steps):
        model.train()
        for group in optim.param_groups:
            group["lr"] = lr_at(it, opts)

        x = model.input_embeddings(tokens, pids)
        y, z, logits, q = model.step(y, z, x)
        pred = logits.argmax(-1)
        right, correct = scores(pred, labels)
        lm_loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), labels.reshape(-1),
                                  ignore_index=0)
        q_loss = F.binary_cross_entropy_with_logits(q[:, 0], correct.float())
        loss = lm_loss + 0.5 * q_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - opts.ema)

        # Halting and refill, as in the public ACT wrapper (no_ACT_continue=True).
        with torch.no_grad():
            steps += 1
            halted = (steps >= config.halt_max_steps) | ((q[:, 0] > 0) & (steps >= min_steps))
            n_new = int(halted.sum())
            if n_new:
                new_tok, new_lab = stream.take(n_new)
                tokens[halted], labels[halted] = new_tok, new_lab
                y0, z0 = model.initial_carry(n_new)
                y[halted], z[halted] = y0, z0
                steps[halted] = 0
                explore = torch.from_numpy(rng.random(n_new) < opts.halt_exploration)
                lo = torch.from_numpy(rng.integers(2, config.halt_max_steps + 1, n_new))
                min_steps[halted] = torch.where(explore, lo, torch.zeros_like(lo))

        window["loss"] += loss.item()
        window["cell"] += (right.sum() / (labels != 0).sum()).item()
        window["exact"] += correct.float().mean().item()
        window["n"] += 1
        if (it + 1) % 50 == 0:
            n = window["n"]
            progress(f"step {it + 1}/{opts.steps}  loss {window['loss'] / n:.4f}  "
                     f"train cell {window['cell'] / n:.3f}  exact {window['exact'] / n:.3f}  "
                     f"lr {lr_at(it, opts):.2e}  {time.time() - t0:.0f} s")
            window = {"loss": 0.0, "cell": 0.0, "exact": 0.0, "n": 0}

        if (it + 1) % opts.eval_every == 0 or it + 1 == opts.steps:
            scored = ema if ema is not None else model
            cell, exact = evaluate(scored, test_p, test_s)
            progress(f"eval step {it + 1}: cell {cell:.4f}  exact {exact:.4f}  "
                     f"({opts.eval_puzzles} held-out puzzles, {config.halt_max_steps} steps)")
            if exact >= best:
                best = exact
                checkpoint.save(plain_copy(scored), out_path, training={
                    "steps": it + 1, "options": vars(opts), "eval_cell": cell,
                    "eval_exact": exact, "seconds": round(time.time() - t0)})
                progress(f"saved {out_path}")
    return checkpoint.load(out_path)
