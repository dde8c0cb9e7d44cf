"""Shared fixtures: a tiny seeded TRM, its checkpoint and its host build.

Tests use the tiny model so the suite stays fast; the shipped model appears only in a
few QEMU and CLI runs. With RRGEN_REQUIRE_TOOLS=1 (set by tools/test.sh and CI) a test
skipped for a missing tool fails instead, so a green run proves the real toolchain ran.
"""

import os
import shutil

import pytest
import torch

from rrgen import checkpoint
from rrgen.build import build
from rrgen.config import TRMConfig
from rrgen.model import TRM

# Marks of a module whose tests build Arm firmware and run it in QEMU.
ARM_AND_QEMU = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                       reason="arm-none-eabi-gcc missing: install gcc-arm-none-eabi"),
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                       reason="qemu-system-arm missing: install qemu-system-arm"),
]

TINY = TRMConfig(hidden_size=16, expansion=2.0, L_layers=2, H_cycles=1, L_cycles=2,
                 puzzle_emb_len=4, halt_max_steps=3, intermediate_multiple=8)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("RRGEN_REQUIRE_TOOLS") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped with RRGEN_REQUIRE_TOOLS=1: {report.longrepr}"


def make_tiny_model(seed: int = 0, config: TRMConfig = TINY) -> TRM:
    """A seeded random tiny model; q_head gets random weights so halting varies by puzzle."""
    torch.manual_seed(seed)
    model = TRM(config)
    with torch.no_grad():
        model.q_head.weight.normal_(0.0, 0.5)
        model.q_head.bias.fill_(0.0)
        model.puzzle_emb.normal_(0.0, 0.25)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    checkpoint.save(make_tiny_model(), path)
    return path


@pytest.fixture(scope="session")
def tiny_host_build(tiny_checkpoint, tmp_path_factory):
    """Host build (INT8) of the tiny model: firmware (protocol on stdio) and batch."""
    out = tmp_path_factory.mktemp("build") / "host-int8"
    return build(tiny_checkpoint, "host", 8, out, calibration_puzzles=8)


@pytest.fixture(scope="session")
def tiny_arm_build(tiny_checkpoint, tmp_path_factory):
    """Folder of an mps2-an500 build (INT8) of the tiny model; skips without the cross compiler."""
    import shutil

    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc missing: install gcc-arm-none-eabi")
    out = tmp_path_factory.mktemp("build") / "mps2-int8"
    return build(tiny_checkpoint, "mps2-an500", 8, out, calibration_puzzles=8).out_dir


@pytest.fixture(scope="session")
def tiny_model():
    """The seeded tiny TRM of make_tiny_model(); tests that change it work on a copy."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_calibration_tokens():
    """Token ids [8, 81] of 8 seeded puzzles, for quantizing the tiny model."""
    from rrgen import sudoku

    puzzles, _ = sudoku.generate(8, seed=21)
    return sudoku.to_tokens(puzzles)


@pytest.fixture(scope="session")
def tiny_qmodels(tiny_model, tiny_calibration_tokens):
    """The tiny model quantized in memory, by weight bits: {8: QModel, 4: QModel}."""
    from rrgen import quantize

    return {bits: quantize.quantize_model(tiny_model, bits,
                                          calibration_tokens=tiny_calibration_tokens)
            for bits in (8, 4)}
