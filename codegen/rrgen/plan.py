"""Static memory planning: one arena, offsets fixed at build time.

Pipeline stage: quantize -> plan -> emit.

Definitions:
- A time step is the index of an op in a straight-line op list (the block body, or the
  heads). Each buffer has one or more live intervals [first, last], inclusive at both
  ends: it is written at `first` and read for the last time at `last`.
- Two buffers conflict when any of their intervals intersect. An op's output therefore
  never shares bytes with its inputs (the kernels are not in place).
- Every offset and every size is a multiple of ALIGNMENT_BYTES (16).

Algorithm (greedy by size, as TFLite Micro's GreedyMemoryPlanner): sort buffers by size,
largest first, ties by name; place each at the lowest aligned offset where it overlaps no
already-placed conflicting buffer. The result is not optimal in general. The lower bound
reported beside it is the largest total size live at any one time step; no plan can be
smaller. verify() checks every plan: aligned, inside the arena, no live overlap.

Loop-aware layout of the TRM arena: the carry y and z and the input embedding x live
across the whole recursion and sit first; the block body is planned once (it is emitted
once and runs T*(n+1) times per step for each block) with its input and output as one buffer
`io` that is live at the start and at the end of the body; the heads reuse the block region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import scratch_bytes

ALIGNMENT_BYTES = 16


def align(size: int) -> int:
    return -(-size // ALIGNMENT_BYTES) * ALIGNMENT_BYTES


@dataclass
class Buffer:
    name: str
    size_bytes: int
    intervals: list[tuple[int, int]]

    def live_at(self, step: int) -> bool:
        return any(first <= step <= last for first, last in self.intervals)

    def conflicts(self, other: "Buffer") -> bool:
        return any(a0 <= b1 and b0 <= a1
                   for a0, a1 in self.intervals for b0, b1 in other.intervals)


@dataclass
class Plan:
    buffers: list[Buffer]
    offsets: dict[str, int] = field(default_factory=dict)
    arena_bytes: int = 0

    @property
    def lower_bound_bytes(self) -> int:
        """Most bytes live at any one time step."""
        steps = {t for b in self.buffers for iv in b.intervals for t in iv}
        return max((sum(align(b.size_bytes) for b in self.buffers if b.live_at(t))
                    for t in steps), default=0)

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

    def timeline(self) -> str:
        """ASCII chart: one row per buffer, '#' where it is live, with offset and size."""
        last = max(t for b in self.buffers for _, t in b.intervals)
        rows = []
        for b in sorted(self.buffers, key=lambda b: self.offsets[b.name]):
            bar = "".join("#" if b.live_at(t) else "." for t in range(last + 1))
            rows.append(f"{self.offsets[b.name]:8d} {b.size_bytes:8d}  {bar}  {b.name}")
        return "  offset    bytes  live per step\n" + "\n".join(rows)


def plan_greedy(buffers: list[Buffer]) -> Plan:
    plan = Plan(list(buffers))
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size_bytes, b.name)):
        taken = sorted((plan.offsets[p.name], plan.offsets[p.name] + align(p.size_bytes))
                       for p in placed if p.conflicts(b))
        offset = 0
        for start, end in taken:
            if offset + align(b.size_bytes) <= start:
                break
            offset = max(offset, end)
        plan.offsets[b.name] = offset
        placed.append(b)
    plan.arena_bytes = max((plan.offsets[b.name] + align(b.size_bytes) for b in buffers), default=0)
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


@dataclass
class ArenaLayout:
    """Byte offsets of everything in the arena, and the figures for the report."""
    carry_bytes: int
    persistent: dict[str, int]          # y, z, x -> offset
    block_base: int                     # start of the block region
    block: Plan
    heads: Plan
    arena_bytes: int
    lower_bound_bytes: int
    no_reuse_bytes: int

    def offset(self, region: str, name: str) -> int:
        plan = self.block if region == "block" else self.heads
        return self.block_base + plan.offsets[name]


def plan_arena(qm) -> ArenaLayout:
    cfg = qm.config
    carry = cfg.positions * cfg.hidden_size
    persistent = {"y": 0, "z": align(carry), "x": 2 * align(carry)}
    base = 3 * align(carry)
    block = plan_greedy(block_buffers(qm.graph))
    heads = plan_greedy([
        Buffer("logits", cfg.seq_len * cfg.vocab_size * 2, [(0, 1)]),   # int16
        Buffer("q", 2 * 2, [(0, 1)]),                                   # int16 (halt, continue)
    ])
    region = max(block.arena_bytes, heads.arena_bytes)
    return ArenaLayout(carry, persistent, base, block, heads, base + region,
                       base + max(block.lower_bound_bytes, heads.lower_bound_bytes),
                       base + block.no_reuse_bytes + heads.no_reuse_bytes)
