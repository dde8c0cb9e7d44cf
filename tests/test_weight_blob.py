"""Checks the weight blob: weights.bin and weights.S in place of C initializers.

emit.render puts the weight matrices and embedding tables into weights.bin, each array
16-byte aligned, and weights.S includes them with `.incbin`; weights.c only declares
them. In the linked stm32h7 firmware every array of the blob is a symbol at a 16-byte
aligned address with the array's size. The output section .rr_weights lies in internal
flash and .rr_external (the embedding tables) in the QSPI window; together they contain
exactly the bytes of weights.bin. The host executables align the arrays too.
That these builds compute the reference's bits is checked by test_bitexact_host.py,
test_firmware_host.py, test_firmware_qemu.py and test_precision.py.

Needs gcc and arm-none-eabi-gcc (Debian gcc-arm-none-eabi, libnewlib-arm-none-eabi).

Run: cd codegen && python -m pytest ../tests/test_weight_blob.py
"""

import dataclasses
import re
import shutil
import subprocess
import tomllib

import numpy as np
import pytest

from rrgen import blob, boards, emit
from rrgen.build import BuildError, build, link_firmware
from rrgen.plan import plan_arena
from rrgen.quantize import QGlu, QLinear, pack_int4

INCBIN = re.compile(r'^(\w+):\n    \.incbin "weights\.bin", (\d+), (\d+)$', re.MULTILINE)


def render(qm) -> dict:
    return emit.render(qm, plan_arena(qm), "blob-test", ["rrgen test_weight_blob"])


def incbin_slices(weights_s: str) -> dict[str, tuple[int, int]]:
    """Map each symbol of weights.S to the (offset, size) of its slice of weights.bin."""
    return {name: (int(offset), int(size)) for name, offset, size in INCBIN.findall(weights_s)}


def initializer_literals(weights_c: str) -> int:
    """Count the integer literals in the bodies of the const array initializers of weights.c."""
    bodies = re.findall(r"^const int\d+_t \w+\[[^=]*\] = \{\n(.*?)\n\};$", weights_c,
                        flags=re.MULTILINE | re.DOTALL)
    return sum(len(re.findall(r"-?\d+", body)) for body in bodies)


def symbol_table(nm: str, executable) -> dict[str, tuple[int, int]]:
    """Map each sized symbol of executable to (address, size), read with `nm -S`."""
    tool = shutil.which(nm)
    if tool is None:
        pytest.fail(f"{nm} not found on PATH; install binutils (binutils-arm-none-eabi)")
    output = subprocess.run([tool, "-S", str(executable)], capture_output=True, text=True,
                            check=True).stdout
    symbols = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4:
            symbols[fields[3]] = (int(fields[0], 16), int(fields[1], 16))
    return symbols


# Rendering -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_weights_c_only_declares_blob_arrays(tiny_qmodels, bits):
    files = render(tiny_qmodels[bits])
    weights_c = files["weights.c"]
    slices = incbin_slices(files["weights.S"])
    assert "rr_embed" in slices
    assert "rr_puzzle_emb" in slices
    assert "k_l0_mlp_down_proj_weight" in slices
    for name in slices:
        assert re.search(rf"^extern const int\d+_t {name}\[", weights_c, re.MULTILINE), name
        assert not re.search(rf"\b{name}(\[[^\]]*\])+ = \{{", weights_c), \
            f"{name} is still a C initializer"


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_c_has_only_small_arrays(tiny_qmodels, bits):
    qm = tiny_qmodels[bits]
    params = [p for block in qm.blocks for p in block.values()] + [qm.lm_head, qm.q_head]
    per_channel = sum(p.weight.shape[0] * (3 if p.bias is not None else 2)
                      for p in params if isinstance(p, QLinear))
    tables = 256 * sum(isinstance(p, QGlu) for p in params) + 2 * qm.config.hidden_size
    weight_elements = sum(p.weight.size for p in params if isinstance(p, QLinear))

    literals = initializer_literals(render(qm)["weights.c"])
    assert literals > 0
    assert literals <= per_channel + tables
    assert literals < weight_elements


@pytest.mark.parametrize("bits", [8, 4])
def test_blob_arrays_are_aligned_and_packed(tiny_qmodels, bits):
    qm = tiny_qmodels[bits]
    files = render(qm)
    data = files["weights.bin"]
    slices = sorted(incbin_slices(files["weights.S"]).values())
    assert len(data) % blob.ALIGNMENT == 0
    expected_offset = 0
    for offset, size in slices:
        assert offset % blob.ALIGNMENT == 0, offset
        assert offset == expected_offset
        expected_offset = -(-(offset + size) // blob.ALIGNMENT) * blob.ALIGNMENT
    assert len(data) == expected_offset


@pytest.mark.parametrize("bits", [8, 4])
def test_blob_contains_model_arrays(tiny_qmodels, bits):
    qm = tiny_qmodels[bits]
    files = render(qm)
    data = files["weights.bin"]
    slices = incbin_slices(files["weights.S"])

    def stored(name: str) -> bytes:
        offset, size = slices[name]
        return data[offset:offset + size]

    weight = qm.blocks[1]["mlp_gate_up_proj"].weight
    packed = pack_int4(weight) if bits == 4 else weight.astype(np.int8)
    assert stored("k_l1_mlp_gate_up_proj_weight") == packed.tobytes()
    assert stored("k_lm_head_weight") == qm.lm_head.weight.astype(np.int8).tobytes()
    assert stored("rr_embed") == qm.embed.astype(np.int8).tobytes()
    assert stored("rr_puzzle_emb") == qm.puzzle.astype(np.int8).tobytes()


def test_blob_rejects_value_out_of_range():
    weights = blob.WeightBlob()
    with pytest.raises(ValueError, match=r"array k_big has values from 1 to 200, outside "
                                         r"the range of int8_t \(-128 to 127\)"):
        weights.add("k_big", np.array([1, 200]), "int8_t", "too large")


def test_blob_stores_int16_little_endian():
    weights = blob.WeightBlob()
    weights.add("k_a", np.array([1, 2, 3], np.int8), "int8_t", "a")
    weights.add("k_b", np.array([0x0102, -2], np.int16), "int16_t", "b")
    assert [(a.name, a.offset, a.size_bytes) for a in weights.arrays] == [("k_a", 0, 3),
                                                                         ("k_b", 16, 4)]
    assert weights.data() == bytes([1, 2, 3] + [0] * 13 + [2, 1, 0xFE, 0xFF] + [0] * 12)


# Linked firmware -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stm32h7_build(tiny_checkpoint, tmp_path_factory):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.fail("arm-none-eabi-gcc not found on PATH; install gcc-arm-none-eabi")
    # The tiny model fits in internal flash; tables_external puts its tables in the QSPI
    # window anyway, so that both weight sections are checked.
    load_board = boards.load_board

    def tables_external(name, *args, **kwargs):
        board = load_board(name, *args, **kwargs)
        placement = dataclasses.replace(board.placement, tables_external=True)
        return dataclasses.replace(board, placement=placement)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(boards, "load_board", tables_external)
        return build(tiny_checkpoint, "stm32h7", 4, tmp_path_factory.mktemp("blob") / "stm32h7",
                     calibration_puzzles=4)


def test_stm32h7_blob_symbols_are_aligned(stm32h7_build):
    out = stm32h7_build.out_dir
    weights_s = (out / "src" / "weights.S").read_text()
    slices = incbin_slices(weights_s)
    sections = {name: section for name, _, section in blob.arrays_of(weights_s)}
    external = [name for name in slices if sections[name] == blob.EXTERNAL_SECTION]
    assert set(blob.TABLES) <= set(external)
    symbols = symbol_table("arm-none-eabi-nm", out / "firmware.elf")
    report = stm32h7_build.report["sections"]
    base = {blob.SECTION: report[".rr_weights"]["address"],
            blob.EXTERNAL_SECTION: report[".rr_external"]["address"] - slices[external[0]][0]}
    assert base[blob.SECTION] % 16 == 0
    assert base[blob.EXTERNAL_SECTION] % 16 == 0
    for name, (offset, size) in slices.items():
        address, symbol_size = symbols[name]
        assert address % 16 == 0, f"{name} at 0x{address:08x}"
        assert symbol_size == size, name
        assert address == base[sections[name]] + offset, name


def test_stm32h7_blob_section_is_weights_bin_in_flash(stm32h7_build, tmp_path):
    out = stm32h7_build.out_dir
    report = stm32h7_build.report
    data = (out / "src" / "weights.bin").read_bytes()
    images = b""
    for section_name, region_name in ((".rr_weights", "flash"), (".rr_external", "qspi")):
        section = report["sections"][section_name]
        region = next(r for r in report["regions"] if r["name"] == region_name)
        assert region["origin"] <= section["address"]
        assert section["address"] + section["size"] <= region["origin"] + region["length_bytes"]
        image = tmp_path / f"{section_name[1:]}.bin"
        subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", f"--only-section={section_name}",
                        str(out / "firmware.elf"), str(image)], check=True)
        assert image.stat().st_size == section["size"]
        images += image.read_bytes()
    assert images == data
    assert (out / "firmware-qspi.bin").read_bytes() == image.read_bytes()


def test_stm32h7_report_regions_add_up(stm32h7_build):
    report = stm32h7_build.report
    sections = report["sections"]
    flash = next(r for r in report["regions"] if r["name"] == "flash")
    end = flash["origin"] + flash["length_bytes"]
    in_flash = sum(s["size"] for s in sections.values() if flash["origin"] <= s["address"] < end)
    assert flash["used_bytes"] == in_flash + sections.get(".data", {"size": 0})["size"]
    assert flash["used_bytes"] == (stm32h7_build.out_dir / "firmware.bin").stat().st_size


@pytest.mark.parametrize("bits, fix", [
    (4, "use a smaller model or a board with more memory"),
    (8, "use --bits 4, a smaller model, or a board with more memory")])
def test_flash_overflow_names_missing_bytes(tiny_qmodels, tmp_path, bits, fix):
    with open(boards.BOARDS_DIR / "stm32h7.toml", "rb") as file:
        data = tomllib.load(file)
    data["memory"][0]["length"] = 0x8000    # 32 KB of flash: less than the tiny firmware
    del data["placement"]["external"]       # no QSPI to spill into
    board = boards.parse_board(data, tmp_path / "stm32h7.toml")
    with pytest.raises(BuildError) as caught:
        link_firmware(board, tiny_qmodels[bits], render(tiny_qmodels[bits]), tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("the model does not fit board 'stm32h7': ")
    assert re.search(r"region `flash' overflowed by \d+ bytes; ", message), message
    assert message.endswith(fix)


@pytest.mark.parametrize("executable", ["firmware", "batch"])
def test_host_blob_symbols_are_aligned(tiny_host_build, executable):
    out = tiny_host_build.out_dir
    slices = incbin_slices((out / "src" / "weights.S").read_text())
    symbols = symbol_table("nm", out / executable)
    for name, (_, size) in slices.items():
        address, symbol_size = symbols[name]
        assert address % 16 == 0, f"{name} at 0x{address:x}"
        assert symbol_size == size, name
