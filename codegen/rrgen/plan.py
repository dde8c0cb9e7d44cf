"""Static memory planning: arenas fixed at build time, one per RAM region used.

Pipeline stage: quantize -> plan -> emit.

Definitions:
- A time step is the index of an op on the timeline of one supervision step (see
  step_buffers). Each buffer has one or more live intervals [first, last], inclusive at
  both ends: it is written at `first` and read for the last time at `last`.
- Two buffers conflict when any of their intervals intersect. An op's output therefore
  never shares bytes with its inputs (the kernels are not in place).
- Every offset and every size is a multiple of ALIGNMENT_BYTES (16); a buffer takes
  align(size_bytes) bytes.

Loop-aware timeline (step_buffers): the carry y and z and the input embedding x live
across the whole supervision step, so they are live at every step. The block body is
emitted once and runs T*(n+1) times per step for each block; its steps are 0 (the add
that writes the block input) to n+1 (the copy of the block output into the carry), and
its input and output are one buffer `io`, live at the start and at the end of the body.
Body temporaries are therefore reused between ops and between block calls. The heads
(logits, q) come after the body on the same timeline, so they reuse the body's bytes.

Lower bound (Plan.lower_bound_bytes): the largest sum of align(size) over the buffers
live at one time step. Buffers live at the same step need disjoint bytes, so no plan of
the same buffers can be smaller. For step_buffers this is 3 aligned carries (live at
every step) plus the larger of the body's and the heads' own bound: a true lower bound
of the whole arena. With several regions, each region's arena is at least its own
buffers' bound, and their sum is at least the bound of all buffers.
The bound is not always reachable: buffers with two intervals (like io) can conflict in
pairs without all being live at one step. Plan.optimal then records whether the search
proved the plan minimal.

Algorithm (plan_best):
1. Heuristics: place the buffers one at a time, each at the lowest aligned offset where it
   overlaps no placed conflicting buffer (first fit) or in the smallest such gap (best
   fit), in four orders: size, first step, size x lifetime, lifetime (larger first).
   "Greedy by size" with first fit is TensorFlow Lite Micro's GreedyMemoryPlanner; it is
   kept as plan_greedy, the comparison in the report.
2. When no heuristic reaches the lower bound: branch and bound over placements. A plan
   can always be pushed down until every buffer sits at offset 0 or on the top of a
   conflicting buffer; the search builds plans bottom up in that form (offsets never
   decrease, ties in buffer order), prunes every branch that cannot beat the best plan
   so far, and stops at the lower bound or after SEARCH_NODE_LIMIT nodes. A search that
   ends without reaching the limit has proven its plan optimal (Plan.optimal).
verify() checks every plan: aligned, inside the arena, no live overlap.

Several RAM regions (plan_arena with `split`): when the whole plan does not fit the
board's arena region, buffers are assigned to the regions in the board's preference
order (fastest first). Four tries, the first that fits wins: (1) hottest buffers first
(body temporaries, then the carry, then the heads; smaller first within each), each into
the first region whose plan still fits; (2) largest first, the same way; (3) largest
first, each into the region whose arena grows least (then the one left with the fewest
free bytes); (4) as (3), in the order size x lifetime. Each region is then planned on its
own with plan_best.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import scratch_bytes

ALIGNMENT_BYTES = 16
SEARCH_NODE_LIMIT = 200_000
# Buffer roles, hottest first: body buffers are touched by every op of every block call,
# the carry once per block call, the heads once per step.
ROLES = ("body", "carry", "heads")


class PlanError(ValueError):
    """The arena fits no region, or no split over the board's regions."""


def align(size: int) -> int:
    return -(-size // ALIGNMENT_BYTES) * ALIGNMENT_BYTES


@dataclass
class Buffer:
    name: str
    size_bytes: int
    intervals: list[tuple[int, int]]
    role: str = "body"

    def live_at(self, step: int) -> bool:
        return any(first <= step <= last for first, last in self.intervals)

    def conflicts(self, other: "Buffer") -> bool:
        return any(a0 <= b1 and b0 <= a1
                   for a0, a1 in self.intervals for b0, b1 in other.intervals)


def lower_bound(buffers: list[Buffer]) -> int:
    """Most aligned bytes live at any one time step (0 for no buffers)."""
    steps = {first for b in buffers for first, _ in b.intervals}
    return max((sum(align(b.size_bytes) for b in buffers if b.live_at(t)) for t in steps),
               default=0)


@dataclass
class Plan:
    buffers: list[Buffer]
    offsets: dict[str, int] = field(default_factory=dict)
    arena_bytes: int = 0
    method: str = ""        # which heuristic or search produced the offsets
    optimal: bool = False   # arena_bytes is proven minimal for these buffers

    @property
    def lower_bound_bytes(self) -> int:
        """Most bytes live at any one time step."""
        return lower_bound(self.buffers)

    @property
    def no_reuse_bytes(self) -> int:
        return sum(align(b.size_bytes) for b in self.buffers)

    def verify(self) -> None:
        """Raise if any offset is unaligned, out of the arena, or overlaps a live buffer."""
        for b in self.buffers:
            off = self.offsets[b.name]
            if off % ALIGNMENT_BYTES:
                raise AssertionError(f"buffer {b.name!r} offset {off} is not {ALIGNMENT_BYTES}-aligned")
            if off < 0 or off + b.size_bytes > self.arena_bytes:
                raise AssertionError(f"buffer {b.name!r} [{off}, {off + b.size_bytes}) is "
                                     f"outside the arena of {self.arena_bytes} bytes")
        for i, a in enumerate(self.buffers):
            for b in self.buffers[i + 1:]:
                oa, ob = self.offsets[a.name], self.offsets[b.name]
                if a.conflicts(b) and oa < ob + b.size_bytes and ob < oa + a.size_bytes:
                    raise AssertionError(f"buffers {a.name!r} and {b.name!r} are live at the "
                                         f"same time and overlap at offsets {oa}, {ob}")

    def timeline(self, last: int | None = None) -> str:
        """ASCII chart: one row per buffer, '#' where it is live, with offset and size;
        steps 0..last (default: the last step of these buffers)."""
        if last is None:
            last = max(t for b in self.buffers for _, t in b.intervals)
        rows = []
        for b in sorted(self.buffers, key=lambda b: self.offsets[b.name]):
            bar = "".join("#" if b.live_at(t) else "." for t in range(last + 1))
            rows.append(f"{self.offsets[b.name]:8d} {b.size_bytes:8d}  {bar}  {b.name}")
        return "  offset    bytes  live per step\n" + "\n".join(rows)


# Heuristics ---------------------------------------------------------------------------------

def _gaps(plan: Plan, placed: list[Buffer], b: Buffer) -> list[tuple[int, int]]:
    """List the free aligned ranges [start, end) for b among the placed buffers that
    conflict with it. The last range is open: its end is None."""
    taken = sorted((plan.offsets[p.name], plan.offsets[p.name] + align(p.size_bytes))
                   for p in placed if p.conflicts(b))
    gaps, offset = [], 0
    for start, end in taken:
        if start > offset:
            gaps.append((offset, start))
        offset = max(offset, end)
    gaps.append((offset, None))
    return gaps


def _first_fit(plan: Plan, placed: list[Buffer], b: Buffer) -> int:
    need = align(b.size_bytes)
    return next(start for start, end in _gaps(plan, placed, b) if end is None or end - start >= need)


def _best_fit(plan: Plan, placed: list[Buffer], b: Buffer) -> int:
    """Return the start of the smallest closed gap that fits b, else the first fit."""
    need = align(b.size_bytes)
    closed = [(end - start, start) for start, end in _gaps(plan, placed, b)
              if end is not None and end - start >= need]
    return min(closed)[1] if closed else _first_fit(plan, placed, b)


def _duration(b: Buffer) -> int:
    return sum(last - first + 1 for first, last in b.intervals)


# name -> sort key; every order is total (ties by name), so plans are reproducible.
ORDERS = {
    "size": lambda b: (-b.size_bytes, b.name),
    "first step": lambda b: (min(first for first, _ in b.intervals), -b.size_bytes, b.name),
    "size x lifetime": lambda b: (-align(b.size_bytes) * _duration(b), b.name),
    "lifetime": lambda b: (-_duration(b), -b.size_bytes, b.name),
}
FITS = {"first fit": _first_fit, "best fit": _best_fit}


def _place(buffers: list[Buffer], order: str, fit: str) -> Plan:
    plan = Plan(list(buffers), method=f"{order}, {fit}")
    placed: list[Buffer] = []
    for b in sorted(buffers, key=ORDERS[order]):
        plan.offsets[b.name] = FITS[fit](plan, placed, b)
        placed.append(b)
    plan.arena_bytes = max((plan.offsets[b.name] + align(b.size_bytes) for b in buffers), default=0)
    plan.optimal = plan.arena_bytes == lower_bound(buffers)
    plan.verify()
    return plan


def plan_greedy(buffers: list[Buffer]) -> Plan:
    """Greedy by size, first fit (TensorFlow Lite Micro's GreedyMemoryPlanner)."""
    return _place(buffers, "size", "first fit")


def plan_heuristic(buffers: list[Buffer]) -> Plan:
    """Run every heuristic (step 1 of the module docstring) and return the smallest plan."""
    best = None
    for order in ORDERS:
        for fit in FITS:
            plan = _place(buffers, order, fit)
            if best is None or plan.arena_bytes < best.arena_bytes:
                best = plan
            if best.optimal:
                return best
    return best


# Exact search -------------------------------------------------------------------------------

def plan_best(buffers: list[Buffer], node_limit: int = SEARCH_NODE_LIMIT) -> Plan:
    """Plan with the heuristics, then search by branch and bound when they miss the lower bound."""
    best = plan_heuristic(buffers)
    if best.optimal:
        return best
    n = len(buffers)
    size = [align(b.size_bytes) for b in buffers]
    conflicts = [[j for j in range(n) if j != i and buffers[i].conflicts(buffers[j])]
                 for i in range(n)]
    target = lower_bound(buffers)
    offsets: list[int | None] = [None] * n
    state = {"top": best.arena_bytes, "offsets": [best.offsets[b.name] for b in buffers],
             "nodes": 0}

    def search(count: int, floor: int, floor_index: int, top: int) -> bool:
        """Place the rest at offsets >= floor; True stops the whole search."""
        if count == n:
            state["top"], state["offsets"] = top, list(offsets)
            return top == target
        state["nodes"] += 1
        if state["nodes"] > node_limit:
            return True
        unplaced = [i for i in range(n) if offsets[i] is None]
        # Every unplaced buffer ends at floor + its size or higher.
        if max(floor + size[i] for i in unplaced) >= state["top"]:
            return False
        candidates = []
        for i in unplaced:
            spots = {0} | {offsets[j] + size[j] for j in conflicts[i] if offsets[j] is not None}
            for spot in spots:
                if spot < floor or (spot == floor and i < floor_index):
                    continue
                if spot + size[i] >= state["top"]:
                    continue
                if any(offsets[j] is not None and offsets[j] < spot + size[i]
                       and spot < offsets[j] + size[j] for j in conflicts[i]):
                    continue
                candidates.append((spot, -size[i], i))
        for spot, _, i in sorted(candidates):
            offsets[i] = spot
            stop = search(count + 1, spot, i, max(top, spot + size[i]))
            offsets[i] = None
            if stop:
                return True
        return False

    search(0, 0, -1, 0)
    plan = Plan(list(buffers), dict(zip((b.name for b in buffers), state["offsets"])),
                state["top"])
    exhausted = state["nodes"] <= node_limit
    plan.optimal = plan.arena_bytes == target or exhausted
    plan.method = (f"search, {state['nodes']} nodes"
                   + ("" if exhausted or plan.arena_bytes == target else " (node limit)"))
    if plan.arena_bytes == best.arena_bytes and not plan.optimal:
        plan.method = best.method + f"; search found nothing smaller in {node_limit} nodes"
    plan.verify()
    return plan


def block_buffers(graph, element_bytes: dict[str, int] | None = None) -> list[Buffer]:
    """Buffers of one block body; the graph input and output are one buffer `io`."""
    def size(name):
        shape = graph.values[name].shape
        count = 1
        for d in shape:
            count *= d
        return count * (element_bytes or {}).get(name, 1)

    n = len(graph.nodes)
    first = {graph.input: 0}
    last = {graph.input: 0}
    for step, node in enumerate(graph.nodes, start=1):
        first[node.output] = step
        last.setdefault(node.output, step)
        for name in node.inputs:
            last[name] = max(last.get(name, 0), step)
    last[graph.output] = n + 1
    buffers = [Buffer("io", size(graph.input), [(0, last[graph.input]), (first[graph.output], n + 1)])]
    for name in first:
        if name not in (graph.input, graph.output):
            buffers.append(Buffer(name, size(name), [(first[name], last[name])]))
    # Kernel working memory (attention) is live during its own op only.
    for step, node in enumerate(graph.nodes, start=1):
        extra = scratch_bytes(node, graph)
        if extra:
            buffers.append(Buffer(scratch_name(node), extra, [(step, step)]))
    return buffers


def scratch_name(node) -> str:
    return f"{node.name}_scratch"


# The TRM arena ------------------------------------------------------------------------------

def step_buffers(config, graph) -> list[Buffer]:
    """List every buffer of one supervision step on one timeline (module docstring).

    Steps 0..n+1 are the block body (block_buffers), n+2..n+3 the heads; y, z and x are
    live at all of them.
    """
    body = block_buffers(graph)
    heads_step = len(graph.nodes) + 2
    carry = config.positions * config.hidden_size           # [positions, hidden] int8
    persistent = [Buffer(name, carry, [(0, heads_step + 1)], "carry") for name in ("y", "z", "x")]
    heads = [Buffer("logits", config.seq_len * config.vocab_size * 2,   # int16 [seq_len, vocab]
                    [(heads_step, heads_step + 1)], "heads"),
             Buffer("q", 2 * 2, [(heads_step, heads_step + 1)], "heads")]  # int16 (halt, continue)
    buffers = persistent + body + heads
    names = [b.name for b in buffers]
    if len(set(names)) != len(names):
        raise PlanError(f"buffer names repeat in the arena: {sorted(names)}; rename the block's "
                        "values y, z, x, logits and q")
    return buffers


@dataclass(frozen=True)
class RegionSpace:
    """Bytes a RAM region offers to the arena, after the stack and .data/.bss it holds."""
    name: str
    available_bytes: int        # for buffers, after start_bytes
    # Bytes kept free at the start of the array: 16 in a region at address 0, so that no
    # buffer has the address NULL. The kernels reject a NULL pointer.
    start_bytes: int = 0


@dataclass
class RegionArena:
    """One arena array: its C symbol, its linker section, and the plan of its buffers."""
    region: str | None          # board memory region; None on the host
    symbol: str                 # C array, e.g. g_arena or g_arena_dtcm
    section: str                # .arena (one region) or .arena.<region>
    plan: Plan
    available_bytes: int | None     # room for the whole array, start_bytes included
    start_bytes: int = 0            # RegionSpace.start_bytes; plan offsets count from here

    @property
    def bytes(self) -> int:
        """Size of the C array: start_bytes plus the plan's arena."""
        return self.start_bytes + self.plan.arena_bytes


@dataclass
class ArenaLayout:
    """Arena array and offset of each buffer, and the figures for the report."""
    carry_bytes: int
    buffers: list[Buffer]
    arenas: list[RegionArena]
    lower_bound_bytes: int      # of all buffers in one region; see the module docstring
    greedy_bytes: int           # greedy by size, first fit, all buffers in one region
    no_reuse_bytes: int

    @property
    def arena_bytes(self) -> int:
        return sum(arena.bytes for arena in self.arenas)

    def arena_of(self, name: str) -> RegionArena:
        return next(arena for arena in self.arenas if name in arena.plan.offsets)

    def offset(self, name: str) -> int:
        """Offset of buffer `name` in its C array."""
        arena = self.arena_of(name)
        return arena.start_bytes + arena.plan.offsets[name]

    def timeline(self) -> str:
        """Plan.timeline of each arena array, on the steps of the whole supervision step."""
        last = max(t for b in self.buffers for _, t in b.intervals)
        parts = []
        for arena in self.arenas:
            title = f"{arena.region}:\n" if len(self.arenas) > 1 else ""
            if arena.start_bytes:
                title = f"{arena.region} (offsets count after the first {arena.start_bytes} bytes):\n"
            parts.append(title + arena.plan.timeline(last))
        return "\n\n".join(parts)


def _split(buffers: list[Buffer], spaces: list[RegionSpace]) -> dict[str, list[Buffer]] | None:
    """Assign buffers to regions so that each region's plan fits (module docstring)."""
    hot_first = lambda b: (ROLES.index(b.role), b.size_bytes, b.name)          # noqa: E731
    largest_first = lambda b: (-b.size_bytes, ROLES.index(b.role), b.name)     # noqa: E731
    area_first = lambda b: (-align(b.size_bytes) * _duration(b), b.name)       # noqa: E731
    for key, best_fit in ((hot_first, False), (largest_first, False), (largest_first, True),
                          (area_first, True)):
        assigned: dict[str, list[Buffer]] = {space.name: [] for space in spaces}
        size = {space.name: 0 for space in spaces}
        for b in sorted(buffers, key=key):
            choices = []
            for rank, space in enumerate(spaces):
                trial = assigned[space.name] + [b]
                if lower_bound(trial) > space.available_bytes:
                    continue
                trial_bytes = plan_heuristic(trial).arena_bytes
                if trial_bytes <= space.available_bytes:
                    # First fit: the first region in preference order. Best fit: the region
                    # whose arena grows least, then the one left with the fewest free bytes.
                    choices.append((0, 0, rank) if not best_fit else
                                   (trial_bytes - size[space.name],
                                    space.available_bytes - trial_bytes, rank))
                    choices[-1] += (space.name, trial_bytes)
                    if not best_fit:
                        break
            if not choices:
                break
            *_, name, trial_bytes = min(choices)
            assigned[name].append(b)
            size[name] = trial_bytes
        else:
            return {name: group for name, group in assigned.items() if group}
    return None


def plan_arena(qm, single: RegionSpace | None = None,
               split: tuple[RegionSpace, ...] = ()) -> ArenaLayout:
    """Plan the arena of a quantized model (needs qm.config and qm.graph).

    single: the board's arena region; None on the host (one arena, no limit). split: the
    regions, fastest first, to spread the buffers over when the arena does not fit single.
    Raises PlanError when it fits neither.
    """
    cfg = qm.config
    buffers = step_buffers(cfg, qm.graph)
    whole = plan_best(buffers)
    layout = ArenaLayout(cfg.positions * cfg.hidden_size, buffers, [], lower_bound(buffers),
                         plan_greedy(buffers).arena_bytes, whole.no_reuse_bytes)
    if single is None or whole.arena_bytes <= single.available_bytes:
        layout.arenas = [RegionArena(single and single.name, "g_arena", ".arena", whole,
                                     single and single.available_bytes + single.start_bytes,
                                     single.start_bytes if single else 0)]
        return layout
    available = ", ".join(f"{s.name} {s.available_bytes}" for s in split or (single,))
    groups = _split(buffers, list(split)) if len(split) > 1 else None
    if groups is None:
        largest = max(buffers, key=lambda b: b.size_bytes)
        raise PlanError(
            f"the model arena needs {whole.arena_bytes} bytes (lower bound "
            f"{layout.lower_bound_bytes}; largest buffer {largest.name!r} {largest.size_bytes}) "
            f"and fits neither region {single.name} ({single.available_bytes} bytes available) "
            f"nor a split over the arena regions (bytes available: {available}); use a smaller "
            "model or list more RAM regions in [placement] arena_regions of the board file")
    spaces = {s.name: s for s in split}
    for name, group in groups.items():
        layout.arenas.append(RegionArena(name, f"g_arena_{name}", f".arena.{name}",
                                         plan_best(group),
                                         spaces[name].available_bytes + spaces[name].start_bytes,
                                         spaces[name].start_bytes))
    return layout
