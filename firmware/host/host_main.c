/*
 * host_main.c: the protocol handler over stdin/stdout, for tests and for running a model
 * on the development machine. Sends READY, replies to requests read from stdin, and exits 0
 * at end of input (1 if reading or writing fails).
 *
 * Pipeline stage: run. Target: POSIX hosts (Linux, macOS). The cycle counter is
 * CLOCK_MONOTONIC in microseconds, reported as 1000000 Hz.
 */
#define _POSIX_C_SOURCE 200809L

#include "rr_protocol.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static rr_protocol_t protocol;

/* rr_transport_t.write on stdout, unbuffered; exits 1 when the reader has gone. */
static void stdout_write(void *context, const uint8_t *data, uint32_t n_bytes)
{
    (void)context;
    while (n_bytes > 0u) {
        ssize_t written = write(STDOUT_FILENO, data, n_bytes);
        if (written < 0 && errno == EINTR) {
            continue;
        }
        if (written <= 0) {
            exit(1);
        }
        data += written;
        n_bytes -= (uint32_t)written;
    }
}

/* Microseconds from CLOCK_MONOTONIC, wrapping modulo 2^32 (about 71 minutes). */
static uint32_t monotonic_microseconds(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) {
        return 0;
    }
    return (uint32_t)((uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u);
}

int main(void)
{
    static const rr_transport_t transport = {
        .write = stdout_write,
        .context = NULL,
        .cycles = monotonic_microseconds,
        .cycles_hz = 1000000u,
    };
    uint8_t buffer[4096];

    (void)rr_protocol_init(&protocol, &transport);
    rr_protocol_send_ready(&protocol);
    for (;;) {
        ssize_t n_read = read(STDIN_FILENO, buffer, sizeof buffer);
        if (n_read < 0 && errno == EINTR) {
            continue;
        }
        if (n_read < 0) {
            return 1;
        }
        if (n_read == 0) {
            return 0;
        }
        for (ssize_t i = 0; i < n_read; i++) {
            rr_protocol_feed(&protocol, buffer[i]);
        }
    }
}
