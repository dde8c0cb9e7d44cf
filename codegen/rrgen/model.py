"""Recursive reasoners in PyTorch: TRM (MLP or attention token mixing) and HRM.

First stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
The forward pass matches the public code: TRM (`models/recursive_reasoning/trm.py`, with
`mlp_t=True` and `pos_encodings=none`, or self-attention with RoPE) and HRM
(`models/hrm/hrm_act_v1.py`: separate H and L stacks, one prefix position, RoPE).
Departures, each deliberate:

- Everything runs in fp32. The public code computes in bf16 with fp32 master weights;
  rrgen quantizes from fp32, so a bf16 round trip would only add noise.
- The puzzle-embedding table is an `nn.Parameter` trained by AdamW. The public code keeps
  it as a buffer trained by sign-SGD; with one shared Sudoku row the difference is small.
- Training uses softmax cross-entropy (see train.py); the public default is stablemax.
- HRM trains with the same deep-supervision loop as TRM: no Q-continue head target and no
  second forward pass (the public HRM adds both).

Tensor shapes use B = batch, S = positions (puzzle_emb_len + seq_len), H = hidden_size.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .config import TRMConfig


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill with a normal cut at +-2 std, rescaled so the result has standard deviation `std`."""
    # The std of a unit normal truncated at +-2 is 0.8796; divide it out as the public code does.
    with torch.no_grad():
        nn.init.trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0)
        tensor.mul_(std / 0.87962566103423978)
    return tensor


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm over the last axis: x / sqrt(mean(x^2) + eps)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


# torch.fx keeps rms_norm as one call node, so the tracer records RMSNorm as a single op.
torch.fx.wrap("rms_norm")


class Linear(nn.Linear):
    """nn.Linear with the public code's init: truncated normal, std 1/sqrt(fan_in)."""

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, 1.0 / math.sqrt(self.in_features))
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class SwiGLU(nn.Module):
    """down(silu(gate) * up) with gate and up from one fused projection, as in the public code."""

    def __init__(self, width: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = Linear(width, 2 * intermediate, bias=False)
        self.down_proj = Linear(intermediate, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rope_tables(positions: int, head_dim: int, theta: float,
                enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, head_dim] of rotary embedding, halves repeated (rotate-half layout).

    Computed in float32 as the public RotaryEmbedding does, so imported checkpoints give
    the same logits. Disabled, the tables are cos 1 and sin 0: the rotation is the identity.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    if not enabled:
        angles = torch.zeros_like(angles)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              num_heads: int) -> torch.Tensor:
    """Non-causal multi-head attention on a fused projection qkv [B, S, 3 * heads * d].

    Columns are [q heads | k heads | v heads], each head d wide, as the public qkv_proj.
    RoPE rotates q and k at every position, the puzzle prefix included.
    """
    batch, seq, width = qkv.shape
    head_dim = width // (3 * num_heads)
    qkv = qkv.view(batch, seq, 3 * num_heads, head_dim)
    q, k, v = qkv[:, :, :num_heads], qkv[:, :, num_heads:2 * num_heads], qkv[:, :, 2 * num_heads:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)


# One call node for the tracer, like rms_norm: the integer kernel implements it whole.
torch.fx.wrap("attention")


class Attention(nn.Module):
    """Fused qkv_proj, RoPE, softmax attention and o_proj, no biases (public key names)."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.qkv_proj = Linear(h, 3 * h, bias=False)
        self.o_proj = Linear(h, h, bias=False)
        cos, sin = rope_tables(config.positions, config.head_dim, config.rope_theta,
                               config.pos_encodings == "rope")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.o_proj(attention(self.qkv_proj(h), self.cos, self.sin, self.num_heads))


class Block(nn.Module):
    """Post-norm block: token mixing (MLP over positions, or attention), then channel mixing."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.mlp_t_enabled = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.positions, config.token_intermediate)
        else:
            self.self_attn = Attention(config)
        self.mlp = SwiGLU(config.hidden_size, config.channel_intermediate)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlp_t_enabled:
            # Token mixing: [B, S, H] -> [B, H, S]; the RMSNorm then runs over positions.
            t = h.transpose(1, 2)
            t = rms_norm(t + self.mlp_t(t), self.eps)
            h = t.transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h), self.eps)

        # Channel mixing: RMSNorm over hidden.
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """A network: add the injection to the state, then run the blocks."""

    def __init__(self, config: TRMConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(layers))

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class TRM(nn.Module):
    """Embeddings, the recursive network(s) and the two heads; TRM or, with arch="hrm", HRM.

    Parameter names follow the public checkpoint keys under `model.inner.` (embed_tokens,
    lm_head, q_head, puzzle_emb, L_level.layers.N.mlp_t / self_attn / mlp, H_level for
    HRM, H_init, L_init).
    """

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h)
        trunc_normal_(self.embed_tokens.weight, 1.0 / math.sqrt(h))
        self.puzzle_emb = nn.Parameter(torch.zeros(config.num_puzzle_identifiers, h))
        self.L_level = ReasoningModule(config, config.L_layers)
        if config.arch == "hrm":
            self.H_level = ReasoningModule(config, config.H_layers)
        self.lm_head = Linear(h, config.vocab_size, bias=False)
        self.q_head = Linear(h, 2, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        self.register_buffer("H_init", trunc_normal_(torch.empty(h), 1.0))
        self.register_buffer("L_init", trunc_normal_(torch.empty(h), 1.0))

    def input_embeddings(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        """x [B, S, H]: puzzle row in prefix slot 0, zeros in the other slots, then tokens."""
        cfg = self.config
        tok = self.embed_tokens(tokens)                                  # [B, seq_len, H]
        prefix = tok.new_zeros(tokens.shape[0], cfg.puzzle_emb_len, cfg.hidden_size)
        prefix[:, 0] = self.puzzle_emb[puzzle_ids]
        return cfg.embed_scale * torch.cat([prefix, tok], dim=1)

    def initial_carry(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, z), each [B, S, H], broadcast from H_init and L_init."""
        shape = (batch, self.config.positions, self.config.hidden_size)
        return self.H_init.expand(shape).clone(), self.L_init.expand(shape).clone()

    def heads(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, seq_len, vocab] over the puzzle cells; q [B, 2] (halt, continue)."""
        logits = self.lm_head(y)[:, self.config.puzzle_emb_len:]
        q = self.q_head(y[:, 0])
        return logits, q

    @property
    def nets(self) -> tuple[ReasoningModule, ReasoningModule]:
        """(network updating z, network updating y): the same one in TRM."""
        return self.L_level, getattr(self, "H_level", self.L_level)

    def recursion(self, y: torch.Tensor, z: torch.Tensor,
                  x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one supervision step: T times { n times z = L(z + y + x); y = H(y + z) }.

        TRM: H is L, and gradients flow through the whole last outer cycle. HRM: gradients
        flow through the last L call and the last H call only (its 1-step approximation).
        """
        cfg = self.config
        net_l, net_h = self.nets
        grad = torch.is_grad_enabled()
        hrm = cfg.arch == "hrm"
        for cycle in range(cfg.H_cycles):
            last_cycle = cycle == cfg.H_cycles - 1
            for i in range(cfg.L_cycles):
                last_l = last_cycle and (not hrm or i == cfg.L_cycles - 1)
                with torch.set_grad_enabled(grad and last_l):
                    z = net_l(z, y + x)
            with torch.set_grad_enabled(grad and last_cycle):
                y = net_h(y, z)
        return y, z

    def step(self, y, z, x):
        """One supervision step from carry (y, z): returns new (y, z), logits and q."""
        y, z = self.recursion(y, z, x)
        logits, q = self.heads(y)
        return y.detach(), z.detach(), logits, q

    @torch.no_grad()
    def solve(self, tokens: torch.Tensor, puzzle_ids: torch.Tensor | None = None,
              steps: int | None = None) -> torch.Tensor:
        """Run `steps` supervision steps (default halt_max_steps); return predicted ids [B, seq_len]."""
        if puzzle_ids is None:
            puzzle_ids = torch.zeros(tokens.shape[0], dtype=torch.long)
        x = self.input_embeddings(tokens, puzzle_ids)
        y, z = self.initial_carry(tokens.shape[0])
        logits = None
        for _ in range(steps or self.config.halt_max_steps):
            y, z, logits, _ = self.step(y, z, x)
        return logits.argmax(-1)
