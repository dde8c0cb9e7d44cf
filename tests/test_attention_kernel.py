"""rr_attention_s8 (templates/kernels.c.j2) against reference.attention, byte for byte.

The kernel is compiled with the host gcc (-O2 -Wall -Wextra -Werror) into a small program
that reads one call from stdin. The inputs are random data and every input at +127 or
-128, which give the largest rotated values and scores. Further cases: alternating
extremes, one position, one head, and RoPE off. One score scale is so large that the
softmax is one-hot, and one so small that it is uniform. A NULL pointer or an odd head size must return RR_ERR_ARGUMENT.

Run: python -m pytest tests/test_attention_kernel.py
"""

import shutil
import struct
import subprocess

import numpy as np
import pytest

from rrgen import reference
from rrgen.emit import FIRMWARE_DIR, environment, format_ints
from rrgen.fixedpoint import EXP_HI, EXP_LO, EXP_MAX, quantize_multiplier, rope_q14, score_multiplier
from rrgen.quantize import QAttention

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "rr_kernels.h"

int main(void)
{
    int32_t head[9];
    if (fread(head, 4, 9, stdin) != 9) return 2;
    const int32_t positions = head[0], heads = head[1], dim = head[2], null_scratch = head[8];
    const int32_t half = dim > 0 ? dim / 2 : 0;
    int16_t *cos = calloc((size_t)(positions * half + 1), 2);
    int16_t *sin = calloc((size_t)(positions * half + 1), 2);
    int8_t *qkv = calloc((size_t)(positions * 3 * heads * dim + 1), 1);
    int8_t *out = calloc((size_t)(positions * heads * dim + 1), 1);
    void *scratch = malloc(RR_ATTENTION_SCRATCH_BYTES(positions, dim) + 4);
    if (fread(cos, 2, (size_t)(positions * half), stdin) != (size_t)(positions * half)) return 3;
    if (fread(sin, 2, (size_t)(positions * half), stdin) != (size_t)(positions * half)) return 4;
    const size_t n_in = (size_t)(positions * 3 * heads * dim);
    if (fread(qkv, 1, n_in, stdin) != n_in) return 5;
    const rr_attention_t p = {.heads = heads, .head_dim = dim, .cos = cos, .sin = sin,
                              .score_multiplier = head[3], .score_shift = head[4],
                              .multiplier = head[5], .shift = head[6]};
    const int32_t status = rr_attention_s8(&p, qkv, positions, out,
                                           null_scratch ? NULL : scratch);
    fwrite(&status, 4, 1, stdout);
    fwrite(out, 1, (size_t)(positions * heads * dim), stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found on PATH; install the Debian package gcc")
    folder = tmp_path_factory.mktemp("attention")
    kernels = environment().get_template("kernels.c.j2").render(
        banner="/* rendered by tests/test_attention_kernel.py */", linear_kinds=["s8"],
        max_features=64, has_attention=True, exp_hi=EXP_HI, exp_lo=EXP_LO, exp_max=EXP_MAX,
        exp_hi_body=format_ints(EXP_HI, 16), exp_lo_body=format_ints(EXP_LO, 16))
    (folder / "kernels.c").write_text(kernels)
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    done = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11",
                           f"-I{FIRMWARE_DIR / 'include'}", str(folder / "kernels.c"),
                           str(folder / "harness.c"), "-o", str(exe)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return exe


def make_params(positions, heads, dim, score_real=0.02, out_real=0.003, rope=True):
    cos, sin = rope_q14(positions, dim, 10000.0, rope)
    score_mult, score_shift = score_multiplier(score_real)
    mult, shift = quantize_multiplier(out_real)
    return QAttention(heads, dim, cos, sin, score_mult, score_shift, mult, shift)


def run_kernel(exe, p: QAttention, qkv: np.ndarray, null_scratch=False):
    positions = qkv.shape[0]
    head = struct.pack("<9i", positions, p.heads, p.head_dim, p.score_multiplier,
                       p.score_shift, p.multiplier, p.shift, 0, int(null_scratch))
    payload = (head + p.cos.astype("<i2").tobytes() + p.sin.astype("<i2").tobytes()
               + qkv.astype(np.int8).tobytes())
    done = subprocess.run([str(exe)], input=payload, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = struct.unpack_from("<i", done.stdout)[0]
    return status, np.frombuffer(done.stdout[4:], dtype=np.int8)


CASES = {
    "random": dict(positions=23, heads=2, dim=8, fill="random"),
    "all +127": dict(positions=17, heads=2, dim=16, fill=127),
    "all -128": dict(positions=17, heads=1, dim=16, fill=-128),
    "alternating extremes": dict(positions=31, heads=3, dim=4, fill="alternate"),
    "one position": dict(positions=1, heads=2, dim=8, fill="random"),
    "one-hot softmax": dict(positions=29, heads=2, dim=8, fill="random", score_real=50.0),
    "uniform softmax": dict(positions=29, heads=2, dim=8, fill="random", score_real=1e-9),
    "rope off": dict(positions=23, heads=2, dim=8, fill="random", rope=False),
    "wide head": dict(positions=9, heads=1, dim=128, fill="random", out_real=0.0005),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference(harness, case):
    spec = dict(CASES[case])
    fill = spec.pop("fill")
    positions, heads, dim = spec.pop("positions"), spec.pop("heads"), spec.pop("dim")
    rng = np.random.default_rng(len(case))
    shape = (positions, 3 * heads * dim)
    if fill == "random":
        qkv = rng.integers(-128, 128, size=shape)
    elif fill == "alternate":
        qkv = np.where(np.indices(shape).sum(0) % 2 == 0, 127, -128)
    else:
        qkv = np.full(shape, fill)
    p = make_params(positions, heads, dim, **spec)
    status, got = run_kernel(harness, p, qkv)
    assert status == 0
    want = reference.attention(qkv[None], p)[0].reshape(-1)
    differ = np.flatnonzero(got != want)
    assert differ.size == 0, (f"{differ.size} bytes differ; first at {differ[0]}: "
                              f"C {got[differ[0]]}, reference {want[differ[0]]}")


def test_kernel_rejects_bad_arguments(harness):
    p = make_params(4, 1, 8)
    qkv = np.zeros((4, 24), dtype=np.int64)
    assert run_kernel(harness, p, qkv, null_scratch=True)[0] == -5
    odd = QAttention(1, 7, p.cos, p.sin, p.score_multiplier, p.score_shift, p.multiplier, p.shift)
    assert run_kernel(harness, odd, np.zeros((4, 21), dtype=np.int64))[0] == -5
