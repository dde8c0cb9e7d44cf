/*
 * systick.c: board_init and a cycle counter from SysTick, chosen by
 * `cycle_counter = "systick"` in the board file.
 *
 * Pipeline stage: run. Targets: mps2-an500, corstone300. QEMU implements no DWT cycle
 * counter on these machines, so board_cycles() counts SysTick ticks at the core clock
 * (RR_CYCLES_HZ: 25 MHz on mps2-an500, 32 MHz on corstone300) and extends the 24-bit
 * down-counter to 32 bits by counting wraps in SysTick_Handler. Under QEMU a tick is
 * emulated time, not a core cycle: with -icount shift=0 one instruction takes 1 ns, so one
 * tick is 40 (mps2-an500) or 31.25 (corstone300) instructions.
 */
#include "rr_board.h"

#if !defined(RR_CYCLES_HZ)
#error "RR_CYCLES_HZ is missing: build with codegen/rrgen/toolchain.py"
#endif

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_TICKINT (1u << 1)
#define SYST_CSR_CLKSOURCE_CORE (1u << 2)
#define SYSTICK_PERIOD (1u << 24)

static volatile uint32_t systick_wraps;

/* Overrides the weak alias in startup.c; one call per 2^24 ticks (0.67 s at 25 MHz). */
void SysTick_Handler(void)
{
    systick_wraps++;
}

void board_init(void)
{
    board_uart_init();
    SYST_CSR = 0u;
    SYST_RVR = SYSTICK_PERIOD - 1u;
    SYST_CVR = 0u;
    SYST_CSR = SYST_CSR_ENABLE | SYST_CSR_TICKINT | SYST_CSR_CLKSOURCE_CORE;
}

uint32_t board_cycles(void)
{
    uint32_t wraps;
    uint32_t current;

    /* Retry if the wrap interrupt ran between the two reads. */
    do {
        wraps = systick_wraps;
        current = SYST_CVR;
    } while (wraps != systick_wraps);
    return wraps * SYSTICK_PERIOD + (SYSTICK_PERIOD - 1u - current);
}

uint32_t board_cycles_hz(void)
{
    return RR_CYCLES_HZ;
}
