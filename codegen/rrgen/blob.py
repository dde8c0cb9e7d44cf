"""weights.bin: the large constant arrays of a model as one binary file, for weights.S.

Pipeline stage: emit. emit.render puts the weight matrix of every linear layer, the token
and puzzle embedding tables and the RoPE tables into a WeightBlob. Each array starts at a
16-byte aligned offset of weights.bin and is stored little-endian. The generated weights.S
(templates/weights.S.j2) includes each array's slice of the file with
`.incbin "weights.bin", offset, size` into section .rodata.rr_weights, after a
`.balign 16`, under a global symbol with the array's name, type and size. The linker
script collects that section into the output section .rr_weights in the code (flash)
region. The host build assembles the same weights.S with the system gcc. toolchain.py
passes the source folder to the assembler (-Wa,-I) so that `.incbin` finds the file.

Why a blob and not C initializers: the compiler builds a tree node for every element of
an initializer, while the assembler copies the bytes of `.incbin`. For the full-size
Sudoku-MLP model (5.03 M parameters, INT4) the initializers made an 11.7 MB weights.c,
which gcc 12.2 compiled in 2.9 s with 157 MiB. weights.c and weights.S now take under
0.1 s and 21 MiB (measured on a busy 2-core x86-64 machine, docs/build-benchmark.md).
INT8 weights have twice as many initializer elements as INT4.

Why `.incbin` and not `objcopy -I binary`: objcopy names its symbols after the file path
(_binary_weights_bin_start), makes one symbol per file and needs the target's output format
and architecture. weights.S gives every array its own symbol, type and size, the
assembler rejects a slice that lies past the end of the file, and gcc builds it like the
C sources on every target.

External flash: on a board with an external region (boards.py), build.link_firmware moves
arrays from .rodata.rr_weights to section .rodata.rr_external with place_arrays: when the
model does not fit in the code region (or the board sets tables_external), the embedding
tables (TABLES), and the weight arrays that do not fit there. The
linker script puts .rodata.rr_external into output section .rr_external in that region.
Only the `.section` line of each array changes, so the code and weights.c stay the same.

The C keeps what a reader can check: multipliers, shifts, biases, the SiLU tables, the
initial carry and the parameter structs (rr_linear_t and the others) stay in weights.c
and point at the symbols of weights.S through extern declarations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ALIGNMENT = 16                 # byte alignment of every array, and of the blob's length
FILE_NAME = "weights.bin"
SECTION = ".rodata.rr_weights"
EXTERNAL_SECTION = ".rodata.rr_external"
# Tables that model.c reads row by row through rr_flash_read: token and puzzle embeddings.
TABLES = ("rr_embed", "rr_puzzle_emb")
_ARRAY = re.compile(r'    \.section (\S+), "a", %progbits\n    \.balign 16\n    \.global (\w+)\n'
                    r'    \.type \w+, %object\n    \.size \w+, (\d+)\n')
DTYPES = {"int8_t": np.dtype("<i1"), "int16_t": np.dtype("<i2"), "int32_t": np.dtype("<i4")}


@dataclass(frozen=True)
class BlobArray:
    """One array of weights.bin and the C declaration that weights.c gives it."""

    name: str          # symbol, defined by weights.S
    ctype: str         # element type: int8_t, int16_t or int32_t
    dims: str          # C array dimensions, e.g. "[1024]" or "[RR_VOCAB_SIZE][RR_HIDDEN]"
    offset: int        # byte offset in weights.bin, a multiple of ALIGNMENT
    size_bytes: int
    comment: str


class WeightBlob:
    """Layout and contents of weights.bin: arrays, each at the next 16-byte aligned offset."""

    def __init__(self):
        self.arrays: list[BlobArray] = []
        self._data = bytearray()

    def add(self, name: str, values: np.ndarray, ctype: str, comment: str,
            dims: str | None = None) -> str:
        """Append values as ctype elements, little-endian; returns the symbol name.

        Raises ValueError when a value does not fit ctype.
        """
        values = np.asarray(values)
        dtype = DTYPES[ctype]
        stored = values.astype(dtype)
        if not np.array_equal(stored, values):
            limits = np.iinfo(dtype)
            raise ValueError(f"array {name} has values from {values.min()} to {values.max()}, "
                             f"outside the range of {ctype} ({limits.min} to {limits.max})")
        self._data += bytes(-len(self._data) % ALIGNMENT)
        offset = len(self._data)
        self._data += stored.tobytes()
        self.arrays.append(BlobArray(name, ctype, dims or f"[{values.size}]", offset,
                                     stored.nbytes, comment))
        return name

    def data(self) -> bytes:
        """Return the contents of weights.bin, zero-padded to a multiple of ALIGNMENT."""
        return bytes(self._data) + bytes(-len(self._data) % ALIGNMENT)


def arrays_of(weights_s: str) -> list[tuple[str, int, str]]:
    """List (symbol, size in bytes, section) of each array of a generated weights.S, in order."""
    return [(m.group(2), int(m.group(3)), m.group(1)) for m in _ARRAY.finditer(weights_s)]


def place_arrays(weights_s: str, external: set[str] | frozenset[str]) -> str:
    """Return weights_s with the arrays named in external in EXTERNAL_SECTION, others in SECTION."""
    def section(match: re.Match) -> str:
        name = EXTERNAL_SECTION if match.group(2) in external else SECTION
        return match.group(0).replace(match.group(1), name, 1)
    return _ARRAY.sub(section, weights_s)


def aligned(n_bytes: int) -> int:
    """Round n_bytes up to ALIGNMENT: the flash an array takes in its section."""
    return -(-n_bytes // ALIGNMENT) * ALIGNMENT
