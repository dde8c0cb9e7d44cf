"""The numpy integer reference interpreter: the definition of the deployed arithmetic.

Pipeline stage: quantize -> reference (the oracle for emit -> build -> run). The generated
C must give the same bytes as this module: output tokens, halt logits, and the carry
(y, z) after every supervision step. Arrays carry a leading batch axis B; every kernel
keeps exact integers (int64 in numpy; int32 accumulators, int64 only where stated, in C).

Kernels, each with one C twin in templates/kernels.c.j2:
- linear:      acc = sum_k in[k] * W[n, k] (+ bias[n]); out = sat(requantize(acc, M[n], S[n]))
- glu:         out = sat(requantize(silu_table[gate + 128] * up, M, S))
- add_rmsnorm: r = a * wa + b * wb (int32, exact); root = isqrt(sum r^2 + eps_term);
               m_row = round(multiplier * 2^30 / root); out = sat(round(r * m_row / 2^total_shift))
- add:         r = sum_k in_k * w_k (int32, exact); out = sat(requantize(r, M, S))
- attention:   per head: q, k rotated by Q14 RoPE tables (rotate_q14, int16); scores
               acc = q . k (int32); d = row max - acc; u = min((d * Ms + 2^(Ss-1)) >> Ss,
               4095); e = exp_q15(u); p = (e * 2^15 + sum/2) / sum (uint32, Q15);
               out = sat(requantize(sum_t p_t v_t, M, S))
- argmax:      first index of the largest logit (ties go to the lowest token id)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .calibrate import net_layers
from .fixedpoint import (EXP_MAX, INT8_MAX, INT8_MIN, PROB_BITS, divide_by_power_of_two,
                         divide_round, exp_q15, isqrt_u64, requantize, rotate_q14)
from .quantize import QAdd, QAddNorm, QAttention, QGlu, QLinear, QModel, RMS_RECIPROCAL_BITS


def matmul_exact(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight.T over integers, exactly, as int64.

    Floating-point matmul is exact while every partial sum stays below the mantissa
    limit: float32 when 128 * max|w| * in_features < 2^24, float64 otherwise.
    """
    bound = 128 * int(np.abs(weight).max(initial=0)) * weight.shape[1]
    if bound < 1 << 24:
        acc = torch.from_numpy(x.astype(np.float32)) @ torch.from_numpy(weight.astype(np.float32)).T
        return acc.numpy().astype(np.int64)
    if bound >= 1 << 53:
        raise ValueError(f"matmul with {weight.shape[1]} inputs exceeds exact float64 range")
    return np.rint(x.astype(np.float64) @ weight.astype(np.float64).T).astype(np.int64)


def linear(x: np.ndarray, p: QLinear) -> np.ndarray:
    """x [B, rows, in] int -> [B, rows, out]."""
    acc = matmul_exact(x, p.weight)
    if p.bias is not None:
        acc = acc + p.bias.astype(np.int64)
    out = requantize(acc, p.multiplier, p.shift)
    return np.clip(out, p.out_min, p.out_max)


def glu(x: np.ndarray, p: QGlu) -> np.ndarray:
    """x [B, rows, 2I] int8 (gate | up) -> [B, rows, I] int8."""
    half = x.shape[-1] // 2
    gate, up = x[..., :half], x[..., half:]
    silu = p.table.astype(np.int64)[gate.astype(np.int64) + 128]
    out = requantize(silu * up.astype(np.int64), p.multiplier, p.shift)
    return np.clip(out, INT8_MIN, INT8_MAX)


def add_rmsnorm(a: np.ndarray, b: np.ndarray, p: QAddNorm) -> np.ndarray:
    """RMSNorm(a + b) over the last axis; a, b [B, rows, n] int8 -> int8."""
    r = a.astype(np.int64) * p.weight_a + b.astype(np.int64) * p.weight_b
    sum_sq = (r * r).sum(axis=-1, keepdims=True) + p.eps_term
    root = np.maximum(isqrt_u64(sum_sq), 1)
    row_mult = divide_round(np.int64(p.multiplier) << RMS_RECIPROCAL_BITS, root)
    out = divide_by_power_of_two(r * row_mult, p.total_shift)
    return np.clip(out, INT8_MIN, INT8_MAX)


def add(inputs: list[np.ndarray], p: QAdd) -> np.ndarray:
    r = sum(x.astype(np.int64) * w for x, w in zip(inputs, p.weights))
    return np.clip(requantize(r, p.multiplier, p.shift), INT8_MIN, INT8_MAX)


def attention(qkv: np.ndarray, p: QAttention) -> np.ndarray:
    """qkv [B, S, 3W] int8, W = heads * head_dim -> [B, S, W] int8."""
    batch, seq, _ = qkv.shape
    heads, dim, half = p.heads, p.head_dim, p.head_dim // 2
    parts = qkv.astype(np.int64).reshape(batch, seq, 3, heads, dim)
    cos, sin = p.cos[None, :, None, :], p.sin[None, :, None, :]

    def rotate(t):                                   # [B, S, heads, dim]
        a, b = rotate_q14(t[..., :half], t[..., half:], cos, sin)
        return np.concatenate([a, b], axis=-1).transpose(0, 2, 1, 3)   # [B, heads, S, dim]

    q, k = rotate(parts[:, :, 0]), rotate(parts[:, :, 1])
    v = parts[:, :, 2].transpose(0, 2, 1, 3)
    # |q|, |k| <= 257, so every partial sum is far below 2^53: float64 matmul is exact.
    scores = np.rint(q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2)).astype(np.int64)
    d = scores.max(axis=-1, keepdims=True) - scores
    u = np.minimum((d * p.score_multiplier + (1 << (p.score_shift - 1))) >> p.score_shift, EXP_MAX)
    e = exp_q15(u)
    total = e.sum(axis=-1, keepdims=True)
    prob = ((e << PROB_BITS) + (total >> 1)) // total
    acc = np.rint(prob.astype(np.float64) @ v.astype(np.float64)).astype(np.int64)
    out = np.clip(requantize(acc, p.multiplier, p.shift), INT8_MIN, INT8_MAX)
    return out.transpose(0, 2, 1, 3).reshape(batch, seq, heads * dim)


def argmax(logits: np.ndarray) -> np.ndarray:
    """Index of the largest value on the last axis; numpy returns the first of equal maxima."""
    return np.argmax(logits, axis=-1)


def run_block(qm: QModel, layer: int, h: np.ndarray) -> np.ndarray:
    graph, params = qm.graph, qm.blocks[layer]
    env = {graph.input: h}
    for node in graph.nodes:
        args = [env[name] for name in node.inputs]
        if node.op == "transpose":
            out = np.swapaxes(args[0], -1, -2)
        elif node.op == "linear":
            out = linear(args[0], params[node.name])
        elif node.op == "glu":
            out = glu(args[0], params[node.name])
        elif node.op == "add_rmsnorm":
            out = add_rmsnorm(args[0], args[1], params[node.name])
        elif node.op == "attention":
            out = attention(args[0], params[node.name])
        else:
            raise ValueError(f"unknown op {node.op!r} in node {node.name!r}")
        env[node.output] = out
    return env[graph.output]


def run_net(qm: QModel, h: np.ndarray, layers: range) -> np.ndarray:
    for layer in layers:
        h = run_block(qm, layer, h)
    return h


@dataclass
class Trace:
    """Per-step results of a batch: arrays indexed [step, puzzle, ...]."""
    tokens: np.ndarray       # [steps, B, seq_len] token ids
    q_halt: np.ndarray       # [steps, B] int16 halt logits
    y: np.ndarray            # [steps, B, positions, hidden] int8
    z: np.ndarray            # [steps, B, positions, hidden] int8
    steps_used: np.ndarray   # [B] supervision steps until halting (or max_steps)


def input_embedding(qm: QModel, tokens: np.ndarray, puzzle_ids: np.ndarray) -> np.ndarray:
    """x [B, positions, hidden] int8: puzzle row in slot 0, zeros in the other prefix slots."""
    cfg = qm.config
    x = np.zeros((tokens.shape[0], cfg.positions, cfg.hidden_size), dtype=np.int64)
    x[:, 0] = qm.puzzle[puzzle_ids]
    x[:, cfg.puzzle_emb_len:] = qm.embed[tokens]
    return x


def solve(qm: QModel, tokens: np.ndarray, puzzle_ids: np.ndarray | None = None,
          max_steps: int = 0, halt: bool = False) -> Trace:
    """Run the integer model on tokens [B, seq_len]; halting as the firmware does it.

    max_steps 0 means halt_max_steps. With halt=True a puzzle stops after the first step
    whose halt logit is > 0; its later records repeat its final state.
    """
    cfg = qm.config
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] != cfg.seq_len:
        raise ValueError(f"tokens have shape {tokens.shape}, expected [B, {cfg.seq_len}]")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
    batch = tokens.shape[0]
    if puzzle_ids is None:
        puzzle_ids = np.zeros(batch, dtype=np.int64)
    steps = max_steps or cfg.halt_max_steps
    x = input_embedding(qm, tokens, puzzle_ids)
    y = np.broadcast_to(qm.h_init.astype(np.int64), x.shape).copy()
    z = np.broadcast_to(qm.l_init.astype(np.int64), x.shape).copy()
    net_l, net_h = net_layers(cfg)
    running = np.ones(batch, dtype=bool)
    steps_used = np.zeros(batch, dtype=np.int64)
    out_tok, out_q, out_y, out_z = [], [], [], []
    for _ in range(steps):
        idx = np.flatnonzero(running)
        ny, nz, nx = y[idx], z[idx], x[idx]
        for _ in range(cfg.H_cycles):
            for _ in range(cfg.L_cycles):
                nz = run_net(qm, add([nz, ny, nx], qm.add_z), net_l)
            ny = run_net(qm, add([ny, nz], qm.add_y), net_h)
        y[idx], z[idx] = ny, nz
        if not out_tok:
            tok = np.zeros((batch, cfg.seq_len), dtype=np.int64)
            q = np.zeros(batch, dtype=np.int64)
        else:
            tok, q = out_tok[-1].copy(), out_q[-1].copy()
        logits = linear(ny[:, cfg.puzzle_emb_len:], qm.lm_head)
        tok[idx] = argmax(logits)
        q[idx] = linear(ny[:, :1], qm.q_head)[:, 0, 0]
        steps_used[idx] += 1
        out_tok.append(tok)
        out_q.append(q)
        out_y.append(y.astype(np.int8))
        out_z.append(z.astype(np.int8))
        if halt:
            running[idx[q[idx] > 0]] = False
            if not running.any():
                break
    return Trace(np.stack(out_tok), np.stack(out_q), np.stack(out_y), np.stack(out_z), steps_used)
