/*
 * cobs.c: Consistent Overhead Byte Stuffing, the framing of the serial protocol.
 *
 * Pipeline stage: run. Targets: Cortex-M7 boards and the host.
 * A block is a code byte n (1..255) and n - 1 non-zero data bytes. A block with n < 255
 * stands for its data and one zero, except the last block of a packet; a full block
 * (n = 255) has no implied zero. The encoder never ends a packet with an empty block after
 * a full one, the decoder accepts it. codegen/rrgen/protocol.py is the reference.
 */
#include "rr_protocol.h"

#include <stddef.h>

int rr_cobs_decode(uint8_t *buffer, uint32_t n_encoded, uint32_t *n_decoded)
{
    uint32_t read = 0;
    uint32_t write = 0;

    if (buffer == NULL || n_decoded == NULL) {
        return -1;
    }
    while (read < n_encoded) {
        uint32_t code = buffer[read];
        if (code == 0u || code > n_encoded - read) {
            return -1;
        }
        read++;

        /* Copy the block's data; write never passes read, so in place is safe. */
        for (uint32_t i = 1; i < code; i++) {
            uint8_t byte = buffer[read++];
            if (byte == 0u) {
                return -1;
            }
            buffer[write++] = byte;
        }

        /* The implied zero, unless the block is full or ends the packet. */
        if (code < 255u && read < n_encoded) {
            buffer[write++] = 0u;
        }
    }
    *n_decoded = write;
    return 0;
}

/* Send the open block with its code byte and start a new one. */
static void send_block(rr_cobs_writer_t *writer)
{
    writer->block[0] = (uint8_t)(writer->count + 1u);
    writer->transport->write(writer->transport->context, writer->block, writer->count + 1u);
    writer->after_full = (writer->count == 254u);
    writer->count = 0;
}

void rr_cobs_writer_begin(rr_cobs_writer_t *writer, const rr_transport_t *transport)
{
    writer->transport = transport;
    writer->count = 0;
    writer->after_full = 0;
    writer->crc = 0;
}

/* Encode bytes without touching the CRC. */
static void encode_bytes(rr_cobs_writer_t *writer, const uint8_t *data, uint32_t n_bytes)
{
    for (uint32_t i = 0; i < n_bytes; i++) {
        if (data[i] == 0u) {
            send_block(writer);
            continue;
        }
        writer->block[++writer->count] = data[i];
        if (writer->count == 254u) {
            send_block(writer);
        }
    }
}

void rr_cobs_writer_push(rr_cobs_writer_t *writer, const uint8_t *data, uint32_t n_bytes)
{
    if (n_bytes == 0u) {
        return;
    }
    writer->crc = rr_crc32_update(writer->crc, data, n_bytes);
    encode_bytes(writer, data, n_bytes);
}

void rr_cobs_writer_end(rr_cobs_writer_t *writer)
{
    static const uint8_t delimiter = 0u;
    uint8_t trailer[RR_CRC_BYTES];
    uint32_t crc = writer->crc;

    for (uint32_t i = 0; i < RR_CRC_BYTES; i++) {
        trailer[i] = (uint8_t)(crc >> (8u * i));
    }
    encode_bytes(writer, trailer, RR_CRC_BYTES);

    /* A packet that ends exactly on a full block needs no empty final block. */
    if (writer->count > 0u || !writer->after_full) {
        send_block(writer);
    }
    writer->transport->write(writer->transport->context, &delimiter, 1u);
}
