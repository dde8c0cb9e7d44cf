"""Checks codegen/rrgen/plan.py, the static arena planner.

Tiny hand-made cases state every expected offset and the arena size. verify() must raise
on overlapping, unaligned and out-of-arena plans. On seeded random buffer sets, an
independent oracle in this file recomputes lifetimes step by step. The lower bound must
match it, no two buffers live at one step may share a byte, and the greedy arena is never
below the lower bound. plan_best() reaches the bound where every heuristic misses it, and
an exhaustive oracle on small sets confirms every plan it marks optimal.
plan_arena() on the tiny quantized model keeps y, z and x live at every step, and every
shipped configuration and the full-size Sudoku-MLP plan exactly at the lower bound.

Run: cd codegen && python -m pytest ../tests/test_plan.py
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rrgen import zoo
from rrgen.config import TRMConfig
from rrgen.model import TRM
from rrgen.plan import (ALIGNMENT_BYTES, Buffer, Plan, align, block_buffers, plan_arena, plan_best,
                        plan_greedy, plan_heuristic)
from rrgen.trace import trace_block


def offsets_of(plan: Plan) -> dict[str, int]:
    return dict(plan.offsets)


# Independent oracle ------------------------------------------------------------------------

def live_steps(buffer: Buffer) -> set[int]:
    """Every time step at which the buffer is live; intervals are inclusive at both ends."""
    return {t for first, last in buffer.intervals for t in range(first, last + 1)}


def oracle_lower_bound(buffers: list[Buffer]) -> int:
    steps = set().union(*(live_steps(b) for b in buffers)) if buffers else set()
    return max((sum(-(-b.size_bytes // ALIGNMENT_BYTES) * ALIGNMENT_BYTES
                    for b in buffers if t in live_steps(b))
                for t in steps), default=0)


def oracle_overlaps(plan: Plan) -> list[str]:
    """Pairs of buffers live at a common step whose byte ranges intersect."""
    found = []
    for i, a in enumerate(plan.buffers):
        for b in plan.buffers[i + 1:]:
            if not live_steps(a) & live_steps(b) or not a.size_bytes or not b.size_bytes:
                continue
            a_start, b_start = plan.offsets[a.name], plan.offsets[b.name]
            if a_start < b_start + b.size_bytes and b_start < a_start + a.size_bytes:
                found.append(f"{a.name}@{a_start}+{a.size_bytes} and {b.name}@{b_start}+{b.size_bytes}")
    return found


# Hand cases --------------------------------------------------------------------------------

def test_chain_places_neighbours_apart_and_reuses_the_rest():
    # a -> b -> c: a and c are never live together, so c reuses a's bytes.
    plan = plan_greedy([Buffer("a", 32, [(0, 1)]), Buffer("b", 48, [(1, 2)]),
                        Buffer("c", 32, [(2, 3)])])
    assert offsets_of(plan) == {"b": 0, "a": 48, "c": 48}
    assert plan.arena_bytes == 80
    assert plan.lower_bound_bytes == 80
    assert plan.no_reuse_bytes == 112


def test_disjoint_lifetimes_share_offset_zero():
    plan = plan_greedy([Buffer("x", 64, [(0, 1)]), Buffer("y", 64, [(2, 3)])])
    assert offsets_of(plan) == {"x": 0, "y": 0}
    assert plan.arena_bytes == 64
    assert plan.lower_bound_bytes == 64


def test_touching_intervals_conflict():
    # Inclusive ends: a buffer read last at step 1 and one written at step 1 must not share.
    first, second = Buffer("first", 16, [(0, 1)]), Buffer("second", 16, [(1, 2)])
    assert first.conflicts(second)
    plan = plan_greedy([first, second])
    assert offsets_of(plan) == {"first": 0, "second": 16}
    assert plan.arena_bytes == 32


def test_sizes_round_up_to_alignment():
    plan = plan_greedy([Buffer("big", 20, [(0, 2)]), Buffer("small", 10, [(1, 3)])])
    assert ALIGNMENT_BYTES == 16
    assert offsets_of(plan) == {"big": 0, "small": 32}
    assert plan.arena_bytes == 48
    assert plan.lower_bound_bytes == 48
    assert plan.no_reuse_bytes == 48


def test_equal_sizes_are_placed_in_name_order():
    plan = plan_greedy([Buffer("q", 16, [(0, 1)]), Buffer("p", 16, [(0, 1)])])
    assert offsets_of(plan) == {"p": 0, "q": 16}


def test_small_buffer_fills_hole_between_lifetimes():
    # y and z sit at 48 but are not live at step 2, so w takes that hole, not a new slot.
    plan = plan_greedy([Buffer("x", 48, [(0, 5)]), Buffer("y", 32, [(0, 1)]),
                        Buffer("z", 32, [(3, 5)]), Buffer("w", 16, [(2, 2)])])
    assert offsets_of(plan) == {"x": 0, "y": 48, "z": 48, "w": 48}
    assert plan.arena_bytes == 80
    assert plan.lower_bound_bytes == 80


def test_first_fit_skips_every_conflicting_slot():
    plan = plan_greedy([Buffer("A", 64, [(0, 4)]), Buffer("B", 32, [(0, 1)]),
                        Buffer("C", 32, [(2, 3)]), Buffer("D", 16, [(1, 2)])])
    assert offsets_of(plan) == {"A": 0, "B": 64, "C": 64, "D": 96}
    assert plan.arena_bytes == 112
    assert plan.lower_bound_bytes == 112


def test_buffer_with_two_intervals_conflicts_only_when_live():
    io = Buffer("io", 32, [(0, 1), (5, 6)])
    body = Buffer("body", 32, [(2, 4)])
    edge = Buffer("edge", 32, [(1, 2)])
    plan = plan_greedy([io, body, edge])
    assert not io.conflicts(body)
    assert offsets_of(plan) == {"body": 0, "edge": 32, "io": 0}
    assert plan.arena_bytes == 64


def test_empty_plan_has_zero_arena():
    plan = plan_greedy([])
    assert plan.arena_bytes == 0
    assert plan.lower_bound_bytes == 0


# verify ------------------------------------------------------------------------------------

def test_verify_accepts_hand_plan():
    plan = Plan([Buffer("a", 32, [(0, 1)]), Buffer("b", 32, [(1, 2)])],
                offsets={"a": 0, "b": 32}, arena_bytes=64)
    plan.verify()


def test_verify_rejects_live_overlap():
    plan = Plan([Buffer("a", 32, [(0, 1)]), Buffer("b", 32, [(1, 2)])],
                offsets={"a": 0, "b": 16}, arena_bytes=64)
    with pytest.raises(AssertionError, match=r"'a' and 'b' are live at the same time"):
        plan.verify()


def test_verify_allows_overlap_of_disjoint_lifetimes():
    plan = Plan([Buffer("a", 32, [(0, 1)]), Buffer("b", 32, [(2, 3)])],
                offsets={"a": 0, "b": 0}, arena_bytes=32)
    plan.verify()


def test_verify_rejects_unaligned_offset():
    plan = Plan([Buffer("a", 32, [(0, 1)])], offsets={"a": 8}, arena_bytes=64)
    with pytest.raises(AssertionError, match=r"'a' offset 8 is not 16-aligned"):
        plan.verify()


def test_verify_rejects_buffer_outside_arena():
    plan = Plan([Buffer("a", 32, [(0, 1)])], offsets={"a": 16}, arena_bytes=32)
    with pytest.raises(AssertionError, match=r"'a' \[16, 48\) is outside the arena of 32 bytes"):
        plan.verify()


# Random buffer sets against the oracle ------------------------------------------------------

def random_buffers(rng: np.random.Generator) -> list[Buffer]:
    buffers = []
    for index in range(int(rng.integers(1, 13))):
        intervals = []
        for _ in range(int(rng.integers(1, 3))):
            first = int(rng.integers(0, 12))
            intervals.append((first, first + int(rng.integers(0, 5))))
        buffers.append(Buffer(f"b{index}", int(rng.integers(1, 500)), intervals))
    return buffers


def test_greedy_plans_are_valid_and_above_lower_bound():
    rng = np.random.default_rng(0)
    for trial in range(300):
        buffers = random_buffers(rng)
        plan = plan_greedy(buffers)
        lower = oracle_lower_bound(buffers)
        where = f"trial {trial}: {[(b.name, b.size_bytes, b.intervals) for b in buffers]}"
        assert plan.lower_bound_bytes == lower, where
        assert lower <= plan.arena_bytes <= plan.no_reuse_bytes, where
        assert oracle_overlaps(plan) == [], where
        assert all(offset % ALIGNMENT_BYTES == 0 for offset in plan.offsets.values()), where
        assert all(plan.offsets[b.name] + b.size_bytes <= plan.arena_bytes for b in buffers), where


def test_timeline_has_one_row_per_buffer():
    buffers = [Buffer("a", 32, [(0, 1)]), Buffer("b", 48, [(1, 2)]), Buffer("io", 16, [(0, 0), (3, 3)])]
    plan = plan_greedy(buffers)
    header, *rows = plan.timeline().splitlines()
    assert "offset" in header
    assert len(rows) == len(buffers)
    bars = {row.split()[-1]: row.split()[-2] for row in rows}
    assert bars == {"a": "##..", "b": ".##.", "io": "#..#"}
    for row in rows:
        offset, size = (int(field) for field in row.split()[:2])
        name = row.split()[-1]
        assert offset == plan.offsets[name]
        assert size == next(b.size_bytes for b in buffers if b.name == name)


# The TRM arena -----------------------------------------------------------------------------

def test_block_buffers_lifetimes_of_tiny_block(tiny_qmodels):
    graph = tiny_qmodels[8].graph
    buffers = {b.name: b for b in block_buffers(graph)}

    # Oracle: a value lives from the step that writes it to the last step that reads it.
    # The block input is written at step 0, and the output is read at step n + 1.
    steps = len(graph.nodes)
    first, last = {graph.input: 0}, {graph.input: 0}
    for step, node in enumerate(graph.nodes, start=1):
        first[node.output] = last[node.output] = step
        for name in node.inputs:
            last[name] = step
    assert buffers["io"].intervals == [(0, last[graph.input]), (first[graph.output], steps + 1)]
    for name in first:
        if name in (graph.input, graph.output):
            continue
        assert buffers[name].intervals == [(first[name], last[name])], name
        assert buffers[name].size_bytes == int(np.prod(graph.values[name].shape)), name
    assert len(buffers) == steps   # every node output plus io, minus the output in io


def test_plan_arena_of_tiny_model(tiny_qmodels):
    qm = tiny_qmodels[8]
    cfg = qm.config
    layout = plan_arena(qm)
    assert len(layout.arenas) == 1
    arena = layout.arenas[0]
    assert (arena.symbol, arena.section, arena.region) == ("g_arena", ".arena", None)
    arena.plan.verify()
    assert oracle_overlaps(arena.plan) == []

    # Loop-aware lifetimes: y, z, x live at every step; body and heads on one timeline.
    carry = cfg.positions * cfg.hidden_size
    assert layout.carry_bytes == carry
    buffers = {b.name: b for b in layout.buffers}
    steps = set().union(*(live_steps(b) for b in layout.buffers))
    for name in ("y", "z", "x"):
        assert live_steps(buffers[name]) == steps, name
    body = block_buffers(qm.graph)
    heads = [b for b in layout.buffers if b.role == "heads"]
    assert {b.name for b in heads} == {"logits", "q"}
    assert max(t for b in body for t in live_steps(b)) < min(t for b in heads for t in live_steps(b))

    # The bound of the whole arena: three carries plus the larger of body and heads.
    expected = 3 * align(carry) + max(oracle_lower_bound(body), oracle_lower_bound(heads))
    assert layout.lower_bound_bytes == expected == oracle_lower_bound(layout.buffers)
    assert layout.arena_bytes == layout.lower_bound_bytes
    assert layout.lower_bound_bytes <= layout.greedy_bytes <= layout.no_reuse_bytes
    assert layout.offset("q") == arena.plan.offsets["q"]


# The optimal planner ------------------------------------------------------------------------

# Every heuristic misses the bound here (192 bytes); the search finds a plan of 176.
HEURISTICS_MISS = [Buffer("a", 80, [(3, 5)]), Buffer("b", 16, [(0, 2)]), Buffer("c", 48, [(2, 2)]),
                   Buffer("d", 48, [(0, 2)]), Buffer("e", 64, [(2, 3)])]


def test_search_reaches_the_bound_where_every_heuristic_misses():
    assert oracle_lower_bound(HEURISTICS_MISS) == 176
    assert plan_greedy(HEURISTICS_MISS).arena_bytes == 192
    assert plan_heuristic(HEURISTICS_MISS).arena_bytes == 192
    plan = plan_best(HEURISTICS_MISS)
    assert plan.arena_bytes == 176
    assert plan.optimal
    assert plan.method.startswith("search")
    assert oracle_overlaps(plan) == []


def test_search_node_limit_zero():
    """With no search nodes, plan_best keeps the heuristic plan."""
    plan = plan_best(HEURISTICS_MISS, node_limit=0)
    assert plan.arena_bytes == 192
    assert not plan.optimal
    plan.verify()


def test_best_plans_within_bound_and_greedy():
    """Random buffer sets: every best plan is valid, at least the bound, at most greedy."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        buffers = random_buffers(rng)
        plan = plan_best(buffers, node_limit=2000)
        where = f"trial {trial}: {[(b.name, b.size_bytes, b.intervals) for b in buffers]}"
        assert oracle_overlaps(plan) == [], where
        assert oracle_lower_bound(buffers) <= plan.arena_bytes <= plan_greedy(buffers).arena_bytes, where
        assert all(plan.offsets[b.name] + b.size_bytes <= plan.arena_bytes for b in buffers), where


def oracle_optimum(buffers: list[Buffer]) -> int:
    """Smallest arena over every aligned offset of every buffer (backtracking, tiny sets)."""
    sizes = [-(-b.size_bytes // ALIGNMENT_BYTES) * ALIGNMENT_BYTES for b in buffers]
    best, offsets = [sum(sizes)], [0] * len(buffers)

    def place(i: int, top: int) -> None:
        if top >= best[0]:
            return
        if i == len(buffers):
            best[0] = top
            return
        for offset in range(0, best[0] - sizes[i] + 1, ALIGNMENT_BYTES):
            if all(not (live_steps(buffers[i]) & live_steps(buffers[j]))
                   or offsets[j] + sizes[j] <= offset or offset + sizes[i] <= offsets[j]
                   for j in range(i)):
                offsets[i] = offset
                place(i + 1, max(top, offset + sizes[i]))

    place(0, 0)
    return best[0]


def test_search_proves_optimum_above_bound():
    # Each pair is live together at some step, but no step has all three: the bound is 64,
    # yet the three need disjoint bytes. Buffers with two intervals (like io) allow this.
    triangle = [Buffer("a", 16, [(1, 2), (3, 3)]), Buffer("b", 32, [(0, 0), (3, 4)]),
                Buffer("c", 32, [(0, 1)])]
    assert oracle_lower_bound(triangle) == 64
    assert oracle_optimum(triangle) == 80
    plan = plan_best(triangle)
    assert plan.arena_bytes == 80
    assert plan.optimal


def test_best_plans_match_exhaustive_oracle():
    rng = np.random.default_rng(5)
    for trial in range(150):
        buffers = []
        for index in range(int(rng.integers(2, 6))):
            intervals = []
            for _ in range(int(rng.integers(1, 3))):
                first = int(rng.integers(0, 5))
                intervals.append((first, first + int(rng.integers(0, 2))))
            buffers.append(Buffer(f"b{index}", 16 * int(rng.integers(1, 4)), intervals))
        plan = plan_best(buffers)
        where = f"trial {trial}: {[(b.name, b.size_bytes, b.intervals) for b in buffers]}"
        assert plan.optimal, where
        assert plan.arena_bytes == oracle_optimum(buffers), where


def test_verify_catches_an_overlap_in_a_model_plan(tiny_qmodels):
    plan = plan_arena(tiny_qmodels[8]).arenas[0].plan
    plan.offsets["z"] = plan.offsets["y"]    # both live at every step
    with pytest.raises(AssertionError, match="live at the same time and overlap"):
        plan.verify()


FULL_SIZE = TRMConfig(vocab_size=11, seq_len=81, hidden_size=512, expansion=4.0, L_layers=2,
                      H_cycles=3, L_cycles=6, puzzle_emb_len=16, mlp_t=True, task="sudoku")


def traced(config):
    """The plan's view of a model: its config and traced block graph (weights do not matter)."""
    torch.manual_seed(0)
    return SimpleNamespace(config=config, graph=trace_block(TRM(config).L_level.layers[0], config))


@pytest.mark.parametrize("name", [*zoo.ZOO, "full-size sudoku-mlp"])
def test_shipped_configs_plan_at_the_lower_bound(name):
    config = FULL_SIZE if name.startswith("full") else zoo.config(name)
    layout = plan_arena(traced(config))
    assert layout.arena_bytes == layout.lower_bound_bytes, layout.timeline()
    assert layout.arenas[0].plan.optimal
