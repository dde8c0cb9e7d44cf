"""Model configuration of a recursive reasoner: TRM (MLP or attention mixing) or HRM.

First stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
Field names follow the public TRM code where one exists there (hidden_size, expansion,
H_cycles, L_cycles, L_layers, puzzle_emb_len, halt_max_steps), so that the YAML configs
of that code map one to one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass


def round_up(value: int, multiple: int) -> int:
    """Round value up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def swiglu_intermediate(width: int, expansion: float, multiple: int) -> int:
    """Intermediate size of a SwiGLU: round(expansion * width * 2/3), rounded up to `multiple`."""
    return round_up(round(expansion * width * 2 / 3), multiple)


@dataclass(frozen=True)
class TRMConfig:
    vocab_size: int = 11            # Sudoku: 0 pad, 1 blank, 2..10 the digits 1..9
    seq_len: int = 81               # puzzle positions (9x9 cells)
    hidden_size: int = 512          # channels of y, z and x
    expansion: float = 4.0          # SwiGLU expansion before the 2/3 factor
    L_layers: int = 2               # blocks in the one recursive network `net`
    H_cycles: int = 3               # T: outer cycles per supervision step
    L_cycles: int = 6               # n: z updates per outer cycle
    puzzle_emb_len: int = 16        # prefix positions; only slot 0 contains the puzzle row
    num_puzzle_identifiers: int = 1  # rows of the puzzle-embedding table
    halt_max_steps: int = 16        # supervision steps per puzzle
    rms_norm_eps: float = 1e-5
    intermediate_multiple: int = 256  # SwiGLU widths are rounded up to this multiple
    mlp_t: bool = True              # token mixing by an MLP over positions (no attention)
    num_heads: int = 8              # attention heads (mlp_t=False); head_dim = hidden / heads
    pos_encodings: str = "none"     # "rope" or "none" (attention only)
    rope_theta: float = 10000.0
    arch: str = "trm"               # "trm": one network for both updates; "hrm": H and L stacks
    H_layers: int = 0               # blocks of HRM's H_level (ignored by TRM, as in the public code)
    task: str = "sudoku"            # "sudoku", "maze" or "arc": decides the token encoding

    def __post_init__(self) -> None:
        checks = {
            "vocab_size": self.vocab_size >= 2,
            "seq_len": self.seq_len >= 1,
            "hidden_size": self.hidden_size >= 2,
            "expansion": self.expansion > 0,
            "L_layers": self.L_layers >= 1,
            "H_cycles": self.H_cycles >= 1,
            "L_cycles": self.L_cycles >= 1,
            "puzzle_emb_len": self.puzzle_emb_len >= 1,
            "num_puzzle_identifiers": self.num_puzzle_identifiers >= 1,
            "halt_max_steps": 1 <= self.halt_max_steps <= 255,
            "intermediate_multiple": self.intermediate_multiple >= 1,
            "num_heads": self.num_heads >= 1 and self.hidden_size % self.num_heads == 0
            and (self.hidden_size // self.num_heads) % 2 == 0,
            "pos_encodings": self.pos_encodings in ("none", "rope"),
            "rope_theta": self.rope_theta > 0,
            "arch": self.arch in ("trm", "hrm"),
            "H_layers": self.H_layers >= (1 if self.arch == "hrm" else 0),
            "task": self.task in ("sudoku", "maze", "arc"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            hint = ""
            if "num_heads" in bad:
                hint = (f"; num_heads must divide hidden_size {self.hidden_size} into heads "
                        "of even size")
            raise ValueError(f"invalid model config: {values}{hint}")
        if self.mlp_t and self.pos_encodings != "none":
            raise ValueError("invalid model config: the MLP token-mixing variant (mlp_t=True) "
                             f"takes no position encoding, got pos_encodings={self.pos_encodings!r}")

    @property
    def positions(self) -> int:
        """Sequence length of the carry: puzzle prefix plus puzzle cells."""
        return self.puzzle_emb_len + self.seq_len

    @property
    def channel_intermediate(self) -> int:
        return swiglu_intermediate(self.hidden_size, self.expansion, self.intermediate_multiple)

    @property
    def token_intermediate(self) -> int:
        return swiglu_intermediate(self.positions, self.expansion, self.intermediate_multiple)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def net_layers(self) -> tuple[int, int]:
        """Blocks of the network that updates z (L) and of the one that updates y (H).

        TRM applies one network to both, so its H updates reuse the L blocks.
        """
        return self.L_layers, (self.H_layers if self.arch == "hrm" else 0)

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TRMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TRM config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


# The shipped default: small enough to train on a 2-core CPU in about an hour and to run
# a puzzle in QEMU in seconds. Everything else matches the public Sudoku-MLP recipe.
SUDOKU_SMALL = TRMConfig(hidden_size=64, H_cycles=2, L_cycles=3, halt_max_steps=8,
                         intermediate_multiple=32)

# The other zoo models, each sized to train on a 2-core CPU in under an hour.
SUDOKU_ATT_SMALL = dataclasses.replace(SUDOKU_SMALL, mlp_t=False, num_heads=2,
                                       pos_encodings="rope")
MAZE_ATT_SMALL = TRMConfig(vocab_size=6, seq_len=81, hidden_size=64, H_cycles=2, L_cycles=3,
                           halt_max_steps=8, intermediate_multiple=32, mlp_t=False,
                           num_heads=2, pos_encodings="rope", task="maze")
HRM_MAZE_SMALL = dataclasses.replace(MAZE_ATT_SMALL, arch="hrm", L_layers=1, H_layers=1,
                                     L_cycles=2, puzzle_emb_len=1)
