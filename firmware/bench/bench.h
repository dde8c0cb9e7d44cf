/*
 * bench.h: the services of startup.c for the kernel tests and benchmark (semihosting
 * output, exit and file write, and the SysTick counter, 2^24 ticks per period).
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdint.h>

void bench_print(const char *text);
void bench_exit(int status);
int32_t bench_file_write(const char *path, const void *data, uint32_t size);
uint32_t bench_ticks(void);
uint32_t bench_elapsed(uint32_t start, uint32_t end);

#endif /* BENCH_H */
