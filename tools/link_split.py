"""Link a checkpoint's split arena for a board whose flash is made larger, and show where
each arena array landed.

Usage (from the repository root; run the rrgen you want to check, e.g. with PYTHONPATH):

    python tools/link_split.py --model FILE [--board stm32h7] [--bits 4]
                               [--flash-bytes 4194304] [--calibration 8] [--keep DIR]

The full-size Sudoku-MLP's weights do not fit the 2 MB flash of stm32h7, so `rrgen build`
stops at the link before the split arena can be checked. This script quantizes the model
(as `build` does), plans the arena for the board, and links it against a copy of the
board file whose code region is --flash-bytes long. The larger flash exists only for
this check; nothing is written to boards/. It prints each arena array with its address
and size from `arm-none-eabi-nm -S` and whether it lies inside its region, then the
sections in the RAM regions. It exits with status 1 when an array lies outside.
Save the full-size checkpoint with save_full_size_checkpoint() of tools/bench_build.py.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import tomllib
from pathlib import Path

from rrgen import calibrate, emit, frontend, quantize
from rrgen.boards import BOARDS_DIR, parse_board
from rrgen.build import link_firmware, plan_for_board


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint file")
    parser.add_argument("--board", default="stm32h7")
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8), help="weight bits")
    parser.add_argument("--flash-bytes", type=int, default=4 * 1024 * 1024,
                        help="length of the board's code region for this link, in bytes")
    parser.add_argument("--calibration", type=int, default=8, help="calibration puzzles")
    parser.add_argument("--keep", help="folder for the linked firmware (default: temporary)")
    args = parser.parse_args()

    # The board file with a larger code region.
    path = BOARDS_DIR / f"{args.board}.toml"
    with path.open("rb") as file:
        data = tomllib.load(file)
    code = data["placement"]["code"]
    next(r for r in data["memory"] if r["name"] == code)["length"] = args.flash_bytes
    board = parse_board(data, path)

    # Quantize, plan and link as `rrgen build` does.
    model = frontend.load_model(args.model)
    tokens, ids = calibrate.calibration_data(model.config, args.calibration)
    graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens, calibration_ids=ids)
    qm = quantize.quantize_with_stats(model, graph, stats, args.bits)
    layout = plan_for_board(qm, board)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="rrgen-link-split."))
    folder.mkdir(parents=True, exist_ok=True)
    linked = link_firmware(board, qm, emit.render(qm, layout, "link-split", ["tools/link_split.py"]),
                           folder)

    # Where each array landed.
    nm = subprocess.run(["arm-none-eabi-nm", "-S", str(linked["elf"])], capture_output=True,
                        text=True, check=True).stdout
    symbols = {parts[3]: (int(parts[0], 16), int(parts[1], 16))
               for parts in (line.split() for line in nm.splitlines()) if len(parts) == 4}
    print(f"arena {layout.arena_bytes} bytes, lower bound {layout.lower_bound_bytes}, "
          f"firmware in {folder}")
    print("| array | region | address | bytes | planned bytes | inside the region |")
    print("|---|---|---|---|---|---|")
    outside = 0
    for arena in layout.arenas:
        address, size = symbols[arena.symbol]
        region = board.region(arena.region) if arena.region else None
        inside = region is not None and region.origin <= address and address + size <= region.end
        outside += not inside
        print(f"| {arena.symbol} | {arena.region} | 0x{address:08x} | {size} | {arena.bytes} | "
              f"{'yes' if inside else 'NO'} |")
    ram = [region for region in board.memory if region.role == "ram"]
    for name, section in sorted(linked["sections"].items(), key=lambda kv: kv[1]["address"]):
        if any(r.origin <= section["address"] < r.end for r in ram):
            print(f"  {name:18s} 0x{section['address']:08x} {section['size']:8d} bytes")
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
