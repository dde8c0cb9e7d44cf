"""Maze data: a generator of mazes with one shortest path, a BFS solver, augmentation, file I/O.

Token ids follow the public Maze datasets: 0 pad, 1 wall '#', 2 open ' ', 3 start 'S',
4 goal 'G', 5 path 'o'. A grid is an [N, N] int64 array of token ids and a sequence is
that grid flattened row-major, so seq_len = N * N. The label of a maze is its input with
every cell of the shortest S-to-G path except S and G set to 5. Labels contain no pad, so
every cell is supervised. Moves go to the four edge neighbours.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

PAD, WALL, OPEN, START, GOAL, PATH = range(6)
CHARSET = "# SGo"  # token id = index in CHARSET + 1
VOCAB_SIZE = 6
MIN_SIZE = 9
MAX_SIZE = 30
DEFAULT_SIZE = 9
# The file format also accepts '.' for an open cell, because editors strip trailing spaces.
OPEN_ALTERNATIVE = "."
COMMENT_PREFIX = ";"

# Dihedral transform ids as in the public builders: 0 identity, 1..3 rotation by 90, 180
# and 270 degrees counter-clockwise (np.rot90), 4 left-right flip, 5 up-down flip,
# 6 transpose, 7 reflection about the anti-diagonal. INVERSE_TRANSFORM[t] undoes t.
NUM_TRANSFORMS = 8
INVERSE_TRANSFORM = (0, 3, 2, 1, 4, 5, 6, 7)


def check_size(n: int) -> None:
    """Raise ValueError unless `n` is a supported maze side length."""
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise ValueError(f"maze size {n}x{n} is not supported; use a side length of "
                         f"{MIN_SIZE} to {MAX_SIZE} (seq_len {MIN_SIZE ** 2} to {MAX_SIZE ** 2})")


def dihedral_transform(grid: np.ndarray, transform: int) -> np.ndarray:
    """Apply dihedral transform `transform` (0..7, ids above) to the last two axes of `grid`."""
    if not 0 <= transform < NUM_TRANSFORMS:
        raise ValueError(f"dihedral transform {transform} is invalid; use 0..7")
    if transform < 4:
        return np.rot90(grid, transform, axes=(-2, -1))
    if transform == 4:
        return grid[..., :, ::-1]
    if transform == 5:
        return grid[..., ::-1, :]
    if transform == 6:
        return np.swapaxes(grid, -1, -2)
    return np.swapaxes(np.rot90(grid, 2, axes=(-2, -1)), -1, -2)


def inverse_dihedral_transform(grid: np.ndarray, transform: int) -> np.ndarray:
    """Undo dihedral_transform(grid, transform)."""
    if not 0 <= transform < NUM_TRANSFORMS:
        raise ValueError(f"dihedral transform {transform} is invalid; use 0..7")
    return dihedral_transform(grid, INVERSE_TRANSFORM[transform])


# Search -------------------------------------------------------------------------------------

def _find_cell(grid: np.ndarray, token: int, name: str) -> tuple[int, int]:
    cells = np.argwhere(grid == token)
    if len(cells) != 1:
        raise ValueError(f"maze has {len(cells)} {name} cells ({CHARSET[token - 1]!r}); "
                         "it needs exactly one")
    return int(cells[0][0]), int(cells[0][1])


def _bfs(grid: np.ndarray, source: tuple[int, int], limit: int = 2):
    """Return BFS distances from `source` (-1 if unreachable) and shortest-path counts.

    Counts are capped at `limit`.
    """
    rows, cols = grid.shape
    passable = (grid != WALL) & (grid != PAD)
    dist = np.full(grid.shape, -1, dtype=np.int64)
    ways = np.zeros(grid.shape, dtype=np.int64)
    dist[source] = 0
    ways[source] = 1
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        d = dist[r, c] + 1
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not (0 <= nr < rows and 0 <= nc < cols) or not passable[nr, nc]:
                continue
            if dist[nr, nc] < 0:
                dist[nr, nc] = d
                queue.append((nr, nc))
            if dist[nr, nc] == d:
                ways[nr, nc] = min(limit, ways[nr, nc] + ways[r, c])
    return dist, ways


def count_shortest_paths(grid: np.ndarray, limit: int = 2) -> int:
    """Count the shortest S-to-G paths of an [N, N] token grid, up to `limit`; 0 if none."""
    grid = np.asarray(grid)
    start = _find_cell(grid, START, "start")
    goal = _find_cell(grid, GOAL, "goal")
    _, ways = _bfs(grid, start, limit)
    return int(ways[goal])


def solve(grid: np.ndarray) -> np.ndarray:
    """Return the label grid: `grid` with the cells of a shortest S-to-G path set to PATH.

    When several shortest paths exist, one of them is marked, and count_shortest_paths
    returns how many there are.
    Any PATH marks already in `grid` are read as open cells. Raises ValueError when the
    maze lacks exactly one S and one G, or when no path connects them.
    """
    grid = np.where(np.asarray(grid) == PATH, OPEN, grid).astype(np.int64)
    start = _find_cell(grid, START, "start")
    goal = _find_cell(grid, GOAL, "goal")
    dist, _ = _bfs(grid, start)
    if dist[goal] < 0:
        raise ValueError("no path from S to G; open a wall cell between them")
    # Walk back from G along strictly decreasing distances.
    label = grid.copy()
    r, c = goal
    rows, cols = grid.shape
    while dist[r, c] > 1:
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < rows and 0 <= nc < cols and dist[nr, nc] == dist[r, c] - 1:
                r, c = nr, nc
                break
        label[r, c] = PATH
    return label


# Generation ---------------------------------------------------------------------------------

def _spanning_tree_maze(rng: np.random.Generator, n: int) -> np.ndarray:
    """Carve a random spanning tree (randomized depth-first search) on the odd lattice.

    Lattice cells sit at odd row and column indices below n - 1, so the border is wall.
    For even n the last row and column stay wall as well.
    """
    grid = np.full((n, n), WALL, dtype=np.int64)
    size = (n - 1) // 2  # lattice cells per row and column
    visited = np.zeros((size, size), dtype=bool)
    start = (int(rng.integers(size)), int(rng.integers(size)))
    visited[start] = True
    grid[2 * start[0] + 1, 2 * start[1] + 1] = OPEN
    stack = [start]
    while stack:
        i, j = stack[-1]
        options = [(i + di, j + dj) for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))
                   if 0 <= i + di < size and 0 <= j + dj < size and not visited[i + di, j + dj]]
        if not options:
            stack.pop()
            continue
        ni, nj = options[int(rng.integers(len(options)))]
        visited[ni, nj] = True
        grid[2 * ni + 1, 2 * nj + 1] = OPEN
        grid[i + ni + 1, j + nj + 1] = OPEN  # the wall cell between the two lattice cells
        stack.append((ni, nj))
    return grid


def _open_extra_walls(rng: np.random.Generator, grid: np.ndarray, count: int) -> None:
    """Open `count` random wall cells that separate two lattice cells, which adds loops."""
    n = grid.shape[0]
    inner = n - 2 if n % 2 else n - 3  # last lattice index
    candidates = [(r, c) for r in range(1, inner + 1) for c in range(1, inner + 1)
                  if (r + c) % 2 == 1 and grid[r, c] == WALL]
    for k in rng.permutation(len(candidates))[:count]:
        grid[candidates[k]] = OPEN


def _farthest_cell(rng: np.random.Generator, grid: np.ndarray, source) -> tuple[int, int]:
    dist, _ = _bfs(grid, source)
    lattice = dist[1::2, 1::2]
    far = np.argwhere(lattice == lattice.max())
    i, j = far[int(rng.integers(len(far)))]
    return 2 * int(i) + 1, 2 * int(j) + 1


def min_path_cells(n: int) -> int:
    """Return the minimum number of path cells (S and G excluded) of a generated n x n maze."""
    return n


MAX_ATTEMPTS = 1000


def generate_maze(rng: np.random.Generator, n: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return one random [n, n] maze and its label.

    The maze is a random spanning tree on the odd lattice with up to n // 3 extra wall
    cells opened to make loops. S and G are the ends of a double BFS sweep (a random
    cell, the farthest cell from it, then the farthest cell from that), so they lie far
    apart. A candidate is rejected unless its shortest S-to-G path is unique and has at
    least min_path_cells(n) cells between S and G.
    """
    check_size(n)
    for _ in range(MAX_ATTEMPTS):
        grid = _spanning_tree_maze(rng, n)
        _open_extra_walls(rng, grid, int(rng.integers(0, n // 3 + 1)))
        size = (n - 1) // 2
        seed_cell = (2 * int(rng.integers(size)) + 1, 2 * int(rng.integers(size)) + 1)
        start = _farthest_cell(rng, grid, seed_cell)
        goal = _farthest_cell(rng, grid, start)
        if rng.random() < 0.5:
            start, goal = goal, start
        grid[start] = START
        grid[goal] = GOAL
        if count_shortest_paths(grid) != 1:
            continue
        label = solve(grid)
        if np.count_nonzero(label == PATH) >= min_path_cells(n):
            return grid, label
    raise RuntimeError(f"no {n}x{n} maze with a unique shortest path found in "
                       f"{MAX_ATTEMPTS} attempts")


def generate(count: int, seed: int, n: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return `count` seeded mazes and their labels as token sequences [count, n * n].

    NOTE: mazes may repeat, within one call and across seeds. 9x9 mazes have only a 4x4
    lattice, and 1000 of them from seed 0 contain 977 distinct mazes.
    """
    check_size(n)
    rng = np.random.default_rng(seed)
    inputs = np.zeros((count, n * n), dtype=np.int64)
    labels = np.zeros((count, n * n), dtype=np.int64)
    for k in range(count):
        grid, label = generate_maze(rng, n)
        inputs[k] = grid.reshape(-1)
        labels[k] = label.reshape(-1)
    return inputs, labels


def augment(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Apply one random dihedral transform per row to inputs and labels [count, n * n]."""
    count, seq_len = inputs.shape
    n = int(round(seq_len ** 0.5))
    out_inputs = np.empty_like(inputs)
    out_labels = np.empty_like(labels)
    for k in range(count):
        transform = int(rng.integers(NUM_TRANSFORMS))
        out_inputs[k] = dihedral_transform(inputs[k].reshape(n, n), transform).reshape(-1)
        out_labels[k] = dihedral_transform(labels[k].reshape(n, n), transform).reshape(-1)
    return out_inputs, out_labels


# Text form ----------------------------------------------------------------------------------

def _grid_of(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens).reshape(-1)
    n = int(round(len(tokens) ** 0.5))
    if n * n != len(tokens):
        raise ValueError(f"a maze sequence needs a square number of tokens, got {len(tokens)}")
    return tokens.reshape(n, n)


def format_answer(tokens: np.ndarray) -> str:
    """Draw a maze sequence as N lines of '#', ' ', 'S', 'G' and 'o'; pad and unknown ids as '?'."""
    chars = "?" + CHARSET
    return "\n".join("".join(chars[v] if 0 <= v < len(chars) else "?" for v in row)
                     for row in _grid_of(tokens).tolist())


def format_puzzle(tokens: np.ndarray) -> str:
    """Write a maze sequence in the file format, with '.' for open cells."""
    grid = _grid_of(tokens)
    if grid.min() < WALL or grid.max() > PATH:
        raise ValueError(f"maze tokens must be {WALL}..{PATH}, got "
                         f"{int(grid.min())}..{int(grid.max())}")
    chars = "?#" + OPEN_ALTERNATIVE + "SGo"
    return "\n".join("".join(chars[v] for v in row) for row in grid.tolist())


_CHAR_TOKEN = {"#": WALL, " ": OPEN, OPEN_ALTERNATIVE: OPEN, "S": START, "G": GOAL, "o": OPEN}
_CHAR_HELP = "'#' wall, ' ' or '.' open, 'S' start, 'G' goal, 'o' path"


def _parse_maze(path: Path, first_line: int, rows: list[str], n: int | None) -> np.ndarray:
    """Parse one block of rows. `n` is the required side length, or None to use the row width."""
    where = f"{path}:{first_line}"
    width = len(rows[0])
    if n is None and not MIN_SIZE <= width <= MAX_SIZE:
        raise ValueError(f"{where}: maze row is {width} cells wide; supported mazes are "
                         f"{MIN_SIZE}x{MIN_SIZE} to {MAX_SIZE}x{MAX_SIZE}")
    if n is not None and width != n and all(len(row) == width for row in rows):
        raise ValueError(f"{where}: maze is {width} cells wide, but this file or task uses "
                         f"{n}x{n} mazes; put mazes of one size in a file and use a maze task "
                         f"of that size (seq_len {width * width} for this one)")
    width = n if n is not None else width
    grid = np.empty((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row) < width:
            raise ValueError(f"{path}:{first_line + i}: maze row has {len(row)} cells, expected "
                             f"{width}; write '.' for open cells, because editors often strip "
                             "trailing spaces")
        if len(row) > width:
            raise ValueError(f"{path}:{first_line + i}: maze row has {len(row)} cells, expected "
                             f"{width}; every row of a maze must have the same length")
        for j, ch in enumerate(row):
            if ch not in _CHAR_TOKEN:
                raise ValueError(f"{path}:{first_line + i}: invalid character {ch!r} in column "
                                 f"{j + 1}; use {_CHAR_HELP}")
            grid[i, j] = _CHAR_TOKEN[ch]
    if len(rows) != width:
        raise ValueError(f"{where}: maze has {len(rows)} rows of {width} cells; a maze must be "
                         "square, and mazes are separated by one blank line")
    try:
        solve(grid)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return grid


def read_puzzle_file(path: str | Path, n: int | None = None) -> np.ndarray:
    """Read mazes from a text file and return their input sequences [count, n * n].

    Each maze is n lines of n characters from "# SGo", with '.' also accepted for an open
    cell. Mazes are separated by blank lines. Lines starting with ';' are comments, because
    a line of '#' is a row of walls. Path marks 'o' are read as open cells, so a solved
    maze reads as its puzzle. Every maze needs one S, one G and a path between them. With
    `n` None, the first maze sets the size and later mazes must match it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read maze file {str(path)!r}: {err.strerror}; "
                         "check the path") from None
    except UnicodeDecodeError:
        raise ValueError(f"maze file {str(path)!r} is not UTF-8 text; write each maze as lines "
                         f"of {_CHAR_HELP}") from None
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(COMMENT_PREFIX):
            continue
        if not line.strip():
            current = []
            continue
        if not current:
            blocks.append((number, current))
        current.append(line)
    if not blocks:
        raise ValueError(f"maze file {str(path)!r} contains no mazes; write each maze as lines "
                         f"of {_CHAR_HELP}, with a blank line between mazes")
    grids = []
    for first_line, rows in blocks:
        grid = _parse_maze(path, first_line, rows, n)
        n = grid.shape[0]
        grids.append(grid.reshape(-1))
    return np.stack(grids)
