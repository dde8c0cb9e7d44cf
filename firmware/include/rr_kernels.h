/*
 * rr_kernels.h: the integer kernels of a generated rrgen model.
 *
 * Pipeline stage: emit -> build. Targets: Cortex-M7 (stm32h7, mps2-an500) and the host.
 * The implementations are emitted from templates/kernels.c.j2; the numpy twins that
 * define their bits are in codegen/rrgen/reference.py. rr_linear_s8 and rr_linear_s4
 * come in the variant that the board file's `kernels` key names: portable C, "dsp"
 * (Cortex-M7, templates/kernels_dsp.inc.j2) or "mve" (Cortex-M55,
 * templates/kernels_mve.inc.j2). All variants give the same bits. Matrices are row-major. No kernel
 * works in place: outputs must not alias inputs. Every kernel returns RR_OK, or
 * RR_ERR_ARGUMENT for a NULL pointer or a non-positive size, and then writes nothing.
 */
#ifndef RR_KERNELS_H
#define RR_KERNELS_H

#include <stdint.h>

#include "rr_model.h"

/* A linear layer without activation: out = sat(requantize(in @ W^T + bias)). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    /* INT8: [out_features, in_features] int8, values -127..127.
     * INT4: [out_features, (in_features + 1) / 2] bytes, two weights per byte, element 2i
     *       in the low nibble, sign-extended. Example: bytes {0xE1, 0x03} hold the row
     *       {1, -2, 3} (0x1 = 1, 0xE = -2, 0x3 = 3; the last high nibble is padding). */
    const int8_t *weight;
    const int32_t *bias;        /* [out_features] int32 accumulator units, or NULL */
    const int32_t *multiplier;  /* [out_features], see rr_requantize */
    const int32_t *shift;       /* [out_features], -31..30 */
} rr_linear_t;

/* SiLU(gate) * up with the SiLU from a table. */
typedef struct {
    const int8_t *table;        /* [256] int8, indexed by gate + 128 */
    int32_t multiplier;
    int32_t shift;
} rr_glu_t;

/* RMSNorm(a * weight_a + b * weight_b) over each row. */
typedef struct {
    int32_t weight_a;           /* 0..4096 */
    int32_t weight_b;           /* 0..4096 */
    int64_t eps_term;           /* n * eps in squared common-base units, >= 0 */
    int32_t multiplier;         /* sqrt(n) / out_scale as a Q31 mantissa */
    int32_t total_shift;        /* 1..62 */
} rr_add_rmsnorm_t;

/*
 * Non-causal multi-head attention on a fused [q | k | v] projection, RoPE on q and k.
 * Per head and query row (reference.attention gives the same bits):
 *   q, k  rotated pairwise by the Q14 tables, (a c - b s + 2^13) >> 14, int16
 *   acc_t = q . k_t (int32); d_t = max_t acc_t - acc_t
 *   u_t   = min((d_t * score_multiplier + 2^(score_shift - 1)) >> score_shift, 4095)
 *   e_t   = (exp_hi[u_t >> 5] * exp_lo[u_t & 31] + 2^14) >> 15, Q15
 *   p_t   = (e_t * 2^15 + sum/2) / sum, Q15
 *   out   = sat8(rr_requantize(sum_t p_t v_t, multiplier, shift))
 */
typedef struct {
    int32_t heads;
    int32_t head_dim;           /* even */
    const int16_t *cos;         /* [positions, head_dim / 2] Q14 */
    const int16_t *sin;         /* [positions, head_dim / 2] Q14 */
    int32_t score_multiplier;   /* 0..2^31-1 */
    int32_t score_shift;        /* 1..62 */
    int32_t multiplier;
    int32_t shift;
} rr_attention_t;

/* Weighted sum of int8 tensors in a common base, requantized to int8. */
typedef struct {
    int32_t weights[3];         /* 0..4096 each; unused entries 0 */
    int32_t multiplier;
    int32_t shift;
} rr_add_t;

/*
 * in   [rows, in_features] int8
 * out  [rows, out_features] int8, saturated to -128..127
 * rows >= 1
 */
rr_status_t rr_linear_s8(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out);

/* As rr_linear_s8 with INT4 weights (p->weight packed as documented above). */
rr_status_t rr_linear_s4(const rr_linear_t *p, const int8_t *in, int32_t rows, int8_t *out);

/* As rr_linear_s8 with an int16 output, saturated to -32768..32767 (the heads). */
rr_status_t rr_linear_s8_s16(const rr_linear_t *p, const int8_t *in, int32_t rows,
                             int16_t *out);

/*
 * in   [rows, 2 * intermediate] int8: gate in columns 0..intermediate-1, up after it
 * out  [rows, intermediate] int8
 */
rr_status_t rr_glu_s8(const rr_glu_t *p, const int8_t *in, int32_t rows, int32_t intermediate,
                      int8_t *out);

/*
 * a, b  [rows, n] int8 (residual and sublayer output)
 * out   [rows, n] int8
 * n     1..4096 (keeps the int64 sum of squares exact)
 */
rr_status_t rr_add_rmsnorm_s8(const rr_add_rmsnorm_t *p, const int8_t *a, const int8_t *b,
                              int32_t rows, int32_t n, int8_t *out);

/*
 * inputs  n_inputs (1..3) pointers to [count] int8
 * out     [count] int8
 */
rr_status_t rr_add_s8(const rr_add_t *p, const int8_t *const *inputs, int32_t n_inputs,
                      int32_t count, int8_t *out);

/*
 * qkv      [positions, 3 * heads * head_dim] int8
 * out      [positions, heads * head_dim] int8
 * scratch  RR_ATTENTION_SCRATCH_BYTES(positions, head_dim) bytes, 4-byte aligned
 */
#define RR_ATTENTION_SCRATCH_BYTES(positions, head_dim) \
    (2 * (positions) * (head_dim) * 2 + (positions) * 4)
rr_status_t rr_attention_s8(const rr_attention_t *p, const int8_t *qkv, int32_t positions,
                            int8_t *out, void *scratch);

/* in [rows, cols] int8 -> out [cols, rows] int8. */
rr_status_t rr_transpose_s8(const int8_t *in, int32_t rows, int32_t cols, int8_t *out);

/*
 * logits  [rows, cols] int16
 * out     [rows] uint8, index of the largest value per row; ties go to the lowest index
 * cols    1..256
 */
rr_status_t rr_argmax_s16(const int16_t *logits, int32_t rows, int32_t cols, uint8_t *out);

#endif /* RR_KERNELS_H */
