/*
 * rr_board.h: what the firmware needs from a board: start-up, a byte-wide UART and a
 * cycle counter. Shared parts live in firmware/src/startup.c and firmware/drivers/ (picked
 * by the board file's [uart] driver and cycle_counter), the rest in firmware/boards/<board>/.
 *
 * Pipeline stage: run. Targets: stm32h7, mps2-an500, corstone300. The host build
 * (firmware/host) does not use this header: it talks over stdin/stdout instead.
 */
#ifndef RR_BOARD_H
#define RR_BOARD_H

#include <stdint.h>

/*
 * Board constants come from the board file as -D flags (codegen/rrgen/toolchain.py):
 *   RR_UART_BASE       UART base address         RR_UART_BAUD   baud rate
 *   RR_CORE_CLOCK_HZ   core clock after board_init
 *   RR_CYCLES_HZ       frequency of board_cycles()
 *   RR_IRQ_COUNT       external interrupt lines in the vector table
 */

/*
 * Bring the board to a known state: clocks as the board file documents, the UART at its
 * baud rate (8N1, no flow control) and the cycle counter running from zero or close to it.
 * Called once by main before any other function here.
 */
void board_init(void);

/* Configure the UART pins, clock and baud rate; called by board_init. */
void board_uart_init(void);

/* Send one byte over the UART. Blocks until the transmitter accepts it. */
void board_uart_putc(uint8_t byte);

/*
 * Receive one byte from the UART. Blocks until one arrives; there is no time-out.
 * Returns the byte (0..255). A receive error (overrun, framing) is cleared and the byte
 * that was read is returned anyway, so a corrupted byte shows up as a bad frame later.
 */
int board_uart_getc(void);

/*
 * Read the free-running cycle counter. The unit is one tick of a clock at
 * board_cycles_hz(): core clock cycles on stm32h7 (DWT CYCCNT), SysTick ticks at the
 * core clock on mps2-an500 and corstone300. The count wraps modulo 2^32, so subtract two readings as
 * uint32_t to get an interval shorter than 2^32 ticks.
 */
uint32_t board_cycles(void);

/* Frequency of board_cycles() in Hz. */
uint32_t board_cycles_hz(void);

/*
 * Report a processor fault and never return. Implemented by main.c, called by the fault
 * handlers in startup.c.
 *   exception  exception number from IPSR (3 HardFault, 4 MemManage, 5 BusFault, ...)
 *   pc         program counter stacked by the exception entry, or 0 if unknown
 */
void board_report_fault(uint32_t exception, uint32_t pc) __attribute__((noreturn));

#endif /* RR_BOARD_H */
