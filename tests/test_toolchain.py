"""Checks codegen/rrgen/toolchain.py: the firmware and the fake model fixture link for
stm32h7 with the rendered linker script, and the size report is consistent with the
memory map. A board whose RAM is too small fails the link with the script's ASSERT message.
Needs arm-none-eabi-gcc (Debian gcc-arm-none-eabi, libnewlib-arm-none-eabi).

Run: cd codegen && python -m pytest ../tests/test_toolchain.py
"""

import shutil
import tomllib

import pytest

from rrgen import boards, toolchain
from rrgen.boards import REPO_ROOT, load_board

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fake_model.c"

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                                reason="arm-none-eabi-gcc missing: install the Debian "
                                       "package gcc-arm-none-eabi")


def build(board, out_dir):
    sources = toolchain.firmware_sources(board) + [FIXTURE]
    return toolchain.compile_and_link(board, sources, [toolchain.FIRMWARE_INCLUDE_DIR],
                                      out_dir, "firmware")


@pytest.fixture(scope="module")
def stm32h7_build(tmp_path_factory):
    return build(load_board("stm32h7"), tmp_path_factory.mktemp("stm32h7"))


def test_stm32h7_outputs_exist(stm32h7_build):
    for key in ("elf", "bin", "map", "linker_script"):
        assert stm32h7_build[key].is_file(), key


def test_stm32h7_vector_table_starts_flash(stm32h7_build):
    vectors = stm32h7_build["sections"][".isr_vector"]
    assert vectors["address"] == 0x08000000
    assert vectors["size"] == 4 * (16 + 150)


def test_stm32h7_sections_in_their_regions(stm32h7_build):
    sections = stm32h7_build["sections"]
    assert 1000 < sections[".text"]["size"] < 64 * 1024
    assert sections[".bss"]["address"] == 0x20000000
    assert sections[".arena"]["address"] == 0x24000000
    assert sections[".arena"]["size"] == 2 * 97 * 64
    stack = sections[".stack"]
    assert stack["address"] + stack["size"] == 0x20020000
    assert stack["size"] == 16384


def test_stm32h7_region_usage_fits(stm32h7_build):
    board = load_board("stm32h7")
    for region in board.memory:
        assert stm32h7_build["regions"][region.name] <= region.length, region.name
    assert stm32h7_build["regions"]["flash"] == stm32h7_build["bin"].stat().st_size


def test_link_fails_when_stack_meets_bss(tmp_path):
    with open(boards.BOARDS_DIR / "stm32h7.toml", "rb") as file:
        data = tomllib.load(file)
    data["memory"][2]["length"] = 0x1000  # 4 KB of DTCM: .bss plus a 2 KB stack overflow
    data["placement"]["stack_bytes"] = 2048
    board = boards.parse_board(data, tmp_path / "stm32h7.toml")
    with pytest.raises(toolchain.ToolchainError, match="rrgen: .bss runs into the 2048-byte "
                                                       "stack at the top of region dtcm"):
        build(board, tmp_path / "out")


def test_missing_compiler_names_debian_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(toolchain.ToolchainError, match="install the Debian package"):
        toolchain.find_tool("arm-none-eabi-gcc", toolchain.ARM_PACKAGES)
