/*
 * main.c: firmware entry point on a board. Starts the board, sends READY, then feeds every
 * received UART byte to the protocol handler, forever.
 *
 * Pipeline stage: run. Targets: stm32h7, mps2-an500 (the host build uses host/host_main.c).
 */
#include "rr_board.h"
#include "rr_protocol.h"

#include <stddef.h>

/* Static storage, because the handler contains the receive buffer (see rr_protocol.h). */
static rr_protocol_t protocol;
static volatile int uart_ready;

/* rr_transport_t.write over the board UART. */
static void uart_write(void *context, const uint8_t *data, uint32_t n_bytes)
{
    (void)context;
    for (uint32_t i = 0; i < n_bytes; i++) {
        board_uart_putc(data[i]);
    }
}

static rr_transport_t transport;

void board_report_fault(uint32_t exception, uint32_t pc)
{
    /* Before the UART works no report can be sent, so only stop here for the debugger. */
    if (uart_ready) {
        rr_protocol_send_error(&transport, RR_UNTRUSTED_ID, RR_ERROR_FAULT, pc,
                               exception == 3u ? "HardFault" : "processor fault");
    }
    for (;;) {
    }
}

int main(void)
{
    board_init();
    transport.write = uart_write;
    transport.context = NULL;
    transport.cycles = board_cycles;
    transport.cycles_hz = board_cycles_hz();
    uart_ready = 1;

    /* With a model the handler cannot serve, every request gets ERROR 10. */
    (void)rr_protocol_init(&protocol, &transport);
    rr_protocol_send_ready(&protocol);
    for (;;) {
        rr_protocol_feed(&protocol, (uint8_t)board_uart_getc());
    }
}
