"""Checks the arena split over several RAM regions (plan.plan_arena with regions, the
.arena.<region> sections of link.ld.j2, and the generated arrays).

A test board copies mps2-an500 and carves two small regions out of the top of ssram23,
so that QEMU still runs it: `fast` (too small for the whole arena, so the planner must
split) and `mid`, with psram last. The tiny model is planned, emitted, linked with
arm-none-eabi-gcc and run in QEMU against the numpy reference; the ELF symbols of the
arena arrays must lie in their regions. The stm32h7 board splits the full-size
Sudoku-MLP plan over its five RAM regions, and a board whose regions are all too small
fails with a message naming the bytes. Needs arm-none-eabi-gcc and qemu-system-arm for
the link and QEMU tests (skipped without them); about 15 s.

Run: python -m pytest tests/test_plan_regions.py
"""

import shutil
import subprocess
import tomllib
from types import SimpleNamespace

import pytest
import torch

from rrgen import emit, sudoku
from rrgen.boards import BOARDS_DIR, load_board, parse_board, render_linker_script
from rrgen.build import BuildError, link_firmware, plan_for_board, ram_report
from rrgen.config import TRMConfig
from rrgen.model import TRM
from rrgen.plan import PlanError, RegionSpace, plan_arena
from rrgen.qemu import run_qemu
from rrgen.client import Client
from rrgen.run import run_puzzles
from rrgen.trace import trace_block

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm missing: install qemu-system-arm")

FAST, MID = 0x20300000, 0x20302000     # inside QEMU's ssram23 (0x20000000, 4 MB)


def split_board(tmp_path, fast_bytes=0x2000, mid_bytes=0x4000, regions=("fast", "mid", "psram")):
    """mps2-an500 with regions `fast` and `mid` cut from ssram23, `fast` the arena region."""
    with (BOARDS_DIR / "mps2-an500.toml").open("rb") as file:
        data = tomllib.load(file)
    ssram23 = next(r for r in data["memory"] if r["name"] == "ssram23")
    ssram23["length"] = FAST - 0x20000000
    data["memory"] += [{"name": "fast", "origin": FAST, "length": fast_bytes, "role": "ram"},
                       {"name": "mid", "origin": MID, "length": mid_bytes, "role": "ram"}]
    data["placement"]["arena"] = "fast"
    data["placement"]["arena_regions"] = list(regions)
    return parse_board(data, tmp_path / "mps2-an500.toml")


def test_small_region_splits_arena(tiny_qmodels, tmp_path):
    board = split_board(tmp_path)
    qm = tiny_qmodels[8]
    whole = plan_arena(qm)
    assert whole.arena_bytes > 0x2000          # does not fit `fast`: the planner must split
    layout = plan_for_board(qm, board)
    assert len(layout.arenas) > 1
    placed = []
    for arena in layout.arenas:
        arena.plan.verify()
        assert arena.section == f".arena.{arena.region}"
        assert arena.bytes <= board.arena_space(arena.region).available_bytes
        placed += arena.plan.offsets
    assert sorted(placed) == sorted(b.name for b in layout.buffers)   # each buffer once
    assert layout.arena_bytes >= layout.lower_bound_bytes
    # The hottest buffers (the block body) come first into the fastest region.
    assert layout.arenas[0].region == "fast"
    assert any(b.role == "body" and b.name in layout.arenas[0].plan.offsets for b in layout.buffers)


def test_no_split_fits_error(tiny_qmodels, tmp_path):
    board = split_board(tmp_path, fast_bytes=0x800, mid_bytes=0x800, regions=("fast", "mid"))
    with pytest.raises(BuildError, match=r"needs \d+ bytes .*fast 2048, mid 2048"):
        plan_for_board(tiny_qmodels[8], board)


def test_linker_script_has_a_section_per_arena_region(tmp_path):
    script = render_linker_script(load_board("stm32h7"))
    for name in ("dtcm", "axi_sram", "sram123", "sram4", "itcm"):
        assert f".arena.{name} (NOLOAD) : ALIGN(16)" in script
        assert f"KEEP(*(.arena.{name}))\n        . = ALIGN(16);\n        __arena_{name}_end__ = .;\n    }} > {name}" in script
    # DTCM also contains the stack: its arena part must end below it.
    assert "ASSERT(__arena_dtcm_end__ <= __stack_limit__" in script
    assert "ASSERT(__arena_axi_sram_end__ <= __stack_limit__" not in script


def test_full_size_splits_on_stm32h7():
    config = TRMConfig(vocab_size=11, seq_len=81, hidden_size=512, expansion=4.0, L_layers=2,
                       H_cycles=3, L_cycles=6, puzzle_emb_len=16, mlp_t=True, task="sudoku")
    torch.manual_seed(0)
    model = SimpleNamespace(config=config, graph=trace_block(TRM(config).L_level.layers[0], config))
    board = load_board("stm32h7")
    layout = plan_for_board(model, board)
    assert layout.arena_bytes > board.arena_space("axi_sram").available_bytes
    for arena in layout.arenas:
        arena.plan.verify()
        space = board.arena_space(arena.region)
        assert arena.plan.arena_bytes <= space.available_bytes
        assert arena.bytes == space.start_bytes + arena.plan.arena_bytes
        assert arena.available_bytes == space.start_bytes + space.available_bytes
    # Buffers in different regions cannot share bytes, yet this split still meets the bound.
    assert sum(arena.plan.arena_bytes for arena in layout.arenas) == 985088
    assert layout.lower_bound_bytes == 985088
    # ITCM starts at address 0: its array keeps 16 bytes free, so no buffer is at NULL.
    itcm = next(arena for arena in layout.arenas if arena.region == "itcm")
    assert itcm.start_bytes == 16
    assert all(layout.offset(name) >= 16 for name in itcm.plan.offsets)
    assert layout.arena_bytes == 985088 + 16


def test_one_region_path_is_kept(tiny_qmodels):
    layout = plan_for_board(tiny_qmodels[8], load_board("stm32h7"))
    assert [(a.region, a.symbol, a.section) for a in layout.arenas] == [("axi_sram", "g_arena", ".arena")]
    with pytest.raises(PlanError, match=r"fits neither region sram4 \(64 bytes available\)"):
        plan_arena(tiny_qmodels[8], RegionSpace("sram4", 64))


@pytest.fixture(scope="module")
def split_build(tiny_qmodels, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    board = split_board(folder)
    qm = tiny_qmodels[8]
    layout = plan_for_board(qm, board)
    files = emit.render(qm, layout, "split-test", ["rrgen test_plan_regions"])
    linked = link_firmware(board, qm, files, folder)
    return SimpleNamespace(board=board, qm=qm, layout=layout, linked=linked, folder=folder,
                           source=files["model.c"])


@needs_arm
def test_arena_arrays_land_in_their_regions(split_build):
    layout, board = split_build.layout, split_build.board
    sections = split_build.linked["sections"]
    nm = subprocess.run(["arm-none-eabi-nm", "-S", str(split_build.linked["elf"])],
                        capture_output=True, text=True, check=True).stdout
    symbols = {parts[3]: (int(parts[0], 16), int(parts[1], 16))
               for parts in (line.split() for line in nm.splitlines()) if len(parts) == 4}
    for arena in layout.arenas:
        region = board.region(arena.region)
        address, size = symbols[arena.symbol]
        assert size == arena.bytes, arena.symbol
        assert address >= region.origin, arena.symbol
        assert address + size <= region.end, arena.symbol
        assert sections[arena.section]["address"] == address
        assert f'section(".arena.{arena.region}")' in split_build.source
    assert ".arena" not in sections or sections[".arena"]["size"] == 0


@needs_arm
def test_ram_report_counts_every_arena_array(split_build):
    ram = ram_report(split_build.linked)
    for arena in split_build.layout.arenas:
        assert ram["sections"][arena.section] == arena.bytes, arena.section
    assert ram["bytes"] >= split_build.layout.arena_bytes + split_build.board.placement.stack_bytes


@needs_arm
@needs_qemu
def test_split_arena_firmware_matches_reference_in_qemu(split_build):
    grids, _ = sudoku.generate(1, seed=sudoku.TEST_SEED)
    lines = []
    with run_qemu(split_build.linked["elf"], "mps2-an500") as session:
        client = Client(session.port, timeout=120.0)
        client.wait_ready(timeout=30.0)
        summary = run_puzzles(client, sudoku.to_tokens(grids), split_build.qm, max_steps=2,
                              printer=lines.append)
    assert summary.mismatches == [], "\n".join(lines)
    assert summary.steps_checked == 2
