/*
 * data.h: seeded random layer data for the kernel tests and benchmark. The same
 * xorshift32 generator and draw order are in tools/bench_kernels.py, so the host
 * rebuilds every input and checks the guest's outputs against codegen/rrgen/reference.py.
 */
#ifndef BENCH_DATA_H
#define BENCH_DATA_H

#include <stdint.h>

#include "rr_kernels.h"

/*
 * One layer: rows x in_features -> out_features, weights of `bits` (4 or 8). bench_main
 * only: out16 = 1 times rr_linear_s8_s16 (int16 output, the heads), and each timed chunk
 * makes `repeats` calls.
 */
typedef struct {
    int32_t rows, in_features, out_features, bits, has_bias, shift_lo, shift_hi, out16, repeats;
} bench_case_t;

static inline uint32_t xorshift32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/*
 * Draw, in this order: input (rows x in, int8 from the top byte), weights (out x in,
 * -127..127 for INT8, -8..7 for INT4, packed two per byte), bias (-10000..10000) if
 * has_bias, multipliers (2^30..2^31-1), shifts (shift_lo..shift_hi).
 */
static inline void bench_fill(const bench_case_t *c, uint32_t seed, int8_t *in, int8_t *weight,
                              int32_t *bias, int32_t *multiplier, int32_t *shift)
{
    uint32_t state = seed;
    const int32_t k_count = c->in_features;
    for (int32_t i = 0; i < c->rows * k_count; i++) {
        in[i] = (int8_t)(xorshift32(&state) >> 24);
    }
    const int32_t row_bytes = c->bits == 4 ? (k_count + 1) / 2 : k_count;
    for (int32_t n = 0; n < c->out_features; n++) {
        int8_t *row = weight + n * row_bytes;
        for (int32_t k = 0; k < k_count; k++) {
            if (c->bits == 8) {
                row[k] = (int8_t)((int32_t)(xorshift32(&state) % 255u) - 127);
            } else {
                const uint8_t nibble = (uint8_t)(xorshift32(&state) & 15u);
                uint8_t *byte = (uint8_t *)&row[k / 2];
                *byte = (k & 1) ? (uint8_t)(*byte | (nibble << 4)) : nibble;
            }
        }
    }
    for (int32_t n = 0; n < c->out_features; n++) {
        bias[n] = c->has_bias ? (int32_t)(xorshift32(&state) % 20001u) - 10000 : 0;
    }
    for (int32_t n = 0; n < c->out_features; n++) {
        multiplier[n] = (int32_t)((1u << 30) | (xorshift32(&state) & ((1u << 30) - 1u)));
    }
    const uint32_t span = (uint32_t)(c->shift_hi - c->shift_lo + 1);
    for (int32_t n = 0; n < c->out_features; n++) {
        shift[n] = c->shift_lo + (int32_t)(xorshift32(&state) % span);
    }
}

#endif /* BENCH_DATA_H */
