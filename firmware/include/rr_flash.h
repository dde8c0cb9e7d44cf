/*
 * rr_flash.h: reading constant tables that may lie in external flash.
 *
 * Pipeline stage: run. Targets: stm32h7, mps2-an500 and the host. The generated model.c
 * reads every embedding row (token and puzzle tables) through rr_flash_read, and only
 * the rows that a puzzle needs, into a RAM buffer of the arena. rrgen places these tables
 * in the board's external region when it has one ([placement] external in the board file:
 * the QSPI window at 0x90000000 on stm32h7, PSRAM on mps2-an500).
 */
#ifndef RR_FLASH_H
#define RR_FLASH_H

#include <stdint.h>

/*
 * Copy n bytes from src, an address in a constant table, to dst in RAM.
 *
 * Contract for a board that replaces the default:
 *   - src is the address the linker gave the table row, for example 0x90xxxxxx in the
 *     QSPI window. dst is a buffer in the arena, and the two ranges do not overlap.
 *   - Any alignment: src and dst may be odd addresses, and n any value from 0 to the row
 *     size (hidden_size bytes today; n = 0 reads nothing).
 *   - The firmware checks token ids and the puzzle id before the call, so
 *     [src, src + n) always lies inside the table. The function must not fault for such
 *     a range, and must return only when all n bytes are in dst.
 *   - It runs before the first supervision step of a puzzle, never from an interrupt.
 *
 * The default in firmware/src/flash_read.c is a weak memcpy, right for memory-mapped
 * flash (internal flash, QSPI in memory-mapped mode, QEMU's PSRAM) and for the host. A
 * board whose external flash is not memory-mapped defines a strong rr_flash_read that
 * turns src into a device offset (src - link address of the region) and reads it.
 * NOTE: weight arrays that rrgen places in the external region are read in place by the
 * kernels, so that region must be memory-mapped whenever it contains weights (report.md
 * lists the arrays in each region).
 */
void rr_flash_read(void *dst, const void *src, uint32_t n);

#endif /* RR_FLASH_H */
