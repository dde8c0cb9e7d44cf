/*
 * batch_main.c: run many puzzles through the generated model on the host, for the
 * bit-exactness tests and for measuring accuracy quickly.
 *
 * Pipeline stage: build -> run. Target: the host (system gcc). Binary I/O, little-endian:
 *   stdin:  u32 count, u8 max_steps (0 = halt_max_steps), u8 flags (bit0 halt on q > 0,
 *           bit1 write the carry after every step), then per puzzle u32 puzzle_id and
 *           u8 tokens[RR_SEQ_LEN]
 *   stdout: per puzzle: i32 status, u8 steps_used, then per step u8 tokens[RR_SEQ_LEN],
 *           i16 q_halt, and with bit1 int8 y[RR_CARRY_BYTES], int8 z[RR_CARRY_BYTES]
 * Exits 0 after the last puzzle, 1 on a short read or write.
 */
#include <stdint.h>
#include <stdio.h>

#include "rr_model.h"
#include "rr_model_config.h"

static int read_exact(void *dst, size_t size)
{
    return fread(dst, 1, size, stdin) == size ? 0 : -1;
}

static int write_exact(const void *src, size_t size)
{
    return fwrite(src, 1, size, stdout) == size ? 0 : -1;
}

int main(void)
{
    uint8_t header[6];
    if (read_exact(header, sizeof header) != 0) {
        fprintf(stderr, "batch: missing header\n");
        return 1;
    }
    const uint32_t count = (uint32_t)header[0] | (uint32_t)header[1] << 8 |
                           (uint32_t)header[2] << 16 | (uint32_t)header[3] << 24;
    const uint32_t max_steps = header[4] ? header[4] : RR_HALT_MAX_STEPS;
    const int halt = header[5] & 1;
    const int trace = (header[5] >> 1) & 1;

    for (uint32_t n = 0; n < count; n++) {
        uint8_t id_bytes[4];
        uint8_t tokens[RR_SEQ_LEN];
        uint8_t out[RR_SEQ_LEN];
        if (read_exact(id_bytes, 4) != 0 || read_exact(tokens, RR_SEQ_LEN) != 0) {
            fprintf(stderr, "batch: short read at puzzle %u\n", (unsigned)n);
            return 1;
        }
        const uint32_t puzzle_id = (uint32_t)id_bytes[0] | (uint32_t)id_bytes[1] << 8 |
                                   (uint32_t)id_bytes[2] << 16 | (uint32_t)id_bytes[3] << 24;

        /* Run the steps first: the record starts with the number of steps taken. */
        static uint8_t steps_tokens[255][RR_SEQ_LEN];
        static int16_t steps_q[255];
        static int8_t steps_y[255][RR_CARRY_BYTES];
        static int8_t steps_z[255][RR_CARRY_BYTES];
        int32_t status = rr_model_begin(tokens, RR_SEQ_LEN, puzzle_id, NULL);
        uint8_t used = 0;
        while (status == RR_OK && used < max_steps) {
            int32_t q = 0;
            status = rr_model_step(out, &q);
            if (status != RR_OK) {
                break;
            }
            for (int i = 0; i < RR_SEQ_LEN; i++) {
                steps_tokens[used][i] = out[i];
            }
            steps_q[used] = (int16_t)q;
            if (trace) {
                for (int i = 0; i < RR_CARRY_BYTES; i++) {
                    steps_y[used][i] = rr_model_carry_y()[i];
                    steps_z[used][i] = rr_model_carry_z()[i];
                }
            }
            used++;
            if (halt && q > 0) {
                break;
            }
        }
        if (write_exact(&status, 4) != 0 || write_exact(&used, 1) != 0) {
            return 1;
        }
        for (uint8_t s = 0; s < used; s++) {
            if (write_exact(steps_tokens[s], RR_SEQ_LEN) != 0 || write_exact(&steps_q[s], 2) != 0) {
                return 1;
            }
            if (trace && (write_exact(steps_y[s], RR_CARRY_BYTES) != 0 ||
                          write_exact(steps_z[s], RR_CARRY_BYTES) != 0)) {
                return 1;
            }
        }
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
