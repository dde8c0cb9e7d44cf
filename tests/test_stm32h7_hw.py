"""Checks the real-hardware side of board stm32h7 without a board.

The clock constants of firmware/boards/stm32h7/h7_config.h compute to the documented
frequencies and agree with boards/stm32h7.toml. The firmware with clocks, MPU, caches and
QSPI builds with -Werror and puts its vector table and symbols where the core expects
them. `rrgen flash --dry-run` lists what it would program, and bad input gets one line.
Builds need arm-none-eabi-gcc; the no-probe test needs pyocd (pip install pyocd).

Run: python -m pytest -q tests/test_stm32h7_hw.py
"""

import json
import re
import shutil
import struct
import subprocess
import sys
import tomllib

import pytest

from rrgen import flash, toolchain
from rrgen.boards import REPO_ROOT, load_board
from rrgen.build import build
from rrgen.cli import main

CONFIG_H = REPO_ROOT / "firmware" / "boards" / "stm32h7" / "h7_config.h"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "fake_model.c"
MHZ = 1_000_000

needs_gcc = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc missing: install the Debian package "
                                      "gcc-arm-none-eabi")


def config_constants() -> dict[str, int]:
    """The `#define H7_NAME value` lines of h7_config.h whose value is a plain number."""
    pattern = re.compile(r"#define (H7_\w+) (0x[0-9A-Fa-f]+|\d+)u?\b")
    return {name: int(value, 0) for name, value in pattern.findall(CONFIG_H.read_text())}


def flash_wait_states(axi_hz: int, vos: int) -> int:
    """Minimum wait states of RM0433 table 17 for an AXI clock at VOS0 or VOS1."""
    limits = [70, 140, 185, 210, 225, 240] if vos == 0 else [70, 140, 185, 210]
    states = [0, 1, 2, 2, 3, 4][:len(limits)]
    for limit, wait in zip(limits, states):
        if axi_hz <= limit * MHZ:
            return wait
    raise ValueError(f"AXI clock {axi_hz} Hz is above the VOS{vos} limit")


def test_clock_tree_computes_documented_frequencies():
    c = config_constants()
    board = load_board("stm32h7")
    # Both PLL sources give the 2 MHz reference that PLL1RGE = 1 (2-4 MHz) expects.
    assert c["H7_HSE_HZ"] // c["H7_PLL1_M_HSE"] == 2 * MHZ
    assert c["H7_HSI_HZ"] // c["H7_PLL1_M_HSI"] == 2 * MHZ
    assert c["H7_PLL1_RGE"] == 1
    ref = 2 * MHZ
    rows = {0: (c["H7_PLL1_N_VOS0"], c["H7_SYSCLK_VOS0_HZ"], 480, 960, 240, 120),
            1: (c["H7_PLL1_N_VOS1"], c["H7_SYSCLK_VOS1_HZ"], 400, 800, 200, 100)}
    latency = {0: c["H7_FLASH_LATENCY_VOS0"], 1: c["H7_FLASH_LATENCY_VOS1"]}
    for vos, (n, sysclk, cpu_mhz, vco_mhz, hclk_mhz, apb_mhz) in rows.items():
        vco = ref * n
        assert vco == vco_mhz * MHZ
        assert 192 * MHZ <= vco <= 960 * MHZ
        assert vco // c["H7_PLL1_P"] == sysclk == cpu_mhz * MHZ
        cpu = sysclk // c["H7_D1CPRE_DIV"]
        hclk = cpu // c["H7_HPRE_DIV"]
        apb = hclk // c["H7_APB_DIV"]
        assert (cpu, hclk, apb) == (cpu_mhz * MHZ, hclk_mhz * MHZ, apb_mhz * MHZ)
        assert latency[vos] >= flash_wait_states(hclk, vos)
        assert c["H7_FLASH_WRHIGHFREQ"] == 2
        # QSPI clock = HCLK / (prescaler + 1), as board.c computes the prescaler.
        prescaler = -(-hclk // c["H7_QSPI_MAX_HZ"]) - 1
        assert hclk // (prescaler + 1) <= c["H7_QSPI_MAX_HZ"]
    assert board.core_clock_hz == c["H7_SYSCLK_VOS0_HZ"]
    assert board.cycle_counter_hz == board.core_clock_hz


def test_usart3_baud_error_below_half_percent():
    c = config_constants()
    baud = load_board("stm32h7").uart.baud
    for pclk1 in (120 * MHZ, 100 * MHZ, c["H7_HSI_HZ"]):   # VOS0, VOS1, HSI fallback
        brr = (pclk1 + baud // 2) // baud
        assert abs(pclk1 / brr - baud) / baud < 0.005, pclk1


@needs_gcc
def test_firmware_with_clocks_mpu_caches_and_qspi_builds(tmp_path):
    board = load_board("stm32h7")
    sources = toolchain.firmware_sources(board) + [FIXTURE]
    assert "-Werror" in toolchain.COMMON_CFLAGS
    assert "-Wextra" in toolchain.COMMON_CFLAGS
    result = toolchain.compile_and_link(board, sources, [toolchain.FIRMWARE_INCLUDE_DIR],
                                        tmp_path, "firmware")
    symbols = {}
    nm = subprocess.run(["arm-none-eabi-nm", str(result["elf"])], capture_output=True,
                        text=True, check=True).stdout
    for line in nm.splitlines():
        fields = line.split()
        symbols[fields[-1]] = (fields[-2], int(fields[0], 16) if len(fields) == 3 else None)
    # Word 0 of the image is the stack top, word 1 the Thumb address of Reset_Handler.
    stack_top, reset = struct.unpack_from("<II", result["bin"].read_bytes())
    assert stack_top == 0x20020000 == symbols["__stack_top__"][1]
    assert reset == symbols["Reset_Handler"][1] | 1
    assert symbols["vector_table"][1] == 0x08000000
    assert 0x20000000 <= symbols["h7_status"][1] < 0x20020000   # DTCM
    assert symbols["board_cycles_hz"][0] == "T"
    # The QSPI code is linked and chosen at run time: board.o refers to the bounds of
    # section .rr_external weakly, so an image without one links and they read as 0.
    assert symbols["qspi_command"][0] == "t"
    board_object = next(tmp_path.glob("firmware.obj/*_board.o"))
    weak = subprocess.run(["arm-none-eabi-nm", str(board_object)], capture_output=True,
                          text=True, check=True).stdout
    assert re.search(r"^ +w __external_start__$", weak, re.M), weak
    assert re.search(r"^ +w __external_end__$", weak, re.M), weak


def test_board_constant_mismatch_fails_the_build(tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
    board = load_board("stm32h7")
    source = REPO_ROOT / "firmware" / "boards" / "stm32h7" / "board.c"
    flags = [f for f in toolchain.board_defines(board) if not f.startswith("-DRR_CORE")]
    command = ["arm-none-eabi-gcc", *board.cflags, *toolchain.COMMON_CFLAGS,
               f"-I{toolchain.FIRMWARE_INCLUDE_DIR}", *flags, "-DRR_CORE_CLOCK_HZ=400000000u",
               "-c", str(source), "-o", str(tmp_path / "board.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "core_clock_hz in boards/stm32h7.toml differs" in result.stderr


# ---------------------------------------------------------------------------------------
# rrgen flash
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def h7_build(tiny_checkpoint, tmp_path_factory):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
    out = tmp_path_factory.mktemp("h7") / "stm32h7"
    build(tiny_checkpoint, "stm32h7", 8, out, calibration_puzzles=8)
    return out


def run_cli(capsys, *args):
    status = main(["flash", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_flash_dry_run_lists_internal_flash(h7_build, capsys):
    # --internal-only: a board file with a QSPI region puts the embedding tables there.
    status, out, err = run_cli(capsys, "--board", "stm32h7", "--build", h7_build, "--dry-run",
                               "--internal-only")
    assert status == 0, err
    plan = flash.plan_flash(h7_build, "stm32h7")
    total = sum(len(s.data) for s in plan.part("flash"))
    # The sections are contiguous, so they add up to the raw image that objcopy made of
    # the internal flash.
    assert total == (h7_build / "firmware.bin").stat().st_size
    assert plan.chunks() == [(0x08000000, (h7_build / "firmware.bin").read_bytes())]
    assert f"internal flash: {total:,} bytes in" in out
    assert re.search(r"\.isr_vector +0x08000000-0x08000297 +664 bytes", out)
    assert ".rr_weights" in out
    assert "pyocd target stm32h743xx" in out
    assert out.rstrip().endswith("dry run: nothing programmed")


def test_flash_errors_are_one_line(h7_build, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(h7_build, other)
    record = json.loads((other / "build.json").read_text())
    (other / "build.json").write_text(json.dumps(dict(record, board="mps2-an500")))
    cases = [
        (["--board", "stm32h7", "--build", tmp_path / "missing", "--dry-run"],
         "build folder '" + str(tmp_path / "missing") + "' does not exist; run"),
        (["--board", "stm32h7", "--build", tmp_path, "--dry-run"], "(no build.json)"),
        (["--board", "stm32h7", "--build", other, "--dry-run"],
         "was built for board 'mps2-an500', not stm32h7"),
        (["--board", "mps2-an500", "--build", other, "--dry-run"],
         "board mps2-an500 cannot be flashed"),
        (["--board", "nucleo", "--dry-run"], "unknown board 'nucleo'"),
    ]
    for args, fragment in cases:
        status, _, err = run_cli(capsys, *args)
        assert status == 2, args
        assert err.count("\n") == 1, err
        assert err.startswith("rrgen flash: error: "), err
        assert fragment in err, err


def _link_qspi_image(folder):
    """A real Arm ELF with a vector table in internal flash and 4 KB at 0x90000000."""
    folder.mkdir()
    (folder / "image.S").write_text(
        ".syntax unified\n.section .isr_vector,\"a\"\n.word 0x20020000, 0x08000009\n"
        ".section .rr_external,\"a\"\n.fill 4096, 1, 0x5A\n")
    (folder / "image.ld").write_text(
        "MEMORY { flash (rx) : ORIGIN = 0x08000000, LENGTH = 2M\n"
        "         qspi (rx) : ORIGIN = 0x90000000, LENGTH = 16M }\n"
        "SECTIONS { .isr_vector : { KEEP(*(.isr_vector)) } > flash\n"
        "           .rr_external : { KEEP(*(.rr_external)) } > qspi }\n")
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-nostdlib",
                    "-T", str(folder / "image.ld"), str(folder / "image.S"), "-o",
                    str(folder / "firmware.elf")], check=True, capture_output=True)
    (folder / "build.json").write_text(json.dumps({"board": "stm32h7"}))


@needs_gcc
def test_flash_rejects_qspi_part(tmp_path, capsys):
    folder = tmp_path / "qspi"
    _link_qspi_image(folder)
    status, out, err = run_cli(capsys, "--board", "stm32h7", "--build", folder, "--dry-run")
    assert status == 2
    assert "external QSPI flash: 4,096 bytes in 1 sections" in out
    assert "has 4,096 bytes for the external QSPI flash at 0x90000000 (.rr_external)" in err
    assert "--internal-only" in err
    assert err.count("\n") == 1
    status, out, err = run_cli(capsys, "--board", "stm32h7", "--build", folder, "--dry-run",
                               "--internal-only")
    assert status == 0, err
    assert "internal flash: 8 bytes in 1 sections" in out
    assert "the QSPI part is not programmed" in out


def test_flash_without_pyocd_names_the_install(h7_build, capsys, monkeypatch):
    # A None entry in sys.modules is how Python marks a package as unimportable.
    for name in [m for m in sys.modules if m == "pyocd" or m.startswith("pyocd.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyocd", None)
    status, _, err = run_cli(capsys, "--board", "stm32h7", "--build", h7_build,
                             "--internal-only")
    assert status == 2
    assert "pyocd is not installed; install it with pip install pyocd" in err


def test_flash_with_real_pyocd_and_no_probe(h7_build, capsys):
    pytest.importorskip("pyocd", reason="pyocd missing: pip install pyocd")
    status, out, err = run_cli(capsys, "--board", "stm32h7", "--build", h7_build,
                               "--internal-only", "--probe", "NO-SUCH-PROBE")
    assert status == 2
    assert "no debug probe with unique ID 'NO-SUCH-PROBE' is connected" in err
    assert "dry run" not in out


def test_pyocd_is_an_optional_extra():
    with open(REPO_ROOT / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    assert not any(dep.startswith("pyocd") for dep in project["dependencies"])
    assert any(dep.startswith("pyocd") for dep in project["optional-dependencies"]["flash"])
