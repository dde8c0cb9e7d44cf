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
    with pytest.raises(RequestTimeout, match=r"no reply to INFO request \(id 1\) within 0.2 s"):
        Client(port, timeout=0.2).info()


def test_request_ids_skip_untrusted_id():
    client = Client(ScriptedPort())
    client._next_id = 0xFFFE
    assert client._new_id() == 0xFFFE
    assert client._new_id() == 1
