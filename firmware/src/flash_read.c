/*
 * flash_read.c: the default rr_flash_read (see rr_flash.h) for memory-mapped flash.
 *
 * Pipeline stage: run. Targets: every board and the host. A board that needs another
 * read (for example QSPI in indirect mode) defines rr_flash_read in its own sources;
 * the linker then takes that definition instead of this weak one.
 */
#include <stdint.h>
#include <string.h>

#include "rr_flash.h"

__attribute__((weak)) void rr_flash_read(void *dst, const void *src, uint32_t n)
{
    memcpy(dst, src, n);
}
