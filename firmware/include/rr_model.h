/*
 * rr_model.h: the interface between the generated model (model.c, emitted by rrgen from
 * templates/) and the hand-written firmware (protocol handler, host driver).
 *
 * Pipeline stage: emit -> build. Targets: Cortex-M7 (stm32h7, mps2-an500) and the host.
 * Inference is integer only; nothing here uses floating point.
 */
#ifndef RR_MODEL_H
#define RR_MODEL_H

#include <stdint.h>

/* Status codes of the model API. Zero is success; every failure is negative. */
typedef enum {
    RR_OK = 0,
    RR_ERR_LENGTH = -1,     /* token count differs from the model's seq_len */
    RR_ERR_TOKEN = -2,      /* a token id is outside [0, vocab_size) */
    RR_ERR_PUZZLE_ID = -3,  /* puzzle id outside [0, num_puzzle_identifiers) */
    RR_ERR_STATE = -4,      /* rr_model_step called before a successful rr_model_begin */
    RR_ERR_ARGUMENT = -5    /* a NULL pointer or an invalid parameter */
} rr_status_t;

/* Static facts about the generated model, for the INFO reply. */
typedef struct {
    uint32_t model_id;               /* first 4 bytes of the SHA-256 of the quantized model */
    uint16_t vocab_size;
    uint16_t seq_len;                /* puzzle positions, tokens per request */
    uint16_t positions;              /* puzzle_emb_len + seq_len, rows of the carry */
    uint16_t hidden_size;
    uint8_t weight_bits;             /* 4 or 8; with INT4 and INT8 layers mixed, 4 */
    uint8_t h_cycles;                /* T */
    uint8_t l_cycles;                /* n */
    uint8_t l_layers;
    uint8_t halt_max_steps;
    uint32_t arena_bytes;
    uint32_t num_puzzle_identifiers;
    const char *name;                /* NUL-terminated, at most 32 bytes */
} rr_model_info_t;

const rr_model_info_t *rr_model_info(void);

/*
 * Start a puzzle: check the input, build the input embedding x and reset the carry
 * (y, z) to H_init and L_init.
 *   tokens     [seq_len] uint8 token ids
 *   n_tokens   must equal seq_len
 *   puzzle_id  row of the puzzle-embedding table, checked before any read
 *   bad_index  out: index of the first invalid token on RR_ERR_TOKEN (may be NULL)
 * Returns RR_OK, RR_ERR_LENGTH, RR_ERR_TOKEN, RR_ERR_PUZZLE_ID or RR_ERR_ARGUMENT.
 */
rr_status_t rr_model_begin(const uint8_t *tokens, uint32_t n_tokens, uint32_t puzzle_id,
                           uint32_t *bad_index);

/*
 * Run one supervision step on the carry.
 *   tokens_out  out: [seq_len] uint8, argmax of the logits (ties go to the lowest id)
 *   q_halt      out: halt logit, int16 range, real value = q_scale * q_halt; halt when > 0
 * Returns RR_OK, RR_ERR_STATE or RR_ERR_ARGUMENT.
 */
rr_status_t rr_model_step(uint8_t *tokens_out, int32_t *q_halt);

/* The carry after the last step: [positions, hidden_size] int8, row-major. */
const int8_t *rr_model_carry_y(void);
const int8_t *rr_model_carry_z(void);

#endif /* RR_MODEL_H */
