"""Host-side client of the serial protocol: requests, replies, time-outs.

Last stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
A Client works over any object with pyserial's read(n), write(data) and `timeout`
attribute: a real port (open_serial), QEMU's loopback socket (qemu.run_qemu) or the pipes
of the host build (ProcessPort). Packets are defined in protocol.py.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from . import protocol
from .protocol import (Error, Info, Packet, ProtocolError, Ready, SolveRequest, SolveResult,
                       Trace)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1

# ERROR codes of a frame whose request id could not be trusted: resending may succeed.
CORRUPT_FRAME_CODES = (protocol.ERR_BAD_CRC, protocol.ERR_TOO_SHORT, protocol.ERR_TOO_LONG,
                       protocol.ERR_INVALID_COBS)


def plural_attempts(count: int) -> str:
    return f"{count} attempt{'' if count == 1 else 's'}"


class RequestTimeout(TimeoutError):
    """No complete reply arrived in time; the message names the request."""


class DeviceError(RuntimeError):
    """The device replied with an ERROR packet."""

    def __init__(self, request: str, error: Error):
        self.error = error
        super().__init__(f"{request} failed on the device: {error.code_name} "
                         f"(code {error.code}, detail {error.detail}): {error.message}")


def open_serial(device: str, baud: int = 115200, timeout: float = 1.0):
    """Open a real serial port with DTR and RTS low, so that opening it does not reset the board.

    pyserial applies the DTR and RTS states set before open(). The operating system may
    still pulse DTR while the device opens (Linux raises it unless HUPCL is cleared).
    """
    import serial

    port = serial.Serial()
    port.port = device
    port.baudrate = baud
    port.timeout = timeout
    port.dtr = False  # set before open(), so pyserial applies them instead of asserting
    port.rts = False
    port.open()
    return port


class ProcessPort:
    """A pyserial-like port over the stdin/stdout pipes of a subprocess (the host build)."""

    def __init__(self, command: list[str] | Path, timeout: float = 1.0):
        args = [str(command)] if isinstance(command, (str, Path)) else list(command)
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        bufsize=0)
        self.timeout = timeout

    @property
    def in_waiting(self) -> int:
        """Bytes readable now without blocking."""
        count = fcntl.ioctl(self.process.stdout.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", count)[0]

    def read(self, n_bytes: int = 1) -> bytes:
        """Return up to n_bytes, waiting at most `timeout` seconds for the first one."""
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self.timeout)
        if not ready:
            return b""
        return os.read(fd, n_bytes)

    def write(self, data: bytes) -> int:
        self.process.stdin.write(data)
        self.process.stdin.flush()
        return len(data)

    def close(self, timeout: float = 5.0) -> int:
        """Close stdin (end of input), wait for the exit status and return it."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self.process.stdout.close()
        return status

    def __enter__(self) -> "ProcessPort":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Client:
    """Sends requests and collects replies; one request at a time."""

    def __init__(self, port, timeout: float = 10.0, retries: int = 2):
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._buffer = bytearray()
        self._next_id = 1
        # Reads wait at most this long, so deadlines are kept to within about 0.1 s.
        self.port.timeout = POLL_SECONDS

    # ---- Frames ----

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are, for tests of malformed input."""
        self.port.write(data)

    def _read_frame(self, deadline: float) -> bytes | None:
        """Return the bytes of the next frame (without the 0x00), or None at the deadline."""
        while True:
            end = self._buffer.find(0)
            if end >= 0:
                frame = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Wait for one byte, then take whatever else has arrived.
            chunk = self.port.read(1)
            waiting = getattr(self.port, "in_waiting", 0)
            if chunk and waiting:
                chunk += self.port.read(waiting)
            self._buffer += chunk

    def read_packet(self, timeout: float | None = None) -> Packet | None:
        """Return the next valid packet, or None if none arrives in time.

        Raises ProtocolError for a frame that is not valid COBS or fails its CRC.
        Empty frames are skipped.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self._read_frame(deadline)
            if frame is None:
                return None
            if frame:
                return protocol.unpack_packet(protocol.cobs_decode(frame))

    def wait_ready(self, timeout: float | None = None) -> Ready:
        """Skip boot noise until the READY frame and return it."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                packet = self.read_packet(max(0.0, deadline - time.monotonic()))
            except ProtocolError as error:
                log.debug("skipping noise before READY: %s", error)
                continue
            if packet is None:
                raise RequestTimeout(f"no READY frame from the device within {limit} s")
            if packet.type == protocol.READY:
                return Ready.unpack_body(packet.body)
            log.debug("skipping %s before READY", packet.type_name)

    # ---- Requests ----

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFE + 1  # 1..0xFFFE; 0xFFFF marks untrusted ids
        return request_id

    def request(self, packet_type: int, body: bytes, name: str,
                timeout: float | None = None) -> tuple[object, list[Trace]]:
        """Send one request and return (reply, TRACE packets received before it).

        Each attempt waits `timeout` seconds. When it times out, or the device reports that
        a frame arrived corrupted (an ERROR with the untrusted id 0xFFFF and code bad CRC,
        packet too short, packet too long or invalid COBS), the same frame with the same
        request id is sent again, up to `retries` more times. Replies to other request
        ids, such as a late duplicate of an earlier attempt's reply, are logged and skipped.

        Raises DeviceError for an ERROR reply with this request's id (or a processor fault
        report), RequestTimeout when every attempt timed out or was corrupted, and
        ProtocolError for a corrupt reply.
        """
        request_id = self._new_id()
        label = f"{name} request (id {request_id})"
        limit = self.timeout if timeout is None else timeout
        frame = protocol.encode_frame(protocol.pack_packet(packet_type, request_id, body))
        attempts = 1 + max(0, self.retries)
        failures = []
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                log.warning("resending %s, attempt %d of %d, after %s", label, attempt,
                            attempts, failures[-1])
            self.port.write(frame)
            outcome, traces = self._await_reply(request_id, label, limit)
            if not isinstance(outcome, str):
                return outcome, traces
            failures.append(outcome)
        raise RequestTimeout(f"no reply to {label} after {plural_attempts(attempts)}: "
                             f"{'; '.join(failures)}")

    def _await_reply(self, request_id: int, label: str,
                     limit: float) -> tuple[object | str, list[Trace]]:
        """Read until the reply to request_id, or return a string naming why to resend."""
        deadline = time.monotonic() + limit
        traces: list[Trace] = []
        while True:
            packet = self.read_packet(max(0.0, deadline - time.monotonic()))
            if packet is None:
                return (f"timed out after {limit} s ({len(traces)} TRACE packets received)",
                        traces)
            if packet.type == protocol.READY:
                # The board restarted: the request was lost with the old state.
                return "the device restarted (READY frame)", traces
            if packet.request_id not in (request_id, protocol.UNTRUSTED_ID):
                log.warning("skipping %s for request id %d while waiting for %s",
                            packet.type_name, packet.request_id, label)
                continue
            reply = protocol.parse_reply(packet)
            if isinstance(reply, Error):
                if packet.request_id == protocol.UNTRUSTED_ID and reply.code in CORRUPT_FRAME_CODES:
                    return f"the device received a corrupt frame ({reply.code_name})", traces
                raise DeviceError(label, reply)
            if isinstance(reply, Trace):
                traces.append(reply)
                continue
            return reply, traces

    def info(self) -> Info:
        """Ask for the model's facts (INFO)."""
        reply, _ = self.request(protocol.INFO, b"", "INFO")
        if not isinstance(reply, Info):
            raise ProtocolError(f"INFO request got a {type(reply).__name__} reply, expected Info")
        return reply

    def solve(self, tokens, puzzle_id: int = 0, max_steps: int = 0, halt: bool = False,
              trace: bool = False, timeout: float | None = None
              ) -> tuple[SolveResult, list[Trace]]:
        """Run one puzzle (SOLVE) and return the result and the per-step traces.

        tokens: [seq_len] token ids 0..255. max_steps 0 uses the model's halt_max_steps.
        halt stops early once q_halt > 0. trace requests a TRACE packet after every step.
        """
        flags = 0
        if trace:
            flags |= protocol.FLAG_TRACE
        if halt:
            flags |= protocol.FLAG_HALT
        request = SolveRequest(bytes(tokens), puzzle_id, max_steps, flags)
        reply, traces = self.request(protocol.SOLVE, request.pack_body(), "SOLVE", timeout)
        if not isinstance(reply, SolveResult):
            raise ProtocolError(f"SOLVE request got a {type(reply).__name__} reply, "
                                f"expected SolveResult")
        return reply, traces
