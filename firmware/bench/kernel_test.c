/*
 * Kernel test image: for every case of cases.h (written by tools/bench_kernels.py), run
 * the board's kernel variant and the portable kernel on seeded random data, then write
 * both outputs to the host file kernel_test.bin through semihosting. The host compares
 * them with the numpy reference. Also checks that the variant rejects bad arguments.
 */
#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "data.h"
#include "rr_kernels.h"

rr_status_t portable_rr_linear_s8(const rr_linear_t *p, const int8_t *in, int32_t rows,
                                  int8_t *out);
rr_status_t portable_rr_linear_s4(const rr_linear_t *p, const int8_t *in, int32_t rows,
                                  int8_t *out);

#include "cases.h"      /* static const bench_case_t cases[] */

#define MAX_BYTES 65536
#define MAX_CHANNELS 1024

static int8_t in[MAX_BYTES] __attribute__((aligned(16)));
static int8_t weight[MAX_BYTES] __attribute__((aligned(16)));
static int32_t bias[MAX_CHANNELS], multiplier[MAX_CHANNELS], shift[MAX_CHANNELS];
static uint8_t report[4 * MAX_BYTES] __attribute__((section(".big"), aligned(16)));

static rr_status_t run(int portable, int32_t bits, const rr_linear_t *p, const int8_t *x,
                       int32_t rows, int8_t *out)
{
    if (bits == 8) {
        return portable ? portable_rr_linear_s8(p, x, rows, out) : rr_linear_s8(p, x, rows, out);
    }
    return portable ? portable_rr_linear_s4(p, x, rows, out) : rr_linear_s4(p, x, rows, out);
}

int main(void)
{
    uint32_t used = 0;
    const int32_t n_cases = (int32_t)(sizeof cases / sizeof cases[0]);
    for (int32_t i = 0; i < n_cases; i++) {
        const bench_case_t *c = &cases[i];
        const uint32_t out_bytes = (uint32_t)(c->rows * c->out_features);
        if ((uint32_t)(c->rows * c->in_features) > MAX_BYTES ||
            (uint32_t)(c->out_features * c->in_features) > MAX_BYTES ||
            c->out_features > MAX_CHANNELS || used + 8u + 2u * out_bytes > sizeof report) {
            bench_print("FAIL: a case is larger than the test buffers\n");
            return 1;
        }
        bench_fill(c, 0x9E3779B9u ^ (uint32_t)i, in, weight, bias, multiplier, shift);
        const rr_linear_t p = { .in_features = c->in_features, .out_features = c->out_features,
                                .weight = weight, .bias = c->has_bias ? bias : NULL,
                                .multiplier = multiplier, .shift = shift };
        for (int portable = 0; portable <= 1; portable++) {
            int8_t *out = (int8_t *)&report[used + 4u];
            for (uint32_t b = 0; b < out_bytes; b++) {
                out[b] = 0x5A;
            }
            const int32_t status = run(portable, c->bits, &p, in, c->rows, out);
            report[used] = (uint8_t)status;
            report[used + 1] = report[used + 2] = report[used + 3] = (uint8_t)(status >> 8);
            used += 4u + out_bytes;
        }
    }

    /* Bad arguments: RR_ERR_ARGUMENT and nothing written. */
    int8_t out[4] = { 0x5A, 0x5A, 0x5A, 0x5A };
    const rr_linear_t good = { .in_features = 2, .out_features = 2, .weight = weight,
                               .bias = NULL, .multiplier = multiplier, .shift = shift };
    rr_linear_t no_weight = good;
    no_weight.weight = NULL;
    int errors_ok = 1;
    for (int32_t bits = 4; bits <= 8; bits += 4) {
        errors_ok &= run(0, bits, &good, in, 0, out) == RR_ERR_ARGUMENT;
        errors_ok &= run(0, bits, &no_weight, in, 1, out) == RR_ERR_ARGUMENT;
        errors_ok &= run(0, bits, NULL, in, 1, out) == RR_ERR_ARGUMENT;
        errors_ok &= run(0, bits, &good, NULL, 1, out) == RR_ERR_ARGUMENT;
        errors_ok &= run(0, bits, &good, in, 1, NULL) == RR_ERR_ARGUMENT;
    }
    errors_ok &= out[0] == 0x5A && out[1] == 0x5A && out[2] == 0x5A && out[3] == 0x5A;
    bench_print(errors_ok ? "ERRORS ok\n" : "ERRORS wrong\n");

    if (bench_file_write("kernel_test.bin", report, used) != 0) {
        bench_print("FAIL: could not write kernel_test.bin on the host\n");
        return 1;
    }
    bench_print("DONE\n");
    return errors_ok ? 0 : 1;
}
