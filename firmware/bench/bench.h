/*
 * bench.h: the services of startup.c for the kernel tests and benchmark (semihosting
 * output, exit and file write, and a 64-bit SysTick counter).
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdint.h>

void bench_print(const char *text);
void bench_exit(int status);
int32_t bench_file_write(const char *path, const void *data, uint32_t size);
uint64_t bench_ticks(void);

#endif /* BENCH_H */
