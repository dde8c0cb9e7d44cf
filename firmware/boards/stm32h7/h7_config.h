/*
 * h7_config.h: clock tree, QUADSPI and pin constants of the STM32H743 board code.
 *
 * Pipeline stage: run. Target: stm32h7. board.c and uart.c use these values, and
 * tests/test_stm32h7_hw.py parses the plain `#define NAME value` lines of this file to
 * check that they compute to the frequencies documented in docs/hardware-stm32h7.md and
 * to core_clock_hz in boards/stm32h7.toml. Keep every value a plain decimal or hex literal
 * with an optional u suffix, so that the test can read it.
 *
 * Clock tree (RM0433, chapter "Reset and clock control (RCC)"):
 *   PLL1 input: HSE 8 MHz (ST-LINK MCO, bypass mode) / DIVM1 4, or HSI 64 MHz / DIVM1 32,
 *   so the PLL reference is 2 MHz either way (PLL1RGE range 2-4 MHz, wide VCO).
 *   VOS0 (revision V only): VCO 2 MHz * 480 = 960 MHz, /P 2 = 480 MHz SYSCLK.
 *   VOS1 (revision Y, or VOS0 not reached): VCO 2 MHz * 400 = 800 MHz, /P 2 = 400 MHz.
 *   D1CPRE /1 (CPU = SYSCLK), HPRE /2 (AXI/AHB 240 or 200 MHz), every APB prescaler /2
 *   (120 or 100 MHz). USART3 runs from PCLK1.
 */
#ifndef H7_CONFIG_H
#define H7_CONFIG_H

#include <stdint.h>

/* Oscillators. */
#define H7_HSE_HZ 8000000u              /* NUCLEO: 8 MHz MCO of the ST-LINK, HSE bypass */
#define H7_HSI_HZ 64000000u             /* HSI with HSIDIV /1, the reset clock */

/* PLL1 (RM0433 RCC_PLLCKSELR, RCC_PLLCFGR, RCC_PLL1DIVR). */
#define H7_PLL1_M_HSE 4u                /* 8 MHz / 4 = 2 MHz reference */
#define H7_PLL1_M_HSI 32u               /* 64 MHz / 32 = 2 MHz reference */
#define H7_PLL1_RGE 1u                  /* reference range 2-4 MHz */
#define H7_PLL1_N_VOS0 480u             /* VCO 960 MHz */
#define H7_PLL1_N_VOS1 400u             /* VCO 800 MHz */
#define H7_PLL1_P 2u
#define H7_PLL1_Q 4u                    /* pll1_q_ck 240 or 200 MHz, not used */
#define H7_PLL1_R 2u                    /* pll1_r_ck, not used */

/* Bus prescalers as divisors (RM0433 RCC_D1CFGR, RCC_D2CFGR, RCC_D3CFGR). */
#define H7_D1CPRE_DIV 1u                /* CPU clock = SYSCLK */
#define H7_HPRE_DIV 2u                  /* HCLK (AXI, AHB1-4) = CPU / 2 */
#define H7_APB_DIV 2u                   /* APB1-4 = HCLK / 2 */

/* The frequencies that the constants above give (checked by _Static_assert in board.c). */
#define H7_SYSCLK_VOS0_HZ 480000000u
#define H7_SYSCLK_VOS1_HZ 400000000u

/* Flash wait states (RM0433 chapter "Embedded flash memory", table 17 "FLASH recommended
 * number of wait states and programming delay"): AXI clock 240 MHz at VOS0 needs 4 WS,
 * 200 MHz at VOS1 needs 2 WS, both with WRHIGHFREQ = 2. */
#define H7_FLASH_LATENCY_VOS0 4u
#define H7_FLASH_LATENCY_VOS1 2u
#define H7_FLASH_WRHIGHFREQ 2u

/* DBGMCU_IDCODE REV_ID (RM0433, DBGMCU_IDCODE): revision V reaches 480 MHz at VOS0. */
#define H7_REV_ID_Y 0x1003u
#define H7_REV_ID_V 0x2003u

/* Time-outs of the wait loops, in core clock cycles at the 64 MHz HSI of the start-up. */
#define H7_TIMEOUT_HSE_CYCLES 6400000u  /* 100 ms */
#define H7_TIMEOUT_SHORT_CYCLES 640000u /* 10 ms: voltage scaling, PLL lock, clock switch */

/*
 * Quad-SPI NOR flash, memory-mapped at 0x90000000 (RM0433, chapter "Quad-SPI interface
 * (QUADSPI)"). The NUCLEO-H743ZI has no QSPI chip: these values assume a Winbond
 * W25Q128JV (16 MB, 133 MHz) wired to the QUADSPI bank 1 pins below
 * (docs/hardware-stm32h7.md, "QSPI wiring").
 */
#define H7_QSPI_SIZE_LOG2 24u           /* 16 MB: DCR FSIZE = 23 */
#define H7_QSPI_MAX_HZ 50000000u        /* QSPI clock limit for jumper wires */
#define H7_QSPI_READ_INSTRUCTION 0xEBu  /* Fast Read Quad I/O: 1-4-4 lines */
#define H7_QSPI_MODE_BYTE 0xFFu         /* M7-0: no continuous read mode */
#define H7_QSPI_DUMMY_CYCLES 4u         /* W25Q: 4 dummy clocks after the mode byte */
#define H7_QSPI_TIMEOUT_CYCLES 480000u  /* per command, ~1 ms at 480 MHz */

/* QUADSPI bank 1 pins: port index (A = 0) << 8 | pin << 4 | alternate function. */
#define H7_QSPI_PIN(port, pin, af) (((port) << 8) | ((pin) << 4) | (af))
#define H7_QSPI_PIN_CLK H7_QSPI_PIN(1u, 2u, 9u)     /* PB2  AF9 */
#define H7_QSPI_PIN_NCS H7_QSPI_PIN(1u, 6u, 10u)    /* PB6  AF10 */
#define H7_QSPI_PIN_IO0 H7_QSPI_PIN(3u, 11u, 9u)    /* PD11 AF9 */
#define H7_QSPI_PIN_IO1 H7_QSPI_PIN(3u, 12u, 9u)    /* PD12 AF9 */
#define H7_QSPI_PIN_IO2 H7_QSPI_PIN(4u, 2u, 9u)     /* PE2  AF9 */
#define H7_QSPI_PIN_IO3 H7_QSPI_PIN(3u, 13u, 9u)    /* PD13 AF9 */

/* The USART3 kernel clock (PCLK1) that board_init reached; uart.c computes BRR from it. */
uint32_t h7_usart_kernel_hz(void);

#endif /* H7_CONFIG_H */
