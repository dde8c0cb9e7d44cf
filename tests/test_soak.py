"""tools/soak.py's checks on a short run against the host build of the tiny model.

The same soak loop that drives QEMU in the long run here drives the host firmware over
pipes: 20 puzzles with 4 in flight must all match, and a wrong expected answer must stop
the run naming that puzzle. The 10,000-puzzle QEMU run is documented in
docs/reliability.md, not run here.

Run: python -m pytest tests/test_soak.py
"""

import sys
from pathlib import Path

import pytest

from rrgen import sudoku
from rrgen.fuzz import open_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import soak  # noqa: E402


@pytest.fixture(scope="module")
def puzzles_and_expected(tiny_host_build):
    puzzles, _ = sudoku.generate(20, seed=8)
    tokens = sudoku.to_tokens(puzzles)
    return tokens, soak.expected_results(tiny_host_build.out_dir / "batch", tokens)


def test_soak_short_run_matches(tiny_host_build, puzzles_and_expected):
    tokens, expected = puzzles_and_expected
    with open_target(tiny_host_build.out_dir, False, 10.0) as client:
        checked, failures = soak.soak(client, tokens, expected, window=4, reply_timeout=10.0)
    assert failures == []
    assert checked == 20


def test_soak_wrong_answer_stops_run(tiny_host_build, puzzles_and_expected):
    tokens, expected = puzzles_and_expected
    wrong = list(expected)
    answer, steps = wrong[7]
    wrong[7] = (bytes([answer[0] ^ 1]) + answer[1:], steps)
    with open_target(tiny_host_build.out_dir, False, 10.0) as client:
        checked, failures = soak.soak(client, tokens, wrong, window=4, reply_timeout=10.0)
        # Read the replies still in flight, so the firmware exits cleanly.
        while client.read_packet(2.0) is not None:
            pass
    assert checked == 7
    assert len(failures) == 1
    assert "puzzle 7: answer differs from the host build" in failures[0]
