"""Checks codegen/rrgen/client.py against a scripted in-memory port: replies split into
small chunks, boot noise before READY, replies to other request ids, ERROR replies and
time-outs. No firmware is involved; test_firmware_host.py covers the real handler.

Run: cd codegen && python -m pytest ../tests/test_client.py
"""

import time

import pytest

from rrgen import protocol
from rrgen.client import Client, DeviceError, RequestTimeout
from rrgen.protocol import Error, Info, Ready, SolveResult, Trace


class ScriptedPort:
    """A pyserial-like port that replies to each write from a script, a few bytes per read."""

    def __init__(self, boot: bytes = b"", chunk_bytes: int = 3):
        self.timeout = 1.0
        self.pending = bytearray(boot)
        self.chunk_bytes = chunk_bytes
        self.written = []
        self.answer = lambda request_id: b""

    def write(self, data: bytes) -> int:
        self.written.append(data)
        packet = protocol.unpack_packet(protocol.cobs_decode(data[:-1]))
        self.pending += self.answer(packet.request_id)
        return len(data)

    def read(self, n_bytes: int = 1) -> bytes:
        if not self.pending:
            time.sleep(self.timeout)  # a real port waits out its time-out
            return b""
        count = min(n_bytes, self.chunk_bytes, len(self.pending))
        chunk = bytes(self.pending[:count])
        del self.pending[:count]
        return chunk


INFO = Info(1, 7, 11, 81, 97, 64, 8, 2, 3, 2, 8, 1000, 1, 25_000_000, "scripted")


def test_wait_ready_skips_boot_noise():
    noise = b"boot rom v1.2\r\n\x00\x07\x00" + protocol.encode_message(INFO, 4)
    port = ScriptedPort(noise + protocol.encode_message(Ready(1, "scripted"), 0))
    assert Client(port).wait_ready() == Ready(1, "scripted")


def test_info_survives_one_byte_chunks():
    port = ScriptedPort(chunk_bytes=1)
    port.answer = lambda request_id: protocol.encode_message(INFO, request_id)
    assert Client(port).info() == INFO


def test_solve_collects_traces_and_skips_stale_replies():
    result = SolveResult(2, False, 1234, -5, bytes(81))
    trace = Trace(1, -5, bytes(81), bytes(range(256)) * 2, bytes(512))

    def answer(request_id):
        stale = protocol.encode_message(Error(5, 0, "old"), request_id + 100)
        return (stale + protocol.encode_message(trace, request_id)
                + protocol.encode_message(result, request_id))

    port = ScriptedPort(chunk_bytes=7)
    port.answer = answer
    got, traces = Client(port).solve(bytes(81), trace=True)
    assert got == result
    assert traces == [trace]
    request = protocol.unpack_packet(protocol.cobs_decode(port.written[0][:-1]))
    assert request.body[0] == protocol.FLAG_TRACE


def test_error_reply_raises_device_error():
    port = ScriptedPort()
    port.answer = lambda request_id: protocol.encode_message(Error(6, 17, "bad"), request_id)
    with pytest.raises(DeviceError, match=r"SOLVE request \(id 1\) failed.*invalid token"):
        Client(port).solve(bytes(81))


def test_missing_reply_raises_timeout_naming_request():
    port = ScriptedPort()
    with pytest.raises(RequestTimeout, match=r"no reply to INFO request \(id 1\) after 1 "
                                             r"attempt: timed out after 0.2 s"):
        Client(port, timeout=0.2, retries=0).info()


def test_lost_reply_is_retried_with_same_id():
    port = ScriptedPort()
    answers = iter([b"", None])

    def answer(request_id):
        reply = next(answers)
        return protocol.encode_message(INFO, request_id) if reply is None else reply

    port.answer = answer
    assert Client(port, timeout=0.3, retries=1).info() == INFO
    assert len(port.written) == 2
    assert port.written[0] == port.written[1]


def test_every_attempt_lost_names_the_attempts():
    port = ScriptedPort()
    with pytest.raises(RequestTimeout, match=r"INFO request \(id 1\) after 3 attempts"):
        Client(port, timeout=0.2, retries=2).info()
    assert len(port.written) == 3


def test_corrupt_frame_error_triggers_resend():
    port = ScriptedPort()
    corrupt = protocol.encode_message(Error(protocol.ERR_BAD_CRC, 9, "CRC-32 mismatch"),
                                      protocol.UNTRUSTED_ID)
    answers = iter([corrupt, None])

    def answer(request_id):
        reply = next(answers)
        return protocol.encode_message(INFO, request_id) if reply is None else reply

    port.answer = answer
    assert Client(port, timeout=1.0, retries=1).info() == INFO
    assert len(port.written) == 2


def test_late_duplicate_reply_is_skipped():
    # The first attempt's reply arrives after the resend, so two replies carry id 1; the
    # second one must not be taken as the reply to request 2.
    port = ScriptedPort()
    result = SolveResult(1, False, 10, 0, bytes(81))
    answers = iter(["late", "dup", "normal"])

    def answer(request_id):
        kind = next(answers)
        if kind == "late":
            return b""
        reply = protocol.encode_message(result, request_id)
        if kind == "dup":
            return reply + reply
        return reply

    port.answer = answer
    client = Client(port, timeout=0.3, retries=1)
    first, _ = client.solve(bytes(81))
    second, _ = client.solve(bytes(81))
    assert first == result
    assert second == result
    ids = [protocol.unpack_packet(protocol.cobs_decode(w[:-1])).request_id
           for w in port.written]
    assert ids == [1, 1, 2]


def test_ready_during_request_triggers_resend():
    port = ScriptedPort()
    answers = iter([protocol.encode_message(Ready(1, "scripted"), 0), None])

    def answer(request_id):
        reply = next(answers)
        return protocol.encode_message(INFO, request_id) if reply is None else reply

    port.answer = answer
    assert Client(port, timeout=1.0, retries=1).info() == INFO
    assert len(port.written) == 2


def test_request_ids_skip_untrusted_id():
    client = Client(ScriptedPort())
    client._next_id = 0xFFFE
    assert client._new_id() == 0xFFFE
    assert client._new_id() == 1
