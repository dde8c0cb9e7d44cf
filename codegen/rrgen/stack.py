"""Worst-case stack depth of an Arm build, from gcc's call graph with stack usage.

Part of the build stage. toolchain.py compiles every Arm source with
`-fstack-usage -fcallgraph-info=su`, so gcc writes one VCG file (.ci) per object: a node
per defined function with its frame size, and an edge per call. This module sums the
frames along the deepest call chain from the reset handler, then adds the deepest chain
of every exception handler, each with the 104-byte exception frame that a Cortex-M core
with an FPU pushes (26 words: 8 core registers plus 18 FP registers and FPSCR). That
assumes every handler may nest on top of the others, which overestimates but never
underestimates, under the two assumptions below.

Unbounded cases raise StackError: recursion, and frames that gcc marks dynamic (alloca
or variable-length arrays). An indirect call is charged the deepest chain of any function
whose address the objects take (a relocation other than a direct call), because the
graph does not name its target.
NOTE: functions without a node (newlib's memcpy and memset, libgcc helpers) are charged
LIBRARY_CALL_BYTES each; that is an estimate, since the library is not compiled here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EXCEPTION_FRAME_BYTES = 104
LIBRARY_CALL_BYTES = 64
ROOT = "Reset_Handler"
HANDLER_SUFFIX = "_Handler"
INDIRECT = "__indirect_call"

NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
FRAME = re.compile(r"\\n(\d+) bytes \(([a-z,]+)\)")


class StackError(ValueError):
    """The stack bound cannot be computed, or exceeds the board's stack reservation."""


@dataclass
class CallGraph:
    frames: dict[str, int] = field(default_factory=dict)      # title -> frame bytes
    names: dict[str, str] = field(default_factory=dict)       # title -> function name
    calls: dict[str, set[str]] = field(default_factory=dict)  # title -> callee titles
    dynamic: set[str] = field(default_factory=set)


def read_callgraph(ci_files: list[Path]) -> CallGraph:
    """Merge gcc's .ci files; static functions keep their file-qualified titles."""
    graph = CallGraph()
    for path in ci_files:
        text = Path(path).read_text()
        for title, label in NODE.findall(text):
            frame = FRAME.search(label)
            if frame is None:
                continue   # a declaration only: defined in another file or a library
            graph.frames[title] = int(frame.group(1))
            graph.names[title] = label.split("\\n", 1)[0]
            if frame.group(2) != "static":
                graph.dynamic.add(title)
        for source, target in EDGE.findall(text):
            graph.calls.setdefault(source, set()).add(target)
    return graph


@dataclass
class StackBound:
    bytes: int
    main_chain: list[str]
    handlers: dict[str, int]
    library_calls: list[str]

    def report(self) -> dict:
        return {"bound_bytes": self.bytes, "deepest_chain": self.main_chain,
                "handlers": self.handlers, "library_calls": self.library_calls,
                "exception_frame_bytes": EXCEPTION_FRAME_BYTES,
                "library_call_bytes": LIBRARY_CALL_BYTES}


DIRECT_CALL_RELOCATIONS = ("R_ARM_THM_CALL", "R_ARM_THM_JUMP24", "R_ARM_THM_JUMP19",
                           "R_ARM_CALL", "R_ARM_JUMP24", "R_ARM_PC24")


def address_taken(readelf_output: str) -> set[str]:
    """Names of symbols used other than as a call target, from `readelf -rW` of the objects.

    These are the only functions an indirect call can reach. A section symbol such as
    `.text.uart_write` (a static function under -ffunction-sections) yields `uart_write`.
    """
    names = set()
    for line in readelf_output.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[2].startswith("R_ARM_"):
            continue
        if fields[2] in DIRECT_CALL_RELOCATIONS:
            continue
        name = fields[4]
        if name.startswith(".text."):
            name = name[len(".text."):]
        names.add(name)
    return names


def stack_bound(graph: CallGraph, taken: set[str]) -> StackBound:
    """Compute the worst-case stack of the firmware; raise StackError when unbounded.

    taken: functions whose address is taken (address_taken), the indirect call targets.
    """
    library: set[str] = set()
    memo: dict[str, tuple[int, list[str]]] = {}
    roots = {title for title, name in graph.names.items() if name.endswith(HANDLER_SUFFIX)}
    if ROOT not in graph.frames:
        raise StackError(f"no {ROOT} in the call graph; the stack bound needs the startup code")

    def deepest(title: str, path: tuple[str, ...]) -> tuple[int, list[str]]:
        if title in path:
            chain = " -> ".join(graph.names.get(t, t) for t in path + (title,))
            raise StackError(f"recursion makes the stack unbounded: {chain}; remove it")
        if title in memo:
            return memo[title]
        if title == INDIRECT:
            candidates = [t for t in graph.frames if graph.names[t] in taken
                          and t not in roots and t not in path]
            best = max((deepest(t, path) for t in candidates), default=(0, []))
            return best[0], [f"(indirect) {best[1][0]}" if best[1] else "(indirect)"] + best[1][1:]
        if title not in graph.frames:
            library.add(title)
            return LIBRARY_CALL_BYTES, [f"{title} (library, estimated)"]
        if title in graph.dynamic:
            raise StackError(f"function {graph.names[title]} has a dynamic stack frame "
                             "(alloca or a variable-length array); use a fixed-size buffer")
        below = max((deepest(callee, path + (title,))
                     for callee in graph.calls.get(title, ())), default=(0, []))
        result = (graph.frames[title] + below[0], [graph.names[title]] + below[1])
        memo[title] = result
        return result

    main_bytes, chain = deepest(ROOT, ())
    handlers = {}
    for title in sorted(roots - {ROOT}):
        handlers[graph.names[title]] = deepest(title, ())[0] + EXCEPTION_FRAME_BYTES
    # A function that nothing in C calls or takes the address of is reached from assembly,
    # e.g. board_report_fault from the naked fault handler: add its chain as well.
    called = set().union(*graph.calls.values()) if graph.calls else set()
    for title in sorted(set(graph.frames) - called - roots):
        if graph.names[title] not in taken and title != ROOT:
            handlers[f"{graph.names[title]} (from assembly)"] = deepest(title, ())[0]
    return StackBound(main_bytes + sum(handlers.values()), chain, handlers, sorted(library))
