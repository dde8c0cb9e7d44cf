"""Host builds under AddressSanitizer and UndefinedBehaviorSanitizer (RRGEN_SANITIZE=1).

The tiny model is built for the host with the sanitizers; the bulk runner must match the
integer reference on every step, and the protocol firmware must pass a fuzz run, with no
sanitizer report (any report aborts the program, so the run fails). A planted
heap overflow and a signed overflow show that the flags really catch errors here.

Run: python -m pytest tests/test_sanitizers.py
"""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from rrgen import reference, sudoku, toolchain
from rrgen.build import build
from rrgen.fuzz import open_target, run_fuzz
from rrgen.run import run_batch

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing")


@pytest.fixture(scope="module")
def sanitized_build(tiny_checkpoint, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(toolchain.SANITIZE_VARIABLE, "1")
        out = tmp_path_factory.mktemp("asan") / "host"
        return build(tiny_checkpoint, "host", 8, out, calibration_puzzles=8)


HEAP_OVERFLOW = """#include <stdlib.h>
int main(int argc, char **argv) {
    (void)argv;
    int *values = calloc(4, sizeof *values);
    int result = values[argc + 3];
    free(values);
    return result;
}
"""

SIGNED_OVERFLOW = """#include <limits.h>
int main(int argc, char **argv) {
    (void)argv;
    int value = INT_MAX - 1 + argc;
    return value + argc > 0;
}
"""


@pytest.mark.parametrize("program, report", [
    (HEAP_OVERFLOW, "AddressSanitizer: heap-buffer-overflow"),
    (SIGNED_OVERFLOW, "runtime error: signed integer overflow"),
], ids=["heap-overflow", "signed-overflow"])
def test_sanitizer_catches_planted_error(tmp_path, program, report):
    source = tmp_path / "planted.c"
    source.write_text(program)
    binary = tmp_path / "planted"
    subprocess.run(["gcc", *toolchain.SANITIZE_FLAGS, str(source), "-o", str(binary)],
                   check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode != 0
    assert report in result.stderr


def test_sanitized_programs_are_instrumented(sanitized_build):
    for name in ("firmware", "batch"):
        symbols = subprocess.run(["nm", str(sanitized_build.out_dir / name)],
                                 capture_output=True, text=True, check=True).stdout
        assert "__asan_init" in symbols
        assert "__ubsan_handle" in symbols


def test_sanitized_batch_matches_reference(sanitized_build):
    qm = sanitized_build.qmodel
    cfg = qm.config
    puzzles, _ = sudoku.generate(6, seed=4)
    tokens = sudoku.to_tokens(puzzles)
    carry = cfg.positions * cfg.hidden_size
    for halt in (False, True):
        records = run_batch(sanitized_build.out_dir / "batch", tokens, carry_bytes=carry,
                            halt=halt)
        with torch.inference_mode():
            ref = reference.solve(qm, tokens, halt=halt)
        for i, record in enumerate(records):
            assert record["status"] == 0
            assert record["steps_used"] == ref.steps_used[i]
            for step in range(record["steps_used"]):
                assert np.array_equal(record["tokens"][step], ref.tokens[step, i])
                assert np.array_equal(record["y"][step], ref.y[step, i].reshape(-1))
                assert np.array_equal(record["z"][step], ref.z[step, i].reshape(-1))


def test_sanitized_firmware_survives_fuzzing(sanitized_build):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with open_target(sanitized_build.out_dir, False, 20.0) as client:
            report = run_fuzz(client, sanitized_build.qmodel, 300, seed=5, reply_timeout=20.0)
    finally:
        torch.set_num_threads(threads)
    assert report.failures == []
