/*
 * The naive C loops the benchmark compares with: one output at a time, one MAC per
 * iteration, requantized with rr_requantize. Same results as the kernels.
 */
#include <stddef.h>
#include <stdint.h>

#include "naive.h"
#include "rr_fixedpoint.h"

void naive_linear_s8(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out)
{
    for (int32_t r = 0; r < rows; r++) {
        for (int32_t n = 0; n < p->out_features; n++) {
            int32_t acc = p->bias != NULL ? p->bias[n] : 0;
            for (int32_t k = 0; k < p->in_features; k++) {
                acc += (int32_t)in[r * p->in_features + k] * p->weight[n * p->in_features + k];
            }
            out[r * p->out_features + n] =
                rr_saturate_s8(rr_requantize(acc, p->multiplier[n], p->shift[n]));
        }
    }
}

void naive_linear_s4(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out)
{
    const int32_t row_bytes = (p->in_features + 1) / 2;
    for (int32_t r = 0; r < rows; r++) {
        for (int32_t n = 0; n < p->out_features; n++) {
            int32_t acc = p->bias != NULL ? p->bias[n] : 0;
            for (int32_t k = 0; k < p->in_features; k++) {
                const uint8_t byte = (uint8_t)p->weight[n * row_bytes + k / 2];
                const int32_t w = (k & 1) ? (int8_t)byte >> 4 : (int8_t)(uint8_t)(byte << 4) >> 4;
                acc += (int32_t)in[r * p->in_features + k] * w;
            }
            out[r * p->out_features + n] =
                rr_saturate_s8(rr_requantize(acc, p->multiplier[n], p->shift[n]));
        }
    }
}
