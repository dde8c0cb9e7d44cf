"""Model configuration of a Tiny Recursive Model (TRM), MLP token-mixing variant.

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
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid TRM config: {values}")
        if not self.mlp_t:
            raise ValueError("invalid TRM config: mlp_t=False (attention) is not supported yet; "
                             "use the MLP token-mixing variant (mlp_t=True)")

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
