"""Time `rrgen build` of the full-size Sudoku-MLP model and measure its peak memory.

Usage (from the repository root; run the rrgen you want to measure, e.g. with PYTHONPATH):

    python tools/bench_build.py [--boards host,mps2-an500] [--bits 4] [--calibration 8]
                                [--timeout 600] [--keep DIR]

The script saves a seeded random checkpoint of the public Sudoku-MLP configuration
(hidden 512, expansion 4, 2 layers, MLP token mixing, 16 prefix positions, 81 cells,
H_cycles 3, L_cycles 6: 5.03 M parameters) with torch.manual_seed(0) in a temporary
folder. For each board it then runs

    python -m rrgen -v build --board BOARD --bits BITS --model FILE --calibration N --out DIR

as a user would, and prints, per board:

- one line per build stage (load, calibrate, quantize, plan+emit, compile+link, finish)
  with its wall time and the Python process's peak RSS during it, from the
  "stage NAME: ..." lines that `rrgen -v build` logs (see rrgen/build.py). "start-up"
  is the rest of the wall time: interpreter start, imports, argument checks and exit;
- exit status and wall seconds of the whole command;
- the phases, taken from the processes that the build starts. "generate" runs from the
  start to the first toolchain process (load, calibrate, quantize, plan, emit: Python
  only). "compile+link" runs from the first toolchain process to the exit of the last
  one, and "finish" is the rest (reports, qmodel.npz). Every descendant except `git` counts as
  toolchain. A descendant that still runs the Python executable is a child between
  fork and exec: it shares the build's memory, so it is not counted at all. The phases
  come from polling /proc every 20 ms, so each boundary is known to within about 20 ms;
- peak memory, four figures. The largest single process of the tree comes from
  ru_maxrss of RUSAGE_CHILDREN and is exact. The Python process alone is its VmHWM. The
  largest toolchain process is its VmHWM at the last poll. The tree total is the largest
  sum of VmRSS over the whole tree at one poll.

- the verdict against the build goal: the whole command within TARGET_SECONDS (30 s) of
  wall time, and its memory within TARGET_BYTES (1 GB, 10**9 bytes = 954 MiB). The memory
  compared is the larger of the largest single process and the tree total.
- the load average before and after the build, since the machine may be shared.

A build that runs past --timeout is killed (its process group) and reported as such.
A build that does not fit the board's flash exits with status 2. The script prints
rrgen's one-line error, which names the bytes by which the region overflowed.
Memory units: MiB (2**20 bytes).

This is a benchmark, not a test: the numbers depend on the machine and its load. Run it
on an idle machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_SECONDS = 0.02
TARGET_SECONDS = 30.0
TARGET_BYTES = 10**9
STAGE_LINE = re.compile(r"rrgen\.build: stage (\S+): ([0-9.]+) s, peak RSS ([0-9]+) MiB")


def save_full_size_checkpoint(path: Path) -> int:
    """Save the seeded full-size Sudoku-MLP model to path; returns its parameter count."""
    import torch

    from rrgen import checkpoint
    from rrgen.config import TRMConfig
    from rrgen.model import TRM

    config = TRMConfig(vocab_size=11, seq_len=81, hidden_size=512, expansion=4.0,
                       L_layers=2, H_cycles=3, L_cycles=6, puzzle_emb_len=16, mlp_t=True,
                       task="sudoku")
    torch.manual_seed(0)
    model = TRM(config).eval()
    checkpoint.save(model, path)
    return sum(p.numel() for p in model.parameters())


def children_of(pid: int) -> list[int]:
    """List the child process ids of pid (all its threads' children)."""
    children = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as file:
                children += [int(text) for text in file.read().split()]
        except FileNotFoundError:
            continue
    return children


def descendants_of(pid: int) -> list[int]:
    result, pending = [], children_of(pid)
    while pending:
        child = pending.pop()
        result.append(child)
        pending += children_of(child)
    return result


def read_status(pid: int) -> dict[str, str] | None:
    """Return the fields of /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            lines = file.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return dict(line.split(":", 1) for line in lines if ":" in line)


def kib(status: dict[str, str], field: str) -> int:
    """Return a memory field of /proc/PID/status in KiB (0 when absent, as for zombies)."""
    value = status.get(field, "0 kB").split()
    return int(value[0]) if value else 0


@dataclasses.dataclass
class Measurement:
    """Resources of one polled build run: times in seconds since its start, memory in KiB."""

    returncode: int | None = None      # None: killed after the timeout
    wall: float = 0.0
    first_tool: float | None = None    # first toolchain process seen
    last_tool: float | None = None     # last poll at which a toolchain process was alive
    python_hwm: int = 0
    tool_hwm: int = 0
    tool_name: str = ""
    tree_rss: int = 0
    largest_process: int = 0
    stderr_tail: str = ""
    stages: list = dataclasses.field(default_factory=list)   # (name, seconds, peak MiB)


def run_and_poll(command: list[str], timeout: float, log_path: Path) -> Measurement:
    """Run command in its own process group, polling its process tree until it exits."""
    result = Measurement()
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        while True:
            # wait4 returns the rusage of this child, whose ru_maxrss is the largest of
            # the child and every descendant that it waited for.
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            now = time.monotonic() - start
            if pid:
                result.returncode = os.waitstatus_to_exitcode(status)
                result.largest_process = usage.ru_maxrss
                break
            if now > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                _, _, usage = os.wait4(process.pid, 0)
                result.largest_process = usage.ru_maxrss
                break
            poll_tree(process.pid, now, result)
            time.sleep(POLL_SECONDS)
        # Reaped above by wait4: tell Popen, so that it does not wait again.
        process.returncode = -signal.SIGKILL if result.returncode is None else result.returncode
    result.wall = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    result.stderr_tail = text.strip()[-2000:]
    result.stages = [(name, float(seconds), int(peak))
                     for name, seconds, peak in STAGE_LINE.findall(text)]
    return result


def executable_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def poll_tree(root: int, now: float, result: Measurement) -> None:
    """Record one sample of the process tree under root into result."""
    status = read_status(root)
    if status is None:
        return
    result.python_hwm = max(result.python_hwm, kib(status, "VmHWM"))
    total = kib(status, "VmRSS")
    python = executable_of(root)
    for pid in descendants_of(root):
        child = read_status(pid)
        if child is None or executable_of(pid) == python:
            continue
        total += kib(child, "VmRSS")
        if child.get("Name", "").strip() == "git":
            continue
        if result.first_tool is None:
            result.first_tool = now
        result.last_tool = now
        if kib(child, "VmHWM") > result.tool_hwm:
            result.tool_hwm = kib(child, "VmHWM")
            result.tool_name = child.get("Name", "").strip()
    result.tree_rss = max(result.tree_rss, total)


def mib(kib_value: int) -> str:
    return f"{kib_value / 1024:.0f} MiB"


def print_measurement(board: str, command: list[str], m: Measurement,
                      loads: tuple[float, float]) -> None:
    print(f"\n== board {board}: {' '.join(command)}")
    print(f"   load average {loads[0]:.2f} before, {loads[1]:.2f} after, on "
          f"{os.cpu_count()} CPUs")
    if m.returncode is None:
        print(f"   killed after {m.wall:.1f} s (timeout)")
    else:
        print(f"   exit status {m.returncode}, wall {m.wall:.1f} s")
    if m.returncode not in (0, None):
        print("   " + m.stderr_tail.splitlines()[-1] if m.stderr_tail else "   (no output)")
    if m.stages:
        print(f"   {'stage':<14}{'wall':>9}{'peak RSS':>11}")
        for name, seconds, peak in m.stages:
            print(f"   {name:<14}{seconds:>7.2f} s{peak:>7d} MiB")
        rest = m.wall - sum(seconds for _, seconds, _ in m.stages)
        print(f"   {'start-up':<14}{rest:>7.2f} s")
    if m.first_tool is None:
        print(f"   generate {m.wall:.1f} s; no toolchain process was seen")
    else:
        print(f"   from the process tree: generate {m.first_tool:.1f} s, compile+link "
              f"{m.last_tool - m.first_tool:.1f} s, finish {m.wall - m.last_tool:.1f} s")
    print(f"   peak RSS: largest process {mib(m.largest_process)}, Python {mib(m.python_hwm)}, "
          f"largest toolchain process {mib(m.tool_hwm)} ({m.tool_name or 'none'}), "
          f"whole tree at one poll {mib(m.tree_rss)}")
    peak = max(m.largest_process, m.tree_rss) * 1024
    time_ok = m.returncode is not None and m.wall <= TARGET_SECONDS
    memory_ok = peak <= TARGET_BYTES
    print(f"   total: {m.wall:.1f} s against {TARGET_SECONDS:.0f} s "
          f"({'met' if time_ok else 'MISSED'}), {peak / 2**20:.0f} MiB against "
          f"{TARGET_BYTES / 2**20:.0f} MiB = 1 GB ({'met' if memory_ok else 'MISSED'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="host,mps2-an500",
                        help="comma-separated boards to build (default host,mps2-an500)")
    parser.add_argument("--bits", default="4", help="--bits of the build (default 4)")
    parser.add_argument("--calibration", type=int, default=8,
                        help="calibration puzzles of the build (default 8)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds after which a build is killed (default 600)")
    parser.add_argument("--keep", type=Path,
                        help="folder that keeps the checkpoint, builds and logs "
                             "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rrgen-bench-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "sudoku_mlp_h512.safetensors"
        parameters = save_full_size_checkpoint(model)
        print(f"checkpoint {model}: {parameters} parameters, seed 0; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for board in args.boards.split(","):
            out = folder / f"build-{board}"
            command = [sys.executable, "-m", "rrgen", "-v", "build", "--board", board,
                       "--bits", args.bits, "--model", str(model),
                       "--calibration", str(args.calibration), "--out", str(out)]
            before = os.getloadavg()[0]
            measurement = run_and_poll(command, args.timeout, folder / f"build-{board}.log")
            print_measurement(board, command, measurement, (before, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
