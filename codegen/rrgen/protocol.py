"""The serial protocol between the host and the firmware: framing, CRC and packets.

Last stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
This module is the Python side of docs/protocol.md and the oracle for the C in
firmware/src (cobs.c, crc32.c, protocol.c): it is written from the document, not from the C.

A frame on the wire is COBS(packet) followed by one 0x00 byte. A packet is

    type u8 | request_id u16 LE | body | crc32 u32 LE

where the CRC-32 (zlib/IEEE polynomial) covers every byte before it. All integers are
little-endian. Token and carry arrays are raw bytes: tokens uint8, carry int8 two's complement.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

PROTOCOL_VERSION = 1

# Request id of a reply to a packet whose own id cannot be trusted:
# bad CRC, packet too short, packet too long, invalid COBS.
UNTRUSTED_ID = 0xFFFF

HEADER_BYTES = 3  # type u8 + request_id u16
CRC_BYTES = 4
MIN_PACKET_BYTES = HEADER_BYTES + CRC_BYTES

# Packet types. Requests have the high bit clear, replies have it set.
INFO = 0x01
SOLVE = 0x02
READY = 0x80
INFO_REPLY = 0x81
SOLVE_REPLY = 0x82
TRACE = 0x83
ERROR = 0xFF

PACKET_TYPE_NAMES = {INFO: "INFO", SOLVE: "SOLVE", READY: "READY", INFO_REPLY: "INFO reply",
                     SOLVE_REPLY: "SOLVE reply", TRACE: "TRACE", ERROR: "ERROR"}

# SOLVE flags.
FLAG_TRACE = 0x01  # send a TRACE packet after every supervision step
FLAG_HALT = 0x02   # stop early when the halt logit q_halt > 0
KNOWN_FLAGS = FLAG_TRACE | FLAG_HALT

# ERROR codes.
ERR_BAD_CRC = 1
ERR_TOO_SHORT = 2
ERR_TOO_LONG = 3
ERR_UNKNOWN_TYPE = 4
ERR_BODY_LENGTH = 5
ERR_INVALID_TOKEN = 6
ERR_INVALID_PUZZLE_ID = 7
ERR_INVALID_COBS = 8
ERR_INVALID_ARGUMENT = 9
ERR_MODEL = 10
ERR_FAULT = 11

ERROR_NAMES = {ERR_BAD_CRC: "bad CRC", ERR_TOO_SHORT: "packet too short",
               ERR_TOO_LONG: "packet too long", ERR_UNKNOWN_TYPE: "unknown packet type",
               ERR_BODY_LENGTH: "body length wrong", ERR_INVALID_TOKEN: "invalid token",
               ERR_INVALID_PUZZLE_ID: "invalid puzzle id", ERR_INVALID_COBS: "invalid COBS",
               ERR_INVALID_ARGUMENT: "invalid flags or max_steps", ERR_MODEL: "model error",
               ERR_FAULT: "processor fault"}


class ProtocolError(ValueError):
    """Bytes that do not form a valid frame or packet."""


# ---------------------------------------------------------------------------------------
# COBS and CRC
# ---------------------------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """Encode data with Consistent Overhead Byte Stuffing; the result contains no 0x00.

    Each block is a code byte n (1..255) followed by n - 1 non-zero bytes. A block with
    n < 255 stands for its bytes followed by a zero, except at the end of the packet. A full
    block (n = 255, 254 bytes) has no implied zero, and one that ends the data is not
    followed by an empty block, so the encoding is never longer than len(data) + 1 +
    len(data) // 254.
    """
    out = bytearray()
    block = bytearray()
    ended_with_full_block = False
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            ended_with_full_block = False
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(255)
            out += block
            block.clear()
            ended_with_full_block = True
    if block or not ended_with_full_block:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(encoded: bytes) -> bytes:
    """Decode one COBS packet (without its 0x00 delimiter); raise ProtocolError if invalid."""
    out = bytearray()
    index = 0
    while index < len(encoded):
        code = encoded[index]
        if code == 0:
            raise ProtocolError(f"invalid COBS: zero byte at offset {index}")
        end = index + code
        if end > len(encoded):
            raise ProtocolError(f"invalid COBS: block at offset {index} needs {code - 1} "
                                f"bytes but only {len(encoded) - index - 1} remain")
        block = encoded[index + 1:end]
        if 0 in block:
            raise ProtocolError(f"invalid COBS: zero byte inside block at offset {index}")
        out += block
        index = end
        if code < 255 and index < len(encoded):
            out.append(0)
    return bytes(out)


def crc32(data: bytes) -> int:
    """CRC-32 with the zlib/IEEE polynomial, as zlib.crc32."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(packet: bytes) -> bytes:
    """Frame a packet for the wire: COBS, then the 0x00 delimiter."""
    return cobs_encode(packet) + b"\x00"


# ---------------------------------------------------------------------------------------
# Packets
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """A decoded packet whose CRC was checked: type, request id and body bytes."""

    type: int
    request_id: int
    body: bytes

    @property
    def type_name(self) -> str:
        return PACKET_TYPE_NAMES.get(self.type, f"type 0x{self.type:02x}")


def pack_packet(packet_type: int, request_id: int, body: bytes = b"") -> bytes:
    """Build a packet (not yet COBS-encoded): header, body, CRC-32 of both."""
    if not 0 <= packet_type <= 0xFF:
        raise ValueError(f"packet type {packet_type} is outside 0..255")
    if not 0 <= request_id <= 0xFFFF:
        raise ValueError(f"request id {request_id} is outside 0..65535")
    head = struct.pack("<BH", packet_type, request_id) + bytes(body)
    return head + struct.pack("<I", crc32(head))


def unpack_packet(packet: bytes) -> Packet:
    """Check the length and CRC of a decoded packet and split it; raise ProtocolError."""
    if len(packet) < MIN_PACKET_BYTES:
        raise ProtocolError(f"packet of {len(packet)} bytes is shorter than the minimum "
                            f"{MIN_PACKET_BYTES}")
    (expected,) = struct.unpack_from("<I", packet, len(packet) - CRC_BYTES)
    actual = crc32(packet[:-CRC_BYTES])
    if actual != expected:
        raise ProtocolError(f"bad CRC: packet carries 0x{expected:08x}, "
                            f"contents give 0x{actual:08x}")
    packet_type, request_id = struct.unpack_from("<BH", packet, 0)
    return Packet(packet_type, request_id, bytes(packet[HEADER_BYTES:-CRC_BYTES]))


def _check_body_length(name: str, body: bytes, minimum: int) -> None:
    if len(body) < minimum:
        raise ProtocolError(f"{name} body of {len(body)} bytes is shorter than {minimum}")


def _int16_saturated(value: int) -> int:
    return max(-32768, min(32767, value))


@dataclass(frozen=True)
class Ready:
    """READY (0x80): sent once by the firmware at boot."""

    TYPE: ClassVar[int] = READY
    version: int
    name: str

    def pack_body(self) -> bytes:
        return struct.pack("<B", self.version) + self.name.encode("ascii")

    @classmethod
    def unpack_body(cls, body: bytes) -> "Ready":
        _check_body_length("READY", body, 1)
        return cls(body[0], body[1:].decode("ascii", errors="replace"))


@dataclass(frozen=True)
class Info:
    """INFO reply (0x81): the model's static facts and the cycle counter's frequency."""

    TYPE: ClassVar[int] = INFO_REPLY
    FORMAT: ClassVar[str] = "<BIHHHHBBBBBIII"
    version: int
    model_id: int
    vocab_size: int
    seq_len: int
    positions: int              # puzzle_emb_len + seq_len, rows of the carry
    hidden_size: int
    weight_bits: int            # 4 or 8; 4 when the model mixes INT4 and INT8 layers
    h_cycles: int
    l_cycles: int
    l_layers: int
    halt_max_steps: int
    arena_bytes: int
    num_puzzle_identifiers: int
    cycles_hz: int              # frequency of the counter behind SolveResult.cycles
    name: str

    def pack_body(self) -> bytes:
        fields = (self.version, self.model_id, self.vocab_size, self.seq_len, self.positions,
                  self.hidden_size, self.weight_bits, self.h_cycles, self.l_cycles,
                  self.l_layers, self.halt_max_steps, self.arena_bytes,
                  self.num_puzzle_identifiers, self.cycles_hz)
        return struct.pack(self.FORMAT, *fields) + self.name.encode("ascii")

    @classmethod
    def unpack_body(cls, body: bytes) -> "Info":
        size = struct.calcsize(cls.FORMAT)
        _check_body_length("INFO reply", body, size)
        fields = struct.unpack_from(cls.FORMAT, body, 0)
        return cls(*fields, name=body[size:].decode("ascii", errors="replace"))


@dataclass(frozen=True)
class SolveRequest:
    """SOLVE request (0x02): one puzzle and how to run it."""

    TYPE: ClassVar[int] = SOLVE
    FORMAT: ClassVar[str] = "<BBIH"
    tokens: bytes               # [seq_len] uint8 token ids
    puzzle_id: int = 0
    max_steps: int = 0          # 0: the model's halt_max_steps
    flags: int = 0              # FLAG_TRACE | FLAG_HALT

    def pack_body(self) -> bytes:
        head = struct.pack(self.FORMAT, self.flags, self.max_steps, self.puzzle_id,
                           len(self.tokens))
        return head + bytes(self.tokens)

    @classmethod
    def unpack_body(cls, body: bytes) -> "SolveRequest":
        size = struct.calcsize(cls.FORMAT)
        _check_body_length("SOLVE", body, size)
        flags, max_steps, puzzle_id, n_tokens = struct.unpack_from(cls.FORMAT, body, 0)
        if len(body) != size + n_tokens:
            raise ProtocolError(f"SOLVE body of {len(body)} bytes does not match "
                                f"n_tokens={n_tokens} (expected {size + n_tokens})")
        return cls(bytes(body[size:]), puzzle_id, max_steps, flags)


@dataclass(frozen=True)
class SolveResult:
    """SOLVE reply (0x82): the output tokens and halt state after the last supervision step."""

    TYPE: ClassVar[int] = SOLVE_REPLY
    FORMAT: ClassVar[str] = "<BBIhH"
    steps_used: int
    halted_by_q: bool
    cycles: int                 # board_cycles ticks in the model calls, see Info.cycles_hz
    q_halt: int                 # halt logit of the last step, int16
    tokens: bytes               # [seq_len] uint8

    def pack_body(self) -> bytes:
        head = struct.pack(self.FORMAT, self.steps_used, int(self.halted_by_q), self.cycles,
                           _int16_saturated(self.q_halt), len(self.tokens))
        return head + bytes(self.tokens)

    @classmethod
    def unpack_body(cls, body: bytes) -> "SolveResult":
        size = struct.calcsize(cls.FORMAT)
        _check_body_length("SOLVE reply", body, size)
        steps, halted, cycles, q_halt, n_tokens = struct.unpack_from(cls.FORMAT, body, 0)
        if len(body) != size + n_tokens:
            raise ProtocolError(f"SOLVE reply of {len(body)} bytes does not match "
                                f"n_tokens={n_tokens}")
        return cls(steps, bool(halted), cycles, q_halt, bytes(body[size:]))


@dataclass(frozen=True)
class Trace:
    """TRACE (0x83): the state after one supervision step of a SOLVE with FLAG_TRACE."""

    TYPE: ClassVar[int] = TRACE
    step: int                   # 1-based
    q_halt: int
    tokens: bytes               # [seq_len] uint8, argmax after this step
    y: bytes                    # [positions, hidden] int8 two's complement, row-major
    z: bytes                    # [positions, hidden] int8 two's complement, row-major

    def pack_body(self) -> bytes:
        if len(self.y) != len(self.z):
            raise ValueError(f"carry y has {len(self.y)} bytes but z has {len(self.z)}")
        head = struct.pack("<BhH", self.step, _int16_saturated(self.q_halt), len(self.tokens))
        return (head + bytes(self.tokens) + struct.pack("<I", len(self.y))
                + bytes(self.y) + bytes(self.z))

    @classmethod
    def unpack_body(cls, body: bytes) -> "Trace":
        _check_body_length("TRACE", body, 5)
        step, q_halt, n_tokens = struct.unpack_from("<BhH", body, 0)
        offset = 5 + n_tokens
        _check_body_length("TRACE", body, offset + 4)
        tokens = bytes(body[5:offset])
        (carry_bytes,) = struct.unpack_from("<I", body, offset)
        offset += 4
        if len(body) != offset + 2 * carry_bytes:
            raise ProtocolError(f"TRACE body of {len(body)} bytes does not match "
                                f"n_tokens={n_tokens}, carry_bytes={carry_bytes}")
        y = bytes(body[offset:offset + carry_bytes])
        z = bytes(body[offset + carry_bytes:])
        return cls(step, q_halt, tokens, y, z)


@dataclass(frozen=True)
class Error:
    """ERROR (0xFF): why a request failed."""

    TYPE: ClassVar[int] = ERROR
    code: int
    detail: int                 # e.g. index of the first bad token, or a received length
    message: str

    @property
    def code_name(self) -> str:
        return ERROR_NAMES.get(self.code, f"code {self.code}")

    def pack_body(self) -> bytes:
        return struct.pack("<BI", self.code, self.detail) + self.message.encode("ascii")

    @classmethod
    def unpack_body(cls, body: bytes) -> "Error":
        _check_body_length("ERROR", body, 5)
        code, detail = struct.unpack_from("<BI", body, 0)
        return cls(code, detail, body[5:].decode("ascii", errors="replace"))


REPLY_CLASSES = {cls.TYPE: cls for cls in (Ready, Info, SolveResult, Trace, Error)}


def parse_reply(packet: Packet):
    """Turn a reply packet into its dataclass; raise ProtocolError for request or unknown types."""
    cls = REPLY_CLASSES.get(packet.type)
    if cls is None:
        raise ProtocolError(f"unexpected packet type 0x{packet.type:02x} from the device")
    return cls.unpack_body(packet.body)


def encode_message(message, request_id: int) -> bytes:
    """Pack and frame any packet dataclass above (request or reply) for the wire."""
    return encode_frame(pack_packet(message.TYPE, request_id, message.pack_body()))
