"""Compile and link firmware for a board: arm-none-eabi-gcc for microcontrollers, the
system gcc for the host pseudo-board.

Part of the build stage (model -> quantize -> trace -> plan -> emit -> build -> run).
build.py calls compile_and_link with the firmware sources (firmware_sources) plus the
generated model; the tests call it with a test fixture in place of the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from . import stack
from .boards import REPO_ROOT, Board, render_linker_script

log = logging.getLogger(__name__)

FIRMWARE_DIR = REPO_ROOT / "firmware"
FIRMWARE_INCLUDE_DIR = FIRMWARE_DIR / "include"

COMMON_CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2")
# -fstack-usage and -fcallgraph-info=su write the frame sizes and calls that stack.py sums.
ARM_CFLAGS = ("-ffunction-sections", "-fdata-sections", "-fstack-usage",
              "-fcallgraph-info=su")
ARM_LDFLAGS = ("--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles",
               "-Wl,--gc-sections")
# Sections that `size -A` lists but that occupy no target memory.
NON_ALLOCATED_PREFIXES = (".debug", ".comment", ".ARM.attributes", ".stab", ".line")
ARM_PACKAGES = "gcc-arm-none-eabi, binutils-arm-none-eabi and libnewlib-arm-none-eabi"
# Host builds add these when the environment sets RRGEN_SANITIZE=1: any AddressSanitizer
# or UndefinedBehaviorSanitizer report then ends the program with a non-zero status.
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")
SANITIZE_VARIABLE = "RRGEN_SANITIZE"


def host_sanitize_flags() -> list[str]:
    """Return SANITIZE_FLAGS when RRGEN_SANITIZE is 1, else none; reject other values."""
    value = os.environ.get(SANITIZE_VARIABLE, "0")
    if value not in ("0", "1", ""):
        raise ToolchainError(f"{SANITIZE_VARIABLE}={value!r} is invalid; set it to 1 to build "
                             "the host programs with sanitizers, or 0")
    return list(SANITIZE_FLAGS) if value == "1" else []


class ToolchainError(RuntimeError):
    """A missing tool, or a compiler or linker run that failed (its output included)."""


def find_tool(name: str, package: str) -> str:
    """Return the path of executable `name`; raise ToolchainError naming the Debian package."""
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} not found on PATH; install the Debian package(s) "
                             f"{package} (apt-get install {package.split(',')[0]})")
    return path


def _run(command: list[str], step: str) -> str:
    log.debug("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolchainError(f"{step} failed with exit status {result.returncode}:\n"
                             f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout


def board_defines(board: Board) -> list[str]:
    """-D flags that carry the board file's values into the board C code (see rr_board.h)."""
    defines = [f"-DRR_CYCLES_HZ={board.cycle_counter_hz}u"]
    if board.core_clock_hz is not None:
        defines.append(f"-DRR_CORE_CLOCK_HZ={board.core_clock_hz}u")
    if board.irq_count is not None:
        defines.append(f"-DRR_IRQ_COUNT={board.irq_count}")
    if board.uart is not None:
        defines += [f"-DRR_UART_BASE=0x{board.uart.base:08X}u",
                    f"-DRR_UART_BAUD={board.uart.baud}u",
                    f"-DRR_UART_CLOCK_HZ={board.uart.clock_hz or board.core_clock_hz}u"]
    return defines


def firmware_sources(board: Board) -> list[Path]:
    """List the hand-written firmware sources for board; the model (rr_model.h) is not included."""
    protocol = [FIRMWARE_DIR / "src" / name for name in ("protocol.c", "cobs.c", "crc32.c")]
    if board.is_host:
        return protocol + [FIRMWARE_DIR / "host" / "host_main.c"]
    # Shared drivers, named by the board file's UART driver and cycle counter; the rest
    # (clocks, pins, other peripherals) in firmware/boards/<board>/.
    drivers = [FIRMWARE_DIR / "drivers" / f"{name}.c"
               for name in (board.uart.driver, board.cycle_counter)]
    drivers = [path for path in drivers if path.is_file()]
    board_dir = FIRMWARE_DIR / "boards" / board.name
    own = sorted(board_dir.glob("*.c"))
    if not drivers and not own:
        raise ToolchainError(f"board {board.name} has no firmware: no firmware/drivers/ file for "
                             f"uart driver {board.uart.driver!r} or cycle counter "
                             f"{board.cycle_counter!r}, and no C files in {board_dir}")
    return protocol + [FIRMWARE_DIR / "src" / name for name in ("main.c", "startup.c")] + \
        drivers + own


def parse_size_output(text: str) -> dict[str, dict[str, int]]:
    """Parse `arm-none-eabi-size -A -d` output into {section: {"size": n, "address": a}}.

    Only sections that occupy target memory are kept (no debug sections, no .comment).
    """
    sections = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or not fields[1].isdigit():
            continue
        if fields[0].startswith(".") and not fields[0].startswith(NON_ALLOCATED_PREFIXES):
            sections[fields[0]] = {"size": int(fields[1]), "address": int(fields[2])}
    return sections


def region_usage(board: Board, sections: dict[str, dict[str, int]]) -> dict[str, int]:
    """Bytes used in each memory region; .data counts in its RAM region and in flash."""
    usage = {region.name: 0 for region in board.memory}
    for name, section in sections.items():
        for region in board.memory:
            if section["size"] and region.origin <= section["address"] < region.end:
                usage[region.name] += section["size"]
    if ".data" in sections and board.placement is not None:
        usage[board.placement.code] += sections[".data"]["size"]
    return usage


def compile_and_link(board: Board, sources: list[Path], include_dirs: list[Path],
                     out_dir: Path, name: str, defines: list[str] | None = None) -> dict:
    """Build sources into out_dir/<name> for board and return what was made.

    Arm boards: each source is compiled with the board's cflags, the link uses the linker
    script rendered from the board file (written to out_dir/<name>.ld), and objcopy and
    size produce <name>.bin and the section sizes. The host board builds one executable
    with the system gcc. Sources may be C or assembler (.S); include_dirs are passed to
    the preprocessor and the assembler. `defines` are extra -D flags, e.g.
    ["-DRR_MAX_SEQ_LEN=81"].

    A board with an external region ([placement] external) gets <name>.bin without
    section .rr_external and <name>-<region>.bin with only that section.

    Returns {"elf": Path, "bin": Path | None, "external_bin": Path | None, "map": Path | None,
             "linker_script": Path | None, "sections": {name: {"size", "address"}},
             "regions": {region name: bytes used}, "stack": stack.StackBound | None};
    the host entries are None or empty.
    Raises ToolchainError when a tool is missing or a step fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The assembler searches the same folders, for `.incbin` in weights.S.
    includes = [f"-I{path}" for path in include_dirs]
    includes += [f"-Wa,-I{path}" for path in include_dirs]
    extra = list(board_defines(board)) + list(defines or [])
    if board.is_host:
        return _build_host(board, sources, includes + extra, out_dir, name)

    gcc = find_tool("arm-none-eabi-gcc", ARM_PACKAGES)
    objcopy = find_tool("arm-none-eabi-objcopy", ARM_PACKAGES)
    size = find_tool("arm-none-eabi-size", ARM_PACKAGES)
    cflags = list(board.cflags) + list(COMMON_CFLAGS) + list(ARM_CFLAGS) + includes + extra

    # Compile one object per source; the index keeps same-named files apart.
    object_dir = out_dir / f"{name}.obj"
    object_dir.mkdir(exist_ok=True)
    objects = []
    for index, source in enumerate(sources):
        obj = object_dir / f"{index:02d}_{Path(source).stem}.o"
        _run([gcc, *cflags, "-c", str(source), "-o", str(obj)], f"compiling {source}")
        objects.append(obj)

    # Link with the board's script, then make the raw image and the size report.
    script = out_dir / f"{name}.ld"
    script.write_text(render_linker_script(board))
    elf = out_dir / f"{name}.elf"
    map_file = out_dir / f"{name}.map"
    _run([gcc, *board.cflags, *ARM_LDFLAGS, f"-T{script}", f"-Wl,-Map={map_file}",
          *map(str, objects), "-o", str(elf)], f"linking {elf.name} for board {board.name}")
    binary = out_dir / f"{name}.bin"
    external_binary = None
    if board.placement.external:
        # One image per region: a single image would span the gap between the regions.
        _run([objcopy, "-O", "binary", "-R", ".rr_external", str(elf), str(binary)],
             f"objcopy of {elf.name}")
        external_binary = out_dir / f"{name}-{board.placement.external}.bin"
        _run([objcopy, "-O", "binary", "-j", ".rr_external", str(elf), str(external_binary)],
             f"objcopy of {elf.name}, section .rr_external")
    else:
        _run([objcopy, "-O", "binary", str(elf), str(binary)], f"objcopy of {elf.name}")
    sections = parse_size_output(_run([size, "-A", "-d", str(elf)], f"size of {elf.name}"))
    regions = region_usage(board, sections)
    for region in board.memory:
        log.info("board %s, region %s: %d of %d bytes used", board.name, region.name,
                 regions[region.name], region.length)
    readelf = find_tool("arm-none-eabi-readelf", ARM_PACKAGES)
    relocations = _run([readelf, "-rW", *map(str, objects)], "readelf of the objects")
    bound = stack.stack_bound(stack.read_callgraph(sorted(object_dir.glob("*.ci"))),
                              stack.address_taken(relocations))
    log.info("board %s: worst-case stack %d bytes", board.name, bound.bytes)
    return {"elf": elf, "bin": binary, "external_bin": external_binary, "map": map_file,
            "linker_script": script,
            "sections": sections, "regions": regions, "stack": bound}


def _build_host(board: Board, sources: list[Path], flags: list[str], out_dir: Path,
                name: str) -> dict:
    gcc = find_tool("gcc", "gcc")
    executable = out_dir / name
    _run([gcc, *board.cflags, *COMMON_CFLAGS, *flags, *host_sanitize_flags(),
          *map(str, sources), "-o", str(executable)], f"building {name} for the host")
    return {"elf": executable, "bin": None, "external_bin": None, "map": None,
            "linker_script": None,
            "sections": {}, "regions": {}, "stack": None}
