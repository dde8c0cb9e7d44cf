"""Run an integer model through its generated C on the host, without a full build.

Pipeline stage: quantize -> plan -> emit -> (host gcc) -> run. The sweep uses it for its
static-INT8 configurations: the numbers then come from the firmware's own arithmetic,
not from an imitation of it. It compiles firmware/host/batch_main.c with the emitted
model.c, weights.c, weights.S and kernels.c, as build does for the host board, and reads back the
tokens and the carry after every supervision step (run.run_batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import boards, emit, plan, toolchain
from .quantize import QModel


def link_batch(board, generated: list[Path], src: Path, folder: Path, seq_len: int) -> dict:
    """Build the host bulk runner (firmware/host/batch_main.c) from the generated sources.

    It is built for throughput with -O3 -march=native. Integer C without undefined
    behaviour gives the same bits at any optimization level, and the bit-exact tests run
    this very binary.
    """
    return toolchain.compile_and_link(
        board, [toolchain.FIRMWARE_DIR / "host" / "batch_main.c"] + generated,
        [toolchain.FIRMWARE_INCLUDE_DIR, src], folder, "batch",
        [f"-DRR_MAX_SEQ_LEN={seq_len}", "-O3", "-march=native"])


def compile_batch(qm: QModel, work_dir: Path, name: str = "sweep") -> Path:
    """Emit the C of `qm` into work_dir and build the host bulk runner; return its path."""
    work_dir = Path(work_dir)
    files = emit.render(qm, plan.plan_arena(qm), name[:32], [f"{name}: rrgen sweep"])
    src = work_dir / "src"
    emit.write(files, src)
    linked = link_batch(boards.load_board("host"), emit.compiled_sources(src), src, work_dir,
                        qm.config.seq_len)
    return Path(linked["elf"])


def trajectory(batch: Path, qm: QModel, tokens: np.ndarray, ids: np.ndarray,
               jobs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Run the puzzles; return predictions [steps, B, seq_len] and carry y [steps, B, positions * hidden]."""
    from .run import run_batch

    cfg = qm.config
    records = run_batch(batch, tokens, carry_bytes=cfg.positions * cfg.hidden_size,
                        jobs=jobs, puzzle_ids=ids)
    bad = [r["status"] for r in records if r["status"] != 0]
    if bad:
        raise RuntimeError(f"the host model returned status {bad[0]} on "
                           f"{len(bad)} of {len(records)} puzzles")
    preds = np.stack([np.stack(r["tokens"]) for r in records], axis=1).astype(np.int64)
    carries = np.stack([np.stack(r["y"]) for r in records], axis=1).astype(np.float64)
    return preds, carries
