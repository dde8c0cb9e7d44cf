"""Protocol fuzzing against real firmware: the host build or QEMU.

Last stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
A seeded generator writes random, mutated, truncated, oversized, replayed and valid
frames to the firmware. ReceiverModel mirrors the firmware's receive state machine
(rr_protocol_feed in firmware/src/protocol.c, as docs/protocol.md specifies it) and
predicts the one reply each frame must get: an ERROR code, an INFO reply or a SOLVE
reply. Every SOLVE reply, and every TRACE before it, is compared with the numpy integer
reference (reference.py). A reply that is missing within the time limit counts as a hang.

tools/fuzz.py runs this at scale.
"""

from __future__ import annotations

import contextlib
import logging
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import protocol, reference
from .client import Client, ProcessPort
from .protocol import Error, Info, ProtocolError, SolveResult, Trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expected:
    """One reply the firmware owes: an ERROR with `code`, an INFO reply, or a SOLVE reply."""

    kind: str                   # "error", "info" or "solve"
    request_id: int
    code: int = 0               # ERROR code when kind is "error"
    tokens: bytes = b""         # SOLVE request fields when kind is "solve"
    puzzle_id: int = 0
    max_steps: int = 0
    flags: int = 0


def rx_limit_bytes(seq_len: int) -> int:
    """Encoded bytes the firmware buffers per frame (RR_COBS_MAX_ENCODED of a full SOLVE)."""
    packet = protocol.MIN_PACKET_BYTES + 8 + seq_len
    return packet + packet // 254 + 1


class ReceiverModel:
    """The firmware's receive state: bytes up to a 0x00, at most rx_limit of them kept."""

    def __init__(self, info: Info):
        self.info = info
        self.rx_limit = rx_limit_bytes(info.seq_len)
        self.pending = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> list[Expected]:
        """Consume bytes as the firmware does; return the replies the completed frames get."""
        replies = []
        for byte in data:
            if byte != 0:
                if len(self.pending) < self.rx_limit:
                    self.pending.append(byte)
                else:
                    self.dropped += 1
                continue
            if self.dropped:
                replies.append(Expected("error", protocol.UNTRUSTED_ID, protocol.ERR_TOO_LONG))
            elif self.pending:
                replies.append(self.predict(bytes(self.pending)))
            self.pending.clear()
            self.dropped = 0
        return replies

    def predict(self, encoded: bytes) -> Expected:
        """Predict the reply to one frame's encoded bytes, following docs/protocol.md."""
        untrusted = protocol.UNTRUSTED_ID
        try:
            packet = protocol.cobs_decode(encoded)
        except ProtocolError:
            return Expected("error", untrusted, protocol.ERR_INVALID_COBS)
        if len(packet) < protocol.MIN_PACKET_BYTES:
            return Expected("error", untrusted, protocol.ERR_TOO_SHORT)
        try:
            parsed = protocol.unpack_packet(packet)
        except ProtocolError:
            return Expected("error", untrusted, protocol.ERR_BAD_CRC)
        request_id, body = parsed.request_id, parsed.body
        if parsed.type == protocol.INFO:
            if body:
                return Expected("error", request_id, protocol.ERR_BODY_LENGTH)
            return Expected("info", request_id)
        if parsed.type != protocol.SOLVE:
            return Expected("error", request_id, protocol.ERR_UNKNOWN_TYPE)
        return self.predict_solve(request_id, body)

    def predict_solve(self, request_id: int, body: bytes) -> Expected:
        info = self.info
        if len(body) < 8:
            return Expected("error", request_id, protocol.ERR_BODY_LENGTH)
        flags, max_steps, puzzle_id, n_tokens = struct.unpack_from("<BBIH", body, 0)
        tokens = body[8:]
        if len(body) != 8 + n_tokens:
            return Expected("error", request_id, protocol.ERR_BODY_LENGTH)
        if flags & ~protocol.KNOWN_FLAGS:
            return Expected("error", request_id, protocol.ERR_INVALID_ARGUMENT)
        if n_tokens != info.seq_len:
            return Expected("error", request_id, protocol.ERR_BODY_LENGTH)
        if puzzle_id >= info.num_puzzle_identifiers:
            return Expected("error", request_id, protocol.ERR_INVALID_PUZZLE_ID)
        if any(token >= info.vocab_size for token in tokens):
            return Expected("error", request_id, protocol.ERR_INVALID_TOKEN)
        return Expected("solve", request_id, tokens=bytes(tokens), puzzle_id=puzzle_id,
                        max_steps=max_steps, flags=flags)


class ReferenceCache:
    """Integer reference results per SOLVE request, computed once per distinct request."""

    def __init__(self, qm):
        self.qm = qm
        self.cache: dict[tuple, reference.Trace] = {}

    def solve(self, expected: Expected) -> reference.Trace:
        key = (expected.tokens, expected.puzzle_id, expected.max_steps,
               bool(expected.flags & protocol.FLAG_HALT))
        if key not in self.cache:
            tokens = np.frombuffer(expected.tokens, np.uint8).astype(np.int64)[None]
            self.cache[key] = reference.solve(self.qm, tokens,
                                              np.array([expected.puzzle_id], np.int64),
                                              max_steps=expected.max_steps,
                                              halt=bool(expected.flags & protocol.FLAG_HALT))
            if len(self.cache) > 4096:
                self.cache.pop(next(iter(self.cache)))
        return self.cache[key]


class Checker:
    """Reads the replies a device owes and compares them with the prediction."""

    def __init__(self, client: Client, qm, info: Info, reply_timeout: float):
        self.client = client
        self.reference = ReferenceCache(qm)
        self.info = info
        self.reply_timeout = reply_timeout

    def next_packet(self, expected: Expected) -> protocol.Packet:
        packet = self.client.read_packet(self.reply_timeout)
        if packet is None:
            raise AssertionError(f"no reply within {self.reply_timeout} s (the firmware may "
                                 f"hang) while expecting {describe(expected)}")
        return packet

    def check(self, expected: Expected) -> None:
        """Read the packets owed for one prediction; raise AssertionError on any difference."""
        want = f"expected {describe(expected)}"
        if expected.kind == "solve" and expected.flags & protocol.FLAG_TRACE:
            ref = self.reference.solve(expected)
            steps = int(ref.steps_used[0])
            for step in range(steps):
                packet = self.next_packet(expected)
                if packet.type != protocol.TRACE or packet.request_id != expected.request_id:
                    raise AssertionError(f"got {got(packet)} for TRACE {step + 1}, {want}")
                trace = Trace.unpack_body(packet.body)
                self.compare_trace(trace, ref, step, want)
        packet = self.next_packet(expected)
        if packet.request_id != expected.request_id:
            raise AssertionError(f"got {got(packet)}, {want}")
        if expected.kind == "error":
            if packet.type != protocol.ERROR:
                raise AssertionError(f"got {got(packet)}, {want}")
            error = Error.unpack_body(packet.body)
            if error.code != expected.code:
                raise AssertionError(f"got ERROR code {error.code} ({error.message}), {want}")
        elif expected.kind == "info":
            if packet.type != protocol.INFO_REPLY:
                raise AssertionError(f"got {got(packet)}, {want}")
            if Info.unpack_body(packet.body) != self.info:
                raise AssertionError(f"INFO reply differs from the first one, {want}")
        else:
            if packet.type != protocol.SOLVE_REPLY:
                raise AssertionError(f"got {got(packet)}, {want}")
            self.compare_result(SolveResult.unpack_body(packet.body),
                                self.reference.solve(expected), want)

    @staticmethod
    def compare_trace(trace: Trace, ref: reference.Trace, step: int, want: str) -> None:
        checks = {"step": (trace.step, step + 1),
                  "tokens": (trace.tokens, ref.tokens[step, 0].astype(np.uint8).tobytes()),
                  "q_halt": (trace.q_halt, saturate_int16(int(ref.q_halt[step, 0]))),
                  "carry y": (trace.y, ref.y[step, 0].astype(np.int8).tobytes()),
                  "carry z": (trace.z, ref.z[step, 0].astype(np.int8).tobytes())}
        for name, (actual, expected) in checks.items():
            if actual != expected:
                raise AssertionError(f"TRACE {step + 1} {name} differs from the reference, {want}")

    @staticmethod
    def compare_result(result: SolveResult, ref: reference.Trace, want: str) -> None:
        steps = int(ref.steps_used[0])
        checks = {"steps_used": (result.steps_used, steps),
                  "tokens": (result.tokens, ref.tokens[steps - 1, 0].astype(np.uint8).tobytes()),
                  "q_halt": (result.q_halt, saturate_int16(int(ref.q_halt[steps - 1, 0])))}
        for name, (actual, expected) in checks.items():
            if actual != expected:
                raise AssertionError(f"SOLVE reply {name} differs from the reference, {want}")


def saturate_int16(value: int) -> int:
    return max(-32768, min(32767, value))


def describe(expected: Expected) -> str:
    if expected.kind == "error":
        name = protocol.ERROR_NAMES.get(expected.code, str(expected.code))
        return f"ERROR {expected.code} ({name}) for id {expected.request_id}"
    return f"{expected.kind.upper()} reply for id {expected.request_id}"


def got(packet: protocol.Packet) -> str:
    return f"{packet.type_name} for id {packet.request_id}"


# ---- Frame generator ----

# Kinds of generated input and their weights. "valid-*" frames must get a correct reply;
# all others must get an ERROR (or nothing, for empty frames and unterminated fragments).
CASE_WEIGHTS = {
    "valid-solve": 22, "valid-info": 5, "replay": 5, "garbage": 14, "mutated": 20,
    "truncated": 10, "unterminated": 3, "oversized": 4, "semantic": 15, "empty": 2,
}


class FrameGenerator:
    """Seeded source of test input for one model; the same seed gives the same bytes."""

    def __init__(self, info: Info, seed: int):
        self.info = info
        self.rng = random.Random(seed)
        self.rx_limit = rx_limit_bytes(info.seq_len)
        self.last_valid = protocol.encode_frame(protocol.pack_packet(protocol.INFO, 1))
        self.kinds = list(CASE_WEIGHTS)
        self.weights = [CASE_WEIGHTS[k] for k in self.kinds]

    def request_id(self) -> int:
        return self.rng.randrange(0, 0x10000)

    def solve_body(self, tokens: bytes | None = None, flags: int | None = None,
                   puzzle_id: int | None = None) -> bytes:
        info, rng = self.info, self.rng
        if tokens is None:
            tokens = bytes(rng.randrange(info.vocab_size) for _ in range(info.seq_len))
        if flags is None:
            flags = rng.choice((0, protocol.FLAG_HALT, protocol.FLAG_TRACE,
                                protocol.FLAG_TRACE | protocol.FLAG_HALT))
        if puzzle_id is None:
            puzzle_id = rng.randrange(info.num_puzzle_identifiers)
        max_steps = rng.randrange(0, info.halt_max_steps + 3)
        return struct.pack("<BBIH", flags, max_steps, puzzle_id, len(tokens)) + tokens

    def valid_frame(self) -> bytes:
        if self.rng.random() < 0.2:
            packet = protocol.pack_packet(protocol.INFO, self.request_id())
        else:
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(), self.solve_body())
        return protocol.encode_frame(packet)

    def semantic_frame(self) -> bytes:
        """A frame with valid COBS and CRC whose content the firmware must reject."""
        info, rng = self.info, self.rng
        choice = rng.randrange(8)
        if choice == 0:
            kind = rng.choice([t for t in range(256) if t not in (protocol.INFO, protocol.SOLVE)])
            packet = protocol.pack_packet(kind, self.request_id(), rng.randbytes(rng.randrange(20)))
        elif choice == 1:
            packet = protocol.pack_packet(protocol.INFO, self.request_id(),
                                          rng.randbytes(rng.randrange(1, 20)))
        elif choice == 2:
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(),
                                          rng.randbytes(rng.randrange(8)))
        elif choice == 3:
            body = bytearray(self.solve_body())
            body[0] |= 1 << rng.randrange(2, 8)
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(), bytes(body))
        elif choice == 4:
            tokens = bytes(rng.randrange(info.vocab_size)
                           for _ in range(max(0, info.seq_len + rng.choice((-2, -1, 1, 2)))))
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(),
                                          self.solve_body(tokens=tokens))
        elif choice == 5:
            body = bytearray(self.solve_body())
            struct.pack_into("<H", body, 6, rng.randrange(0x10000))
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(), bytes(body))
        elif choice == 6:
            bad_id = rng.randrange(info.num_puzzle_identifiers, 0x100000000)
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(),
                                          self.solve_body(puzzle_id=bad_id))
        else:
            tokens = bytearray(rng.randrange(info.vocab_size) for _ in range(info.seq_len))
            tokens[rng.randrange(info.seq_len)] = rng.randrange(info.vocab_size, 256)
            packet = protocol.pack_packet(protocol.SOLVE, self.request_id(),
                                          self.solve_body(tokens=bytes(tokens)))
        return protocol.encode_frame(packet)

    def mutate(self, frame: bytes) -> bytes:
        """Flip, replace, insert or delete a few bytes of a frame's encoded part."""
        rng = self.rng
        data = bytearray(frame[:-1])
        for _ in range(rng.randrange(1, 5)):
            op = rng.randrange(4)
            position = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[position] ^= 1 << rng.randrange(8)
            elif op == 1 and data:
                data[position] = rng.randrange(256)
            elif op == 2:
                data.insert(position, rng.randrange(256))
            elif data:
                del data[position]
        return bytes(data) + b"\x00"

    def next_case(self) -> tuple[str, bytes]:
        """Return (kind, bytes to send) of the next test input."""
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind in ("valid-solve", "valid-info"):
            if kind == "valid-info":
                data = protocol.encode_frame(protocol.pack_packet(protocol.INFO,
                                                                  self.request_id()))
            else:
                data = protocol.encode_frame(protocol.pack_packet(
                    protocol.SOLVE, self.request_id(), self.solve_body()))
            self.last_valid = data
        elif kind == "replay":
            data = self.last_valid
        elif kind == "garbage":
            data = rng.randbytes(rng.randrange(1, 2 * self.rx_limit)) + b"\x00"
        elif kind == "mutated":
            data = self.mutate(self.valid_frame())
        elif kind == "truncated":
            frame = self.valid_frame()
            data = frame[:rng.randrange(1, len(frame) - 1)] + b"\x00"
        elif kind == "unterminated":
            frame = self.valid_frame()
            data = frame[:rng.randrange(1, len(frame) - 1)]
        elif kind == "oversized":
            length = rng.randrange(self.rx_limit + 1, 3 * self.rx_limit)
            data = bytes(rng.randrange(1, 256) for _ in range(length)) + b"\x00"
        elif kind == "semantic":
            data = self.semantic_frame()
        else:
            data = b"\x00" * rng.randrange(1, 4)
        return kind, data


# ---- Runs ----

@dataclass
class FuzzReport:
    frames: int = 0
    bytes_sent: int = 0
    kinds: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)    # "error 5", "solve", "info"
    valid_answered: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        replies = ", ".join(f"{k} {v}" for k, v in sorted(self.replies.items()))
        return (f"{self.frames} inputs ({kinds}), {self.bytes_sent} bytes in "
                f"{self.seconds:.1f} s; replies: {replies}; {self.valid_answered} valid "
                f"requests answered correctly; {len(self.failures)} failures")


def run_fuzz(client: Client, qm, frames: int, seed: int, reply_timeout: float,
             progress=None, max_failures: int = 10) -> FuzzReport:
    """Send `frames` generated inputs and check every reply; stop after max_failures."""
    info = client.info()
    model = ReceiverModel(info)
    generator = FrameGenerator(info, seed)
    checker = Checker(client, qm, info, reply_timeout)
    report = FuzzReport()
    start = time.monotonic()
    for index in range(frames):
        kind, data = generator.next_case()
        report.frames += 1
        report.kinds[kind] += 1
        report.bytes_sent += len(data)
        client.send_raw(data)
        for expected in model.feed(data):
            label = "error %d" % expected.code if expected.kind == "error" else expected.kind
            try:
                checker.check(expected)
            except (AssertionError, ProtocolError) as failure:
                report.failures.append(f"input {index} ({kind}, seed {seed}): {failure}")
                log.error("%s", report.failures[-1])
                if len(report.failures) >= max_failures or "no reply" in str(failure):
                    report.seconds = time.monotonic() - start
                    return report
                drain(client)
                break
            report.replies[label] += 1
            if expected.kind != "error":
                report.valid_answered += 1
        if progress is not None and (index + 1) % 500 == 0:
            progress(index + 1, report)
    # Close an unterminated fragment, then make sure nothing else arrives.
    for expected in model.feed(b"\x00"):
        checker.check(expected)
    stray = client.read_packet(0.5)
    if stray is not None:
        report.failures.append(f"unexpected {got(stray)} after the last input")
    report.seconds = time.monotonic() - start
    return report


def drain(client: Client, quiet_seconds: float = 1.0) -> None:
    """Discard replies until none arrives for quiet_seconds, to resynchronize after a failure."""
    while True:
        try:
            if client.read_packet(quiet_seconds) is None:
                return
        except ProtocolError:
            continue


@contextlib.contextmanager
def open_target(build_dir: Path, qemu: bool, timeout: float, machine: str | None = None):
    """Start the firmware of a build (host executable, or the ELF in QEMU); yield a Client."""
    if qemu:
        from .qemu import run_qemu

        with run_qemu(build_dir / "firmware.elf", machine or "mps2-an500") as session:
            client = Client(session.port, timeout=timeout, retries=0)
            client.wait_ready()
            yield client
    else:
        with ProcessPort(build_dir / "firmware") as port:
            client = Client(port, timeout=timeout, retries=0)
            client.wait_ready()
            yield client
            status = port.close()
            if status != 0:
                raise RuntimeError(f"host firmware exited with status {status}")
