"""Flash budget of `build --bits auto`: the bytes a board leaves for block weights.

Pipeline stage: calibrate -> budget -> precision -> quantize, inside build.build. The
weight budget is the flash budget minus the flash that the rest of the firmware uses
(code, embeddings, heads, tables, the .data image). That rest is measured, not estimated:
the all-INT4 model is emitted with every block linear dispatched at run time, so both
linear kernels, the dispatcher and a bits field per linear are linked. This is an upper
bound on the code and parameters of any mixture. Its flash use minus its INT4 block weight
bytes is the rest.

Every weight array starts on a 16-byte boundary (weights.bin and weights.S, see blob.py),
so when a block weight array changes size its padding can grow by up to 15 bytes;
ALIGNMENT_MARGIN_BYTES per block linear covers that. build.check_flash_budget checks the
final link in any case.

The host board has no flash. There --flash-budget bounds the block weights alone, and
without it every layer stays INT8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import emit, plan, precision, quantize
from .calibrate import Stats
from .ir import BlockGraph
from .model import TRM
from .precision import PrecisionChoice

ALIGNMENT_MARGIN_BYTES = 16   # per block weight array, see the module docstring


@dataclass
class AutoPrecision:
    """The precision choice of one build and the flash figures behind its weight budget."""

    choice: PrecisionChoice
    flash_budget_bytes: int | None      # None: host board without --flash-budget
    other_flash_bytes: int | None       # flash besides block weights, None on the host
    margin_bytes: int                   # alignment margin kept out of the weight budget
    fidelity_puzzles: int

    def report(self) -> dict:
        """Build the "precision" section of report.json."""
        choice = self.choice
        return {
            "mode": "auto",
            "layer_bits": choice.layer_bits,
            "layer_weight_bytes": choice.layer_bytes,
            "sensitivity": choice.sensitivity,
            "int4_layers": len(choice.int4_layers),
            "layers": len(choice.layer_bits),
            "weight_bytes": choice.weight_bytes,
            "weight_budget_bytes": choice.weight_budget_bytes,
            "flash_budget_bytes": self.flash_budget_bytes,
            "other_flash_bytes": self.other_flash_bytes,
            "alignment_margin_bytes": self.margin_bytes,
            "fidelity": choice.fidelity,
            "int8_fidelity": choice.int8_fidelity,
            "fidelity_puzzles": self.fidelity_puzzles,
        }


def measure_other_flash(board, qm4: quantize.QModel, folder: Path) -> int:
    """Measure the flash that the firmware needs besides the block weights.

    Links the all-INT4 model qm4, every linear dispatched at run time, into folder.
    """
    from .build import flash_used, link_firmware, weight_bytes

    layout = plan.plan_arena(qm4)
    files = emit.render(qm4, layout, "flash-probe",
                        ["flash probe of build --bits auto: all block linears INT4, each "
                         "dispatched at run time"], runtime_dispatch=True,
                        kernel_variant="portable" if board.is_host else board.kernels)
    linked = link_firmware(board, qm4, files, folder)
    return flash_used(board, linked) - weight_bytes(qm4)


def choose_for_board(model: TRM, graph: BlockGraph, stats: Stats, board,
                     flash_budget: int | None, calibration: tuple[np.ndarray, np.ndarray],
                     folder: Path,
                     puzzles: int = precision.FIDELITY_PUZZLES) -> AutoPrecision:
    """Measure the weight budget of board (linking a probe in folder), then choose the bits.

    Raises build.BuildError when even all-INT4 block weights exceed the budget.
    """
    from .build import BuildError, weight_bytes

    uniform = {bits: quantize.quantize_with_stats(model, graph, stats, bits) for bits in (8, 4)}
    needed = weight_bytes(uniform[4])
    if board.is_host:
        other, margin = None, 0
        weight_budget = weight_bytes(uniform[8]) if flash_budget is None else flash_budget
        if needed > weight_budget:
            raise BuildError(f"the block weights need {needed} bytes even at INT4, over the "
                             f"--flash-budget of {flash_budget} bytes that bounds them on the "
                             "host; raise --flash-budget or use a smaller model")
    else:
        flash_budget = board.flash_bytes if flash_budget is None else flash_budget
        other = measure_other_flash(board, uniform[4], folder)
        margin = ALIGNMENT_MARGIN_BYTES * len(uniform[4].layer_bits())
        # NOTE: on a board with an external region this treats both flash regions as one
        # pool. Arrays are not split, so internal flash can keep a gap (build.place_arrays)
        # and the final link may still overflow the external region near the budget.
        weight_budget = flash_budget - other - margin
        if needed > weight_budget:
            fix = "use a smaller model or a board with more flash"
            if flash_budget < board.flash_bytes:
                fix = "raise --flash-budget, " + fix
            raise BuildError(
                f"the model does not fit the flash budget of {flash_budget} bytes on board "
                f"{board.name!r} even with INT4 weights: it needs {other + needed + margin} "
                f"bytes ({needed} of block weights, {other} for the rest of the firmware, "
                f"{margin} alignment margin); {fix}")
    tokens, ids = calibration
    choice = precision.choose_with_stats(model, graph, stats, weight_budget, tokens[:puzzles],
                                         ids[:puzzles], uniform)
    return AutoPrecision(choice, flash_budget, other, margin, min(puzzles, len(tokens)))
