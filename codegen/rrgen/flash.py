"""Program a build into a real board through pyocd: `python -m rrgen flash`.

Pipeline stage: after build, before run --port. This module reads the ELF of a build
folder without pyocd. Every allocated section with contents goes to its load address,
which must lie in the board's flash region or in the external QSPI window
(0x90000000-0x9FFFFFFF). `--dry-run` stops after printing that plan. Otherwise pyocd
(an optional dependency: pip install pyocd) connects to the ST-LINK, erases the sectors
it needs, programs the internal flash and resets the core.

pyocd has no flash algorithm for a QSPI chip wired to the NUCLEO by hand, so a build with
a QSPI part is rejected unless --internal-only states that the QSPI content is programmed
another way (docs/hardware-stm32h7.md, "Programming the QSPI flash").
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from .boards import Board, load_board

log = logging.getLogger(__name__)

# Board name -> pyocd target type. pyocd 0.46 has stm32h743xx built in. The CMSIS-pack
# target stm32h743zitx needs `pyocd pack install stm32h743zitx` first (--target).
PYOCD_TARGETS = {"stm32h7": "stm32h743xx"}
QSPI_WINDOW = (0x90000000, 0xA0000000)
ERASED_BYTE = 0xFF
INSTALL_HINT = "pip install pyocd (or pip install -e '.[flash]')"

_SHF_ALLOC = 0x2
_SHT_NOBITS = 8
_SHT_NULL = 0
_PT_LOAD = 1
_EM_ARM = 40


class FlashError(ValueError):
    """A flash request that cannot be carried out. The message names the cause and the fix."""


@dataclass(frozen=True)
class Section:
    """One part of the image to program: an ELF section at its load address."""

    name: str
    address: int   # load address (LMA)
    data: bytes
    memory: str    # "flash" (the board's code region) or "qspi"

    @property
    def end(self) -> int:
        return self.address + len(self.data)


@dataclass(frozen=True)
class FlashPlan:
    board: Board
    elf: Path
    target: str
    sections: tuple[Section, ...]

    def part(self, memory: str) -> tuple[Section, ...]:
        return tuple(s for s in self.sections if s.memory == memory)

    def chunks(self, memory: str = "flash") -> list[tuple[int, bytes]]:
        """Merge the sections of one memory into contiguous (address, bytes) runs.

        Sections less than 1 KB apart share a run, and the erased value 0xFF fills the gap.
        """
        runs: list[list] = []
        for section in sorted(self.part(memory), key=lambda s: s.address):
            if runs and section.address - (runs[-1][0] + len(runs[-1][1])) < 1024:
                gap = section.address - (runs[-1][0] + len(runs[-1][1]))
                runs[-1][1] += bytes([ERASED_BYTE]) * gap + section.data
            else:
                runs.append([section.address, bytearray(section.data)])
        return [(address, bytes(data)) for address, data in runs]


def read_elf_sections(path: Path) -> list[tuple[str, int, bytes]]:
    """Return (name, load address, contents) of each allocated ELF32 section with contents.

    The load address comes from the PT_LOAD segment that contains the section's bytes, so
    .data appears at its flash image, not at its RAM address. Raises FlashError for a
    file that is not a little-endian 32-bit Arm ELF.
    """
    blob = Path(path).read_bytes()
    if blob[:4] != b"\x7fELF" or len(blob) < 52 or blob[4] != 1 or blob[5] != 1:
        raise FlashError(f"{path} is not a little-endian 32-bit ELF file; rebuild with "
                         "`python -m rrgen build --board stm32h7`")
    (_, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     shstrndx) = struct.unpack_from("<HHIIIIIHHHHHH", blob, 16)
    if machine != _EM_ARM:
        raise FlashError(f"{path} is not an Arm ELF (e_machine {machine}); it was not "
                         "built for a Cortex-M board")
    segments = []
    for index in range(phnum):
        p_type, p_offset, _, p_paddr, p_filesz, *_ = struct.unpack_from(
            "<IIIIIIII", blob, phoff + index * phentsize)
        if p_type == _PT_LOAD and p_filesz:
            segments.append((p_offset, p_paddr, p_filesz))
    headers = [struct.unpack_from("<IIIIIIIIII", blob, shoff + index * shentsize)
               for index in range(shnum)]
    names_offset = headers[shstrndx][4]

    def name_of(offset: int) -> str:
        end = blob.index(b"\0", names_offset + offset)
        return blob[names_offset + offset:end].decode("ascii", "replace")

    sections = []
    for sh_name, sh_type, sh_flags, _, sh_offset, sh_size, *_ in headers:
        if sh_type in (_SHT_NULL, _SHT_NOBITS) or not sh_flags & _SHF_ALLOC or not sh_size:
            continue
        name = name_of(sh_name)
        for p_offset, p_paddr, p_filesz in segments:
            if p_offset <= sh_offset < p_offset + p_filesz:
                sections.append((name, p_paddr + sh_offset - p_offset,
                                 blob[sh_offset:sh_offset + sh_size]))
                break
        else:
            raise FlashError(f"{path}: section {name} has contents but no load segment; "
                             "the ELF is malformed, rebuild it")
    return sections


def plan_flash(build_dir: Path, board_name: str, target: str | None = None) -> FlashPlan:
    """Check the build folder and sort the ELF's sections into internal flash and QSPI."""
    board = load_board(board_name)
    if board_name not in PYOCD_TARGETS:
        raise FlashError(f"board {board_name} cannot be flashed: rrgen flash supports "
                         f"{', '.join(sorted(PYOCD_TARGETS))} (mps2-an500 runs in QEMU: "
                         "use rrgen run)")
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise FlashError(f"build folder {str(build_dir)!r} does not exist; run `python -m "
                         f"rrgen build --board {board_name} --out {build_dir}` first")
    record = build_dir / "build.json"
    try:
        built_for = json.loads(record.read_text()).get("board")
    except FileNotFoundError:
        raise FlashError(f"{str(build_dir)!r} is not a build folder (no build.json); run "
                         f"`python -m rrgen build --board {board_name} --out {build_dir}` "
                         "first") from None
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise FlashError(f"build record {str(record)!r} is unreadable ({err}); rebuild "
                         "the folder") from None
    if built_for != board_name:
        raise FlashError(f"{str(build_dir)!r} was built for board {built_for!r}, not "
                         f"{board_name}; pass --board {built_for} or build again with "
                         f"--board {board_name}")
    elf = build_dir / "firmware.elf"
    if not elf.is_file():
        raise FlashError(f"{str(build_dir)!r} has no firmware.elf; build again with "
                         f"--board {board_name}")

    code = board.region(board._placement().code)
    sections = []
    for name, address, data in read_elf_sections(elf):
        if code.origin <= address and address + len(data) <= code.end:
            memory = "flash"
        elif QSPI_WINDOW[0] <= address and address + len(data) <= QSPI_WINDOW[1]:
            memory = "qspi"
        else:
            raise FlashError(f"section {name} of {elf} loads at 0x{address:08X} "
                             f"({len(data)} bytes), outside the {code.name} region "
                             f"[0x{code.origin:08X}, 0x{code.end:08X}) and the QSPI window; "
                             "fix the linker script and rebuild")
        sections.append(Section(name, address, data, memory))
    if not any(s.memory == "flash" for s in sections):
        raise FlashError(f"{elf} has nothing to program into internal flash; rebuild it")
    return FlashPlan(board, elf, target or PYOCD_TARGETS[board_name], tuple(sections))


def describe(plan: FlashPlan) -> list[str]:
    """Lines that list what would be programmed, per memory and per section."""
    lines = [f"{plan.elf} for board {plan.board.name}, pyocd target {plan.target}"]
    for memory, label in (("flash", "internal flash"), ("qspi", "external QSPI flash")):
        part = plan.part(memory)
        if not part:
            continue
        total = sum(len(s.data) for s in part)
        lines.append(f"  {label}: {total:,} bytes in {len(part)} sections")
        for section in part:
            lines.append(f"    {section.name:14s} 0x{section.address:08X}-"
                         f"0x{section.end - 1:08X} {len(section.data):9,d} bytes")
    return lines


def qspi_rejection_message(plan: FlashPlan) -> str:
    part = plan.part("qspi")
    total = sum(len(s.data) for s in part)
    names = ", ".join(s.name for s in part)
    return (f"{plan.elf} has {total:,} bytes for the external QSPI flash at "
            f"0x{min(s.address for s in part):08X} ({names}); pyocd has no flash algorithm "
            "for that chip, so rrgen flash programs internal flash only: program the QSPI "
            "part as docs/hardware-stm32h7.md describes, then pass --internal-only")


def program(plan: FlashPlan, probe: str | None = None) -> int:
    """Program the internal flash part of plan through pyocd and reset; return the bytes."""
    try:
        from pyocd.core import exceptions
        from pyocd.core.helpers import ConnectHelper
        from pyocd.flash.loader import MemoryLoader
    except ImportError:
        raise FlashError(f"pyocd is not installed; install it with {INSTALL_HINT}") from None

    probes = ConnectHelper.get_all_connected_probes(blocking=False, unique_id=probe,
                                                    print_wait_message=False)
    if not probes:
        which = f"with unique ID {probe!r} " if probe else ""
        raise FlashError(f"no debug probe {which}is connected; plug in the NUCLEO's ST-LINK "
                         "USB port (CN1) and check `pyocd list`")
    if len(probes) > 1:
        ids = ", ".join(p.unique_id for p in probes)
        raise FlashError(f"{len(probes)} debug probes are connected ({ids}); choose one "
                         "with --probe UID")
    chunks = plan.chunks("flash")
    try:
        session = ConnectHelper.session_with_chosen_probe(
            blocking=False, unique_id=probes[0].unique_id, target_override=plan.target)
        if session is None:
            raise FlashError(f"debug probe {probes[0].unique_id} disappeared; plug it in "
                             "again and retry")
        with session:
            loader = MemoryLoader(session, chip_erase="sector")
            for address, data in chunks:
                loader.add_data(address, list(data))
            loader.commit()
            session.target.reset()
    except exceptions.TargetSupportError as err:
        raise FlashError(f"pyocd does not know target {plan.target!r} ({err}); pass --target "
                         f"{PYOCD_TARGETS[plan.board.name]} or install its pack with "
                         f"`pyocd pack install {plan.target}`") from None
    except exceptions.Error as err:
        raise FlashError(f"pyocd failed: {type(err).__name__}: {err}") from None
    return sum(len(data) for _, data in chunks)
