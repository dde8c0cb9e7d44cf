/*
 * crc32.c: CRC-32 with the zlib/IEEE polynomial, the packet trailer of the serial protocol.
 *
 * Pipeline stage: run. Targets: Cortex-M7 boards and the host.
 * Bitwise, without a table: the UART, not this loop, limits the throughput, and the
 * loop costs no flash.
 */
#include "rr_protocol.h"

/* Reflected form of the polynomial 0x04C11DB7. */
#define CRC32_POLYNOMIAL_REFLECTED 0xEDB88320u

uint32_t rr_crc32_update(uint32_t crc, const uint8_t *data, uint32_t n_bytes)
{
    /* The stored value is the finished CRC, so undo the final inversion first. */
    crc = ~crc;
    for (uint32_t i = 0; i < n_bytes; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++) {
            uint32_t mask = 0u - (crc & 1u);
            crc = (crc >> 1) ^ (CRC32_POLYNOMIAL_REFLECTED & mask);
        }
    }
    return ~crc;
}
