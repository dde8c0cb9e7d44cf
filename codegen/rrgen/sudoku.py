"""Sudoku data: a solver, a generator of unique-solution puzzles, augmentation, file I/O.

Token ids follow the public Sudoku datasets: 0 pad, 1 blank, 2..10 the digits 1..9.
Grids are numpy int arrays of 81 digits in row-major order, 0 for a blank cell.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

BLANK_TOKEN = 1
DIGIT_OFFSET = 1  # token = digit + 1
VOCAB_SIZE = 11
CELLS = 81

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_ALL = 0x3FE  # bits 1..9


def count_solutions(grid, limit: int = 2, out: list | None = None) -> int:
    """Count solutions of `grid` (81 digits, 0 blank) up to `limit`; store the first in `out`."""
    cells = list(int(v) for v in grid)
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if rows[_ROW[i]] & bit or cols[_COL[i]] & bit or boxes[_BOX[i]] & bit:
                return 0
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    empty = [i for i, v in enumerate(cells) if not v]
    found = 0

    def search() -> bool:
        nonlocal found
        # Most-constrained blank first keeps the search small.
        best, best_mask, best_count = -1, 0, 10
        for i in empty:
            if cells[i]:
                continue
            mask = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            count = bin(mask).count("1")
            if count < best_count:
                best, best_mask, best_count = i, mask, count
                if count <= 1:
                    break
        if best < 0:
            found += 1
            if out is not None and found == 1:
                out[:] = list(cells)
            return found >= limit
        if best_count == 0:
            return False
        r, c, b = _ROW[best], _COL[best], _BOX[best]
        mask = best_mask
        while mask:
            bit = mask & -mask
            mask ^= bit
            cells[best] = bit.bit_length() - 1
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search()
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            cells[best] = 0
            if stop:
                return True
        return False

    search()
    return found


def solve(grid) -> np.ndarray | None:
    """Return the solution of `grid` if it has exactly one, else None."""
    out: list = []
    if count_solutions(grid, limit=2, out=out) != 1:
        return None
    return np.array(out, dtype=np.int64)


def is_valid_solution(grid) -> bool:
    """True when all 81 cells hold 1..9 and every row, column and box is a permutation."""
    g = np.asarray(grid).reshape(9, 9)
    if g.min() < 1 or g.max() > 9:
        return False
    want = set(range(1, 10))
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all(set(line) == want for m in (g, g.T, boxes) for line in m.tolist())


def random_solution(rng: random.Random) -> np.ndarray:
    """Return a random complete grid from a shuffled search (not uniform over all grids)."""
    cells = [0] * 81
    order = list(range(1, 10))

    def fill(i: int) -> bool:
        if i == 81:
            return True
        used = {cells[j] for j in range(81)
                if cells[j] and (_ROW[j] == _ROW[i] or _COL[j] == _COL[i] or _BOX[j] == _BOX[i])}
        digits = [d for d in order if d not in used]
        rng.shuffle(digits)
        for d in digits:
            cells[i] = d
            if fill(i + 1):
                return True
        cells[i] = 0
        return False

    fill(0)
    return np.array(cells, dtype=np.int64)


# Greedy random removal found 56-blank puzzles in about 20 ms each on the development
# machine. Far fewer clues need a careful choice of cells, so the range stops at 58.
MAX_BLANKS = 58
MAX_ATTEMPTS = 200


def make_puzzle(rng: random.Random, blanks: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a puzzle with exactly `blanks` blank cells and one solution, and that solution."""
    if not 0 <= blanks <= MAX_BLANKS:
        raise ValueError(f"blanks={blanks} is out of range; use 0..{MAX_BLANKS}")
    for _ in range(MAX_ATTEMPTS):
        solution = random_solution(rng)
        puzzle = solution.copy()
        order = list(range(81))
        rng.shuffle(order)
        removed = 0
        for i in order:
            if removed == blanks:
                break
            keep = puzzle[i]
            puzzle[i] = 0
            if count_solutions(puzzle) == 1:
                removed += 1
            else:
                puzzle[i] = keep
        if removed == blanks:
            return puzzle, solution
    raise ValueError(f"no puzzle with {blanks} blanks found in {MAX_ATTEMPTS} random grids; "
                     "use fewer blanks")


def generate(count: int, seed: int, min_blanks: int = 30, max_blanks: int = 45,
             progress=None) -> tuple[np.ndarray, np.ndarray]:
    """`count` seeded puzzles with a uniform number of blanks in [min_blanks, max_blanks]."""
    if min_blanks > max_blanks:
        raise ValueError(f"min_blanks={min_blanks} is above max_blanks={max_blanks}")
    rng = random.Random(seed)
    puzzles = np.zeros((count, 81), dtype=np.int64)
    solutions = np.zeros((count, 81), dtype=np.int64)
    for k in range(count):
        puzzles[k], solutions[k] = make_puzzle(rng, rng.randint(min_blanks, max_blanks))
        if progress is not None:
            progress(1)
    return puzzles, solutions


# Seeds of the splits. Test puzzles come from their own seed, so they are not in training.
TRAIN_SEED = 1
TEST_SEED = 2
CALIBRATION_SEED = 3


def augment(puzzles: np.ndarray, solutions: np.ndarray, rng: np.random.Generator):
    """Apply one random validity-preserving transform per puzzle, as in the public builder.

    Digits are relabelled, bands and the rows inside each band permuted, stacks and the
    columns inside each stack permuted, and the grid transposed with probability 1/2.
    """
    n = puzzles.shape[0]
    out_p = np.empty_like(puzzles)
    out_s = np.empty_like(solutions)
    for k in range(n):
        relabel = np.concatenate([[0], rng.permutation(9) + 1])
        rows = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
        cols = np.concatenate([s * 3 + rng.permutation(3) for s in rng.permutation(3)])
        p = puzzles[k].reshape(9, 9)[rows][:, cols]
        s = solutions[k].reshape(9, 9)[rows][:, cols]
        if rng.random() < 0.5:
            p, s = p.T, s.T
        out_p[k] = relabel[p.reshape(-1)]
        out_s[k] = relabel[s.reshape(-1)]
    return out_p, out_s


def to_tokens(grids: np.ndarray) -> np.ndarray:
    """Digits (0 blank) to token ids: blank -> 1, digit d -> d + 1."""
    return np.where(grids == 0, BLANK_TOKEN, grids + DIGIT_OFFSET)


def from_tokens(tokens: np.ndarray) -> np.ndarray:
    """Token ids to digits; pad and blank become 0."""
    return np.where(tokens >= 2, tokens - DIGIT_OFFSET, 0)


def parse_line(line: str, where: str = "") -> np.ndarray:
    """Parse one puzzle of 81 characters: digits 1-9, and '.' or '0' for blanks."""
    text = line.strip()
    if len(text) != 81:
        raise ValueError(f"{where}expected 81 characters (digits 1-9, '.' or '0' for blanks), "
                         f"got {len(text)}: {text[:90]!r}")
    bad = sorted({ch for ch in text if ch not in "0123456789."})
    if bad:
        raise ValueError(f"{where}invalid characters {bad}; use digits 1-9 and '.' or '0' for blanks")
    return np.array([0 if ch in ".0" else int(ch) for ch in text], dtype=np.int64)


def format_grid(grid) -> str:
    """Format one puzzle as 81 characters with '.' for blanks."""
    return "".join("." if v == 0 else str(int(v)) for v in np.asarray(grid).reshape(-1))


def read_puzzle_file(path: str | Path) -> np.ndarray:
    """Read a puzzle file: one puzzle of 81 characters per line; blank lines and '#' comments skipped.

    An optional second field after a comma, space or tab (a solution) is ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read puzzle file {str(path)!r}: {err.strerror}; check the "
                         "path, or write one with `python -m rrgen puzzles --out FILE`") from None
    except UnicodeDecodeError:
        raise ValueError(f"puzzle file {str(path)!r} is not UTF-8 text; write one puzzle "
                         "of 81 characters per line") from None
    grids = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        first = stripped.replace(",", " ").replace("\t", " ").split()[0]
        grids.append(parse_line(first, where=f"{path}:{number}: "))
    if not grids:
        raise ValueError(f"puzzle file {str(path)!r} holds no puzzles; write one puzzle "
                         "of 81 characters per line")
    return np.stack(grids)
