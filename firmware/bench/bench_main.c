/*
 * Kernel benchmark image: for every layer of cases.h, time the naive C loop, the portable
 * kernel and the board's variant with SysTick (in chunks of rows, see timed()), and check that the three outputs agree
 * byte for byte. Prints one line per measurement:
 *   CAL <loop iterations> <ticks>          a calibration loop of 2 * iterations + 1 instructions
 *   RUN <case> <kernel> <ticks> <same>     kernel 0 naive, 1 portable, 2 variant; same = 1
 *                                          when the output equals the naive one
 * With BENCH_FIRST_KERNEL 2 (cases.h of build --count-instructions) only the variant runs,
 * including rr_linear_s8_s16 for cases with out16, and <same> is "-". A case's ticks cover
 * `repeats` calls per chunk of rows.
 * codegen/rrgen/icount.py turns ticks into instructions (-icount shift=0: 1 ns each).
 */
#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "data.h"
#include "naive.h"
#include "rr_kernels.h"

rr_status_t portable_rr_linear_s8(const rr_linear_t *p, const int8_t *in, int32_t rows,
                                  int8_t *out);
rr_status_t portable_rr_linear_s4(const rr_linear_t *p, const int8_t *in, int32_t rows,
                                  int8_t *out);

#include "cases.h"      /* static const bench_case_t cases[] */

#define MAX_IN_BYTES (97 * 1536)
#define MAX_WEIGHT_BYTES (1536 * 512)
#define MAX_OUT_BYTES (97 * 1536)
#define MAX_CHANNELS 1536

static int8_t in[MAX_IN_BYTES] __attribute__((section(".big"), aligned(16)));
static int8_t weight[MAX_WEIGHT_BYTES] __attribute__((section(".big"), aligned(16)));
static int8_t out[3][MAX_OUT_BYTES] __attribute__((section(".big"), aligned(16)));
static int32_t bias[MAX_CHANNELS], multiplier[MAX_CHANNELS], shift[MAX_CHANNELS];

static void put_u64(uint64_t value)
{
    char text[24];
    int i = 23;
    text[i] = '\0';
    do {
        text[--i] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    bench_print(&text[i]);
}

/* Exactly 2 * iterations + 1 instructions from the first mov to the last bne. */
static void calibration_loop(uint32_t iterations)
{
    __asm__ volatile("mov r0, %0\n"
                     "1:\n\t"
                     "subs r0, r0, #1\n\t"
                     "bne 1b\n" :: "r"(iterations) : "r0", "cc");
}

/*
 * Rows per timed call: an even number (the variants pair rows) whose MACs stay below
 * CHUNK_MACS. Even the naive loop (about 12 instructions per MAC) then stays well inside
 * one SysTick period of 2^24 ticks, which is 671 M instructions at 25 MHz and 524 M at
 * 32 MHz.
 */
#define CHUNK_MACS 25000000
#define PERIOD_GUARD 15000000u      /* ticks; a longer chunk is reported as an error */

static int chunk_too_long;

static uint64_t timed(int kernel, const bench_case_t *c, const rr_linear_t *p, int8_t *dst)
{
    const int32_t per_row = c->in_features * c->out_features;
    int32_t chunk = CHUNK_MACS / per_row;
    chunk = chunk < 2 ? 2 : chunk & ~1;
    uint64_t total = 0;
    for (int32_t r = 0; r < c->rows; r += chunk) {
        const int32_t rows = c->rows - r < chunk ? c->rows - r : chunk;
        const int8_t *x = in + (size_t)r * (size_t)c->in_features;
        int8_t *y = dst + (size_t)r * (size_t)c->out_features;
        const uint32_t start = bench_ticks();
        for (int32_t repeat = 0; repeat < c->repeats; repeat++) {
            if (c->out16) {
                int16_t *wide = (int16_t *)(void *)dst + (size_t)r * (size_t)c->out_features;
                (void)rr_linear_s8_s16(p, x, rows, wide);
            } else if (kernel == 0) {
                (c->bits == 8 ? naive_linear_s8 : naive_linear_s4)(p, x, rows, y);
            } else if (kernel == 1) {
                (void)(c->bits == 8 ? portable_rr_linear_s8 : portable_rr_linear_s4)(p, x, rows, y);
            } else {
                (void)(c->bits == 8 ? rr_linear_s8 : rr_linear_s4)(p, x, rows, y);
            }
        }
        const uint32_t ticks = bench_elapsed(start, bench_ticks());
        chunk_too_long |= ticks > PERIOD_GUARD;
        total += ticks;
    }
    return total;
}

int main(void)
{
    for (uint32_t iterations = 1000000u; iterations <= 4000000u; iterations *= 4u) {
        const uint32_t start = bench_ticks();
        calibration_loop(iterations);
        const uint32_t ticks = bench_elapsed(start, bench_ticks());
        bench_print("CAL ");
        put_u64(iterations);
        bench_print(" ");
        put_u64(ticks);
        bench_print("\n");
    }
    /* An empty measurement: the cost of two bench_ticks calls. */
    const uint32_t start = bench_ticks();
    const uint32_t empty = bench_elapsed(start, bench_ticks());
    bench_print("EMPTY ");
    put_u64(empty);
    bench_print("\n");

    const int32_t n_cases = (int32_t)(sizeof cases / sizeof cases[0]);
    int all_same = 1;
    for (int32_t i = 0; i < n_cases; i++) {
        const bench_case_t *c = &cases[i];
        const int32_t row_bytes = c->bits == 4 ? (c->in_features + 1) / 2 : c->in_features;
        const int32_t out_bytes = c->rows * c->out_features * (c->out16 ? 2 : 1);
        if (c->rows * c->in_features > MAX_IN_BYTES || out_bytes > MAX_OUT_BYTES ||
            c->out_features * row_bytes > MAX_WEIGHT_BYTES || c->out_features > MAX_CHANNELS) {
            bench_print("FAIL: a layer is larger than the benchmark buffers\n");
            return 1;
        }
        bench_fill(c, 0x2545F491u ^ (uint32_t)i, in, weight, bias, multiplier, shift);
        const rr_linear_t p = { .in_features = c->in_features, .out_features = c->out_features,
                                .weight = weight, .bias = c->has_bias ? bias : NULL,
                                .multiplier = multiplier, .shift = shift };
        if (c->out16 && BENCH_FIRST_KERNEL != 2) {
            bench_print("FAIL: out16 cases need BENCH_FIRST_KERNEL 2\n");
            return 1;
        }
        for (int kernel = BENCH_FIRST_KERNEL; kernel < 3; kernel++) {
            const uint64_t ticks = timed(kernel, c, &p, out[kernel]);
            int same = 1;
            for (int32_t b = 0; BENCH_FIRST_KERNEL == 0 && b < out_bytes; b++) {
                same &= out[kernel][b] == out[0][b];
            }
            all_same &= same;
            bench_print("RUN ");
            put_u64((uint64_t)i);
            const char kernel_field[4] = { ' ', (char)('0' + kernel), ' ', '\0' };
            bench_print(kernel_field);
            put_u64(ticks);
            if (BENCH_FIRST_KERNEL != 0) {
                bench_print(" -\n");       /* outputs not compared */
            } else {
                bench_print(same ? " 1\n" : " 0\n");
            }
        }
    }
    if (chunk_too_long) {
        bench_print("FAIL: a timed chunk came close to one SysTick period\n");
        return 1;
    }
    bench_print("DONE\n");
    return all_same ? 0 : 1;
}
