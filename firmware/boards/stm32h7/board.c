/*
 * board.c: start-up and cycle counter of the STM32H743.
 *
 * Pipeline stage: run. Target: stm32h7. The core stays on the 64 MHz HSI it starts from
 * after reset, with the reset flash latency. board_cycles() is the DWT cycle counter, one
 * tick per core clock cycle (RR_CYCLES_HZ).
 * TODO: start PLL1 for 400-480 MHz (needs voltage scaling and flash wait states) and
 * enable the data cache. Both are left out because they are untested without hardware.
 */
#include "rr_board.h"

#if !defined(RR_CYCLES_HZ)
#error "RR_CYCLES_HZ is missing: build with codegen/rrgen/toolchain.py"
#endif

#define REG(address) (*(volatile uint32_t *)(address))

#define SCB_CCR REG(0xE000ED14u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_CCR_IC (1u << 17)

#define DEMCR REG(0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)
#define DWT_LAR_UNLOCK 0xC5ACCE55u
#define DWT_CTRL_CYCCNTENA (1u << 0)

/* Invalidate and enable the instruction cache: code runs from flash with wait states. */
static void enable_instruction_cache(void)
{
    __asm volatile("dsb\n\tisb" ::: "memory");
    SCB_ICIALLU = 0u;
    __asm volatile("dsb\n\tisb" ::: "memory");
    SCB_CCR |= SCB_CCR_IC;
    __asm volatile("dsb\n\tisb" ::: "memory");
}

void board_init(void)
{
    enable_instruction_cache();
    board_uart_init();

    /* The Cortex-M7 DWT needs trace enabled and its lock opened before CYCCNT counts. */
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = DWT_LAR_UNLOCK;
    DWT_CYCCNT = 0u;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

uint32_t board_cycles(void)
{
    return DWT_CYCCNT;
}

uint32_t board_cycles_hz(void)
{
    return RR_CYCLES_HZ;
}
