"""Checks codegen/rrgen/boards.py: the shipped board files load and carry the documented
memory maps, invalid board files are rejected with messages naming the problem, and the
linker script renders deterministically with the expected placement.

Run: cd codegen && python -m pytest ../tests/test_boards.py
"""

import tomllib

import pytest

from rrgen import boards
from rrgen.boards import load_board, render_linker_script

MIB = 1024 * 1024
KIB = 1024


def test_known_boards_lists_shipped_files():
    assert boards.known_boards() == ["corstone300", "host", "mps2-an500", "stm32h7"]


def test_unknown_board_names_board_and_known_ones():
    with pytest.raises(ValueError, match=r"unknown board 'nucleo'; known boards: "
                                         r"corstone300, host, mps2-an500, stm32h7"):
        load_board("nucleo")


def test_stm32h7_memory_map():
    board = load_board("stm32h7")
    regions = {region.name: (region.origin, region.length, region.role)
               for region in board.memory}
    assert regions == {
        "flash": (0x08000000, 2 * MIB, "flash"),
        "itcm": (0x00000000, 64 * KIB, "ram"),
        "dtcm": (0x20000000, 128 * KIB, "ram"),
        "axi_sram": (0x24000000, 512 * KIB, "ram"),
        "sram123": (0x30000000, 288 * KIB, "ram"),
        "sram4": (0x38000000, 64 * KIB, "ram"),
        "qspi": (0x90000000, 2 * MIB, "flash"),
    }
    assert board.region("qspi").max_length == 256 * MIB
    assert board.placement.external == "qspi"
    assert board.flash_bytes == 4 * MIB
    assert board.uart.base == 0x40004800
    assert board.qemu_machine is None


def test_mps2_an500_memory_map():
    board = load_board("mps2-an500")
    assert board.region("ssram1").origin == 0
    assert board.region("ssram1").length == 4 * MIB
    assert board.region("ssram23").origin == 0x20000000
    assert board.region("psram").origin == 0x60000000
    assert [region.name for region in board.ram_regions] == ["ssram23", "psram"]
    assert board.uart.base == 0x40004000
    assert board.qemu_machine == "mps2-an500"
    assert board.cycle_counter_hz == 25_000_000


def test_corstone300_memory_map():
    board = load_board("corstone300")
    regions = {region.name: (region.origin, region.length, region.role)
               for region in board.memory}
    # Secure aliases (address + 0x10000000) of QEMU's mps3-an547 map.
    assert regions == {
        "itcm": (0x10000000, 512 * KIB, "flash"),
        "sram": (0x11000000, 2 * MIB, "ram"),
        "dtcm": (0x30000000, 512 * KIB, "ram"),
        "isram": (0x31000000, 4 * MIB, "ram"),
        "qspi": (0x38000000, 8 * MIB, "flash"),
        "ddr": (0x70000000, 256 * MIB, "ram"),
    }
    assert board.flash_bytes == 8 * MIB
    assert board.placement.vectors == "itcm"
    assert board.placement.code == "qspi"
    assert board.placement.arena == "isram"
    assert board.uart.base == 0x59303000
    assert board.qemu_machine == "mps3-an547"
    assert board.cycle_counter_hz == 32_000_000
    assert board.irq_count == 96
    assert board.cflags == ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard")


def test_vectors_default_to_code_region():
    assert load_board("stm32h7").placement.vectors == "flash"
    assert load_board("mps2-an500").placement.vectors == "ssram1"


def _corstone300_data():
    with open(boards.BOARDS_DIR / "corstone300.toml", "rb") as file:
        return tomllib.load(file)


def test_vectors_in_ram_region_rejected(tmp_path):
    data = _corstone300_data()
    data["placement"]["vectors"] = "dtcm"
    with pytest.raises(ValueError, match="vectors = 'dtcm' has role 'ram', expected 'flash'"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_vectors_unknown_region_rejected(tmp_path):
    data = _corstone300_data()
    data["placement"]["vectors"] = "rom"
    with pytest.raises(ValueError, match="vectors = 'rom' is not a memory region"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_unknown_placement_key_rejected(tmp_path):
    data = _corstone300_data()
    data["placement"]["heap"] = "ddr"
    with pytest.raises(ValueError, match=r"\[placement\]: unknown keys \['heap'\]"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_arm_boards_share_cflags():
    assert load_board("stm32h7").cflags == load_board("mps2-an500").cflags
    assert "-mfloat-abi=hard" in load_board("stm32h7").cflags


def test_host_board_has_no_memory_map():
    board = load_board("host")
    assert board.is_host
    assert board.memory == ()
    with pytest.raises(ValueError, match="board host has no memory map"):
        render_linker_script(board)


def _stm32h7_data():
    with open(boards.BOARDS_DIR / "stm32h7.toml", "rb") as file:
        return tomllib.load(file)


def test_overlapping_regions_rejected(tmp_path):
    data = _stm32h7_data()
    data["memory"][2]["length"] = 0x04100000  # dtcm now reaches into axi_sram
    with pytest.raises(ValueError, match="'dtcm' .* and 'axi_sram' .* overlap"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_placement_in_flash_region_rejected(tmp_path):
    data = _stm32h7_data()
    data["placement"]["arena"] = "flash"
    with pytest.raises(ValueError, match="arena = 'flash' has role 'flash', expected 'ram'"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_unknown_key_rejected(tmp_path):
    data = _stm32h7_data()
    data["clock"] = 1
    with pytest.raises(ValueError, match=r"unknown keys \['clock'\]"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_missing_key_rejected(tmp_path):
    data = _stm32h7_data()
    del data["uart"]
    with pytest.raises(ValueError, match="missing required key 'uart'"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_stack_larger_than_region_rejected(tmp_path):
    data = _stm32h7_data()
    data["placement"]["stack_bytes"] = 128 * KIB
    with pytest.raises(ValueError, match="stack_bytes 131072 does not fit in region 'dtcm'"):
        boards.parse_board(data, tmp_path / "x.toml")


def test_linker_script_is_deterministic():
    board = load_board("stm32h7")
    assert render_linker_script(board) == render_linker_script(board)


def test_linker_script_places_sections():
    script = render_linker_script(load_board("stm32h7"))
    assert "flash (rx) : ORIGIN = 0x08000000, LENGTH = 0x00200000" in script
    assert "KEEP(*(.isr_vector))\n    } > flash" in script
    assert ".rr_weights : ALIGN(16)" in script
    assert "*(.rodata.rr_weights .rodata.rr_weights.*)" in script
    assert "qspi (rx) : ORIGIN = 0x90000000, LENGTH = 0x00200000" in script
    assert "*(.rodata.rr_external .rodata.rr_external.*)\n        . = ALIGN(16);\n" \
           "        __external_end__ = .;\n    } > qspi" in script
    assert "} > dtcm AT > flash" in script
    assert ".arena (NOLOAD) : ALIGN(16)" in script
    assert "} > axi_sram" in script
    assert ".stack ORIGIN(dtcm) + LENGTH(dtcm) - STACK_BYTES (NOLOAD)" in script
    assert "ASSERT(__bss_end__ <= __stack_limit__" in script
    assert "ASSERT(__arena_end__ <= __stack_limit__" not in script  # arena is elsewhere


def test_linker_script_splits_vectors_from_code():
    script = render_linker_script(load_board("corstone300"))
    assert "itcm (rx) : ORIGIN = 0x10000000, LENGTH = 0x00080000" in script
    assert "qspi (rx) : ORIGIN = 0x38000000, LENGTH = 0x00800000" in script
    assert "KEEP(*(.isr_vector))\n    } > itcm" in script
    assert "ASSERT(ADDR(.isr_vector) == ORIGIN(itcm)" in script
    assert "} > dtcm AT > qspi" in script
    assert "__code_end__ <= ORIGIN(qspi) + LENGTH(qspi)" in script
