"""Checks the C kernels rendered from templates/kernels.c.j2 against reference.py, byte for byte.

The template is rendered with emit.environment() for linear_kinds ["s8"] and ["s4"] and
compiled (system gcc, -O2 -Wall -Wextra -Werror -std=c11) with a harness that reads kernel
calls from stdin and writes each status and output buffer to stdout. Parameters come from
the quantize.py helpers (quantize_multiplier, silu_table, make_add_norm, make_add,
pack_int4) on seeded random inputs. Also checked: the INT4 nibble order and padding,
saturation, argmax ties, all-zero RMSNorm rows, and RR_ERR_ARGUMENT (-5) for NULL pointers
and non-positive sizes with the output left untouched.

Run: cd codegen && python -m pytest ../tests/test_kernels.py
"""

import shutil
import struct
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from rrgen import reference
from rrgen.emit import FIRMWARE_DIR, environment
from rrgen.fixedpoint import quantize_multiplier, silu_table
from rrgen.quantize import QGlu, QLinear, make_add, make_add_norm, pack_int4, unpack_int4

RR_OK = 0
RR_ERR_ARGUMENT = -5
SENTINEL = 0x5A   # every output byte before a call, so a rejected call can be seen to write nothing
MAX_FEATURES = 256  # the template's RR_MAX_FEATURES: stack accumulators of the INT8 linear kernels

OP_LINEAR_S8, OP_LINEAR_S4, OP_LINEAR_S8_S16 = 1, 2, 3
OP_GLU, OP_ADD_RMSNORM, OP_ADD, OP_TRANSPOSE, OP_ARGMAX = 4, 5, 6, 7, 8

# Bits of a call's null_flags: which pointer the harness replaces with NULL.
NULL_PARAMS, NULL_INPUT, NULL_OUTPUT, NULL_SECOND = 1, 2, 4, 8
NULL_WEIGHT, NULL_MULTIPLIER, NULL_SHIFT = 16, 32, 64

# Request, repeated until EOF: i32 op, i32 null_flags, i32 n_ints, i32 ints[n_ints],
# i32 n_blobs, then per blob u32 length and bytes, then u32 out_bytes.
# Reply per request: i32 status, u32 out_bytes, the output buffer.
HARNESS_C = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rr_kernels.h"

#define MAX_INTS 16
#define MAX_BLOBS 8

enum { NULL_PARAMS = 1, NULL_INPUT = 2, NULL_OUTPUT = 4, NULL_SECOND = 8,
       NULL_WEIGHT = 16, NULL_MULTIPLIER = 32, NULL_SHIFT = 64 };

static int read_exact(void *dst, size_t size)
{
    return size == 0 || fread(dst, 1, size, stdin) == size ? 0 : -1;
}

static int32_t read_i32(void)
{
    int32_t value;
    if (read_exact(&value, sizeof value) != 0) {
        fprintf(stderr, "harness: short read\n");
        exit(2);
    }
    return value;
}

/* NULL for an empty blob, so a test can pass "no bias". */
static void *blob_or_null(uint8_t *blob, uint32_t length)
{
    return length == 0 ? NULL : blob;
}

static int32_t run_linear(int32_t op, int32_t flags, const int32_t *ints, uint8_t **blobs,
                          const uint32_t *lengths, uint8_t *out)
{
    rr_linear_t p = {
        .in_features = ints[1],
        .out_features = ints[2],
        .weight = (flags & NULL_WEIGHT) ? NULL : (const int8_t *)blobs[0],
        .bias = blob_or_null(blobs[1], lengths[1]),
        .multiplier = (flags & NULL_MULTIPLIER) ? NULL : (const int32_t *)(void *)blobs[2],
        .shift = (flags & NULL_SHIFT) ? NULL : (const int32_t *)(void *)blobs[3],
    };
    const rr_linear_t *params = (flags & NULL_PARAMS) ? NULL : &p;
    const int8_t *in = (flags & NULL_INPUT) ? NULL : (const int8_t *)blobs[4];
    switch (op) {
#ifdef TEST_LINEAR_S8
    case 1:
        return rr_linear_s8(params, in, ints[0], (flags & NULL_OUTPUT) ? NULL : (int8_t *)out);
#endif
#ifdef TEST_LINEAR_S4
    case 2:
        return rr_linear_s4(params, in, ints[0], (flags & NULL_OUTPUT) ? NULL : (int8_t *)out);
#endif
    case 3:
        return rr_linear_s8_s16(params, in, ints[0],
                                (flags & NULL_OUTPUT) ? NULL : (int16_t *)(void *)out);
    default:
        fprintf(stderr, "harness: linear kind %d is not compiled in\n", (int)op);
        exit(2);
    }
}

static int32_t run(int32_t op, int32_t flags, const int32_t *ints, uint8_t **blobs,
                   const uint32_t *lengths, uint8_t *out_buffer)
{
    uint8_t *out = (flags & NULL_OUTPUT) ? NULL : out_buffer;
    const int8_t *in = (flags & NULL_INPUT) ? NULL : (const int8_t *)blobs[0];
    switch (op) {
    case 1:
    case 2:
    case 3:
        return run_linear(op, flags, ints, blobs, lengths, out_buffer);
    case 4: {
        const rr_glu_t p = { .table = (flags & NULL_WEIGHT) ? NULL : (const int8_t *)blobs[0],
                             .multiplier = ints[2], .shift = ints[3] };
        return rr_glu_s8((flags & NULL_PARAMS) ? NULL : &p,
                         (flags & NULL_INPUT) ? NULL : (const int8_t *)blobs[1],
                         ints[0], ints[1], (int8_t *)out);
    }
    case 5: {
        int64_t eps_term;
        memcpy(&eps_term, blobs[0], sizeof eps_term);
        const rr_add_rmsnorm_t p = { .weight_a = ints[2], .weight_b = ints[3],
                                     .eps_term = eps_term, .multiplier = ints[4],
                                     .total_shift = ints[5] };
        return rr_add_rmsnorm_s8((flags & NULL_PARAMS) ? NULL : &p,
                                 (flags & NULL_INPUT) ? NULL : (const int8_t *)blobs[1],
                                 (flags & NULL_SECOND) ? NULL : (const int8_t *)blobs[2],
                                 ints[0], ints[1], (int8_t *)out);
    }
    case 6: {
        const rr_add_t p = { .weights = { ints[2], ints[3], ints[4] },
                             .multiplier = ints[5], .shift = ints[6] };
        const int8_t *inputs[4] = { (const int8_t *)blobs[0], (const int8_t *)blobs[1],
                                    (const int8_t *)blobs[2], (const int8_t *)blobs[3] };
        if (flags & NULL_SECOND) {
            inputs[ints[0] > 0 ? ints[0] - 1 : 0] = NULL;
        }
        return rr_add_s8((flags & NULL_PARAMS) ? NULL : &p, (flags & NULL_INPUT) ? NULL : inputs,
                         ints[0], ints[1], (int8_t *)out);
    }
    case 7:
        return rr_transpose_s8(in, ints[0], ints[1], (int8_t *)out);
    case 8:
        return rr_argmax_s16((flags & NULL_INPUT) ? NULL : (const int16_t *)(void *)blobs[0],
                             ints[0], ints[1], out);
    default:
        fprintf(stderr, "harness: unknown op %d\n", (int)op);
        exit(2);
    }
}

int main(void)
{
    int32_t op;
    while (read_exact(&op, sizeof op) == 0) {
        const int32_t flags = read_i32();
        const int32_t n_ints = read_i32();
        int32_t ints[MAX_INTS] = { 0 };
        if (n_ints < 0 || n_ints > MAX_INTS) {
            return 2;
        }
        for (int32_t i = 0; i < n_ints; i++) {
            ints[i] = read_i32();
        }
        const int32_t n_blobs = read_i32();
        uint8_t *blobs[MAX_BLOBS];
        uint32_t lengths[MAX_BLOBS] = { 0 };
        if (n_blobs < 0 || n_blobs > MAX_BLOBS) {
            return 2;
        }
        for (int32_t i = 0; i < MAX_BLOBS; i++) {
            if (i < n_blobs) {
                lengths[i] = (uint32_t)read_i32();
            }
            /* 16-byte aligned, as the generated arena and weights are. */
            blobs[i] = aligned_alloc(16, ((size_t)lengths[i] + 16) / 16 * 16);
            if (blobs[i] == NULL || read_exact(blobs[i], lengths[i]) != 0) {
                return 2;
            }
        }
        const uint32_t out_bytes = (uint32_t)read_i32();
        uint8_t *out = aligned_alloc(16, ((size_t)out_bytes + 16) / 16 * 16);
        if (out == NULL) {
            return 2;
        }
        memset(out, 0x5A, out_bytes);

        const int32_t status = run(op, flags, ints, blobs, lengths, out);
        if (fwrite(&status, 4, 1, stdout) != 1 || fwrite(&out_bytes, 4, 1, stdout) != 1 ||
            fwrite(out, 1, out_bytes, stdout) != out_bytes) {
            return 3;
        }
        for (int32_t i = 0; i < MAX_BLOBS; i++) {
            free(blobs[i]);
        }
        free(out);
    }
    return fflush(stdout) == 0 ? 0 : 3;
}
"""


@dataclass
class Call:
    """One kernel call for the harness; `ints` and `blobs` are positional per op (see run())."""
    op: int
    ints: list
    blobs: list
    out_bytes: int
    null_flags: int = 0

    def pack(self) -> bytes:
        parts = [struct.pack("<3i", self.op, self.null_flags, len(self.ints)),
                 struct.pack(f"<{len(self.ints)}i", *self.ints),
                 struct.pack("<i", len(self.blobs))]
        for blob in self.blobs:
            data = np.ascontiguousarray(blob).tobytes() if not isinstance(blob, bytes) else blob
            parts.append(struct.pack("<I", len(data)) + data)
        parts.append(struct.pack("<I", self.out_bytes))
        return b"".join(parts)


def build_harness(folder, linear_kind: str):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found on PATH; install the Debian package gcc")
    kernels = environment().get_template("kernels.c.j2").render(
        banner="/* rendered by tests/test_kernels.py */", linear_kinds=[linear_kind],
        max_features=MAX_FEATURES, has_attention=False)
    (folder / "kernels.c").write_text(kernels, encoding="utf-8")
    (folder / "harness.c").write_text(HARNESS_C, encoding="utf-8")
    executable = folder / "harness"
    command = [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11",
               f"-DTEST_LINEAR_{linear_kind.upper()}", f"-I{FIRMWARE_DIR / 'include'}",
               str(folder / "kernels.c"), str(folder / "harness.c"), "-o", str(executable)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"compiling kernels ({linear_kind}) failed:\n{result.stderr}"
    return executable


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    """Executables by linear kind: "s8" has rr_linear_s8, "s4" has rr_linear_s4."""
    return {kind: build_harness(tmp_path_factory.mktemp(f"kernels_{kind}"), kind)
            for kind in ("s8", "s4")}


def run_calls(executable, calls: list[Call]) -> list[tuple[int, bytes]]:
    """Run the calls in one harness process; returns (status, output bytes) per call."""
    payload = b"".join(call.pack() for call in calls)
    result = subprocess.run([str(executable)], input=payload, capture_output=True, timeout=60)
    assert result.returncode == 0, (f"harness exited with {result.returncode}: "
                                    f"{result.stderr.decode()}")
    replies, offset = [], 0
    for _ in calls:
        status, size = struct.unpack_from("<iI", result.stdout, offset)
        offset += 8
        replies.append((status, result.stdout[offset:offset + size]))
        offset += size
    assert offset == len(result.stdout), "harness wrote more replies than calls"
    return replies


def run_one(executable, call: Call, out_dtype=np.int8) -> np.ndarray:
    (status, data), = run_calls(executable, [call])
    assert status == RR_OK, f"kernel op {call.op} returned {status}"
    return np.frombuffer(data, dtype=out_dtype)


def assert_bit_exact(actual, expected, what: str) -> None:
    """Fail with the first mismatching index, both values and the mismatch count."""
    actual = np.asarray(actual).reshape(-1)
    expected = np.asarray(expected).reshape(-1)
    assert actual.shape == expected.shape, f"{what}: {actual.size} values, expected {expected.size}"
    differ = np.flatnonzero(actual != expected)
    if differ.size:
        i = int(differ[0])
        pytest.fail(f"{what}: {differ.size} of {actual.size} differ; first at index {i}: "
                    f"actual {int(actual[i])}, expected {int(expected[i])}")


# Parameter builders -----------------------------------------------------------------------

def random_linear(rng, in_features: int, out_features: int, bits: int = 8,
                  out_range=(-128, 127), real_range=(1e-4, 0.05), bias: bool = True) -> QLinear:
    qmax = 7 if bits == 4 else 127
    weight = rng.integers(-qmax, qmax + 1, size=(out_features, in_features)).astype(np.int8)
    weight[0, 0] = qmax
    weight[-1, -1] = -qmax
    reals = np.exp(rng.uniform(np.log(real_range[0]), np.log(real_range[1]), size=out_features))
    mult_shift = [quantize_multiplier(float(r)) for r in reals]
    multiplier = np.array([m for m, _ in mult_shift], dtype=np.int32)
    shift = np.array([s for _, s in mult_shift], dtype=np.int32)
    qbias = rng.integers(-(1 << 16), 1 << 16, size=out_features).astype(np.int32) if bias else None
    return QLinear(weight, bits, np.ones(out_features), multiplier, shift, qbias, *out_range)


def linear_call(op: int, p: QLinear, x: np.ndarray, weight_bytes=None, out_item: int = 1) -> Call:
    rows = x.shape[0]
    weight = weight_bytes if weight_bytes is not None else p.weight
    bias = p.bias if p.bias is not None else b""
    return Call(op, [rows, p.weight.shape[1], p.weight.shape[0]],
                [weight, bias, p.multiplier, p.shift, x.astype(np.int8)],
                rows * p.weight.shape[0] * out_item)


def random_int8(rng, shape) -> np.ndarray:
    """Seeded int8 values that always include -128 and, given room, 127."""
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    extremes = [-128, 127][:x.size]
    x.reshape(-1)[:len(extremes)] = extremes
    return x


# Linear -----------------------------------------------------------------------------------

@pytest.mark.parametrize("in_features, out_features, rows, bias", [
    (1, 1, 1, False), (37, 23, 5, True), (64, 96, 7, True), (85, 120, 3, False),
])
def test_linear_s8_matches_reference(harnesses, in_features, out_features, rows, bias):
    rng = np.random.default_rng(in_features * 1000 + out_features)
    p = random_linear(rng, in_features, out_features, bias=bias)
    x = random_int8(rng, (rows, in_features))
    actual = run_one(harnesses["s8"], linear_call(OP_LINEAR_S8, p, x))
    assert_bit_exact(actual, reference.linear(x, p), f"rr_linear_s8 {in_features}->{out_features}")


@pytest.mark.parametrize("in_features, out_features, rows", [
    (1, 3, 2), (2, 5, 3), (37, 23, 5), (64, 24, 4), (85, 17, 3),
])
def test_linear_s4_matches_reference(harnesses, in_features, out_features, rows):
    rng = np.random.default_rng(in_features * 1000 + out_features + 4)
    p = random_linear(rng, in_features, out_features, bits=4)
    x = random_int8(rng, (rows, in_features))
    packed = pack_int4(p.weight)
    assert packed.shape == (out_features, (in_features + 1) // 2)
    actual = run_one(harnesses["s4"], linear_call(OP_LINEAR_S4, p, x, weight_bytes=packed))
    assert_bit_exact(actual, reference.linear(x, p), f"rr_linear_s4 {in_features}->{out_features}")


def test_linear_s4_ignores_padding_nibble(harnesses):
    # With odd in_features the last high nibble of each row is padding; fill it with -1
    # (0xF) and the output must not change.
    rng = np.random.default_rng(11)
    p = random_linear(rng, 9, 6, bits=4, bias=False)
    x = random_int8(rng, (4, 9))
    packed = pack_int4(p.weight)
    assert np.all(packed[:, -1] >> 4 == 0), "pack_int4 pads with a zero nibble"
    dirty = packed.copy()
    dirty[:, -1] |= 0xF0
    actual = run_one(harnesses["s4"], linear_call(OP_LINEAR_S4, p, x, weight_bytes=dirty))
    assert_bit_exact(actual, reference.linear(x, p), "rr_linear_s4 with a set padding nibble")


def test_linear_s8_s16_matches_reference(harnesses):
    rng = np.random.default_rng(12)
    p = random_linear(rng, 64, 11, out_range=(-32768, 32767), real_range=(1e-3, 2.0))
    x = random_int8(rng, (81, 64))
    for kind in ("s8", "s4"):
        actual = run_one(harnesses[kind], linear_call(OP_LINEAR_S8_S16, p, x, out_item=2),
                         out_dtype=np.int16)
        assert_bit_exact(actual, reference.linear(x, p), f"rr_linear_s8_s16 ({kind} build)")


def test_linear_saturates_at_int8_and_int16_limits(harnesses):
    in_features, out_features = 16, 4
    weight = np.full((out_features, in_features), 127, dtype=np.int8)
    weight[1::2] = -127
    multiplier, shift = quantize_multiplier(1.0)
    common = dict(bits=8, weight_scale=np.ones(out_features),
                  multiplier=np.full(out_features, multiplier, dtype=np.int32),
                  shift=np.full(out_features, shift, dtype=np.int32), bias=None)
    x = np.array([[127] * in_features, [-128] * in_features], dtype=np.int8)

    p8 = QLinear(weight, out_min=-128, out_max=127, **common)
    actual = run_one(harnesses["s8"], linear_call(OP_LINEAR_S8, p8, x))
    assert_bit_exact(actual, [127, -128, 127, -128, -128, 127, -128, 127], "int8 saturation")
    assert_bit_exact(actual, reference.linear(x, p8), "int8 saturation against reference")

    p16 = QLinear(weight, out_min=-32768, out_max=32767, **common)
    actual = run_one(harnesses["s8"], linear_call(OP_LINEAR_S8_S16, p16, x, out_item=2),
                     out_dtype=np.int16)
    expected = [32767, -32768, 32767, -32768, -32768, 32767, -32768, 32767]
    assert_bit_exact(actual, expected, "int16 saturation")
    assert_bit_exact(actual, reference.linear(x, p16), "int16 saturation against reference")


# INT4 packing -----------------------------------------------------------------------------

def test_pack_int4_documented_nibble_example():
    packed = pack_int4(np.array([[1, -2, 3]], dtype=np.int8))
    assert packed.tolist() == [[0xE1, 0x03]]
    assert unpack_int4(packed, 3).tolist() == [[1, -2, 3]]


@pytest.mark.parametrize("cols", [1, 2, 7, 8, 85])
def test_pack_int4_round_trip(cols):
    rng = np.random.default_rng(cols)
    weight = rng.integers(-8, 8, size=(5, cols)).astype(np.int8)
    weight[0, 0], weight[-1, -1] = -8, 7
    packed = pack_int4(weight)
    assert packed.dtype == np.uint8
    assert packed.shape == (5, (cols + 1) // 2)
    assert np.array_equal(unpack_int4(packed, cols), weight)


# GLU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, intermediate", [(1, 1), (16, 24), (85, 120)])
def test_glu_matches_reference(harnesses, rows, intermediate):
    rng = np.random.default_rng(rows + intermediate)
    s_gate, s_up = 0.05, 0.03
    s_silu = 6.0 / 127
    s_out = 0.02
    multiplier, shift = quantize_multiplier(s_silu * s_up / s_out)
    p = QGlu(silu_table(s_gate, s_silu), multiplier, shift)
    x = random_int8(rng, (rows, 2 * intermediate))
    call = Call(OP_GLU, [rows, intermediate, p.multiplier, p.shift], [p.table, x],
                rows * intermediate)
    actual = run_one(harnesses["s8"], call)
    expected = reference.glu(x, p)
    assert_bit_exact(actual, expected, f"rr_glu_s8 [{rows}, {intermediate}]")


def test_glu_saturates(harnesses):
    # A table of +-127 and a large multiplier drive every product past the int8 range.
    table = np.where(np.arange(256) < 128, -127, 127).astype(np.int8)
    multiplier, shift = quantize_multiplier(1.0)
    p = QGlu(table, multiplier, shift)
    x = np.array([[-100, 100, 100, 100], [100, -100, 100, 100]], dtype=np.int8)
    call = Call(OP_GLU, [2, 2, multiplier, shift], [table, x], 4)
    actual = run_one(harnesses["s8"], call)
    assert_bit_exact(actual, [-128, 127, 127, -128], "rr_glu_s8 saturation")
    assert_bit_exact(actual, reference.glu(x, p), "rr_glu_s8 saturation against reference")


# add_rmsnorm ------------------------------------------------------------------------------

def add_rmsnorm_call(p, a, b) -> Call:
    rows, n = a.shape
    return Call(OP_ADD_RMSNORM, [rows, n, p.weight_a, p.weight_b, p.multiplier, p.total_shift],
                [np.array([p.eps_term], dtype=np.int64), a, b], rows * n)


@pytest.mark.parametrize("rows, n, scale_a, scale_b, out_scale, eps", [
    (1, 1, 0.1, 0.1, 0.02, 1e-5),
    (16, 85, 0.02, 0.05, 0.03, 1e-5),
    (85, 16, 0.3, 0.01, 0.025, 1e-5),
    (4, 4096, 0.05, 0.05, 0.03, 1e-5),
    (3, 64, 0.02, 0.02, 0.004, 0.0),     # small output scale: many outputs saturate
])
def test_add_rmsnorm_matches_reference(harnesses, rows, n, scale_a, scale_b, out_scale, eps):
    rng = np.random.default_rng(rows * 10_000 + n)
    p = make_add_norm(scale_a, scale_b, out_scale, n, eps)
    a = random_int8(rng, (rows, n))
    b = random_int8(rng, (rows, n))
    actual = run_one(harnesses["s8"], add_rmsnorm_call(p, a, b))
    expected = reference.add_rmsnorm(a, b, p)
    assert_bit_exact(actual, expected, f"rr_add_rmsnorm_s8 [{rows}, {n}]")


def test_add_rmsnorm_all_zero_rows_give_zero(harnesses):
    # eps 0 makes the sum of squares 0; the root clamps to 1 instead of dividing by zero.
    p = make_add_norm(0.05, 0.05, 0.03, 16, 0.0)
    assert p.eps_term == 0
    rng = np.random.default_rng(13)
    a = random_int8(rng, (3, 16))
    b = random_int8(rng, (3, 16))
    a[1] = 0
    b[1] = 0
    actual = run_one(harnesses["s8"], add_rmsnorm_call(p, a, b)).reshape(3, 16)
    expected = reference.add_rmsnorm(a, b, p)
    assert_bit_exact(actual, expected, "rr_add_rmsnorm_s8 with a zero row")
    assert not actual[1].any(), f"zero row normalized to {actual[1].tolist()}"


# add --------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_scales, out_scale", [
    ([0.05], 0.04), ([0.05, 0.02], 0.03), ([0.05, 0.05, 0.2], 0.06), ([0.01, 0.01, 0.01], 0.001),
])
def test_add_matches_reference(harnesses, in_scales, out_scale):
    rng = np.random.default_rng(len(in_scales))
    count = 85 * 16
    p = make_add(in_scales, out_scale, "test add")
    inputs = [random_int8(rng, count) for _ in in_scales]
    weights = list(p.weights) + [0] * (3 - len(p.weights))
    call = Call(OP_ADD, [len(inputs), count, *weights, p.multiplier, p.shift], inputs, count)
    actual = run_one(harnesses["s8"], call)
    assert_bit_exact(actual, reference.add(inputs, p), f"rr_add_s8 with {len(inputs)} inputs")


# transpose and argmax ---------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 7), (85, 16), (16, 85)])
def test_transpose_matches_numpy(harnesses, rows, cols):
    x = random_int8(np.random.default_rng(rows * cols), (rows, cols))
    actual = run_one(harnesses["s8"], Call(OP_TRANSPOSE, [rows, cols], [x], rows * cols))
    assert_bit_exact(actual, x.T, f"rr_transpose_s8 [{rows}, {cols}]")


def test_argmax_matches_reference_and_breaks_ties_low(harnesses):
    rng = np.random.default_rng(14)
    cols = 11
    logits = rng.integers(-32768, 32768, size=(40, cols)).astype(np.int16)
    logits[0] = 5                               # all equal -> index 0
    logits[1] = -32768                          # all at the int16 minimum -> index 0
    logits[2] = [0, 3, 9, 1, 9, 9, 0, 0, 0, 0, 9]   # first of several maxima -> 2
    logits[3] = -1
    logits[3, 10] = 32767                       # maximum in the last column
    logits[4] = rng.integers(0, 3, size=cols)   # many ties from a narrow range
    actual = run_one(harnesses["s8"], Call(OP_ARGMAX, [40, cols], [logits], 40),
                     out_dtype=np.uint8)
    assert actual[:4].tolist() == [0, 0, 2, 10]
    assert_bit_exact(actual, reference.argmax(logits), "rr_argmax_s16")


def test_argmax_handles_256_columns(harnesses):
    logits = np.zeros((2, 256), dtype=np.int16)
    logits[0, 255] = 1
    logits[1, 128] = 7
    logits[1, 200] = 7
    actual = run_one(harnesses["s8"], Call(OP_ARGMAX, [2, 256], [logits], 2), out_dtype=np.uint8)
    assert actual.tolist() == [255, 128]


# Invalid arguments ------------------------------------------------------------------------

def argument_cases() -> list[tuple[str, Call]]:
    """Calls for which rr_kernels.h requires RR_ERR_ARGUMENT and an untouched output."""
    rng = np.random.default_rng(15)
    p = random_linear(rng, 6, 4)
    x = random_int8(rng, (2, 6))
    norm = make_add_norm(0.05, 0.05, 0.03, 6, 1e-5)
    add_p = make_add([0.05, 0.05], 0.05, "test add")
    table = silu_table(0.05, 0.05)
    cases = []
    for name, op, out_item in (("rr_linear_s8", OP_LINEAR_S8, 1),
                               ("rr_linear_s8_s16", OP_LINEAR_S8_S16, 2)):
        for flag, what in ((NULL_PARAMS, "p NULL"), (NULL_INPUT, "in NULL"),
                           (NULL_OUTPUT, "out NULL")):
            call = linear_call(op, p, x, out_item=out_item)
            call.null_flags = flag
            cases.append((f"{name} {what}", call))
        for rows in (0, -1):
            call = linear_call(op, p, x, out_item=out_item)
            call.ints[0] = rows
            cases.append((f"{name} rows={rows}", call))
        # More channels than the stack accumulators of RR_MAX_FEATURES hold.
        call = linear_call(op, p, x, out_item=out_item)
        call.ints[2] = MAX_FEATURES + 1
        cases.append((f"{name} out_features={MAX_FEATURES + 1}", call))

    def glu(ints, flags=0):
        return Call(OP_GLU, ints, [table, x], 8, flags)
    cases += [("rr_glu_s8 p NULL", glu([2, 3, 1 << 30, 0], NULL_PARAMS)),
              ("rr_glu_s8 in NULL", glu([2, 3, 1 << 30, 0], NULL_INPUT)),
              ("rr_glu_s8 out NULL", glu([2, 3, 1 << 30, 0], NULL_OUTPUT)),
              ("rr_glu_s8 rows=0", glu([0, 3, 1 << 30, 0])),
              ("rr_glu_s8 intermediate=0", glu([2, 0, 1 << 30, 0])),
              ("rr_glu_s8 intermediate=-3", glu([2, -3, 1 << 30, 0]))]

    def rmsnorm(rows, n, flags=0):
        call = add_rmsnorm_call(norm, x, x)
        call.ints[0], call.ints[1], call.null_flags = rows, n, flags
        return call
    cases += [("rr_add_rmsnorm_s8 p NULL", rmsnorm(2, 6, NULL_PARAMS)),
              ("rr_add_rmsnorm_s8 a NULL", rmsnorm(2, 6, NULL_INPUT)),
              ("rr_add_rmsnorm_s8 b NULL", rmsnorm(2, 6, NULL_SECOND)),
              ("rr_add_rmsnorm_s8 out NULL", rmsnorm(2, 6, NULL_OUTPUT)),
              ("rr_add_rmsnorm_s8 rows=0", rmsnorm(0, 6)),
              ("rr_add_rmsnorm_s8 n=0", rmsnorm(2, 0)),
              ("rr_add_rmsnorm_s8 n=4097", rmsnorm(1, 4097))]

    def add(n_inputs, count, flags=0):
        return Call(OP_ADD, [n_inputs, count, *add_p.weights, 0, add_p.multiplier, add_p.shift],
                    [x, x, x, x], 12, flags)
    cases += [("rr_add_s8 p NULL", add(2, 12, NULL_PARAMS)),
              ("rr_add_s8 inputs NULL", add(2, 12, NULL_INPUT)),
              ("rr_add_s8 inputs[1] NULL", add(2, 12, NULL_SECOND)),
              ("rr_add_s8 out NULL", add(2, 12, NULL_OUTPUT)),
              ("rr_add_s8 n_inputs=0", add(0, 12)),
              ("rr_add_s8 n_inputs=4", add(4, 12)),
              ("rr_add_s8 count=0", add(2, 0))]

    def transpose(rows, cols, flags=0):
        return Call(OP_TRANSPOSE, [rows, cols], [x], 12, flags)
    cases += [("rr_transpose_s8 in NULL", transpose(2, 6, NULL_INPUT)),
              ("rr_transpose_s8 out NULL", transpose(2, 6, NULL_OUTPUT)),
              ("rr_transpose_s8 rows=0", transpose(0, 6)),
              ("rr_transpose_s8 cols=-1", transpose(2, -1))]

    logits = np.zeros((2, 257), dtype=np.int16)

    def argmax(rows, cols, flags=0):
        return Call(OP_ARGMAX, [rows, cols], [logits], 2, flags)
    cases += [("rr_argmax_s16 logits NULL", argmax(2, 11, NULL_INPUT)),
              ("rr_argmax_s16 out NULL", argmax(2, 11, NULL_OUTPUT)),
              ("rr_argmax_s16 rows=0", argmax(0, 11)),
              ("rr_argmax_s16 cols=0", argmax(2, 0)),
              ("rr_argmax_s16 cols=257", argmax(2, 257))]
    return cases


def test_kernels_reject_null_and_empty_arguments(harnesses):
    cases = argument_cases()
    replies = run_calls(harnesses["s8"], [call for _, call in cases])
    for (name, call), (status, data) in zip(cases, replies):
        assert status == RR_ERR_ARGUMENT, f"{name}: status {status}, expected {RR_ERR_ARGUMENT}"
        if not call.null_flags & NULL_OUTPUT:
            assert data == bytes([SENTINEL]) * len(data), f"{name}: output was written"


def test_linear_s4_rejects_null_and_empty_arguments(harnesses):
    rng = np.random.default_rng(16)
    p = random_linear(rng, 5, 3, bits=4)
    x = random_int8(rng, (2, 5))
    calls = {}
    for flag, what in ((NULL_PARAMS, "p NULL"), (NULL_INPUT, "in NULL"), (NULL_OUTPUT, "out NULL")):
        calls[what] = linear_call(OP_LINEAR_S4, p, x, weight_bytes=pack_int4(p.weight))
        calls[what].null_flags = flag
    calls["rows=0"] = linear_call(OP_LINEAR_S4, p, x, weight_bytes=pack_int4(p.weight))
    calls["rows=0"].ints[0] = 0
    replies = run_calls(harnesses["s4"], list(calls.values()))
    for (name, call), (status, data) in zip(calls.items(), replies):
        assert status == RR_ERR_ARGUMENT, f"rr_linear_s4 {name}: status {status}"
        if not call.null_flags & NULL_OUTPUT:
            assert data == bytes([SENTINEL]) * len(data), f"rr_linear_s4 {name}: output was written"


def invalid_linear_param(case: str) -> Call:
    rng = np.random.default_rng(17)
    p = random_linear(rng, 6, 4)
    x = random_int8(rng, (2, 6))
    call = linear_call(OP_LINEAR_S8, p, x)
    if case == "in_features=0":
        call.ints[1] = 0
    elif case == "out_features=0":
        call.ints[2] = 0
    elif case == "out_features=-1":
        call.ints[2] = -1
    elif case == "weight NULL":
        call.null_flags = NULL_WEIGHT
    elif case == "multiplier NULL":
        call.null_flags = NULL_MULTIPLIER
    elif case == "glu table NULL":
        call = Call(OP_GLU, [2, 3, 1 << 30, 0], [silu_table(0.05, 0.05), x], 6, NULL_WEIGHT)
    return call


@pytest.mark.parametrize("case", ["in_features=0", "out_features=0", "out_features=-1",
                                  "weight NULL", "multiplier NULL", "glu table NULL"])
def test_kernels_reject_invalid_param_fields(harnesses, case):
    call = invalid_linear_param(case)
    result = subprocess.run([str(harnesses["s8"])], input=call.pack(), capture_output=True,
                            timeout=60)
    assert result.returncode == 0, f"{case}: harness exited with {result.returncode} (crash)"
    status, = struct.unpack_from("<i", result.stdout)
    assert status == RR_ERR_ARGUMENT, f"{case}: status {status}, expected {RR_ERR_ARGUMENT}"
