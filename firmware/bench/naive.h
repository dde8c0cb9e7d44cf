/* naive.h: the naive C loops of the kernel benchmark (naive.c). */
#ifndef BENCH_NAIVE_H
#define BENCH_NAIVE_H

#include <stdint.h>

#include "rr_kernels.h"

void naive_linear_s8(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out);
void naive_linear_s4(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out);

#endif /* BENCH_NAIVE_H */
