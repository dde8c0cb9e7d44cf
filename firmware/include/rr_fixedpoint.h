/*
 * rr_fixedpoint.h: the integer primitives of rrgen's deployed arithmetic.
 *
 * Pipeline stage: emit -> build. Targets: Cortex-M7 (stm32h7, mps2-an500) and the host.
 * Each function has one numpy twin of the same name without the rr_ prefix in
 * codegen/rrgen/fixedpoint.py. Both give the same bits on every input in the stated
 * ranges, and tests/test_fixedpoint.py drives both with edge cases.
 *
 * Convention: real = scale * q, zero point 0. Signed right shifts of negative values are
 * arithmetic, as GCC defines them.
 */
#ifndef RR_FIXEDPOINT_H
#define RR_FIXEDPOINT_H

#include <stdint.h>

/*
 * value / 2^exponent, midpoints rounded away from zero.
 *   value     any int64
 *   exponent  0..62
 */
static inline int64_t rr_divide_by_power_of_two(int64_t value, int32_t exponent)
{
    const int64_t mask = (((int64_t)1) << exponent) - 1;
    const int64_t remainder = value & mask;
    int64_t result = value >> exponent;
    int64_t threshold = mask >> 1;
    if (result < 0) {
        threshold++;
    }
    if (remainder > threshold) {
        result++;
    }
    return result;
}

/*
 * Compute round(value * multiplier * 2^(shift - 31)) bit for bit as CMSIS-NN's default
 * arm_nn_requantize and TFLite Micro's MultiplyByQuantizedMultiplier do. First a doubling
 * high multiply adds 2^30 before the shift by 31, so midpoints round up. Then the
 * division by 2^-shift rounds midpoints away from zero.
 *   value       int32; value * 2^max(shift, 0) must fit int32 (the generator checks it)
 *   multiplier  0..2^31-1 (normally 2^30..2^31-1)
 *   shift       -31..30
 */
static inline int32_t rr_requantize(int32_t value, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t scaled = (int32_t)((uint32_t)value << left);
    const int64_t high = ((int64_t)scaled * multiplier + ((int64_t)1 << 30)) >> 31;
    return (int32_t)rr_divide_by_power_of_two(high, right);
}

/* floor(sqrt(value)), exact, for value < 2^62: the digit-by-digit method, no division. */
static inline int64_t rr_isqrt_u64(uint64_t value)
{
    uint64_t root = 0;
    uint64_t bit = (uint64_t)1 << 62;
    while (bit > value) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (value >= root + bit) {
            value -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return (int64_t)root;
}

/* numerator / denominator, midpoints up. numerator >= 0, denominator > 0. */
static inline int64_t rr_divide_round(int64_t numerator, int64_t denominator)
{
    return (numerator + (denominator >> 1)) / denominator;
}

static inline int8_t rr_saturate_s8(int64_t value)
{
    return (int8_t)(value < -128 ? -128 : (value > 127 ? 127 : value));
}

static inline int16_t rr_saturate_s16(int64_t value)
{
    return (int16_t)(value < -32768 ? -32768 : (value > 32767 ? 32767 : value));
}

#endif /* RR_FIXEDPOINT_H */
