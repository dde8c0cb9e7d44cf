/*
 * cmsdk-apb-uart.c: polled driver for the CMSDK APB UART (UART0 of the MPS2 AN500 and of
 * the MPS3 AN547), chosen by `[uart] driver = "cmsdk-apb-uart"` in the board file.
 *
 * Pipeline stage: run. Targets: mps2-an500, corstone300. Registers per the Cortex-M System Design Kit
 * TRM: DATA 0x00, STATE 0x04 (bit 0 TX full, bit 1 RX full), CTRL 0x08 (bit 0 TX enable,
 * bit 1 RX enable), BAUDDIV 0x10 (PCLK / baud, at least 16). The receive holding register
 * is one byte deep, and QEMU keeps further input in the chardev until it is read.
 */
#include "rr_board.h"

#if !defined(RR_UART_BASE) || !defined(RR_UART_BAUD) || !defined(RR_UART_CLOCK_HZ)
#error "RR_UART_BASE, RR_UART_BAUD or RR_UART_CLOCK_HZ missing: build with rrgen/toolchain.py"
#endif

#define UART_REG(offset) (*(volatile uint32_t *)((uint32_t)(RR_UART_BASE) + (offset)))
#define UART_DATA UART_REG(0x00u)
#define UART_STATE UART_REG(0x04u)
#define UART_CTRL UART_REG(0x08u)
#define UART_BAUDDIV UART_REG(0x10u)

#define STATE_TX_FULL (1u << 0)
#define STATE_RX_FULL (1u << 1)
#define STATE_OVERRUNS (3u << 2) /* TX and RX overrun, write 1 to clear */
#define CTRL_TX_ENABLE (1u << 0)
#define CTRL_RX_ENABLE (1u << 1)

/*
 * PCLK comes from `[uart] clock_hz`, by default the core clock. On the MPS2 AN500 it is
 * the core clock. On the AN547 it is the 25 MHz APB clock, not the 32 MHz core clock
 * (QEMU hw/arm/mps2-tz.c: apb_periph_frq).
 */
#define UART_BAUD_DIVIDER (((RR_UART_CLOCK_HZ) + (RR_UART_BAUD) / 2u) / (RR_UART_BAUD))
_Static_assert(UART_BAUD_DIVIDER >= 16u, "CMSDK UART needs BAUDDIV >= 16: baud rate too high");

void board_uart_init(void)
{
    UART_CTRL = 0u;
    UART_BAUDDIV = UART_BAUD_DIVIDER;
    UART_STATE = STATE_OVERRUNS;
    UART_CTRL = CTRL_TX_ENABLE | CTRL_RX_ENABLE;
}

void board_uart_putc(uint8_t byte)
{
    while ((UART_STATE & STATE_TX_FULL) != 0u) {
    }
    UART_DATA = byte;
}

int board_uart_getc(void)
{
    while ((UART_STATE & STATE_RX_FULL) == 0u) {
    }
    int byte = (int)(UART_DATA & 0xFFu);
    if ((UART_STATE & STATE_OVERRUNS) != 0u) {
        UART_STATE = STATE_OVERRUNS;
    }
    return byte;
}
