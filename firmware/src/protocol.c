/*
 * protocol.c: the request handler of the serial protocol (docs/protocol.md).
 *
 * Pipeline stage: run. Targets: Cortex-M7 boards and the host.
 * Bytes come in one at a time through rr_protocol_feed. A 0x00 ends a frame, which is
 * COBS-decoded in place, checked (length, CRC, type, body) and replied to through the
 * transport. Every non-empty frame gets exactly one reply (a SOLVE with the trace flag
 * gets one TRACE per step before it). No floating point, no dynamic memory.
 */
#include "rr_protocol.h"

#include "rr_model.h"

#include <stddef.h>

#define MESSAGE_MAX_BYTES 64u

/* ---- Little-endian helpers ---- */

static uint16_t read_u16(const uint8_t *data)
{
    return (uint16_t)(data[0] | ((uint16_t)data[1] << 8));
}

static uint32_t read_u32(const uint8_t *data)
{
    return (uint32_t)data[0] | ((uint32_t)data[1] << 8) | ((uint32_t)data[2] << 16) |
           ((uint32_t)data[3] << 24);
}

/* Store value in n_bytes bytes (1, 2 or 4), least significant first; returns the next slot. */
static uint8_t *put_le(uint8_t *out, uint32_t value, uint32_t n_bytes)
{
    for (uint32_t i = 0; i < n_bytes; i++) {
        out[i] = (uint8_t)(value >> (8u * i));
    }
    return out + n_bytes;
}

static uint32_t string_length(const char *text, uint32_t max_bytes)
{
    uint32_t n = 0;
    if (text == NULL) {
        return 0;
    }
    while (n < max_bytes && text[n] != '\0') {
        n++;
    }
    return n;
}

/* Saturate the model's int32 halt logit to the int16 of the wire format. */
static int16_t saturate_int16(int32_t value)
{
    if (value > 32767) {
        return 32767;
    }
    if (value < -32768) {
        return -32768;
    }
    return (int16_t)value;
}

/* ---- Replies ---- */

/* Start a reply packet: type and request id. */
static void begin_reply(rr_cobs_writer_t *writer, const rr_transport_t *transport,
                        uint8_t type, uint16_t request_id)
{
    uint8_t header[RR_HEADER_BYTES];
    header[0] = type;
    put_le(&header[1], request_id, 2);
    rr_cobs_writer_begin(writer, transport);
    rr_cobs_writer_push(writer, header, sizeof header);
}

void rr_protocol_send_error(const rr_transport_t *transport, uint16_t request_id,
                            uint8_t code, uint32_t detail, const char *message)
{
    rr_cobs_writer_t writer;
    uint8_t head[5];

    head[0] = code;
    put_le(&head[1], detail, 4);
    begin_reply(&writer, transport, RR_PACKET_ERROR, request_id);
    rr_cobs_writer_push(&writer, head, sizeof head);
    rr_cobs_writer_push(&writer, (const uint8_t *)message,
                        string_length(message, MESSAGE_MAX_BYTES));
    rr_cobs_writer_end(&writer);
}

void rr_protocol_send_ready(rr_protocol_t *protocol)
{
    rr_cobs_writer_t writer;
    const rr_model_info_t *info = rr_model_info();
    uint8_t version = RR_PROTOCOL_VERSION;

    begin_reply(&writer, protocol->transport, RR_PACKET_READY, 0);
    rr_cobs_writer_push(&writer, &version, 1);
    rr_cobs_writer_push(&writer, (const uint8_t *)info->name, string_length(info->name, 32));
    rr_cobs_writer_end(&writer);
}

static void send_info(rr_protocol_t *protocol, uint16_t request_id)
{
    rr_cobs_writer_t writer;
    const rr_model_info_t *info = rr_model_info();
    uint8_t body[30];
    uint8_t *out = body;

    out = put_le(out, RR_PROTOCOL_VERSION, 1);
    out = put_le(out, info->model_id, 4);
    out = put_le(out, info->vocab_size, 2);
    out = put_le(out, info->seq_len, 2);
    out = put_le(out, info->positions, 2);
    out = put_le(out, info->hidden_size, 2);
    out = put_le(out, info->weight_bits, 1);
    out = put_le(out, info->h_cycles, 1);
    out = put_le(out, info->l_cycles, 1);
    out = put_le(out, info->l_layers, 1);
    out = put_le(out, info->halt_max_steps, 1);
    out = put_le(out, info->arena_bytes, 4);
    out = put_le(out, info->num_puzzle_identifiers, 4);
    put_le(out, protocol->transport->cycles_hz, 4);

    begin_reply(&writer, protocol->transport, RR_PACKET_INFO_REPLY, request_id);
    rr_cobs_writer_push(&writer, body, sizeof body);
    rr_cobs_writer_push(&writer, (const uint8_t *)info->name, string_length(info->name, 32));
    rr_cobs_writer_end(&writer);
}

/*
 * TRACE after one step: step u8, q_halt i16, n_tokens u16, tokens, carry_bytes u32, y, z.
 * y and z are streamed from the model's carry, so the packet is never built in RAM.
 */
static void send_trace(rr_protocol_t *protocol, uint16_t request_id, uint8_t step,
                       int32_t q_halt, uint32_t n_tokens)
{
    rr_cobs_writer_t writer;
    const rr_model_info_t *info = rr_model_info();
    uint32_t carry_bytes = (uint32_t)info->positions * info->hidden_size;
    const int8_t *y = rr_model_carry_y();
    const int8_t *z = rr_model_carry_z();
    uint8_t head[5];
    uint8_t size[4];

    head[0] = step;
    put_le(&head[1], (uint16_t)saturate_int16(q_halt), 2);
    put_le(&head[3], n_tokens, 2);
    put_le(size, carry_bytes, 4);

    begin_reply(&writer, protocol->transport, RR_PACKET_TRACE, request_id);
    rr_cobs_writer_push(&writer, head, sizeof head);
    rr_cobs_writer_push(&writer, protocol->tokens_out, n_tokens);
    if (y == NULL || z == NULL) {
        /* Keep the packet well formed; the SOLVE reply that follows still counts. */
        carry_bytes = 0;
        put_le(size, 0, 4);
    }
    rr_cobs_writer_push(&writer, size, sizeof size);
    rr_cobs_writer_push(&writer, (const uint8_t *)y, carry_bytes);
    rr_cobs_writer_push(&writer, (const uint8_t *)z, carry_bytes);
    rr_cobs_writer_end(&writer);
}

static void send_solve_result(rr_protocol_t *protocol, uint16_t request_id,
                              uint8_t steps_used, uint8_t halted_by_q, uint32_t cycles,
                              int32_t q_halt, uint32_t n_tokens)
{
    rr_cobs_writer_t writer;
    uint8_t head[10];
    uint8_t *out = head;

    out = put_le(out, steps_used, 1);
    out = put_le(out, halted_by_q, 1);
    out = put_le(out, cycles, 4);
    out = put_le(out, (uint16_t)saturate_int16(q_halt), 2);
    put_le(out, n_tokens, 2);

    begin_reply(&writer, protocol->transport, RR_PACKET_SOLVE_REPLY, request_id);
    rr_cobs_writer_push(&writer, head, sizeof head);
    rr_cobs_writer_push(&writer, protocol->tokens_out, n_tokens);
    rr_cobs_writer_end(&writer);
}

/* ---- SOLVE ---- */

/* Map a failed rr_model_* status to an ERROR reply. */
static void send_model_error(rr_protocol_t *protocol, uint16_t request_id,
                             rr_status_t status, uint32_t bad_index, uint32_t puzzle_id)
{
    const rr_transport_t *transport = protocol->transport;
    switch (status) {
    case RR_ERR_TOKEN:
        rr_protocol_send_error(transport, request_id, RR_ERROR_INVALID_TOKEN, bad_index,
                               "token id outside [0, vocab_size)");
        break;
    case RR_ERR_PUZZLE_ID:
        rr_protocol_send_error(transport, request_id, RR_ERROR_INVALID_PUZZLE_ID, puzzle_id,
                               "puzzle id outside [0, num_puzzle_identifiers)");
        break;
    case RR_ERR_LENGTH:
        rr_protocol_send_error(transport, request_id, RR_ERROR_BODY_LENGTH, 0,
                               "model rejected the token count");
        break;
    default:
        rr_protocol_send_error(transport, request_id, RR_ERROR_MODEL, (uint32_t)(-status),
                               "model call failed");
        break;
    }
}

/*
 * Check a SOLVE body and run the puzzle.
 *   body    [n_body] bytes: flags u8, max_steps u8, puzzle_id u32, n_tokens u16, tokens
 * Sends the TRACE packets and then exactly one reply (SOLVE reply or ERROR).
 */
static void handle_solve(rr_protocol_t *protocol, uint16_t request_id, const uint8_t *body,
                         uint32_t n_body)
{
    const rr_transport_t *transport = protocol->transport;
    const rr_model_info_t *info = rr_model_info();

    /* Check the fixed head, then the body length against n_tokens. */
    if (n_body < RR_SOLVE_HEAD_BYTES) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_BODY_LENGTH, n_body,
                               "SOLVE body shorter than its 8-byte head");
        return;
    }
    uint8_t flags = body[0];
    uint8_t max_steps = body[1];
    uint32_t puzzle_id = read_u32(&body[2]);
    uint32_t n_tokens = read_u16(&body[6]);
    const uint8_t *tokens = &body[RR_SOLVE_HEAD_BYTES];
    if (n_body != RR_SOLVE_HEAD_BYTES + n_tokens) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_BODY_LENGTH, n_body,
                               "SOLVE body length does not match n_tokens");
        return;
    }
    if ((flags & ~(uint8_t)(RR_SOLVE_FLAG_TRACE | RR_SOLVE_FLAG_HALT)) != 0u) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_INVALID_ARGUMENT, flags,
                               "unknown SOLVE flag bits");
        return;
    }
    if (n_tokens != info->seq_len) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_BODY_LENGTH, n_tokens,
                               "n_tokens differs from the model's seq_len");
        return;
    }

    /* Check ids here too, so a bad request never reaches the model. */
    if (puzzle_id >= info->num_puzzle_identifiers) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_INVALID_PUZZLE_ID, puzzle_id,
                               "puzzle id outside [0, num_puzzle_identifiers)");
        return;
    }
    for (uint32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] >= info->vocab_size) {
            rr_protocol_send_error(transport, request_id, RR_ERROR_INVALID_TOKEN, i,
                                   "token id outside [0, vocab_size)");
            return;
        }
    }

    /* Run: begin, then up to max_steps steps; cycles count model calls only, not TRACE. */
    uint32_t steps = (max_steps == 0u) ? info->halt_max_steps : max_steps;
    uint32_t bad_index = 0;
    uint32_t start = transport->cycles();
    rr_status_t status = rr_model_begin(tokens, n_tokens, puzzle_id, &bad_index);
    uint32_t cycles = transport->cycles() - start;
    if (status != RR_OK) {
        send_model_error(protocol, request_id, status, bad_index, puzzle_id);
        return;
    }

    int32_t q_halt = 0;
    uint8_t steps_used = 0;
    uint8_t halted_by_q = 0;
    for (uint32_t step = 1; step <= steps; step++) {
        start = transport->cycles();
        status = rr_model_step(protocol->tokens_out, &q_halt);
        cycles += transport->cycles() - start;
        if (status != RR_OK) {
            send_model_error(protocol, request_id, status, 0, puzzle_id);
            return;
        }
        steps_used = (uint8_t)step;
        if ((flags & RR_SOLVE_FLAG_TRACE) != 0u) {
            send_trace(protocol, request_id, (uint8_t)step, q_halt, n_tokens);
        }
        if ((flags & RR_SOLVE_FLAG_HALT) != 0u && q_halt > 0) {
            halted_by_q = 1;
            break;
        }
    }
    send_solve_result(protocol, request_id, steps_used, halted_by_q, cycles, q_halt,
                      n_tokens);
}

/* ---- Frames ---- */

/* Decode and check the frame in protocol->rx, and send its reply. */
static void handle_frame(rr_protocol_t *protocol)
{
    const rr_transport_t *transport = protocol->transport;
    uint32_t n_encoded = protocol->rx_count;
    uint32_t n_packet = 0;
    uint8_t *packet = protocol->rx;

    if (rr_cobs_decode(packet, n_encoded, &n_packet) != 0) {
        rr_protocol_send_error(transport, RR_UNTRUSTED_ID, RR_ERROR_INVALID_COBS, n_encoded,
                               "invalid COBS encoding");
        return;
    }
    if (n_packet < RR_MIN_PACKET_BYTES) {
        rr_protocol_send_error(transport, RR_UNTRUSTED_ID, RR_ERROR_TOO_SHORT, n_packet,
                               "packet shorter than 7 bytes");
        return;
    }
    uint32_t n_covered = n_packet - RR_CRC_BYTES;
    if (rr_crc32_update(0, packet, n_covered) != read_u32(&packet[n_covered])) {
        rr_protocol_send_error(transport, RR_UNTRUSTED_ID, RR_ERROR_BAD_CRC, n_packet,
                               "CRC-32 mismatch");
        return;
    }

    /* From here on the request id is trusted and echoed. */
    uint8_t type = packet[0];
    uint16_t request_id = read_u16(&packet[1]);
    const uint8_t *body = &packet[RR_HEADER_BYTES];
    uint32_t n_body = n_covered - RR_HEADER_BYTES;
    if (!protocol->model_usable) {
        rr_protocol_send_error(transport, request_id, RR_ERROR_MODEL, RR_MAX_SEQ_LEN,
                               "model seq_len exceeds RR_MAX_SEQ_LEN");
        return;
    }
    switch (type) {
    case RR_PACKET_INFO:
        if (n_body != 0u) {
            rr_protocol_send_error(transport, request_id, RR_ERROR_BODY_LENGTH, n_body,
                                   "INFO takes an empty body");
            return;
        }
        send_info(protocol, request_id);
        break;
    case RR_PACKET_SOLVE:
        handle_solve(protocol, request_id, body, n_body);
        break;
    default:
        rr_protocol_send_error(transport, request_id, RR_ERROR_UNKNOWN_TYPE, type,
                               "unknown packet type");
        break;
    }
}

int rr_protocol_init(rr_protocol_t *protocol, const rr_transport_t *transport)
{
    const rr_model_info_t *info = rr_model_info();

    protocol->transport = transport;
    protocol->rx_count = 0;
    protocol->rx_dropped = 0;
    protocol->model_usable = (info->seq_len <= RR_MAX_SEQ_LEN);
    if (!protocol->model_usable) {
        /* Accept the short packets that can still get their ERROR 10 reply. */
        protocol->rx_limit = RR_COBS_MAX_ENCODED(RR_MAX_REQUEST_BYTES(0u));
        return -1;
    }
    protocol->rx_limit = RR_COBS_MAX_ENCODED(RR_MAX_REQUEST_BYTES((uint32_t)info->seq_len));
    return 0;
}

void rr_protocol_feed(rr_protocol_t *protocol, uint8_t byte)
{
    if (byte != 0u) {
        if (protocol->rx_count < protocol->rx_limit) {
            protocol->rx[protocol->rx_count++] = byte;
        } else if (protocol->rx_dropped < UINT32_MAX) {
            protocol->rx_dropped++;
        }
        return;
    }

    /* A 0x00 ends the frame: reply to it, then start over. */
    if (protocol->rx_dropped > 0u) {
        uint32_t received = protocol->rx_count + protocol->rx_dropped;
        if (received < protocol->rx_count) {
            received = UINT32_MAX;
        }
        rr_protocol_send_error(protocol->transport, RR_UNTRUSTED_ID, RR_ERROR_TOO_LONG,
                               received, "packet longer than the receive buffer");
    } else if (protocol->rx_count > 0u) {
        handle_frame(protocol);
    }
    protocol->rx_count = 0;
    protocol->rx_dropped = 0;
}
