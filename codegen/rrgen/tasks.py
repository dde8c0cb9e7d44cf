"""Task registry: one token-level interface to the Sudoku, Maze and ARC data.

All arrays are int64 token ids. A label token 0 (pad) marks a cell that is not
supervised. To write a file of several puzzles, join format_puzzle outputs with a blank
line ("\\n\\n"); read_puzzle_file reads that back for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from . import arc, maze, sudoku

TASKS = ("sudoku", "maze", "arc")

# Seeds of the generated splits, the same for every task.
TRAIN_SEED, TEST_SEED, CALIBRATION_SEED = 1, 2, 3

# Blank-count range of generated Sudoku puzzles, the defaults of sudoku.generate.
SUDOKU_MIN_BLANKS = 30
SUDOKU_MAX_BLANKS = 45


@dataclass(frozen=True)
class Task:
    """A puzzle family: its token vocabulary, sequence length and data functions.

    generate(count, seed) returns inputs [count, seq_len], labels [count, seq_len] and
    puzzle ids [count]. augment(inputs, labels, rng) applies one random
    validity-preserving transform per row. read_puzzle_file(path) returns input tokens
    [count, seq_len] and raises ValueError naming the file and line on bad input.
    format_answer turns one sequence into a readable grid, and format_puzzle turns one
    input sequence into the text that read_puzzle_file accepts.
    """
    name: str
    vocab_size: int
    seq_len: int
    generate: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    augment: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    read_puzzle_file: Callable[[str | Path], np.ndarray]
    format_answer: Callable[[np.ndarray], str]
    format_puzzle: Callable[[np.ndarray], str]


# Sudoku -------------------------------------------------------------------------------------

def _sudoku_generate(count: int, seed: int):
    puzzles, solutions = sudoku.generate(count, seed, SUDOKU_MIN_BLANKS, SUDOKU_MAX_BLANKS)
    return (sudoku.to_tokens(puzzles), sudoku.to_tokens(solutions),
            np.zeros(count, dtype=np.int64))


def _sudoku_augment(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    puzzles, solutions = sudoku.augment(sudoku.from_tokens(inputs), sudoku.from_tokens(labels), rng)
    return sudoku.to_tokens(puzzles), sudoku.to_tokens(solutions)


def _sudoku_read(path: str | Path) -> np.ndarray:
    return sudoku.to_tokens(sudoku.read_puzzle_file(path))


def _sudoku_format_answer(tokens: np.ndarray) -> str:
    """Draw 81 tokens as 9 rows with box separators; pad and blank cells as '.'."""
    digits = sudoku.from_tokens(np.asarray(tokens)).reshape(9, 9)
    lines = []
    for r, row in enumerate(digits.tolist()):
        if r in (3, 6):
            lines.append("------+-------+------")
        cells = ["." if v == 0 else str(v) for v in row]
        lines.append(" | ".join(" ".join(cells[b:b + 3]) for b in (0, 3, 6)))
    return "\n".join(lines)


def _sudoku_format_puzzle(tokens: np.ndarray) -> str:
    return sudoku.format_grid(sudoku.from_tokens(np.asarray(tokens)))


# Maze and ARC -------------------------------------------------------------------------------

def _maze_generate(count: int, seed: int, n: int):
    inputs, labels = maze.generate(count, seed, n)
    return inputs, labels, np.zeros(count, dtype=np.int64)


def _maze_task(seq_len: int | None) -> Task:
    n = maze.DEFAULT_SIZE if seq_len is None else int(round(seq_len ** 0.5))
    if seq_len is not None and n * n != seq_len:
        raise ValueError(f"maze seq_len {seq_len} is not N*N; use the square of the maze side, "
                         f"e.g. {maze.DEFAULT_SIZE ** 2} for 9x9 or 900 for 30x30")
    maze.check_size(n)
    return Task("maze", maze.VOCAB_SIZE, n * n, partial(_maze_generate, n=n), maze.augment,
                partial(maze.read_puzzle_file, n=n), maze.format_answer, maze.format_puzzle)


def _fixed_length(name: str, seq_len: int | None, expected: int) -> None:
    if seq_len is not None and seq_len != expected:
        raise ValueError(f"{name} seq_len {seq_len} is invalid; {name} sequences have "
                         f"{expected} tokens, so pass {expected} or nothing")


def get_task(name: str, seq_len: int | None = None) -> Task:
    """Return the task `name`; seq_len picks the maze size (N*N, default 81), others are fixed."""
    if name == "sudoku":
        _fixed_length(name, seq_len, sudoku.CELLS)
        return Task("sudoku", sudoku.VOCAB_SIZE, sudoku.CELLS, _sudoku_generate, _sudoku_augment,
                    _sudoku_read, _sudoku_format_answer, _sudoku_format_puzzle)
    if name == "maze":
        return _maze_task(seq_len)
    if name == "arc":
        _fixed_length(name, seq_len, arc.SEQ_LEN)
        return Task("arc", arc.VOCAB_SIZE, arc.SEQ_LEN, arc.generate, arc.augment,
                    arc.read_puzzle_file, arc.format_answer, arc.format_puzzle)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
