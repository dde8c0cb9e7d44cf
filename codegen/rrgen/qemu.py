"""Run firmware in QEMU with the board UART on a loopback TCP socket.

Last stage of the pipeline (model -> quantize -> trace -> plan -> emit -> build -> run).
QEMU listens on 127.0.0.1 and waits for the connection before it starts the guest
(server=on,wait=on), so no byte of the READY frame is lost. The socket is opened with
pyserial's socket:// URL, so the same Client serves QEMU and a real serial port.

    with run_qemu(elf, "mps2-an500") as session:
        client = Client(session.port)
        client.wait_ready()
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import serial

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-arm"
LOOPBACK = "127.0.0.1"


class QemuError(RuntimeError):
    """QEMU is missing, did not start, or exited early (its output is in the message)."""


def find_qemu() -> str:
    """Path of qemu-system-arm; raise QemuError with the install hint if it is missing."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise QemuError(f"{QEMU_BINARY} not found on PATH; install the Debian package "
                        f"qemu-system-arm")
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def qemu_command(elf: Path, machine: str, port: int, icount_shift: int | None) -> list[str]:
    """Build the qemu-system-arm command: no display, no monitor, UART0 on the TCP server."""
    command = [find_qemu(), "-M", machine, "-display", "none", "-monitor", "none",
               "-chardev", f"socket,id=uart0,host={LOOPBACK},port={port},server=on,wait=on",
               "-serial", "chardev:uart0", "-kernel", str(elf)]
    if icount_shift is not None:
        # Deterministic emulated time: each instruction takes 2^shift ns.
        command += ["-icount", f"shift={icount_shift}"]
    return command


@dataclass
class QemuSession:
    """A running QEMU and the pyserial port connected to its UART."""

    process: subprocess.Popen
    port: serial.SerialBase
    tcp_port: int

    def close(self) -> None:
        """Close the port and stop QEMU (terminate, then kill after 5 s)."""
        try:
            self.port.close()
        finally:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            log.info("QEMU (pid %d) stopped with status %s", self.process.pid,
                     self.process.returncode)

    def __enter__(self) -> "QemuSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _output_of(process: subprocess.Popen) -> str:
    try:
        _, stderr = process.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        return "(no output yet)"
    return stderr.decode(errors="replace").strip() or "(no output)"


def _connect(process: subprocess.Popen, tcp_port: int, timeout: float) -> serial.SerialBase:
    """Connect to QEMU's chardev server, retrying until it listens or QEMU exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise QemuError(f"QEMU exited with status {process.returncode} before accepting "
                            f"the UART connection on port {tcp_port}: {_output_of(process)}")
        try:
            return serial.serial_for_url(f"socket://{LOOPBACK}:{tcp_port}", timeout=1.0)
        except serial.SerialException as error:
            if time.monotonic() > deadline:
                raise QemuError(f"could not connect to QEMU's UART on {LOOPBACK}:{tcp_port} "
                                f"within {timeout} s: {error}") from error
            time.sleep(0.05)


def run_qemu(elf: Path, machine: str, icount_shift: int | None = None,
             connect_timeout: float = 10.0) -> QemuSession:
    """Start QEMU on elf and connect to its UART; use the result as a context manager.

    QEMU is killed if connecting fails, and on leaving the `with` block, also on errors.
    """
    elf = Path(elf)
    if not elf.is_file():
        raise QemuError(f"firmware image {elf} not found; build it first")
    tcp_port = free_port()
    command = qemu_command(elf, machine, tcp_port, icount_shift)
    log.info("starting %s", " ".join(command))
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        port = _connect(process, tcp_port, connect_timeout)
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait()
        raise
    log.info("QEMU (pid %d) UART connected on %s:%d", process.pid, LOOPBACK, tcp_port)
    return QemuSession(process, port, tcp_port)
