"""Board descriptions (boards/<name>.toml) and the GNU ld script rendered from them.

Part of the build stage (model -> quantize -> trace -> plan -> emit -> build -> run).
A board file names the CPU and its compiler flags, the memory regions, the region that
stores each of code, .data/.bss, the stack and the model arena (and the vector table, when
the core boots from another region than the code's), the UART, the cycle counter and the
linear kernel variant (`kernels`: portable, dsp or mve). The
pseudo-board `host` has none of the memory fields: it builds with the system compiler.

Flash placement: the code region contains the vector table, the code, the small constants,
the .data image and as many weight arrays as fit (section .rr_weights). A board may name
an external memory-mapped region in [placement] `external` (stm32h7: the QSPI window at
0x90000000). The embedding tables and the weight arrays that do not fit in the code
region go there (section .rr_external); build.link_firmware decides the split. A region
may declare `max_length`, the most that `build --external-flash-bytes` may set its length
to (the H743's QSPI window maps up to 256 MB).
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
                  "transport", "uart", "placement", "memory", "kernels"}
# Linear kernel variants of templates/kernels.c.j2: portable C, Cortex-M7 DSP (SMLAD),
# Cortex-M55 MVE (Helium). The host always builds the portable ones.
KERNEL_VARIANTS = ("portable", "dsp", "mve")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class MemoryRegion:
    """One address range of the memory map. Role "flash" stores code, role "ram" stores data."""

    name: str      # a C identifier, used as the GNU ld MEMORY region name
    origin: int    # first address
    length: int    # size in bytes
    role: str
    max_length: int | None = None   # the most --external-flash-bytes may set length to

    @property
    def end(self) -> int:
        """First address past the region."""
        return self.origin + self.length


@dataclass(frozen=True)
class Uart:
    """The UART that carries the protocol."""

    driver: str    # firmware/drivers/<driver>.c, or the board's own uart.c, implements it
    base: int      # peripheral base address
    baud: int
    clock_hz: int | None = None   # the UART's input clock, when it is not the core clock


@dataclass(frozen=True)
class Placement:
    """Memory region of each part of the image."""

    code: str          # vector table, .text, .rr_weights, .rodata, .data load image
    data: str          # .data and .bss
    stack: str         # the stack, at the top of this region
    arena: str         # .arena, the model's activation buffers
    stack_bytes: int
    vectors: str       # the vector table; the code region unless the core boots elsewhere
    external: str | None = None   # embedding tables and weights that do not fit in code
    tables_external: bool = False  # tables in `external` even when everything fits in code
    # RAM regions, fastest first, that the planner may split the arena over when it does
    # not fit `arena`; each gets its own section .arena.<region>. Empty (the default):
    # the arena never splits.
    arena_regions: tuple[str, ...] = ()
    # Bytes kept free for .data and .bss in the `data` region when the arena shares it.
    data_reserve_bytes: int = 4096


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
    kernels: str = "portable"         # one of KERNEL_VARIANTS

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
        """Capacity of the regions that store code and constants (code plus external)."""
        return sum(region.length for region in self.flash_regions)

    @property
    def flash_regions(self) -> tuple[MemoryRegion, ...]:
        """The code region, then the external region when the board has one."""
        placement = self._placement()
        names = [placement.code] + ([placement.external] if placement.external else [])
        return tuple(self.region(name) for name in names)

    @property
    def external_region(self) -> MemoryRegion | None:
        """The region of [placement] external, or None."""
        placement = self._placement()
        return self.region(placement.external) if placement.external else None

    def arena_space(self, name: str):
        """Return the bytes region `name` offers the arena: its length less the stack, the
        .data/.bss reserve where it contains them, and 16 bytes at address 0."""
        from .plan import ALIGNMENT_BYTES, RegionSpace

        placement = self._placement()
        available = self.region(name).length
        if name == placement.stack:
            available -= placement.stack_bytes
        if name == placement.data:
            available -= placement.data_reserve_bytes
        # A region at address 0 (ITCM) keeps its first bytes free: no buffer at NULL.
        start_bytes = ALIGNMENT_BYTES if self.region(name).origin == 0 else 0
        return RegionSpace(name, available - start_bytes, start_bytes)

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


REGION_KEYS = {"name", "origin", "length", "role", "max_length"}


def _parse_region(data: dict, where: str) -> MemoryRegion:
    unknown = sorted(set(data) - REGION_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(REGION_KEYS)}")
    region = MemoryRegion(name=_require(data, "name", str, where),
                          origin=_require(data, "origin", int, where),
                          length=_require(data, "length", int, where),
                          role=_require(data, "role", str, where),
                          max_length=_optional(data, "max_length", int, where))
    where = f"{where} {region.name!r}"
    if region.max_length is not None and (region.max_length < region.length
                                          or region.max_length % 4
                                          or region.origin + region.max_length > 2**32):
        raise ValueError(f"{where}: max_length {region.max_length} must be a multiple of 4, "
                         f"at least length {region.length}, and end within 32-bit addresses")
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
                                   or _require(data, "code", str, where)),
                          external=_optional(data, "external", str, where),
                          tables_external=bool(_optional(data, "tables_external", bool, where)),
                          arena_regions=tuple(_optional(data, "arena_regions", list, where) or ()),
                          data_reserve_bytes=_optional(data, "data_reserve_bytes", int, where)
                          if "data_reserve_bytes" in data else 4096)
    known_keys = {placement_field.name for placement_field in dataclasses.fields(Placement)}
    unknown = sorted(set(data) - known_keys)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known_keys)}")
    roles = {region.name: region.role for region in regions}
    if placement.external is not None and placement.external not in roles:
        raise ValueError(f"{where}: external = {placement.external!r} is not a memory region; "
                         f"regions are {sorted(roles)}")
    if placement.external in (placement.code, placement.data, placement.stack, placement.arena):
        raise ValueError(f"{where}: external = {placement.external!r} must be a region of its "
                         "own, not the code, data, stack or arena region")
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
    for region_name in placement.arena_regions:
        if roles.get(region_name) != "ram":
            raise ValueError(f"{where}: arena_regions entry {region_name!r} is not a RAM region; "
                             f"RAM regions are {sorted(n for n, r in roles.items() if r == 'ram')}")
    if len(set(placement.arena_regions)) != len(placement.arena_regions):
        raise ValueError(f"{where}: arena_regions {list(placement.arena_regions)} repeat a region")
    if placement.data_reserve_bytes < 0:
        raise ValueError(f"{where}: data_reserve_bytes {placement.data_reserve_bytes} must be 0 or more")
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

    kernels = data.get("kernels", "portable")
    if kernels not in KERNEL_VARIANTS:
        raise ValueError(f"{where}: kernels = {kernels!r} is not a kernel variant; use one of "
                         f"{', '.join(KERNEL_VARIANTS)} (portable works on every CPU)")
    if toolchain == "gcc" and kernels != "portable":
        raise ValueError(f"{where}: kernels = {kernels!r} needs an Arm CPU; the host builds "
                         f"the portable kernels, so remove the key or set it to \"portable\"")

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
                    baud=_require(uart_data, "baud", int, f"{where} [uart]"),
                    clock_hz=_optional(uart_data, "clock_hz", int, f"{where} [uart]"))
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
                 path=Path(path),
                 kernels=kernels)


def with_external_bytes(board: Board, n_bytes: int) -> Board:
    """Return board with its external region resized to n_bytes (--external-flash-bytes).

    Raises ValueError naming the value and the fix when the board has no external region,
    or n_bytes is not a positive multiple of 4 up to the region's max_length.
    """
    region = None if board.is_host else board.external_region
    if region is None:
        with_one = [name for name in known_boards()
                    if name != board.name and _has_external(name)]
        raise ValueError(f"board {board.name!r} has no external flash region, so "
                         f"--external-flash-bytes {n_bytes} does not apply; use a board with "
                         f"one ({', '.join(with_one) or 'none known'}) or drop the option")
    limit = region.max_length or region.length
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 4 or n_bytes % 4:
        raise ValueError(f"--external-flash-bytes {n_bytes} is invalid; use a positive "
                         "multiple of 4 bytes, e.g. 33554432 for 32 MB")
    if n_bytes > limit:
        raise ValueError(f"--external-flash-bytes {n_bytes} exceeds the {limit} bytes that "
                         f"region {region.name!r} of board {board.name!r} can map at "
                         f"0x{region.origin:08x}; use at most {limit}")
    resized = dataclasses.replace(region, length=n_bytes)
    memory = tuple(resized if r.name == region.name else r for r in board.memory)
    _check_no_overlap(list(memory), f"board {board.name!r} with --external-flash-bytes {n_bytes}")
    return dataclasses.replace(board, memory=memory)


def _has_external(name: str) -> bool:
    try:
        board = load_board(name)
    except ValueError:
        return False
    return not board.is_host and board.placement.external is not None


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
    load image. The external region, where the board has one, gets .rr_external (from
    .rodata.rr_external*). The data region gets .data and
    .bss, the arena region the NOLOAD .arena (16-byte aligned), and the stack fills the
    top of the stack region. ASSERTs fail the link with a message naming what does not fit.
    load image. The data region gets .data and
    .bss, the arena region the NOLOAD .arena (16-byte aligned), each region of
    placement.arena_regions a NOLOAD .arena.<region> (the arena arrays of a split plan),
    and the stack fills the top of the stack region. ASSERTs fail the link with a message naming what does not fit.
    """
    placement = board._placement()
    # (end symbol, section) of every section that shares the stack's region.
    sections = [("__data_end__", ".data", placement.data),
                ("__bss_end__", ".bss", placement.data),
                ("__arena_end__", ".arena", placement.arena)]
    sections += [(f"__arena_{name}_end__", f".arena.{name}", name)
                 for name in placement.arena_regions]
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
        "arena_regions": placement.arena_regions,
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
