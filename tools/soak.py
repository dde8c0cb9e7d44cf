"""Soak test: many puzzles over the serial link into QEMU, checked against the host build.

Usage (from the repository root):

    PYTHONPATH=codegen python tools/soak.py --puzzles 10000
    PYTHONPATH=codegen python tools/soak.py --puzzles 200 --model sudoku-mlp

The script builds --model (default: the seeded tiny TRM of tools/fuzz.py) for the host
and for mps2-an500 into a temporary folder, and generates --puzzles seeded Sudoku
puzzles. The host build's bulk runner solves all of them first; even-numbered puzzles run
every supervision step, odd-numbered ones stop at the halt logit. Then QEMU starts with
its UART on a loopback socket (opened with pyserial), and the script keeps --window
SOLVE requests in flight, with request ids 1, 2, 3, ... Every reply must carry the id of
the oldest outstanding request (no loss, no duplicate, no reordering) and the same
tokens and step count as the host build. The run stops at the first difference, or when
no reply arrives within --reply-timeout seconds.

Progress goes to stdout every 500 puzzles with the rate; exit status 0 when all
puzzles matched, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from rrgen import protocol, sudoku
from rrgen.build import build
from rrgen.client import Client
from rrgen.protocol import Error, SolveRequest, SolveResult
from rrgen.qemu import run_qemu
from rrgen.run import run_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz import save_tiny_model  # noqa: E402


def expected_results(batch: Path, tokens: np.ndarray) -> list[tuple[bytes, int]]:
    """(final tokens, steps used) per puzzle from the host build; odd indices halt early."""
    expected = [None] * len(tokens)
    for halt in (False, True):
        index = np.arange(int(halt), len(tokens), 2)
        records = run_batch(batch, tokens[index], halt=halt, jobs=2)
        for i, record in zip(index, records):
            if record["status"] != 0:
                raise RuntimeError(f"host build returned status {record['status']} on puzzle {i}")
            expected[i] = (record["tokens"][-1].tobytes(), record["steps_used"])
    return expected


def solve_frame(request_id: int, tokens: np.ndarray, halt: bool) -> bytes:
    request = SolveRequest(tokens.astype(np.uint8).tobytes(), 0, 0,
                           protocol.FLAG_HALT if halt else 0)
    return protocol.encode_frame(protocol.pack_packet(protocol.SOLVE, request_id,
                                                      request.pack_body()))


def soak(client: Client, tokens: np.ndarray, expected, window: int,
         reply_timeout: float) -> tuple[int, list[str]]:
    """Send every puzzle with `window` requests in flight; return (checked, failures)."""
    outstanding: deque[int] = deque()
    next_index, checked, start = 0, 0, time.monotonic()
    while checked < len(tokens):
        while next_index < len(tokens) and len(outstanding) < window:
            client.send_raw(solve_frame(next_index + 1, tokens[next_index], next_index % 2 == 1))
            outstanding.append(next_index)
            next_index += 1
        packet = client.read_packet(reply_timeout)
        index = outstanding[0]
        if packet is None:
            return checked, [f"no reply to puzzle {index} (id {index + 1}) within "
                             f"{reply_timeout} s"]
        if packet.type == protocol.ERROR:
            return checked, [f"puzzle {index}: ERROR reply {Error.unpack_body(packet.body)}"]
        if packet.request_id != index + 1:
            return checked, [f"puzzle {index}: reply carries id {packet.request_id}, expected "
                             f"{index + 1} (lost, duplicated or reordered reply)"]
        result = SolveResult.unpack_body(packet.body)
        want_tokens, want_steps = expected[index]
        if result.tokens != want_tokens or result.steps_used != want_steps:
            return checked, [f"puzzle {index}: answer differs from the host build "
                             f"(steps {result.steps_used}, host {want_steps})"]
        outstanding.popleft()
        checked += 1
        if checked % 500 == 0:
            elapsed = time.monotonic() - start
            print(f"  {checked} puzzles checked in {elapsed:.0f} s "
                  f"({checked / elapsed:.1f} puzzles/s)", flush=True)
    stray = client.read_packet(1.0)
    if stray is not None:
        return checked, [f"unexpected {stray.type_name} for id {stray.request_id} after the "
                         "last reply"]
    return checked, []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puzzles", type=int, default=10000, help="puzzles to send")
    parser.add_argument("--seed", type=int, default=3, help="seed of the generated puzzles")
    parser.add_argument("--model", default="tiny",
                        help="tiny (default), a zoo name or a .safetensors checkpoint")
    parser.add_argument("--window", type=int, default=4, help="requests in flight (1..64)")
    parser.add_argument("--reply-timeout", type=float, default=60.0,
                        help="seconds to wait for each reply")
    args = parser.parse_args(argv)
    if args.puzzles < 1 or not 1 <= args.window <= 64:
        print(f"soak: error: --puzzles {args.puzzles} or --window {args.window} is invalid; "
              "use --puzzles 1 or more and --window 1..64", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="rrgen-soak-") as tmp:
        work = Path(tmp)
        model = save_tiny_model(work / "tiny.safetensors") if args.model == "tiny" else args.model
        host = build(model, "host", 8, work / "host", calibration_puzzles=8)
        arm = build(model, "mps2-an500", 8, work / "mps2-an500", calibration_puzzles=8)
        print(f"generating {args.puzzles} puzzles (seed {args.seed})", flush=True)
        puzzles, _ = sudoku.generate(args.puzzles, seed=args.seed)
        tokens = sudoku.to_tokens(puzzles)
        expected = expected_results(host.out_dir / "batch", tokens)
        print(f"soak: {args.puzzles} puzzles into QEMU mps2-an500, window {args.window}",
              flush=True)
        start = time.monotonic()
        with run_qemu(arm.out_dir / "firmware.elf", "mps2-an500") as session:
            client = Client(session.port, timeout=args.reply_timeout, retries=0)
            client.wait_ready()
            checked, failures = soak(client, tokens, expected, args.window, args.reply_timeout)
        elapsed = time.monotonic() - start
    print(f"{checked} of {args.puzzles} puzzles answered in order, each equal to the host "
          f"build, in {elapsed:.0f} s ({checked / max(elapsed, 1e-9):.1f} puzzles/s); "
          f"{len(failures)} failures")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
