"""Show that a large puzzle-embedding table changes flash, not RAM (streamed embeddings).

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_flash.py [--rows 50000] [--hidden 512] [--board stm32h7]
                                [--external-flash-bytes 33554432] [--bits 4]
                                [--qemu-rows 50000 --qemu-hidden 256] [--keep DIR]
    python tools/bench_flash.py --full-size CHECKPOINT [--keep DIR]

The script saves two seeded random TRM checkpoints (torch.manual_seed(0)) that differ
only in num_puzzle_identifiers: 1 row and --rows rows of --hidden bytes. The rest is a
small Sudoku model (1 layer, expansion 2, H_cycles 1, L_cycles 1, 16 prefix positions,
81 cells, MLP token mixing), so that calibration takes seconds. Each is built as a user
would:

    python -m rrgen build --board BOARD --bits BITS --model FILE --calibration 2
                          --external-flash-bytes BYTES --out DIR

It prints `arm-none-eabi-size -A` of both ELF files, the RAM of each (.data + .bss +
.arena + .stack) and the flash of each region. It fails (exit 1) unless the RAM is
byte for byte the same and the external region grew by the table.

With --qemu-rows, it also builds a model with that many rows of --qemu-hidden bytes for
mps2-an500, whose tables go to the 16 MB PSRAM at 0x60000000 (QEMU loads it like
memory-mapped flash), and runs one puzzle with the last puzzle id in QEMU with
`rrgen run --check`: every step must equal the integer reference byte for byte. The
table must fit in 16 MB: 50,000 rows of 512 bytes (25.6 MB) do not, 50,000 rows of 256
bytes (12.8 MB) do.

With --full-size CHECKPOINT (the seeded full-size Sudoku-MLP model that
tools/bench_build.py saves with --keep), it quantizes that model with INT4 weights (8
calibration puzzles) and links it for stm32h7 instead, printing `arm-none-eabi-size -A`
and the symbols in the QSPI window. NOTE: the full-size arena (about 984 KB) does not
fit the 512 KB AXI SRAM region of boards/stm32h7.toml, so `rrgen build` stops at a RAM
overflow; this mode gives axi_sram 2 MB to isolate the flash figures, which do not
depend on it.

This is a benchmark, not a test: a 50,000 x 512 table makes a 102 MB checkpoint and a
26 MB ELF file, and each build takes a minute or more on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAM_SECTIONS = (".data", ".bss", ".arena", ".stack")


def save_checkpoint(path: Path, rows: int, hidden: int) -> None:
    """Save the seeded small Sudoku TRM with a puzzle table of rows x hidden to path."""
    import torch

    from rrgen import checkpoint
    from rrgen.config import TRMConfig
    from rrgen.model import TRM

    config = TRMConfig(hidden_size=hidden, expansion=2.0, L_layers=1, H_cycles=1, L_cycles=1,
                       puzzle_emb_len=16, halt_max_steps=2, num_puzzle_identifiers=rows,
                       intermediate_multiple=64, mlp_t=True, task="sudoku")
    torch.manual_seed(0)
    model = TRM(config).eval()
    with torch.no_grad():
        model.puzzle_emb.normal_(0.0, 0.25)     # distinct rows, so the row read matters
    checkpoint.save(model, path)


def run(command: list[str]) -> str:
    """Run command, print it with its wall time, and return its stdout; exit on failure."""
    print("$ " + " ".join(command), flush=True)
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    print(f"  ({time.monotonic() - start:.1f} s, exit {result.returncode})", flush=True)
    if result.returncode != 0:
        sys.exit(f"failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def build(model: Path, board: str, bits: str, out: Path, external: int | None) -> dict:
    command = [sys.executable, "-m", "rrgen", "build", "--board", board, "--bits", bits,
               "--model", str(model), "--calibration", "2", "--out", str(out)]
    if external is not None:
        command += ["--external-flash-bytes", str(external)]
    run(command)
    return json.loads((out / "report.json").read_text())


def link_full_size(path: Path, folder: Path) -> int:
    """Quantize the full-size checkpoint with INT4 weights and link it for stm32h7 (see above)."""
    import dataclasses

    from rrgen import boards, calibrate, checkpoint, emit, plan, quantize
    from rrgen.build import flash_used, link_firmware

    model = checkpoint.load(path)
    tokens, ids = calibrate.calibration_data(model.config, 8)
    start = time.monotonic()
    graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens,
                                            calibration_ids=ids)
    qm = quantize.quantize_with_stats(model, graph, stats, 4)
    print(f"calibrated and quantized in {time.monotonic() - start:.1f} s", flush=True)
    board = boards.load_board("stm32h7")
    roomy = dataclasses.replace(board.region("axi_sram"), length=2 * 2**20)
    board = dataclasses.replace(board, memory=tuple(
        roomy if region.name == "axi_sram" else region for region in board.memory))
    files = emit.render(qm, plan.plan_arena(qm), "full-size", ["tools/bench_flash.py"])
    linked = link_firmware(board, qm, files, folder)
    print(run(["arm-none-eabi-size", "-A", str(linked["elf"])]))
    for region in board.flash_regions:
        print(f"{region.name}: {linked['regions'][region.name]} of {region.length} bytes")
    print(f"flash total: {flash_used(board, linked)} of {board.flash_bytes} bytes")
    print(f"in qspi: {', '.join(linked['placement']['external'])}")
    ok = flash_used(board, linked) <= 4 * 2**20
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the large table")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size: bytes per row")
    parser.add_argument("--board", default="stm32h7")
    parser.add_argument("--bits", default="4")
    parser.add_argument("--external-flash-bytes", type=int, default=32 * 2**20,
                        help="size of the board's external flash region (default 32 MB)")
    parser.add_argument("--qemu-rows", type=int, default=0,
                        help="also run a model with this many rows on mps2-an500 in QEMU")
    parser.add_argument("--qemu-hidden", type=int, default=256)
    parser.add_argument("--keep", type=Path, help="folder that keeps checkpoints and builds")
    parser.add_argument("--full-size", type=Path, metavar="CHECKPOINT",
                        help="link this full-size checkpoint for stm32h7 instead (see above)")
    args = parser.parse_args(argv)
    if args.full_size:
        with tempfile.TemporaryDirectory() as temp:
            return link_full_size(args.full_size, args.keep or Path(temp))
    if args.rows < 2 or args.hidden < 2 or args.hidden % 2:
        parser.error(f"--rows {args.rows} and --hidden {args.hidden} must be at least 2, "
                     "--hidden even")

    with tempfile.TemporaryDirectory() as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        reports = {}
        for rows in (1, args.rows):
            model = folder / f"rows{rows}_h{args.hidden}.safetensors"
            save_checkpoint(model, rows, args.hidden)
            out = folder / f"{args.board}-rows{rows}"
            reports[rows] = build(model, args.board, args.bits, out, args.external_flash_bytes)
            print(run(["arm-none-eabi-size", "-A", str(out / "firmware.elf")]))

        one, many = reports[1], reports[args.rows]
        ok = True
        for rows, report in reports.items():
            ram = report["ram"]
            parts = " + ".join(f"{name} {size}" for name, size in ram["sections"].items())
            flash = ", ".join(f"{r['name']} {r['used_bytes']} of {r['length_bytes']}"
                              for r in report["flash"]["regions"])
            print(f"{rows:>7} rows: RAM {parts} = {ram['bytes']} bytes; flash {flash}")
        same_ram = all(one["sections"][s]["size"] == many["sections"][s]["size"]
                       for s in RAM_SECTIONS)
        ok &= same_ram
        grown = {r["name"]: r["used_bytes"] for r in many["flash"]["regions"]}
        base = {r["name"]: r["used_bytes"] for r in one["flash"]["regions"]}
        growth = {name: grown[name] - base[name] for name in grown}
        table = (args.rows - 1) * args.hidden
        # The one-row model may fit in internal flash whole (build.place_arrays), so the
        # tables move to the external region only in the large build: compare the total.
        total = sum(growth.values())
        in_external = "rr_puzzle_emb" in many["flash"]["external_arrays"]
        ok &= in_external and 0 <= total - table < 64
        print(f"RAM identical: {'yes' if same_ram else 'NO'}; flash growth per region "
              f"{growth}, {total} in all; table growth {table} bytes; large table in "
              f"{many['flash']['external_region'] if in_external else 'internal flash'}")

        if args.qemu_rows:
            model = folder / f"rows{args.qemu_rows}_h{args.qemu_hidden}.safetensors"
            save_checkpoint(model, args.qemu_rows, args.qemu_hidden)
            out = folder / f"mps2-an500-rows{args.qemu_rows}"
            report = build(model, "mps2-an500", args.bits, out, None)
            print(run(["arm-none-eabi-size", "-A", str(out / "firmware.elf")]))
            symbols = run(["arm-none-eabi-nm", str(out / "firmware.elf")])
            print("".join(line + "\n" for line in symbols.splitlines()
                          if line.endswith((" rr_puzzle_emb", " rr_embed"))))
            puzzles = out / "puzzle.txt"
            run([sys.executable, "-m", "rrgen", "puzzles", "--out", str(puzzles), "--count", "1"])
            print(run([sys.executable, "-m", "rrgen", "run", str(puzzles), "--board", "mps2-an500",
                       "--build", str(out), "--check", "--max-steps", "1",
                       "--puzzle-id", str(args.qemu_rows - 1)]))
            print(f"RAM {report['ram']['bytes']} bytes")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
