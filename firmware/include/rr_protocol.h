/*
 * rr_protocol.h: the request handler of the serial protocol (docs/protocol.md), plus the
 * COBS and CRC-32 primitives it is built from.
 *
 * Pipeline stage: run. Targets: Cortex-M7 boards and the host. The handler is transport
 * independent: it consumes received bytes one at a time and sends replies through the
 * write function of an rr_transport_t. It uses no floating point and no dynamic memory.
 */
#ifndef RR_PROTOCOL_H
#define RR_PROTOCOL_H

#include <stdint.h>

#define RR_PROTOCOL_VERSION 1u

/*
 * Largest seq_len the handler can serve. The receive buffer and the output-token buffer
 * are sized from it at compile time; the handler then enforces the smaller limit implied
 * by rr_model_info()->seq_len. With a model of larger seq_len the handler replies ERROR 10
 * to every request. Override with -DRR_MAX_SEQ_LEN=<n> (for example with the generated RR_SEQ_LEN).
 */
#ifndef RR_MAX_SEQ_LEN
#define RR_MAX_SEQ_LEN 1024u
#endif

/* Packet layout: type u8, request id u16 LE, body, CRC-32 u32 LE. */
#define RR_HEADER_BYTES 3u
#define RR_CRC_BYTES 4u
#define RR_MIN_PACKET_BYTES (RR_HEADER_BYTES + RR_CRC_BYTES)
#define RR_SOLVE_HEAD_BYTES 8u /* flags u8, max_steps u8, puzzle_id u32, n_tokens u16 */

/* Maximum request packet length (a SOLVE) for a given seq_len, before COBS. */
#define RR_MAX_REQUEST_BYTES(seq_len) (RR_MIN_PACKET_BYTES + RR_SOLVE_HEAD_BYTES + (seq_len))

/* COBS adds at most one byte per started 254-byte block (and one for an empty packet). */
#define RR_COBS_MAX_ENCODED(n) ((n) + (n) / 254u + 1u)

/* Receive buffer: one COBS-encoded request of the largest supported model. */
#define RR_RX_BUFFER_BYTES RR_COBS_MAX_ENCODED(RR_MAX_REQUEST_BYTES(RR_MAX_SEQ_LEN))

/* Request id used in replies to packets whose id cannot be trusted. */
#define RR_UNTRUSTED_ID 0xFFFFu

/* Packet types. */
enum {
    RR_PACKET_INFO = 0x01,
    RR_PACKET_SOLVE = 0x02,
    RR_PACKET_READY = 0x80,
    RR_PACKET_INFO_REPLY = 0x81,
    RR_PACKET_SOLVE_REPLY = 0x82,
    RR_PACKET_TRACE = 0x83,
    RR_PACKET_ERROR = 0xFF
};

/* SOLVE flags. */
enum {
    RR_SOLVE_FLAG_TRACE = 0x01, /* send a TRACE packet after every supervision step */
    RR_SOLVE_FLAG_HALT = 0x02   /* stop early when q_halt > 0 */
};

/* ERROR codes, the first byte of an ERROR body. */
enum {
    RR_ERROR_BAD_CRC = 1,
    RR_ERROR_TOO_SHORT = 2,
    RR_ERROR_TOO_LONG = 3,
    RR_ERROR_UNKNOWN_TYPE = 4,
    RR_ERROR_BODY_LENGTH = 5,
    RR_ERROR_INVALID_TOKEN = 6,
    RR_ERROR_INVALID_PUZZLE_ID = 7,
    RR_ERROR_INVALID_COBS = 8,
    RR_ERROR_INVALID_ARGUMENT = 9, /* flags or max_steps */
    RR_ERROR_MODEL = 10,
    RR_ERROR_FAULT = 11            /* unsolicited: the processor took a fault */
};

/*
 * Where replies go and how time is measured.
 *   write      sends n_bytes bytes from data; must send all of them before returning
 *   context    passed unchanged to write
 *   cycles     free-running counter, wraps modulo 2^32 (board_cycles on a board)
 *   cycles_hz  frequency of cycles, reported in the INFO reply
 */
typedef struct {
    void (*write)(void *context, const uint8_t *data, uint32_t n_bytes);
    void *context;
    uint32_t (*cycles)(void);
    uint32_t cycles_hz;
} rr_transport_t;

/* ---- CRC-32 (crc32.c) ---- */

/*
 * Continue a CRC-32 (zlib/IEEE, reflected polynomial 0xEDB88320) over more bytes.
 *   crc   the value returned for the bytes so far, 0 for none
 *   data  [n_bytes] bytes; may be NULL when n_bytes is 0
 * Returns the CRC of everything so far, equal to zlib.crc32 over the concatenation.
 */
uint32_t rr_crc32_update(uint32_t crc, const uint8_t *data, uint32_t n_bytes);

/* ---- COBS (cobs.c) ---- */

/*
 * Decode one COBS packet in place (decoding never makes it longer).
 *   buffer     in: [n_encoded] encoded bytes without the 0x00 delimiter; out: the packet
 *   n_encoded  number of encoded bytes
 *   n_decoded  out: packet length
 * Returns 0, or -1 if the encoding is invalid (a zero byte, or a block past the end).
 */
int rr_cobs_decode(uint8_t *buffer, uint32_t n_encoded, uint32_t *n_decoded);

/*
 * Streaming COBS encoder: frames one packet of any length through a 255-byte buffer, so
 * replies of tens of kilobytes (TRACE) never exist whole in RAM. The CRC-32 of the bytes
 * pushed so far is kept alongside, for the packet trailer.
 */
typedef struct {
    const rr_transport_t *transport;
    uint8_t block[255];  /* block[0] is the code byte, block[1..count] the data */
    uint32_t count;      /* data bytes in the open block, 0..254 */
    int after_full;      /* the last block sent was a full 254-byte block */
    uint32_t crc;        /* CRC-32 of every byte pushed */
} rr_cobs_writer_t;

/* Start a packet. */
void rr_cobs_writer_begin(rr_cobs_writer_t *writer, const rr_transport_t *transport);

/* Append n_bytes bytes of packet content (CRC-covered). data may be NULL if n_bytes is 0. */
void rr_cobs_writer_push(rr_cobs_writer_t *writer, const uint8_t *data, uint32_t n_bytes);

/* Append the CRC-32 of everything pushed, close the last block and send the 0x00. */
void rr_cobs_writer_end(rr_cobs_writer_t *writer);

/* ---- Request handler (protocol.c) ---- */

/* State of the handler. Large (about 2 * RR_MAX_SEQ_LEN bytes): give it static storage. */
typedef struct {
    const rr_transport_t *transport;
    uint8_t rx[RR_RX_BUFFER_BYTES];      /* encoded bytes of the packet being received */
    uint32_t rx_count;                   /* bytes stored in rx */
    uint32_t rx_limit;                   /* max encoded bytes for this model's seq_len */
    uint32_t rx_dropped;                 /* bytes received past rx_limit, 0 if none */
    uint8_t tokens_out[RR_MAX_SEQ_LEN];  /* [seq_len] uint8, output of rr_model_step */
    int model_usable;                    /* 0 if seq_len exceeds RR_MAX_SEQ_LEN */
} rr_protocol_t;

/*
 * Prepare the handler for the linked model.
 *   protocol   state to initialise
 *   transport  where replies go; must outlive the handler
 * Returns 0, or -1 if the model's seq_len exceeds RR_MAX_SEQ_LEN. After -1 the handler
 * still runs but replies ERROR 10 to every request.
 */
int rr_protocol_init(rr_protocol_t *protocol, const rr_transport_t *transport);

/* Send the READY frame (version and model name), once after start-up. */
void rr_protocol_send_ready(rr_protocol_t *protocol);

/*
 * Consume one received byte. When the byte completes a frame (0x00) the frame is
 * decoded, checked and replied to before this returns: exactly one reply, preceded for a
 * SOLVE with the trace flag by one TRACE packet per step. Empty frames are ignored.
 */
void rr_protocol_feed(rr_protocol_t *protocol, uint8_t byte);

/*
 * Send one ERROR packet without a handler, for example from a fault handler.
 *   transport   where to send it
 *   request_id  id to echo, RR_UNTRUSTED_ID if unknown
 *   code        RR_ERROR_* value
 *   detail      code-specific value (an index, a length, a program counter)
 *   message     NUL-terminated ASCII text, at most 64 bytes are sent; may be NULL
 */
void rr_protocol_send_error(const rr_transport_t *transport, uint16_t request_id,
                            uint8_t code, uint32_t detail, const char *message);

#endif /* RR_PROTOCOL_H */
