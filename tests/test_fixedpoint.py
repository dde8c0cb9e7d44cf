"""Checks codegen/rrgen/fixedpoint.py against its C twin firmware/include/rr_fixedpoint.h.

A small C harness, compiled once per module with the system gcc (-O2 -Wall -Wextra -Werror
-std=c11), applies rr_requantize, rr_divide_by_power_of_two, rr_isqrt_u64, rr_divide_round
and the two saturations to arrays read from stdin. The numpy functions must give the same
bits on edge cases and on ~100k seeded random inputs in each function's stated range. An
independent oracle in exact rational arithmetic (fractions.Fraction) checks the documented
rounding rules, and quantize_multiplier is checked for range and precision.

Run: cd codegen && python -m pytest ../tests/test_fixedpoint.py
"""

import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from rrgen import fixedpoint
from rrgen.emit import FIRMWARE_DIR

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
RANDOM_COUNT = 100_000
ORACLE_RANDOM_COUNT = 5_000

# Reads `u32 count` and one little-endian column per operand, writes one result column.
HARNESS_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rr_fixedpoint.h"

static void *read_column(uint32_t count, size_t item_bytes)
{
    void *column = malloc((size_t)count * item_bytes + 1);
    if (column == NULL || fread(column, item_bytes, count, stdin) != count) {
        fprintf(stderr, "harness: short read\n");
        exit(2);
    }
    return column;
}

static void write_column(const void *column, uint32_t count, size_t item_bytes)
{
    if (fwrite(column, item_bytes, count, stdout) != count) {
        exit(3);
    }
}

int main(int argc, char **argv)
{
    uint32_t count;
    if (argc != 2 || fread(&count, sizeof count, 1, stdin) != 1) {
        fprintf(stderr, "usage: harness OP < columns\n");
        return 2;
    }
    const char *op = argv[1];
    if (strcmp(op, "requantize") == 0) {
        const int32_t *value = read_column(count, 4);
        const int32_t *multiplier = read_column(count, 4);
        const int32_t *shift = read_column(count, 4);
        int32_t *out = malloc((size_t)count * 4 + 1);
        for (uint32_t i = 0; i < count; i++) {
            out[i] = rr_requantize(value[i], multiplier[i], shift[i]);
        }
        write_column(out, count, 4);
    } else if (strcmp(op, "divide_by_power_of_two") == 0) {
        const int64_t *value = read_column(count, 8);
        const int32_t *exponent = read_column(count, 4);
        int64_t *out = malloc((size_t)count * 8 + 1);
        for (uint32_t i = 0; i < count; i++) {
            out[i] = rr_divide_by_power_of_two(value[i], exponent[i]);
        }
        write_column(out, count, 8);
    } else if (strcmp(op, "isqrt_u64") == 0) {
        const uint64_t *value = read_column(count, 8);
        int64_t *out = malloc((size_t)count * 8 + 1);
        for (uint32_t i = 0; i < count; i++) {
            out[i] = rr_isqrt_u64(value[i]);
        }
        write_column(out, count, 8);
    } else if (strcmp(op, "divide_round") == 0) {
        const int64_t *numerator = read_column(count, 8);
        const int64_t *denominator = read_column(count, 8);
        int64_t *out = malloc((size_t)count * 8 + 1);
        for (uint32_t i = 0; i < count; i++) {
            out[i] = rr_divide_round(numerator[i], denominator[i]);
        }
        write_column(out, count, 8);
    } else if (strcmp(op, "saturate_s8") == 0 || strcmp(op, "saturate_s16") == 0) {
        const int64_t *value = read_column(count, 8);
        int64_t *out = malloc((size_t)count * 8 + 1);
        for (uint32_t i = 0; i < count; i++) {
            out[i] = op[10] == '8' ? rr_saturate_s8(value[i]) : rr_saturate_s16(value[i]);
        }
        write_column(out, count, 8);
    } else {
        fprintf(stderr, "harness: unknown op %s\n", op);
        return 2;
    }
    return fflush(stdout) == 0 ? 0 : 3;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found on PATH; install the Debian package gcc")
    folder = tmp_path_factory.mktemp("fixedpoint_harness")
    source = folder / "harness.c"
    source.write_text(HARNESS_C, encoding="utf-8")
    executable = folder / "harness"
    command = [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11",
               f"-I{FIRMWARE_DIR / 'include'}", str(source), "-o", str(executable)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"compiling the harness failed:\n{result.stderr}"
    return executable


def run_c(executable, op: str, columns: list[np.ndarray], out_dtype) -> np.ndarray:
    """Apply the C twin of `op` element-wise to the columns (all of one length)."""
    count = len(columns[0])
    payload = np.uint32(count).tobytes() + b"".join(np.ascontiguousarray(c).tobytes()
                                                    for c in columns)
    result = subprocess.run([str(executable), op], input=payload, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, f"harness {op} failed: {result.stderr.decode()}"
    return np.frombuffer(result.stdout, dtype=out_dtype)


def assert_bit_exact(actual, expected, what: str, inputs: dict) -> None:
    """Fail with the first mismatching index, both values, its inputs and the count."""
    actual = np.asarray(actual).reshape(-1)
    expected = np.asarray(expected).reshape(-1)
    assert actual.shape == expected.shape, f"{what}: {actual.size} results, expected {expected.size}"
    differ = np.flatnonzero(actual != expected)
    if differ.size:
        i = int(differ[0])
        operands = ", ".join(f"{name}={int(np.asarray(v).reshape(-1)[i])}"
                             for name, v in inputs.items())
        pytest.fail(f"{what}: {differ.size} of {actual.size} differ; first at index {i} "
                    f"({operands}): actual {int(actual[i])}, expected {int(expected[i])}")


def round_half_away(x: Fraction) -> int:
    """Nearest integer to x, midpoints away from zero."""
    magnitude = math.floor(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def requantize_oracle(value: int, multiplier: int, shift: int) -> int:
    """The documented double rounding, in exact rationals.

    First round(value * 2^left * multiplier / 2^31) with midpoints up, then a division by
    2^right with midpoints away from zero.
    """
    left, right = max(shift, 0), max(-shift, 0)
    high = math.floor(Fraction(value * (1 << left) * multiplier, 1 << 31) + Fraction(1, 2))
    return round_half_away(Fraction(high, 1 << right))


# Input sets ------------------------------------------------------------------------------

def value_range(shift: int) -> tuple[int, int]:
    """Values allowed with `shift`: value * 2^max(shift, 0) must fit int32."""
    left = max(shift, 0)
    return INT32_MIN >> left, INT32_MAX >> left


def requantize_edge_cases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    multipliers = [0, 1, 2, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, 3 << 29, (1 << 31) - 2,
                   (1 << 31) - 1]
    values, mults, shifts = [], [], []
    for shift in range(-31, 31):
        low, high = value_range(shift)
        right = max(-shift, 0)
        candidates = {0, 1, -1, 2, -2, 3, -3, low, low + 1, high, high - 1, high // 2, low // 2}
        # Midpoints of the final division: with multiplier 2^30 the real factor is
        # 2^(shift - 1), so odd multiples of 2^right reach the second rounding at +-0.5.
        for k in (1, 3, 5, 255):
            for value in (k << right, -(k << right), (k << right) + 1, -(k << right) - 1):
                if low <= value <= high:
                    candidates.add(value)
        for value in sorted(v for v in candidates if low <= v <= high):
            for multiplier in multipliers:
                values.append(value)
                mults.append(multiplier)
                shifts.append(shift)
    return (np.array(values, dtype=np.int32), np.array(mults, dtype=np.int32),
            np.array(shifts, dtype=np.int32))


def requantize_random(rng: np.random.Generator, count: int):
    shifts = rng.integers(-31, 31, size=count)
    mults = rng.integers(1 << 30, 1 << 31, size=count)
    left = np.maximum(shifts, 0)
    # Magnitudes spread over every bit length that the shift allows.
    bits = rng.integers(0, 32, size=count) - left
    bits = np.clip(bits, 0, 31 - left)
    values = rng.integers(0, 1 << 62, size=count) % (np.int64(1) << bits)
    values = np.where(rng.random(count) < 0.5, -values, values)
    low, high = INT32_MIN >> left, INT32_MAX >> left
    values = np.clip(values, low, high)
    return values.astype(np.int32), mults.astype(np.int32), shifts.astype(np.int32)


def divide_edge_cases() -> tuple[np.ndarray, np.ndarray]:
    values, exponents = [], []
    for exponent in range(0, 63):
        half = (1 << exponent) >> 1
        candidates = {0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1}
        for base in (0, 1 << exponent, 3 << exponent):
            for offset in (half, half - 1, half + 1):
                for value in (base + offset, -(base + offset)):
                    if INT64_MIN <= value <= INT64_MAX:
                        candidates.add(value)
        for value in sorted(candidates):
            values.append(value)
            exponents.append(exponent)
    return np.array(values, dtype=np.int64), np.array(exponents, dtype=np.int32)


def isqrt_edge_cases() -> np.ndarray:
    roots = [0, 1, 2, 3, 4, 15, 16, 255, 256, 65535, 65536, (1 << 31) - 2, (1 << 31) - 1]
    roots += [(1 << b) - 1 for b in range(1, 32)] + [1 << b for b in range(31)]
    values = set()
    for root in roots:
        for value in (root * root - 1, root * root, root * root + 1, (root + 1) ** 2 - 1):
            if 0 <= value < 1 << 62:
                values.add(value)
    values.update({(1 << 62) - 1, (1 << 62) - 2, (1 << 62) - (1 << 31), (1 << 61), 1 << 60})
    return np.array(sorted(values), dtype=np.int64)


def divide_round_edge_cases() -> tuple[np.ndarray, np.ndarray]:
    numerators, denominators = [], []
    for denominator in (1, 2, 3, 4, 7, 10, 1 << 20, (1 << 31) - 1, 1 << 31, (1 << 61) + 1):
        for quotient in (0, 1, 2, 3, 1000, (1 << 30) - 1):
            base = quotient * denominator
            for numerator in (base, base + denominator // 2, base + denominator // 2 - 1,
                              base + denominator // 2 + 1, base + denominator - 1):
                if 0 <= numerator < 1 << 62:
                    numerators.append(numerator)
                    denominators.append(denominator)
    return np.array(numerators, dtype=np.int64), np.array(denominators, dtype=np.int64)


# requantize ------------------------------------------------------------------------------

def test_requantize_matches_c_on_edge_cases(harness):
    values, mults, shifts = requantize_edge_cases()
    expected = fixedpoint.requantize(values, mults, shifts)
    actual = run_c(harness, "requantize", [values, mults, shifts], np.int32)
    assert_bit_exact(actual, expected, "requantize edge cases",
                     {"value": values, "multiplier": mults, "shift": shifts})


def test_requantize_matches_c_on_random_inputs(harness):
    values, mults, shifts = requantize_random(np.random.default_rng(1), RANDOM_COUNT)
    expected = fixedpoint.requantize(values, mults, shifts)
    actual = run_c(harness, "requantize", [values, mults, shifts], np.int32)
    assert_bit_exact(actual, expected, "requantize random",
                     {"value": values, "multiplier": mults, "shift": shifts})


def test_requantize_follows_documented_double_rounding():
    values, mults, shifts = requantize_edge_cases()
    random_values, random_mults, random_shifts = requantize_random(np.random.default_rng(2),
                                                                   ORACLE_RANDOM_COUNT)
    values = np.concatenate([values, random_values])
    mults = np.concatenate([mults, random_mults])
    shifts = np.concatenate([shifts, random_shifts])
    expected = [requantize_oracle(int(v), int(m), int(s))
                for v, m, s in zip(values, mults, shifts)]
    actual = fixedpoint.requantize(values, mults, shifts)
    assert_bit_exact(actual, expected, "requantize against the Fraction oracle",
                     {"value": values, "multiplier": mults, "shift": shifts})


@pytest.mark.parametrize("value, multiplier, shift, expected", [
    (3, 1 << 30, 0, 2),          # 1.5 rounds up in the high multiply
    (-3, 1 << 30, 0, -1),        # -1.5 rounds up (towards +inf) in the high multiply
    (3, 1 << 30, -1, 1),         # high = 2 (1.5 up), then 2 / 2 = 1
    (6, 1 << 30, -1, 2),         # high = 3, then 1.5 rounds away from zero
    (-6, 1 << 30, -1, -2),       # high = -3, then -1.5 rounds away from zero
    (-2, 1 << 30, -1, -1),       # high = -1, then -0.5 rounds away from zero
    (2, 1 << 30, -1, 1),         # high = 1, then 0.5 rounds away from zero
    (INT32_MAX, (1 << 31) - 1, 0, INT32_MAX - 1),
    (INT32_MIN, (1 << 31) - 1, 0, INT32_MIN + 1),
    (1, 1 << 30, 30, 1 << 29),   # left shift by 30 of the smallest value
])
def test_requantize_midpoints_and_limits(value, multiplier, shift, expected):
    assert int(fixedpoint.requantize(value, multiplier, shift)) == expected
    assert requantize_oracle(value, multiplier, shift) == expected


def test_requantize_error_bounded_by_double_rounding():
    values, mults, shifts = requantize_random(np.random.default_rng(3), ORACLE_RANDOM_COUNT)
    results = fixedpoint.requantize(values, mults, shifts)
    for v, m, s, r in zip(values.tolist(), mults.tolist(), shifts.tolist(), results.tolist()):
        exact = Fraction(v * m) * Fraction(2) ** (s - 31)
        # Half a unit from the final rounding plus half a unit of 2^-right from the first.
        bound = Fraction(1, 2) + Fraction(1, 2) / (1 << max(-s, 0))
        assert abs(r - exact) <= bound, f"requantize({v}, {m}, {s}) = {r}, exact {float(exact)}"


# divide_by_power_of_two ------------------------------------------------------------------

def test_divide_by_power_of_two_matches_c_on_edge_cases(harness):
    values, exponents = divide_edge_cases()
    expected = fixedpoint.divide_by_power_of_two(values, exponents)
    actual = run_c(harness, "divide_by_power_of_two", [values, exponents], np.int64)
    assert_bit_exact(actual, expected, "divide_by_power_of_two edge cases",
                     {"value": values, "exponent": exponents})


def test_divide_by_power_of_two_matches_c_on_random_inputs(harness):
    rng = np.random.default_rng(4)
    exponents = rng.integers(0, 63, size=RANDOM_COUNT).astype(np.int32)
    bits = rng.integers(0, 64, size=RANDOM_COUNT)
    values = rng.integers(INT64_MIN, INT64_MAX, size=RANDOM_COUNT, dtype=np.int64, endpoint=True)
    values = np.where(bits < 63, values >> (63 - np.minimum(bits, 63)), values)
    expected = fixedpoint.divide_by_power_of_two(values, exponents)
    actual = run_c(harness, "divide_by_power_of_two", [values, exponents], np.int64)
    assert_bit_exact(actual, expected, "divide_by_power_of_two random",
                     {"value": values, "exponent": exponents})


def test_divide_by_power_of_two_rounds_midpoints_away_from_zero():
    values, exponents = divide_edge_cases()
    expected = [round_half_away(Fraction(v, 1 << e))
                for v, e in zip(values.tolist(), exponents.tolist())]
    actual = fixedpoint.divide_by_power_of_two(values, exponents)
    assert_bit_exact(actual, expected, "divide_by_power_of_two against the Fraction oracle",
                     {"value": values, "exponent": exponents})


# isqrt_u64 -------------------------------------------------------------------------------

def test_isqrt_matches_c_on_edge_cases(harness):
    values = isqrt_edge_cases()
    expected = [math.isqrt(v) for v in values.tolist()]
    assert_bit_exact(fixedpoint.isqrt_u64(values), expected, "numpy isqrt_u64 edge cases",
                     {"value": values})
    actual = run_c(harness, "isqrt_u64", [values.astype(np.uint64)], np.int64)
    assert_bit_exact(actual, expected, "C rr_isqrt_u64 edge cases", {"value": values})


def test_isqrt_matches_c_on_random_inputs(harness):
    rng = np.random.default_rng(5)
    bits = rng.integers(1, 63, size=RANDOM_COUNT)
    values = rng.integers(0, 1 << 62, size=RANDOM_COUNT, dtype=np.int64) >> (62 - bits)
    expected = fixedpoint.isqrt_u64(values)
    actual = run_c(harness, "isqrt_u64", [values.astype(np.uint64)], np.int64)
    assert_bit_exact(actual, expected, "isqrt_u64 random", {"value": values})
    sample = values[:ORACLE_RANDOM_COUNT].tolist()
    assert_bit_exact(expected[:ORACLE_RANDOM_COUNT], [math.isqrt(v) for v in sample],
                     "isqrt_u64 against math.isqrt", {"value": values[:ORACLE_RANDOM_COUNT]})


# divide_round ----------------------------------------------------------------------------

def test_divide_round_matches_c_and_rounds_midpoints_up(harness):
    rng = np.random.default_rng(6)
    edge_numerators, edge_denominators = divide_round_edge_cases()
    random_denominators = rng.integers(1, 1 << 40, size=RANDOM_COUNT, dtype=np.int64)
    random_numerators = rng.integers(0, 1 << 61, size=RANDOM_COUNT, dtype=np.int64)
    numerators = np.concatenate([edge_numerators, random_numerators])
    denominators = np.concatenate([edge_denominators, random_denominators])
    expected = fixedpoint.divide_round(numerators, denominators)
    actual = run_c(harness, "divide_round", [numerators, denominators], np.int64)
    assert_bit_exact(actual, expected, "divide_round",
                     {"numerator": numerators, "denominator": denominators})

    count = len(edge_numerators) + ORACLE_RANDOM_COUNT
    oracle = [math.floor(Fraction(n, d) + Fraction(1, 2))
              for n, d in zip(numerators[:count].tolist(), denominators[:count].tolist())]
    assert_bit_exact(expected[:count], oracle, "divide_round against the Fraction oracle",
                     {"numerator": numerators[:count], "denominator": denominators[:count]})


# saturation ------------------------------------------------------------------------------

@pytest.mark.parametrize("op, low, high", [("saturate_s8", -128, 127),
                                           ("saturate_s16", -32768, 32767)])
def test_saturate_matches_c(harness, op, low, high):
    rng = np.random.default_rng(7)
    edges = [INT64_MIN, INT64_MAX, 0, low - 1, low, low + 1, high - 1, high, high + 1,
             INT32_MIN, INT32_MAX]
    values = np.concatenate([np.array(edges, dtype=np.int64),
                             rng.integers(-(1 << 20), 1 << 20, size=10_000, dtype=np.int64)])
    expected = fixedpoint.saturate(values, low, high)
    actual = run_c(harness, op, [values], np.int64)
    assert_bit_exact(actual, expected, op, {"value": values})


# quantize_multiplier ---------------------------------------------------------------------

def test_quantize_multiplier_round_trip_precision():
    rng = np.random.default_rng(8)
    exponents = rng.uniform(-31, 30, size=20_000)
    reals = np.exp2(exponents).tolist() + [2.0 ** -31 * 1.0000001, 2.0 ** -31 * 1.5, 0.5,
                                           1.0, 1.5, 0.75, 2.0 ** 29, 2.0 ** 30 - 1.0]
    for real in reals:
        multiplier, shift = fixedpoint.quantize_multiplier(real)
        assert 1 << 30 <= multiplier < 1 << 31, f"real {real!r}: multiplier {multiplier}"
        assert -31 <= shift <= 30, f"real {real!r}: shift {shift}"
        represented = Fraction(multiplier) * Fraction(2) ** (shift - 31)
        relative = abs(represented - Fraction(real)) / Fraction(real)
        assert relative <= Fraction(1, 1 << 31), f"real {real!r}: relative error {float(relative)}"


def test_quantize_multiplier_tiny_and_zero():
    # Reals down to 2^-32 are still represented (with shift -31), and smaller ones give 0.
    # NOTE: quantize_multiplier's docstring puts the cutoff at 2^-31, but the code uses 2^-32.
    assert fixedpoint.quantize_multiplier(0.0) == (0, 0)
    assert fixedpoint.quantize_multiplier(2.0 ** -33) == (0, 0)
    assert fixedpoint.quantize_multiplier(2.0 ** -32 * 0.99) == (0, 0)
    assert fixedpoint.quantize_multiplier(2.0 ** -32) == (1 << 30, -31)
    assert fixedpoint.quantize_multiplier(0.75 * 2.0 ** -31) == (3 << 29, -31)


@pytest.mark.parametrize("real", [-1.0, float("nan"), float("inf"), 2.0 ** 30, 2.0 ** 40])
def test_quantize_multiplier_rejects_invalid(real):
    with pytest.raises(ValueError, match="multiplier"):
        fixedpoint.quantize_multiplier(real)


def test_quantize_multiplier_feeds_requantize():
    rng = np.random.default_rng(9)
    for real in np.exp2(rng.uniform(-20, 0, size=200)).tolist():
        multiplier, shift = fixedpoint.quantize_multiplier(real)
        values = rng.integers(-(1 << 20), 1 << 20, size=50)
        results = fixedpoint.requantize(values, multiplier, shift)
        errors = np.abs(results - values * real)
        # Double rounding (0.5 + 0.5 / 2^right) plus the multiplier's relative error 2^-31.
        bound = 0.5 + 0.5 / 2.0 ** max(-shift, 0) + np.abs(values) * real * 2.0 ** -31 + 1e-9
        assert np.all(errors <= bound), f"real {real!r}: error {errors.max()}"
