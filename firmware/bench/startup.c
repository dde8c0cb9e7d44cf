/*
 * Bare-metal start-up for the kernel tests and the kernel benchmark under QEMU:
 * mps2-an500 (Cortex-M7) and mps3-an547 (Cortex-M55). No UART and no C library: output
 * and exit go through Arm semihosting (QEMU: -semihosting-config enable=on,target=native).
 * SysTick runs from the core clock as a free 24-bit down counter, without interrupts; under
 * -icount shift=0 one tick is 1e9 / clock instructions (tools/bench_kernels.py checks
 * that). bench_elapsed is exact for intervals shorter than one period of 2^24 ticks.
 */
#include <stddef.h>
#include <stdint.h>

#include "bench.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_top[];

int main(void);

#define SCB_CPACR   (*(volatile uint32_t *)0xE000ED88u)
#define SYST_CSR    (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR    (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR    (*(volatile uint32_t *)0xE000E018u)
#define SYST_RELOAD 0x00FFFFFFu

/* One semihosting call: operation in r0, argument in r1, result in r0. */
static int32_t semihost(uint32_t operation, const void *argument)
{
    register uint32_t r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

void bench_print(const char *text)
{
    semihost(0x04u, text);                      /* SYS_WRITE0 */
}

void bench_exit(int status)
{
    /* SYS_EXIT: ApplicationExit makes QEMU exit 0, RunTimeErrorUnknown exits 1. */
    semihost(0x18u, (const void *)(status == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

int32_t bench_file_write(const char *path, const void *data, uint32_t size)
{
    size_t length = 0;
    while (path[length] != '\0') {
        length++;
    }
    const uint32_t open_args[3] = { (uint32_t)path, 5u /* "wb" */, (uint32_t)length };
    const int32_t handle = semihost(0x01u, open_args);        /* SYS_OPEN */
    if (handle < 0) {
        return -1;
    }
    const uint32_t write_args[3] = { (uint32_t)handle, (uint32_t)data, size };
    const int32_t left = semihost(0x05u, write_args);         /* SYS_WRITE: bytes not written */
    const uint32_t close_args[1] = { (uint32_t)handle };
    semihost(0x02u, close_args);                              /* SYS_CLOSE */
    return left == 0 ? 0 : -1;
}

uint32_t bench_ticks(void)
{
    return SYST_CVR;
}

uint32_t bench_elapsed(uint32_t start, uint32_t end)
{
    return (start - end) & SYST_RELOAD;     /* SysTick counts down */
}

static void fault(void)
{
    bench_print("FAULT: the guest took a fault exception\n");
    bench_exit(1);
}

void Reset_Handler(void)
{
    for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = __bss_start; dst < __bss_end;) {
        *dst++ = 0;
    }
    /* CP10 and CP11 full access: the FPU, and on Armv8.1-M the MVE registers. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 5u;                              /* enable, core clock, no interrupt */
    bench_exit(main());
}

typedef void (*vector_t)(void);

__attribute__((section(".vectors"), used)) const vector_t bench_vectors[16] = {
    (vector_t)(uintptr_t)__stack_top, Reset_Handler, fault, fault, fault, fault, fault,
    0, 0, 0, 0, fault, fault, 0, fault, fault,
};

/* GCC may call these for struct copies and loops; there is no C library. */
void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

void *memset(void *dst, int value, size_t n)
{
    uint8_t *d = dst;
    while (n--) {
        *d++ = (uint8_t)value;
    }
    return dst;
}
