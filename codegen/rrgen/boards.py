"""Board descriptions (boards/<name>.toml) and the GNU ld script rendered from them.

Part of the build stage (model -> quantize -> trace -> plan -> emit -> build -> run).
A board file names the CPU and its compiler flags, the memory regions, the region that
stores each of code, .data/.bss, the stack and the model arena (and the vector table, when
the core boots from another region than the code's), the UART and the cycle counter. The
pseudo-board `host` has none of the memory fields: it builds with the system compiler.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import __version__

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BOARDS_DIR = REPO_ROOT / "boards"
TEMPLATES_DIR = REPO_ROOT / "templates"
LINKER_TEMPLATE = "link.ld.j2"

ROLES = ("flash", "ram")
TOOLCHAINS = ("arm-none-eabi", "gcc")
TOP_LEVEL_KEYS = {"name", "description", "cpu", "cflags", "toolchain", "core_clock_hz",
                  "cycle_counter", "cycle_counter_hz", "irq_count", "qemu_machine",
                  "transport", "uart", "placement", "memory"}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class MemoryRegion:
    """One address range of the memory map. Role "flash" stores code, role "ram" stores data."""

    name: str      # a C identifier, used as the GNU ld MEMORY region name
    origin: int    # first address
    length: int    # size in bytes
    role: str

    @property
    def end(self) -> int:
        """First address past the region."""
        return self.origin + self.length


@dataclass(frozen=True)
class Uart:
    """The UART that carries the protocol."""

    driver: str    # firmware/boards/<board>/uart.c implements this peripheral
    base: int      # peripheral base address
    baud: int


@dataclass(frozen=True)
class Placement:
    """Memory region of each part of the image."""

    code: str          # vector table, .text, .rr_weights, .rodata, .data load image
    data: str          # .data and .bss
    stack: str         # the stack, at the top of this region
    arena: str         # .arena, the model's activation buffers
    stack_bytes: int
    vectors: str       # the vector table; the code region unless the core boots elsewhere


@dataclass(frozen=True)
class Board:
    """A parsed and validated board file."""

    name: str
    description: str
    cpu: str
    cflags: tuple[str, ...]
    toolchain: str                    # "arm-none-eabi" or "gcc" (the host)
    transport: str                    # "uart" or "stdio"
    cycle_counter: str
    cycle_counter_hz: int
    core_clock_hz: int | None
    irq_count: int | None
    qemu_machine: str | None
    uart: Uart | None
    placement: Placement | None
    memory: tuple[MemoryRegion, ...]
    path: Path

    @property
    def is_host(self) -> bool:
        return self.toolchain == "gcc"

    def region(self, name: str) -> MemoryRegion:
        for region in self.memory:
            if region.name == name:
                return region
        known = ", ".join(region.name for region in self.memory)
        raise ValueError(f"board {self.name}: no memory region {name!r}; regions are {known}")

    @property
    def flash_bytes(self) -> int:
        """Capacity of the region that stores code and constants."""
        return self.region(self._placement().code).length

    @property
    def ram_regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(region for region in self.memory if region.role == "ram")

    def _placement(self) -> Placement:
        if self.placement is None:
            raise ValueError(f"board {self.name} has no memory map; it builds with the "
                             f"system compiler and linker")
        return self.placement


# ---------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------

def known_boards(boards_dir: Path = BOARDS_DIR) -> list[str]:
    """Names of the board files in boards_dir, sorted."""
    return sorted(path.stem for path in Path(boards_dir).glob("*.toml"))


def load_board(name: str, boards_dir: Path = BOARDS_DIR) -> Board:
    """Load boards_dir/<name>.toml; raise ValueError naming the board if unknown or invalid."""
    path = Path(boards_dir) / f"{name}.toml"
    if not IDENTIFIER.match(name.replace("-", "_")) or not path.is_file():
        known = ", ".join(known_boards(boards_dir)) or "none"
        raise ValueError(f"unknown board {name!r}; known boards: {known} "
                         f"(board files live in {boards_dir})")
    with path.open("rb") as file:
        try:
            data = tomllib.load(file)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"board file {path} is not valid TOML: {error}") from error
    board = parse_board(data, path)
    if board.name != name:
        raise ValueError(f"board file {path} declares name {board.name!r}; rename the file "
                         f"or the name so that they match")
    return board


def _require(data: dict, key: str, kind: type, where: str):
    if key not in data:
        raise ValueError(f"{where}: missing required key {key!r}")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: key {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _optional(data: dict, key: str, kind: type, where: str):
    return _require(data, key, kind, where) if key in data else None


def _parse_region(data: dict, where: str) -> MemoryRegion:
    region = MemoryRegion(name=_require(data, "name", str, where),
                          origin=_require(data, "origin", int, where),
                          length=_require(data, "length", int, where),
                          role=_require(data, "role", str, where))
    where = f"{where} {region.name!r}"
    if not IDENTIFIER.match(region.name):
        raise ValueError(f"{where}: name must be a C identifier (letters, digits, _)")
    if region.role not in ROLES:
        raise ValueError(f"{where}: role {region.role!r} must be one of {ROLES}")
    if region.origin % 4 or region.length <= 0 or region.length % 4:
        raise ValueError(f"{where}: origin 0x{region.origin:x} and length {region.length} "
                         f"must be positive multiples of 4")
    if region.end > 2**32:
        raise ValueError(f"{where}: ends at 0x{region.end:x}, past the 32-bit address space")
    return region


def _check_no_overlap(regions: list[MemoryRegion], where: str) -> None:
    ordered = sorted(regions, key=lambda region: region.origin)
    for first, second in zip(ordered, ordered[1:]):
        if second.origin < first.end:
            raise ValueError(f"{where}: memory regions {first.name!r} "
                             f"[0x{first.origin:08x}, 0x{first.end:08x}) and {second.name!r} "
                             f"[0x{second.origin:08x}, 0x{second.end:08x}) overlap")


def _parse_placement(data: dict, regions: list[MemoryRegion], where: str) -> Placement:
    where = f"{where} [placement]"
    placement = Placement(code=_require(data, "code", str, where),
                          data=_require(data, "data", str, where),
                          stack=_require(data, "stack", str, where),
                          arena=_require(data, "arena", str, where),
                          stack_bytes=_require(data, "stack_bytes", int, where),
                          vectors=(_optional(data, "vectors", str, where)
                                   or _require(data, "code", str, where)))
    known_keys = {placement_field.name for placement_field in dataclasses.fields(Placement)}
    unknown = sorted(set(data) - known_keys)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known_keys)}")
    roles = {region.name: region.role for region in regions}
    expected_roles = {"code": "flash", "vectors": "flash", "data": "ram", "stack": "ram",
                      "arena": "ram"}
    for field, role in expected_roles.items():
        region_name = getattr(placement, field)
        if region_name not in roles:
            raise ValueError(f"{where}: {field} = {region_name!r} is not a memory region; "
                             f"regions are {sorted(roles)}")
        if roles[region_name] != role:
            raise ValueError(f"{where}: {field} = {region_name!r} has role "
                             f"{roles[region_name]!r}, expected {role!r}")
    stack_region = next(region for region in regions if region.name == placement.stack)
    if placement.stack_bytes <= 0 or placement.stack_bytes % 8:
        raise ValueError(f"{where}: stack_bytes {placement.stack_bytes} must be a positive "
                         f"multiple of 8 (the AAPCS stack alignment)")
    if placement.stack_bytes >= stack_region.length:
        raise ValueError(f"{where}: stack_bytes {placement.stack_bytes} does not fit in "
                         f"region {stack_region.name!r} of {stack_region.length} bytes")
    return placement


def parse_board(data: dict, path: Path) -> Board:
    """Validate the parsed TOML of a board file; raise ValueError naming file and key."""
    where = f"board file {path}"
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are "
                         f"{sorted(TOP_LEVEL_KEYS)}")
    toolchain = _require(data, "toolchain", str, where)
    if toolchain not in TOOLCHAINS:
        raise ValueError(f"{where}: toolchain {toolchain!r} must be one of {TOOLCHAINS}")
    cflags = _require(data, "cflags", list, where)
    if not all(isinstance(flag, str) for flag in cflags):
        raise ValueError(f"{where}: cflags must be a list of strings, got {cflags!r}")
    cycle_counter_hz = _require(data, "cycle_counter_hz", int, where)
    if cycle_counter_hz <= 0:
        raise ValueError(f"{where}: cycle_counter_hz must be positive, got {cycle_counter_hz}")

    uart = placement = None
    regions: list[MemoryRegion] = []
    if toolchain == "arm-none-eabi":
        # A microcontroller board needs a memory map, a placement and a UART.
        memory = _require(data, "memory", list, where)
        regions = [_parse_region(entry, f"{where} [[memory]]") for entry in memory]
        names = [region.name for region in regions]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: memory region names repeat: {names}")
        _check_no_overlap(regions, where)
        placement = _parse_placement(_require(data, "placement", dict, where), regions, where)
        uart_data = _require(data, "uart", dict, where)
        uart = Uart(driver=_require(uart_data, "driver", str, f"{where} [uart]"),
                    base=_require(uart_data, "base", int, f"{where} [uart]"),
                    baud=_require(uart_data, "baud", int, f"{where} [uart]"))
    else:
        present = sorted({"memory", "placement", "uart"} & set(data))
        if present:
            raise ValueError(f"{where}: a host board takes no {present}; it has no memory map")

    return Board(name=_require(data, "name", str, where),
                 description=_require(data, "description", str, where),
                 cpu=_require(data, "cpu", str, where),
                 cflags=tuple(cflags),
                 toolchain=toolchain,
                 transport=data.get("transport", "uart" if uart else "stdio"),
                 cycle_counter=_require(data, "cycle_counter", str, where),
                 cycle_counter_hz=cycle_counter_hz,
                 core_clock_hz=_optional(data, "core_clock_hz", int, where),
                 irq_count=_optional(data, "irq_count", int, where),
                 qemu_machine=_optional(data, "qemu_machine", str, where),
                 uart=uart,
                 placement=placement,
                 memory=tuple(regions),
                 path=Path(path))


# ---------------------------------------------------------------------------------------
# Linker script
# ---------------------------------------------------------------------------------------

def _template_environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              autoescape=False)


def render_linker_script(board: Board, templates_dir: Path = TEMPLATES_DIR) -> str:
    """Render templates/link.ld.j2 for board into a GNU ld script.

    The code region gets the vector table first, then .text, the weights (.rr_weights,
    16-byte aligned, from the input sections .rodata.rr_weights*), .rodata and the .data
    load image. The data region gets .data and
    .bss, the arena region the NOLOAD .arena (16-byte aligned), and the stack fills the
    top of the stack region. ASSERTs fail the link with a message naming what does not fit.
    """
    placement = board._placement()
    # (end symbol, section) of every section that shares the stack's region.
    sections = [("__data_end__", ".data", placement.data),
                ("__bss_end__", ".bss", placement.data),
                ("__arena_end__", ".arena", placement.arena)]
    below_stack = [{"symbol": symbol, "section": section}
                   for symbol, section, region in sections if region == placement.stack]
    context = {
        "version": __version__,
        "board": board,
        "board_file": board.path.name,
        "regions": [{"name": region.name,
                     "attributes": "rx" if region.role == "flash" else "rwx",
                     "origin": f"0x{region.origin:08X}",
                     "length": f"0x{region.length:08X}",
                     "size_text": _size_text(region.length)} for region in board.memory],
        "placement": placement,
        "below_stack": below_stack,
    }
    text = _template_environment(templates_dir).get_template(LINKER_TEMPLATE).render(context)
    log.debug("rendered linker script for board %s (%d bytes)", board.name, len(text))
    return text


def _size_text(n_bytes: int) -> str:
    if n_bytes % (1024 * 1024) == 0:
        return f"{n_bytes // (1024 * 1024)} MB"
    if n_bytes % 1024 == 0:
        return f"{n_bytes // 1024} KB"
    return f"{n_bytes} bytes"
