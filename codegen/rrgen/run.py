"""Run puzzles on built firmware: the host build, QEMU, or a real board on a serial port.

Pipeline stage: build -> run. The same Client talks to all three (a pipe, QEMU's UART on
a loopback TCP socket through pyserial's socket:// URL, or /dev/ttyACM0). With check=True
every step of every puzzle is compared byte for byte with the integer reference: output
tokens, the halt logit, and the carry y and z (the device sends them in TRACE packets).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import maze, reference, sudoku, tasks
from .build import BuildError, load_build
from .client import Client, ProcessPort, open_serial
from .qemu import run_qemu

log = logging.getLogger("rrgen.run")


class PortError(ValueError):
    """A serial port that cannot be opened; the message names the port and the fix."""


@dataclass
class Mismatch:
    puzzle: int
    step: int
    what: str
    first_index: int
    actual: int
    expected: int
    count: int

    def __str__(self) -> str:
        return (f"puzzle {self.puzzle} step {self.step}: {self.what} differs at index "
                f"{self.first_index} (device {self.actual}, reference {self.expected}), "
                f"{self.count} bytes differ")


@dataclass
class RunSummary:
    puzzles: int = 0
    exact: int = 0
    cells_right: int = 0
    cells: int = 0
    steps_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    steps_used: list[int] = field(default_factory=list)


def compare(name: str, puzzle: int, step: int, actual: np.ndarray,
            expected: np.ndarray) -> Mismatch | None:
    """First differing index, both values and the count, or None when equal."""
    actual = np.asarray(actual).reshape(-1)
    expected = np.asarray(expected).reshape(-1)
    if actual.shape != expected.shape:
        return Mismatch(puzzle, step, f"{name} length", 0, actual.size, expected.size, -1)
    diff = np.flatnonzero(actual != expected)
    if diff.size == 0:
        return None
    i = int(diff[0])
    return Mismatch(puzzle, step, name, i, int(actual[i]), int(expected[i]), int(diff.size))


@contextlib.contextmanager
def open_device(build_dir: Path | None, port: str | None, icount: bool = False,
                board: str | None = None, timeout: float = 600.0):
    """Yield a connected Client for a real port, the host build or QEMU.

    timeout: seconds to wait for each reply in QEMU (a SOLVE reply comes after all steps).
    """
    if port is not None:
        import serial

        try:
            # pyserial URLs (socket://HOST:PORT, rfc2217://...) as well as device paths.
            serial_port = serial.serial_for_url(port, timeout=1.0) if "://" in port else open_serial(port)
        except (serial.SerialException, OSError, ValueError) as err:
            raise PortError(f"cannot open serial port {port!r}: {err}; check the device path "
                             "(for example /dev/ttyACM0) and that you may open it") from None
        try:
            client = Client(serial_port)
            yield client
        finally:
            serial_port.close()
        return
    info = load_build(build_dir, board)
    firmware = info["dir"] / info["firmware"]
    if info["board"] == "host":
        with ProcessPort([str(firmware)]) as process:
            client = Client(process)
            client.wait_ready()
            yield client
        return
    if not info.get("qemu_machine"):
        raise BuildError(f"board {info['board']!r} has no QEMU machine; flash it and use "
                         "--port DEVICE, or build for --board mps2-an500")
    with run_qemu(firmware, info["qemu_machine"], icount_shift=0 if icount else None) as session:
        client = Client(session.port, timeout=timeout)
        client.wait_ready(timeout=30.0)
        yield client


def expected_answer(task_name: str, tokens: np.ndarray) -> np.ndarray | None:
    """Return the unique solution (tokens) of one puzzle, or None when the task has no solver here."""
    if task_name == "sudoku":
        solution = sudoku.solve(sudoku.from_tokens(tokens))
        return None if solution is None else sudoku.to_tokens(solution)
    if task_name == "maze":
        side = int(round(len(tokens) ** 0.5))
        grid = tokens.reshape(side, side)
        try:
            if maze.count_shortest_paths(grid) != 1:
                return None
            return maze.solve(grid).reshape(-1)
        except ValueError:
            return None
    return None


def verdict(task_name: str, tokens: np.ndarray, answer: np.ndarray,
            expected: np.ndarray | None) -> tuple[str, int | None]:
    """Judge one predicted grid; return a short verdict and the right cells (None if unknown)."""
    if expected is not None:
        supervised = expected != 0
        right = int(((answer == expected) & supervised).sum())
        wrong = int(supervised.sum()) - right
        return ("solved" if wrong == 0 else f"wrong ({wrong} cells)"), right
    if task_name == "sudoku":
        grid, digits = sudoku.from_tokens(tokens), sudoku.from_tokens(answer)
        keeps_givens = bool(np.all((grid == 0) | (digits == grid)))
        if sudoku.is_valid_solution(digits) and keeps_givens:
            return "a valid solution (the puzzle has no unique solution)", None
        return "invalid (the puzzle has no unique solution to compare with)", None
    return "no reference answer to compare with", None


def run_puzzles(client: Client, tokens: np.ndarray, qm=None, max_steps: int = 0,
                halt: bool = False, printer=print, task=None,
                puzzle_ids: np.ndarray | None = None) -> RunSummary:
    """Solve every puzzle (tokens [N, seq_len]) on the device; with `qm`, check every step.

    task: a tasks.Task that decodes the device output (default Sudoku).
    """
    task = task or tasks.get_task("sudoku")
    summary = RunSummary()
    device = client.info()
    # INFO carries one weight_bits byte, the smallest when layers mix, so the mixture comes from the build.
    bits = "INT4 and INT8" if qm is not None and qm.is_mixed() else f"INT{device.weight_bits}"
    printer(f"device: model {device.name!r} id 0x{device.model_id:08x}, {bits} "
            f"weights, arena {device.arena_bytes} bytes, {device.positions}x{device.hidden_size} carry")
    if qm is not None and device.model_id != qm.model_id():
        raise BuildError(f"device runs model id 0x{device.model_id:08x}, the build folder contains "
                         f"0x{qm.model_id():08x}; flash the firmware of this build")
    ids = np.zeros(len(tokens), dtype=np.int64) if puzzle_ids is None else puzzle_ids
    for index, puzzle in enumerate(np.asarray(tokens, dtype=np.int64)):
        result, traces = client.solve(puzzle.astype(np.uint8), puzzle_id=int(ids[index]),
                                      max_steps=max_steps, halt=halt, trace=qm is not None)
        answer = np.frombuffer(bytes(result.tokens), dtype=np.uint8).astype(np.int64)
        summary.puzzles += 1
        summary.cycles.append(result.cycles)
        summary.steps_used.append(result.steps_used)
        expected = expected_answer(task.name, puzzle)
        text, right = verdict(task.name, puzzle, answer, expected)
        if right is not None:
            cells = int((expected != 0).sum())
            summary.cells_right += right
            summary.cells += cells
            summary.exact += int(right == cells)
        where = f"{result.steps_used} step{'' if result.steps_used == 1 else 's'}, {result.cycles} cycles"
        if task.name == "sudoku":
            printer(f"puzzle {index + 1}: {sudoku.format_grid(sudoku.from_tokens(puzzle))}")
            printer(f"  answer   {sudoku.format_grid(sudoku.from_tokens(answer))}  {text}, {where}")
        else:
            printer(f"puzzle {index + 1}:")
            printer(task.format_answer(puzzle))
            printer(f"answer: {text}, {where}")
            printer(task.format_answer(answer))

        if qm is not None:
            tokens_one = puzzle
            ref = reference.solve(qm, tokens_one[None], ids[index:index + 1],
                                  max_steps=max_steps, halt=halt)
            problems = []
            if result.steps_used != int(ref.steps_used[0]):
                problems.append(Mismatch(index, 0, "steps used", 0, result.steps_used,
                                         int(ref.steps_used[0]), 1))
            if len(traces) != result.steps_used:
                problems.append(Mismatch(index, 0, "trace count", 0, len(traces),
                                         result.steps_used, 1))
            for step, trace in enumerate(traces[:int(ref.steps_used[0])]):
                for name, actual, expected in (
                        ("tokens", np.frombuffer(bytes(trace.tokens), np.uint8), ref.tokens[step, 0]),
                        ("q_halt", [trace.q_halt], [ref.q_halt[step, 0]]),
                        ("carry y", np.frombuffer(bytes(trace.y), np.int8), ref.y[step, 0]),
                        ("carry z", np.frombuffer(bytes(trace.z), np.int8), ref.z[step, 0])):
                    m = compare(name, index, step + 1, actual, expected)
                    if m:
                        problems.append(m)
                summary.steps_checked += 1
            m = compare("final tokens", index, result.steps_used, answer,
                        ref.tokens[int(ref.steps_used[0]) - 1, 0])
            if m:
                problems.append(m)
            for p in problems:
                printer(f"  MISMATCH {p}")
            summary.mismatches += problems
    return summary


def run_batch(batch: Path, tokens: np.ndarray, carry_bytes: int = 0, max_steps: int = 0,
              halt: bool = False, jobs: int = 1, puzzle_ids: np.ndarray | None = None) -> list[dict]:
    """Run the host build's bulk runner (firmware/host/batch_main.c) on tokens [B, seq_len].

    With carry_bytes > 0 (positions * hidden) the carry y and z come back after every step.
    jobs > 1 splits the puzzles over that many processes. Returns one dict per puzzle:
    status, steps_used and per-step tokens, q_halt, y, z.
    """
    ids = np.zeros(len(tokens), dtype=np.int64) if puzzle_ids is None else np.asarray(puzzle_ids)
    if jobs > 1 and len(tokens) > 1:
        from concurrent.futures import ThreadPoolExecutor

        parts_n = min(jobs, len(tokens))
        chunks = zip(np.array_split(tokens, parts_n), np.array_split(ids, parts_n))
        with ThreadPoolExecutor(parts_n) as pool:
            parts = pool.map(lambda c: run_batch(batch, c[0], carry_bytes, max_steps, halt,
                                                 puzzle_ids=c[1]), chunks)
        return [record for part in parts for record in part]
    count, seq_len = tokens.shape
    trace = carry_bytes > 0
    payload = bytearray(struct.pack("<IBB", count, max_steps, int(halt) | (int(trace) << 1)))
    for i in range(count):
        payload += struct.pack("<I", int(ids[i])) + tokens[i].astype(np.uint8).tobytes()
    done = subprocess.run([str(batch)], input=bytes(payload), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{batch} failed with status {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')}")
    data, offset, records = done.stdout, 0, []
    for _ in range(count):
        status, used = struct.unpack_from("<iB", data, offset)
        offset += 5
        record = {"status": status, "steps_used": used, "tokens": [], "q_halt": [], "y": [], "z": []}
        for _ in range(used):
            record["tokens"].append(np.frombuffer(data, np.uint8, seq_len, offset))
            offset += seq_len
            record["q_halt"].append(struct.unpack_from("<h", data, offset)[0])
            offset += 2
            if trace:
                record["y"].append(np.frombuffer(data, np.int8, carry_bytes, offset))
                offset += carry_bytes
                record["z"].append(np.frombuffer(data, np.int8, carry_bytes, offset))
                offset += carry_bytes
        records.append(record)
    if offset != len(data):
        raise RuntimeError(f"{batch} wrote {len(data)} bytes, expected {offset}")
    return records
