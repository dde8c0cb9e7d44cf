"""Checks codegen/rrgen/sudoku.py: solver, puzzle generator, augmentation, tokens, file I/O.

Generated puzzles must have exactly the requested number of blanks and exactly one
solution (count_solutions with limit 2), consistent with the returned solution. Seeds make
generation reproducible, and augment() keeps puzzles valid and uniquely solvable. Token
ids are 0 pad, 1 blank, 2..10 the digits. read_puzzle_file accepts the documented formats
and rejects bad lines with a ValueError naming the file and the line.

Run: cd codegen && python -m pytest ../tests/test_sudoku.py
"""

import random
import subprocess
import sys

import numpy as np
import pytest

from rrgen import sudoku
from rrgen.emit import REPO_ROOT

# An example puzzle with a unique solution, and that solution.
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def grid(text: str) -> np.ndarray:
    return np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int64)


def assert_consistent(puzzle: np.ndarray, solution: np.ndarray, where: str) -> None:
    """Givens of the puzzle equal the solution there; the solution is valid and unique."""
    given = puzzle != 0
    assert np.array_equal(puzzle[given], solution[given]), f"{where}: givens differ from solution"
    assert sudoku.is_valid_solution(solution), f"{where}: invalid solution"
    assert sudoku.count_solutions(puzzle, limit=2) == 1, f"{where}: not uniquely solvable"
    assert np.array_equal(sudoku.solve(puzzle), solution), f"{where}: solver finds another grid"


# Solver --------------------------------------------------------------------------------------

def test_solver_solves_known_puzzle():
    assert sudoku.count_solutions(grid(PUZZLE), limit=2) == 1
    assert sudoku.format_grid(sudoku.solve(grid(PUZZLE))) == SOLUTION


def test_count_solutions_stops_at_limit():
    empty = np.zeros(81, dtype=np.int64)
    assert sudoku.count_solutions(empty, limit=2) == 2
    assert sudoku.count_solutions(empty, limit=5) == 5
    assert sudoku.solve(empty) is None


def test_contradictory_givens_have_no_solution():
    puzzle = grid(PUZZLE)
    puzzle[2] = 5                     # a second 5 in the first row
    assert sudoku.count_solutions(puzzle) == 0
    assert sudoku.solve(puzzle) is None


def test_is_valid_solution_rejects_broken_grids():
    solution = grid(SOLUTION)
    assert sudoku.is_valid_solution(solution)
    swapped = solution.copy()
    swapped[[0, 1]] = swapped[[1, 0]]   # rows stay permutations, columns do not
    assert not sudoku.is_valid_solution(swapped)
    with_blank = solution.copy()
    with_blank[40] = 0
    assert not sudoku.is_valid_solution(with_blank)


# Generator -----------------------------------------------------------------------------------

@pytest.mark.parametrize("blanks", [0, 1, 30, 45, 55])
def test_make_puzzle_has_exact_blanks_and_one_solution(blanks):
    puzzle, solution = sudoku.make_puzzle(random.Random(blanks), blanks)
    assert int((puzzle == 0).sum()) == blanks
    assert_consistent(puzzle, solution, f"blanks={blanks}")


@pytest.mark.parametrize("blanks", [-1, sudoku.MAX_BLANKS + 1])
def test_make_puzzle_rejects_blanks_out_of_range(blanks):
    with pytest.raises(ValueError, match=f"blanks={blanks} is out of range"):
        sudoku.make_puzzle(random.Random(0), blanks)


def test_make_puzzle_with_max_blanks_returns_promptly():
    code = ("import random; from rrgen import sudoku; "
            "sudoku.make_puzzle(random.Random(0), sudoku.MAX_BLANKS)")
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT / "codegen",
                                timeout=3, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("make_puzzle(rng, 64) ran longer than 3 s")
    assert result.returncode == 0, result.stderr


def test_generate_puzzles_are_unique_and_consistent():
    puzzles, solutions = sudoku.generate(12, seed=5, min_blanks=30, max_blanks=45)
    assert puzzles.shape == solutions.shape == (12, 81)
    blanks = (puzzles == 0).sum(axis=1)
    assert blanks.min() >= 30
    assert blanks.max() <= 45
    for k in range(len(puzzles)):
        assert_consistent(puzzles[k], solutions[k], f"puzzle {k}")


def test_generate_fixed_blank_count():
    puzzles, _ = sudoku.generate(4, seed=6, min_blanks=40, max_blanks=40)
    assert ((puzzles == 0).sum(axis=1) == 40).all()


def test_generate_same_seed_same_puzzles():
    first = sudoku.generate(5, seed=7)
    second = sudoku.generate(5, seed=7)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_generate_different_seeds_differ():
    first, _ = sudoku.generate(5, seed=7)
    second, _ = sudoku.generate(5, seed=8)
    assert not np.array_equal(first, second)


def test_generate_rejects_inverted_blank_range():
    with pytest.raises(ValueError, match="min_blanks=50 is above max_blanks=40"):
        sudoku.generate(1, seed=0, min_blanks=50, max_blanks=40)


def test_generate_calls_progress_per_puzzle():
    calls = []
    sudoku.generate(3, seed=9, progress=calls.append)
    assert calls == [1, 1, 1]


def test_split_seeds_differ():
    assert len({sudoku.TRAIN_SEED, sudoku.TEST_SEED, sudoku.CALIBRATION_SEED}) == 3


# Augmentation --------------------------------------------------------------------------------

def test_augment_keeps_puzzles_valid_and_unique():
    puzzles, solutions = sudoku.generate(6, seed=10)
    rng = np.random.default_rng(0)
    out_puzzles, out_solutions = sudoku.augment(puzzles, solutions, rng)
    assert out_puzzles.shape == puzzles.shape
    for k in range(len(puzzles)):
        assert_consistent(out_puzzles[k], out_solutions[k], f"augmented puzzle {k}")
        # Same number of blanks, and digits only relabelled: the multiset of counts stays.
        assert (out_puzzles[k] == 0).sum() == (puzzles[k] == 0).sum()
        counts = sorted(np.bincount(puzzles[k], minlength=10)[1:])
        assert sorted(np.bincount(out_puzzles[k], minlength=10)[1:]) == counts
    assert not np.array_equal(out_puzzles, puzzles)


def test_augment_is_seeded():
    puzzles, solutions = sudoku.generate(3, seed=10)
    first = sudoku.augment(puzzles, solutions, np.random.default_rng(1))
    second = sudoku.augment(puzzles, solutions, np.random.default_rng(1))
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


# Tokens --------------------------------------------------------------------------------------

def test_token_encoding():
    digits = np.array([0, 1, 2, 5, 9])
    assert sudoku.to_tokens(digits).tolist() == [1, 2, 3, 6, 10]
    assert sudoku.from_tokens(np.array([0, 1, 2, 6, 10])).tolist() == [0, 0, 1, 5, 9]
    assert sudoku.BLANK_TOKEN == 1
    assert sudoku.VOCAB_SIZE == 11


def test_tokens_round_trip():
    puzzles, solutions = sudoku.generate(3, seed=12)
    for grids in (puzzles, solutions):
        tokens = sudoku.to_tokens(grids)
        assert tokens.min() >= 1
        assert tokens.max() <= 10
        assert np.array_equal(sudoku.from_tokens(tokens), grids)


# Puzzle files --------------------------------------------------------------------------------

def test_read_puzzle_file_accepted_formats(tmp_path):
    zeros = PUZZLE.replace(".", "0")
    path = tmp_path / "puzzles.txt"
    path.write_text("# two puzzles, one with '.' blanks and one with '0' blanks\n"
                    "\n"
                    f"{PUZZLE}\n"
                    "   \n"
                    f"  {zeros},{SOLUTION}  \n"
                    f"{PUZZLE}\t{SOLUTION}\n"
                    f"{PUZZLE} {SOLUTION}\n", encoding="utf-8")
    grids = sudoku.read_puzzle_file(path)
    assert grids.shape == (4, 81)
    for row in grids:
        assert np.array_equal(row, grid(PUZZLE))


@pytest.mark.parametrize("line, message", [
    (PUZZLE[:80], "expected 81 characters"),
    (PUZZLE + "1", "expected 81 characters"),
    (PUZZLE[:80] + "x", r"invalid characters \['x'\]"),
    (PUZZLE[:79] + "-a", r"invalid characters \['-', 'a'\]"),
])
def test_read_puzzle_file_rejects_bad_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"# header\n{PUZZLE}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        sudoku.read_puzzle_file(path)
    assert f"{path}:4: " in str(error.value)


def test_read_puzzle_file_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no puzzles"):
        sudoku.read_puzzle_file(path)


def test_read_puzzle_file_rejects_missing_and_binary_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read puzzle file"):
        sudoku.read_puzzle_file(tmp_path / "absent.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00puzzle")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        sudoku.read_puzzle_file(binary)


def test_format_grid_round_trips_through_parse_line():
    assert sudoku.format_grid(sudoku.parse_line(PUZZLE)) == PUZZLE
