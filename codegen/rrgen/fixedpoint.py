"""Integer arithmetic of the deployed model, in numpy: the oracle for firmware/include/rr_fixedpoint.h.

Pipeline stage: quantize -> reference. Every function here has exactly one C twin with the
same name (prefix rr_) and the same bits for every input in its stated range.

Quantization convention, everywhere in rrgen: real = scale * q, zero point 0.

Rounding: requantize() is CMSIS-NN's default `arm_nn_requantize` (and TFLite Micro's
MultiplyByQuantizedMultiplier): a doubling high multiply that adds 2^30 before the shift
by 31 (midpoints round up), then a divide by a power of two whose midpoints round away
from zero. The 64-bit helpers used by RMSNorm round midpoints away from zero as well.
"""

from __future__ import annotations

import math

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -32768, 32767


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Represent real > 0 as multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).

    Same representation as TFLite's QuantizeMultiplier. A real below 2^-32 gives (0, 0).
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier {real!r} must be finite and >= 0")
    if real == 0:
        return 0, 0
    fraction, exponent = math.frexp(real)          # real = fraction * 2^exponent, fraction in [0.5, 1)
    q = int(math.floor(fraction * (1 << 31) + 0.5))
    if q == 1 << 31:
        q //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    if exponent > 30:
        raise ValueError(f"multiplier {real!r} is too large to represent (>= 2^30)")
    return q, exponent


def requantize(value, multiplier, shift) -> np.ndarray:
    """round(value * multiplier * 2^(shift - 31)) as CMSIS-NN computes it; int64 array.

    value: int32 range; value * 2^max(shift, 0) must stay in int32 range (the caller proves it).
    multiplier: [0, 2^31); shift: [-31, 30]. Arrays broadcast.
    """
    value = np.asarray(value, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = value << left
    high = (scaled * multiplier + (1 << 30)) >> 31
    return divide_by_power_of_two(high, right)


def divide_by_power_of_two(value, exponent) -> np.ndarray:
    """value / 2^exponent, midpoints away from zero. exponent in [0, 62]; int64 array."""
    value = np.asarray(value, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = value & mask
    result = value >> exponent
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def saturate(value, low: int, high: int) -> np.ndarray:
    return np.clip(value, low, high)


def isqrt_u64(value) -> np.ndarray:
    """floor(sqrt(value)) for 0 <= value < 2^62, exactly; int64 array.

    The float square root is only a first guess; the two correction loops make it exact.
    """
    value = np.asarray(value, dtype=np.int64)
    root = np.floor(np.sqrt(value.astype(np.float64))).astype(np.int64)
    for _ in range(4):
        too_big = root * root > value
        root = root - too_big
    for _ in range(4):
        too_small = (root + 1) * (root + 1) <= value
        root = root + too_small
    return root


def divide_round(numerator, denominator) -> np.ndarray:
    """numerator / denominator for numerator >= 0, denominator > 0, midpoints up; int64."""
    numerator = np.asarray(numerator, dtype=np.int64)
    denominator = np.asarray(denominator, dtype=np.int64)
    return (numerator + (denominator >> 1)) // denominator


def silu_table(in_scale: float, out_scale: float) -> np.ndarray:
    """int8 -> int8 table of SiLU: out[q + 128] = round(silu(in_scale * q) / out_scale), saturated.

    Built once in float64 at build time; the firmware and the reference only index it.
    """
    q = np.arange(-128, 128, dtype=np.float64)
    x = in_scale * q
    y = x / (1.0 + np.exp(-x))
    return np.clip(np.round(y / out_scale), INT8_MIN, INT8_MAX).astype(np.int8)


# Attention: RoPE tables, score scaling and the integer exponential of the softmax.
ROPE_BITS = 14          # cos and sin tables are Q14 int16: 1.0 is 16384
EXP_FRAC_BITS = 8       # softmax exponents u are in units of 1/256 (natural log domain)
EXP_MAX = 4095          # u is capped here: exp(-4095/256) < 2^-23, below one Q15 step
EXP_LO_BITS = 5         # exp(-u) = EXP_HI[u >> 5] * EXP_LO[u & 31]
PROB_BITS = 15          # probabilities are Q15: 1.0 is 32768


def exp_tables() -> tuple[np.ndarray, np.ndarray]:
    """EXP_HI [128] and EXP_LO [32], Q15: round(2^15 * exp(-i * 32 / 256)), round(2^15 * exp(-j / 256))."""
    hi_count = (EXP_MAX >> EXP_LO_BITS) + 1
    lo_count = 1 << EXP_LO_BITS
    step = 1.0 / (1 << EXP_FRAC_BITS)
    hi = np.round((1 << PROB_BITS) * np.exp(-np.arange(hi_count) * lo_count * step))
    lo = np.round((1 << PROB_BITS) * np.exp(-np.arange(lo_count) * step))
    return hi.astype(np.int64), lo.astype(np.int64)


EXP_HI, EXP_LO = exp_tables()


def exp_q15(u) -> np.ndarray:
    """exp(-u / 256) in Q15 for integer u in [0, EXP_MAX]; the max of a row maps to 32768."""
    u = np.asarray(u, dtype=np.int64)
    return (EXP_HI[u >> EXP_LO_BITS] * EXP_LO[u & ((1 << EXP_LO_BITS) - 1)] + (1 << 14)) >> 15


def rope_q14(positions: int, head_dim: int, theta: float,
             enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] int16, round(2^14 * value), from float64 angles.

    Disabled, cos is 16384 and sin 0, so the rotation is exact identity.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    if not enabled:
        angles = np.zeros_like(angles)
    one = 1 << ROPE_BITS
    return (np.round(np.cos(angles) * one).astype(np.int16),
            np.round(np.sin(angles) * one).astype(np.int16))


def rotate_q14(a, b, cos, sin) -> tuple[np.ndarray, np.ndarray]:
    """Rotate pairs (a, b) by the Q14 angle: (a cos - b sin, b cos + a sin) / 2^14, floor of x + 1/2."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    cos, sin = np.asarray(cos, dtype=np.int64), np.asarray(sin, dtype=np.int64)
    half = 1 << (ROPE_BITS - 1)
    return (a * cos - b * sin + half) >> ROPE_BITS, (b * cos + a * sin + half) >> ROPE_BITS


def score_multiplier(real: float) -> tuple[int, int]:
    """real > 0 as multiplier * 2^-shift, multiplier < 2^31, shift 1..62, for u = d * real.

    The C twin computes u = (d * multiplier + 2^(shift - 1)) >> shift in int64.
    """
    if not math.isfinite(real) or real <= 0:
        raise ValueError(f"attention score scale {real!r} must be finite and > 0")
    fraction, exponent = math.frexp(real)
    shift = 31 - exponent
    multiplier = int(math.floor(fraction * (1 << 31) + 0.5))
    if shift < 1:
        raise ValueError(f"attention score scale {real:.3g} is too large (>= 2^30); the "
                         "q and k activations are out of range")
    if shift > 62:
        multiplier >>= shift - 62
        shift = 62
    if multiplier == 1 << 31:
        multiplier >>= 1
        shift -= 1
    return multiplier, shift

