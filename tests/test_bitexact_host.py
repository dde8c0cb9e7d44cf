"""Bit-exactness of the host build of the generated C against the numpy integer reference.

200 puzzles run through the host build (firmware/host/batch_main.c linked with the emitted
model), and the output tokens, the halt logit and the carry y and z after every
supervision step must equal reference.solve byte for byte, for INT8 and INT4 weights.
The comparison itself is tested to fail on a single differing byte.

Run: python -m pytest tests/test_bitexact_host.py
"""

import numpy as np
import pytest

from rrgen import reference, sudoku
from rrgen.build import build
from rrgen.run import compare, run_batch

PUZZLES = 200


def assert_same(name, actual, expected):
    mismatch = compare(name, 0, 0, actual, expected)
    assert mismatch is None, str(mismatch)


def check_all_steps(result, tokens, halt):
    qm = result.qmodel
    carry = qm.config.positions * qm.config.hidden_size
    records = run_batch(result.out_dir / "batch", tokens, carry_bytes=carry, halt=halt)
    ref = reference.solve(qm, tokens, halt=halt)
    checked = 0
    for i, record in enumerate(records):
        assert record["status"] == 0
        assert record["steps_used"] == ref.steps_used[i], f"puzzle {i}: steps used"
        for step in range(record["steps_used"]):
            where = f"puzzle {i} step {step + 1}"
            assert_same(f"{where} tokens", record["tokens"][step], ref.tokens[step, i])
            assert_same(f"{where} q_halt", [record["q_halt"][step]], [ref.q_halt[step, i]])
            assert_same(f"{where} carry y", record["y"][step], ref.y[step, i])
            assert_same(f"{where} carry z", record["z"][step], ref.z[step, i])
            checked += 1
    return checked


@pytest.fixture(scope="module")
def tokens():
    puzzles, _ = sudoku.generate(PUZZLES, seed=11)
    return sudoku.to_tokens(puzzles)


def test_int8_host_build_matches_reference_every_step(tiny_host_build, tokens):
    steps = check_all_steps(tiny_host_build, tokens, halt=False)
    assert steps == PUZZLES * tiny_host_build.qmodel.config.halt_max_steps


def test_int8_host_build_matches_reference_with_halting(tiny_host_build, tokens):
    steps = check_all_steps(tiny_host_build, tokens, halt=True)
    # The random q_head makes some puzzles halt early and others run to the end.
    assert PUZZLES <= steps < PUZZLES * tiny_host_build.qmodel.config.halt_max_steps


def test_int4_host_build_matches_reference_every_step(tiny_checkpoint, tokens, tmp_path):
    result = build(tiny_checkpoint, "host", 4, tmp_path / "host-int4", calibration_puzzles=8)
    assert check_all_steps(result, tokens, halt=False) > 0


def test_compare_reports_one_flipped_byte():
    expected = np.arange(-50, 50, dtype=np.int8)
    actual = expected.copy()
    actual[37] ^= 1
    mismatch = compare("carry y", 3, 2, actual, expected)
    assert mismatch is not None
    assert mismatch.first_index == 37
    assert mismatch.count == 1
    assert (mismatch.actual, mismatch.expected) == (int(actual[37]), int(expected[37]))
    assert compare("carry y", 3, 2, expected, expected.copy()) is None


def test_shipped_model_host_build_matches_reference(tmp_path):
    result = build(None, "host", 8, tmp_path / "shipped-host", calibration_puzzles=16)
    puzzles, _ = sudoku.generate(20, seed=sudoku.TEST_SEED)
    steps = check_all_steps(result, sudoku.to_tokens(puzzles), halt=False)
    assert steps == 20 * result.qmodel.config.halt_max_steps
