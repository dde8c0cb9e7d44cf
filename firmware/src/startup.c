/*
 * startup.c: vector table and reset handler of every Cortex-M board (M7 and M55).
 *
 * Pipeline stage: run. Targets: stm32h7, mps2-an500, corstone300. The symbols come from
 * the linker script that codegen/rrgen/boards.py renders (templates/link.ld.j2), which
 * puts .isr_vector at the start of the board's `vectors` region: where the core reads its
 * reset vector (flash on stm32h7, address 0 on mps2-an500, the ITCM on corstone300).
 */
#include "rr_board.h"

#include <stdint.h>

#ifndef RR_IRQ_COUNT
#error "RR_IRQ_COUNT is missing: build with codegen/rrgen/toolchain.py (board file values)"
#endif

#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
/* CP10 and CP11 give access to the FPU and, on Armv8.1-M, to the MVE (Helium) registers. */
#define CPACR_CP10_CP11_FULL (0xFu << 20)

extern uint32_t __data_load_start__[], __data_start__[], __data_end__[];
extern uint32_t __bss_start__[], __bss_end__[];
extern uint32_t __stack_top__[];

int main(void);
void Reset_Handler(void);
void Fault_Handler(void);
void fault_report(const uint32_t *frame, uint32_t ipsr);
void SysTick_Handler(void) __attribute__((weak, alias("Fault_Handler")));

/* Word 0 is the initial stack pointer, then 15 system exceptions and the interrupts. */
typedef struct {
    uint32_t *initial_stack_pointer;
    void (*handlers[15 + RR_IRQ_COUNT])(void);
} vector_table_t;

/*
 * VTOR ignores the address bits below the table size rounded up to a power of two, so the
 * table is aligned to that power (1024 bytes for the 150 interrupts of the STM32H743).
 */
#define VECTOR_TABLE_BYTES (4u * (16u + (RR_IRQ_COUNT)))
#if VECTOR_TABLE_BYTES <= 128u
#define VECTOR_TABLE_ALIGN 128u
#elif VECTOR_TABLE_BYTES <= 256u
#define VECTOR_TABLE_ALIGN 256u
#elif VECTOR_TABLE_BYTES <= 512u
#define VECTOR_TABLE_ALIGN 512u
#elif VECTOR_TABLE_BYTES <= 1024u
#define VECTOR_TABLE_ALIGN 1024u
#else
#define VECTOR_TABLE_ALIGN 2048u
#endif

_Static_assert(sizeof(vector_table_t) <= VECTOR_TABLE_ALIGN, "vector table over 2048 bytes");

__attribute__((section(".isr_vector"), used, aligned(VECTOR_TABLE_ALIGN)))
const vector_table_t vector_table = {
    .initial_stack_pointer = __stack_top__,
    .handlers = {
        [0] = Reset_Handler,
        [1 ... 13] = Fault_Handler, /* NMI, HardFault, MemManage, BusFault, ..., PendSV */
        [14] = SysTick_Handler,
        [15 ... 15 + RR_IRQ_COUNT - 1] = Fault_Handler, /* no interrupt is enabled */
    },
};

/*
 * Enable the FPU and MVE (the hard-float ABI and auto-vectorized loops may use them
 * anywhere in main), point VTOR at the table, copy .data, zero .bss and call main, which
 * never returns.
 */
void Reset_Handler(void)
{
    SCB_CPACR |= CPACR_CP10_CP11_FULL;
    __asm volatile("dsb\n\tisb" ::: "memory");
    SCB_VTOR = (uint32_t)(uintptr_t)&vector_table;

    for (uint32_t *src = __data_load_start__, *dst = __data_start__; dst < __data_end__;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = __bss_start__; dst < __bss_end__;) {
        *dst++ = 0u;
    }

    (void)main();
    for (;;) {
    }
}

/*
 * Every exception without its own handler ends here: pass the stacked frame (MSP or PSP,
 * from bit 2 of EXC_RETURN) and the exception number to fault_report.
 */
__attribute__((naked)) void Fault_Handler(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mrs r1, ipsr\n\t"
        "b fault_report\n\t");
}

/*
 * Report the fault over the UART and stop.
 *   frame  the exception stack frame: r0-r3, r12, lr, pc, xpsr
 *   ipsr   IPSR at entry; the low 9 bits are the exception number
 */
void fault_report(const uint32_t *frame, uint32_t ipsr)
{
    board_report_fault(ipsr & 0x1FFu, frame[6]);
}
