"""`rrgen run --port DEVICE` on a real tty: the path users take with a board on /dev/ttyACM0.

A pseudo-terminal replaces the USB serial device. The host build of the firmware
(the same protocol handler as on the board) sits on the pty's controller side; the CLI
opens the device side through pyserial's serial.Serial, with --check comparing every step
with the integer reference.

Run: python -m pytest tests/test_serial_port.py
"""

import os
import select
import subprocess
import sys
import threading
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bridge(controller: int, process: subprocess.Popen, stop: threading.Event) -> None:
    """Copy bytes between the pty controller and the firmware's stdin and stdout."""
    out_fd = process.stdout.fileno()
    while not stop.is_set():
        ready, _, _ = select.select([controller, out_fd], [], [], 0.05)
        if controller in ready:
            try:
                data = os.read(controller, 4096)
            except OSError:
                return
            process.stdin.write(data)
            process.stdin.flush()
        if out_fd in ready:
            data = os.read(out_fd, 65536)
            if not data:
                return
            os.write(controller, data)


def test_run_over_tty_checks_every_step(tiny_host_build, tmp_path):
    controller, device = os.openpty()
    device_path = os.ttyname(device)
    # A USB serial device is raw; a new pty would echo the firmware's READY frame back.
    tty.setraw(device)
    firmware = subprocess.Popen([str(tiny_host_build.out_dir / "firmware")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0)
    stop = threading.Event()
    thread = threading.Thread(target=bridge, args=(controller, firmware, stop), daemon=True)
    thread.start()
    try:
        puzzles = tmp_path / "p.txt"
        puzzles.write_text("5.9.2..1.4...56...8..9.3..5.87..25..654....82..15684971.82.5...7..68...3.4..7.8..\n"
                           "..8.4..5.6.1.9.2..9.3.1.8.6.4......7..2...6..1......9.7.9.3.5.2..6.1.4.8.3..7.1..\n")
        env = dict(os.environ, PYTHONPATH=str(REPO / "codegen"))
        result = subprocess.run([sys.executable, "-m", "rrgen", "run", "--port", device_path,
                                 "--build", str(tiny_host_build.out_dir), "--check", str(puzzles)],
                                capture_output=True, text=True, env=env, timeout=120)
    finally:
        stop.set()
        thread.join(timeout=5)
        firmware.kill()
        firmware.wait()
        os.close(controller)
        os.close(device)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-exact check passed" in result.stdout
    assert result.stdout.count("answer") == 2


def test_run_on_missing_port_is_a_clear_error(tiny_host_build, tmp_path):
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("." * 81 + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "codegen"))
    result = subprocess.run([sys.executable, "-m", "rrgen", "run", "--port", "/dev/does-not-exist",
                             str(puzzles)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "/dev/does-not-exist" in result.stderr
    assert "Traceback" not in result.stderr
