"""Checks flash placement: internal flash, the external (QSPI) region and streamed embeddings.

On stm32h7 the embedding tables and the weight arrays that do not fit in internal flash
go to section .rr_external in the QSPI window at 0x90000000 (build.place_arrays). These
tests link the tiny model with a shrunken internal flash and check where the symbols
land. A too-small external region must fail with the bytes needed and the fix, and a
larger puzzle table must change flash but not RAM. On the host, model.c must check the
puzzle id and tokens before its first rr_flash_read.

Needs gcc and arm-none-eabi-gcc (Debian gcc-arm-none-eabi, libnewlib-arm-none-eabi).

Run: PYTHONPATH=$PWD/codegen python -m pytest -q tests/test_flash_placement.py
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from conftest import TINY, make_tiny_model
from rrgen import blob, boards, emit, quantize
from rrgen.build import BuildError, build, link_firmware
from rrgen.plan import plan_arena

QSPI = 0x90000000
FLASH = 0x08000000
RAM_SECTIONS = (".data", ".bss", ".arena", ".stack")


def render(qm):
    return emit.render(qm, plan_arena(qm), "flash-test", ["rrgen test_flash_placement"])


def stm32h7(tmp_path, flash_bytes=None, qspi_bytes=None):
    """The stm32h7 board, with internal flash and QSPI lengths changed where given."""
    with open(boards.BOARDS_DIR / "stm32h7.toml", "rb") as file:
        data = tomllib.load(file)
    for region in data["memory"]:
        if region["name"] == "flash" and flash_bytes:
            region["length"] = flash_bytes
        if region["name"] == "qspi" and qspi_bytes:
            region["length"] = qspi_bytes
    return boards.parse_board(data, tmp_path / "stm32h7.toml")


def symbols(elf):
    """{symbol: address} of the global symbols of an Arm ELF file."""
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines())
            if len(f) == 3}


@pytest.fixture(scope="module")
def arm_gcc():
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not found on PATH; install gcc-arm-none-eabi")


@pytest.fixture(scope="module")
def qm8(tiny_qmodels):
    return tiny_qmodels[8]


def test_weights_that_do_not_fit_spill_to_qspi(arm_gcc, qm8, tmp_path):
    board = stm32h7(tmp_path, flash_bytes=0x8000)     # 32 KB: less than the tiny firmware
    linked = link_firmware(board, qm8, render(qm8), tmp_path / "out")
    where = symbols(linked["elf"])
    internal, external = linked["placement"]["internal"], linked["placement"]["external"]
    assert internal and external[-2:] == list(blob.TABLES)
    for name in ("Reset_Handler", "rr_model_begin", "rr_flash_read", "rr_layers"):
        assert FLASH <= where[name] < FLASH + 0x8000, name
    for name in internal:
        assert FLASH <= where[name] < FLASH + 0x8000, name
    for name in external:
        assert QSPI <= where[name] < QSPI + 0x200000, name
        assert where[name] % 16 == 0, name
    sections = linked["sections"]
    assert sections[".rr_external"]["address"] == QSPI
    assert linked["regions"]["qspi"] == sections[".rr_external"]["size"]
    # firmware-qspi.bin contains the external arrays' slices of weights.bin, in order.
    src = tmp_path / "out" / "src"
    data = (src / "weights.bin").read_bytes()
    slices = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r'^(\w+):\n    \.incbin "weights\.bin", (\d+), (\d+)$', (src / "weights.S").read_text(),
        re.MULTILINE)}
    image = b"".join(data[o:o + size] + bytes(blob.aligned(size) - size)
                     for o, size in (slices[name] for name in external))
    assert linked["external_bin"].read_bytes() == image


def test_qspi_overflow_names_bytes_needed_and_fix(arm_gcc, qm8, tmp_path):
    board = stm32h7(tmp_path, flash_bytes=0x8000, qspi_bytes=0x1000)
    with pytest.raises(BuildError) as caught:
        link_firmware(board, qm8, render(qm8), tmp_path / "small")
    message = str(caught.value)
    match = re.fullmatch(
        r"the model does not fit board 'stm32h7': it needs (\d+) bytes of flash, (\d+) in "
        r"region 'flash' \(32768 bytes\) and (\d+) in region 'qspi', which has 4096 bytes; "
        r"pass --external-flash-bytes (\d+) or more \(region 'qspi' maps up to 268435456 "
        r"bytes\), use --bits 4, or use a smaller model", message)
    assert match, message
    total, internal, external, suggested = map(int, match.groups())
    assert total == internal + external
    assert suggested == external
    assert external > 4096

    # The suggested size is exactly enough, and the figures were the real ones.
    linked = link_firmware(boards.with_external_bytes(board, suggested), qm8, render(qm8),
                           tmp_path / "fits")
    assert linked["regions"]["qspi"] == external
    assert linked["regions"]["flash"] == internal


@pytest.mark.parametrize("value, message", [
    (6, "--external-flash-bytes 6 is invalid; use a positive multiple of 4 bytes"),
    (0x10000004, "--external-flash-bytes 268435460 exceeds the 268435456 bytes that region "
                 "'qspi' of board 'stm32h7' can map at 0x90000000; use at most 268435456")])
def test_external_flash_bytes_checked(value, message):
    with pytest.raises(ValueError) as caught:
        boards.with_external_bytes(boards.load_board("stm32h7"), value)
    assert str(caught.value).startswith(message)


def test_external_flash_bytes_needs_an_external_region():
    with pytest.raises(ValueError, match=r"board 'host' has no external flash region, so "
                       r"--external-flash-bytes 1024 does not apply; use a board with one "
                       r"\(.*stm32h7.*\) or drop the option"):
        boards.with_external_bytes(boards.load_board("host"), 1024)


def test_external_flash_bytes_sets_the_qspi_length():
    board = boards.with_external_bytes(boards.load_board("stm32h7"), 32 * 2**20)
    assert board.region("qspi").length == 32 * 2**20
    assert board.flash_bytes == 34 * 2**20
    script = boards.render_linker_script(board)
    assert "qspi (rx) : ORIGIN = 0x90000000, LENGTH = 0x02000000 /* 32 MB */" in script


def test_puzzle_table_changes_flash_not_ram(arm_gcc, tiny_calibration_tokens, tmp_path):
    """RAM is byte for byte the same with 1 and 4096 puzzle rows; QSPI grows by the rows."""
    board = stm32h7(tmp_path, flash_bytes=0x8000)     # 32 KB: the tables spill to QSPI
    rows = {}
    for count in (1, 4096):
        config = dataclasses.replace(TINY, num_puzzle_identifiers=count)
        qm = quantize.quantize_model(make_tiny_model(config=config), 4,
                                     calibration_tokens=tiny_calibration_tokens)
        rows[count] = link_firmware(board, qm, render(qm), tmp_path / f"rows{count}")
    one, many = rows[1], rows[4096]
    for name in RAM_SECTIONS:
        assert one["sections"][name] == many["sections"][name], name
    table = (4096 - 1) * TINY.hidden_size
    assert many["regions"]["qspi"] - one["regions"]["qspi"] == table
    assert abs(many["regions"]["flash"] - one["regions"]["flash"]) <= 16
    where = symbols(many["elf"])
    assert QSPI <= where["rr_puzzle_emb"] < QSPI + 0x200000


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rr_flash.h"
#include "rr_model.h"
#include "rr_model_config.h"

extern const int8_t rr_puzzle_emb[RR_NUM_PUZZLE_IDENTIFIERS][RR_HIDDEN];
static unsigned reads, puzzle_reads;
static long last_puzzle_row = -1;

/* Replaces the weak default: count the reads and note the puzzle row read. */
void rr_flash_read(void *dst, const void *src, uint32_t n)
{
    const int8_t *p = src, *table = &rr_puzzle_emb[0][0];
    reads++;
    if (p >= table && p < table + sizeof(rr_puzzle_emb)) {
        puzzle_reads++;
        last_puzzle_row = (long)((p - table) / RR_HIDDEN);
    }
    memcpy(dst, src, n);
}

int main(int argc, char **argv)
{
    uint8_t tokens[RR_SEQ_LEN];
    memset(tokens, 1, sizeof(tokens));
    if (argc > 2) {
        tokens[5] = (uint8_t)atoi(argv[2]);
    }
    rr_status_t status = rr_model_begin(tokens, RR_SEQ_LEN, (uint32_t)strtoul(argv[1], NULL, 0),
                                        NULL);
    printf("%d %u %u %ld\n", (int)status, reads, puzzle_reads, last_puzzle_row);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tiny_calibration_tokens, tmp_path_factory):
    """The tiny model with 5 puzzle rows on the host, linked with a counting rr_flash_read."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found on PATH; install the Debian package gcc")
    config = dataclasses.replace(TINY, num_puzzle_identifiers=5)
    qm = quantize.quantize_model(make_tiny_model(config=config), 8,
                                 calibration_tokens=tiny_calibration_tokens)
    folder = tmp_path_factory.mktemp("harness")
    emit.write(render(qm), folder)
    (folder / "harness.c").write_text(HARNESS)
    sources = [folder / n for n in ("model.c", "weights.c", "weights.S", "kernels.c",
                                    "harness.c")] + [emit.FLASH_READ_SOURCE]
    subprocess.run([gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{emit.FIRMWARE_DIR / 'include'}", f"-I{folder}", f"-Wa,-I{folder}",
                    *map(str, sources), "-o", str(folder / "harness")], check=True)
    return folder / "harness"


def begin(harness, *args):
    out = subprocess.run([str(harness), *map(str, args)], capture_output=True, text=True,
                         check=True, timeout=10).stdout.split()
    return tuple(int(v) for v in out)


def test_last_puzzle_row_is_streamed(harness):
    # RR_OK; one puzzle row and one row per token, through rr_flash_read.
    assert begin(harness, 4) == (0, 1 + TINY.seq_len, 1, 4)


@pytest.mark.parametrize("puzzle_id", [5, 6, 0xFFFFFFFF])
def test_bad_puzzle_id_reads_nothing(harness, puzzle_id):
    assert begin(harness, puzzle_id) == (-3, 0, 0, -1)     # RR_ERR_PUZZLE_ID, no read


def test_bad_token_reads_nothing(harness):
    assert begin(harness, 0, TINY.vocab_size) == (-2, 0, 0, -1)   # RR_ERR_TOKEN, no read


def test_report_lists_flash_per_region(arm_gcc, tiny_checkpoint, tmp_path):
    result = build(tiny_checkpoint, "stm32h7", 4, tmp_path / "h7", calibration_puzzles=4)
    flash, ram = result.report["flash"], result.report["ram"]
    sections = result.report["sections"]
    assert [r["name"] for r in flash["regions"]] == ["flash", "qspi"]
    # The tiny model fits in internal flash, so a board without a QSPI chip runs it.
    assert flash["regions"][1]["used_bytes"] == 0
    assert ".rr_external" not in sections or sections[".rr_external"]["size"] == 0
    assert flash["used_bytes"] == sum(r["used_bytes"] for r in flash["regions"])
    assert flash["length_bytes"] == 4 * 2**20
    assert flash["external_arrays"] == []
    assert ram["bytes"] == sum(sections[name]["size"] for name in RAM_SECTIONS)
    markdown = (result.out_dir / "report.md").read_text()
    assert "| qspi | 0x90000000 | " in markdown
    assert f"RAM: .data 0 + .bss {sections['.bss']['size']}" in markdown


# The other invalid values are checked at the library level above.
@pytest.mark.parametrize("board, value, fragment", [
    ("host", "1024", "board 'host' has no external flash region"),
    ("stm32h7", "lots", "--external-flash-bytes lots is invalid"),
])
def test_bad_external_flash_bytes_one_line(tiny_checkpoint, tmp_path, board, value, fragment):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "rrgen", "build", "--board", board,
                             "--external-flash-bytes", value, "--model", str(tiny_checkpoint),
                             "--out", str(out)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(emit.REPO_ROOT / "codegen")))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr
    assert not out.exists()


def test_psram_table_in_qemu(tmp_path):
    """mps2-an500 keeps the tables in PSRAM: the last row is bit-exact, one past it rejected."""
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("qemu-system-arm or arm-none-eabi-gcc missing: install qemu-system-arm "
                    "and gcc-arm-none-eabi")
    from rrgen import checkpoint, protocol, sudoku
    from rrgen.client import Client, DeviceError
    from rrgen.qemu import run_qemu
    from rrgen.run import run_puzzles

    rows = 64
    config = dataclasses.replace(TINY, num_puzzle_identifiers=rows)
    path = checkpoint.save(make_tiny_model(config=config), tmp_path / "rows.safetensors")
    result = build(path, "mps2-an500", 8, tmp_path / "mps2", calibration_puzzles=2)
    where = symbols(result.out_dir / "firmware.elf")
    assert 0x60000000 <= where["rr_puzzle_emb"] < 0x61000000

    grids, _ = sudoku.generate(1, seed=sudoku.TEST_SEED)
    tokens = sudoku.to_tokens(grids)
    lines = []
    with run_qemu(result.out_dir / "firmware.elf", "mps2-an500") as session:
        client = Client(session.port, timeout=120.0)
        client.wait_ready(timeout=30.0)
        with pytest.raises(DeviceError) as caught:
            client.solve(tokens[0].astype(np.uint8), puzzle_id=rows)
        summary = run_puzzles(client, tokens, result.qmodel, printer=lines.append,
                              puzzle_ids=np.array([rows - 1]))
    assert caught.value.error.code == protocol.ERR_INVALID_PUZZLE_ID
    assert summary.mismatches == [], "\n".join(lines)
    assert summary.steps_checked == TINY.halt_max_steps
