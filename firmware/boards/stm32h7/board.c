/*
 * board.c: start-up of the STM32H743 on a NUCLEO-H743ZI(2): supply and voltage scaling,
 * clocks to 480 MHz (400 MHz on revision Y silicon), MPU, caches, the DWT cycle counter
 * and the QUADSPI memory-mapped window.
 *
 * Pipeline stage: run. Target: stm32h7. Register addresses and bits follow RM0433 (the
 * STM32H742/743/750/753 reference manual); the chosen constants are in h7_config.h.
 * Every wait loop has a time-out, and each failure falls back to a slower state that
 * still works. Without the PLL the core runs from the 64 MHz HSI. Without VOS0 it runs at
 * 400 MHz at VOS1. Without the HSE the PLL runs from the HSI. board_cycles_hz() reports
 * the core clock reached.
 *
 * Memory attributes: nothing in this firmware uses DMA, so every SRAM region is normal,
 * write-back write-allocate cacheable memory and no cache maintenance is needed after
 * start-up. A design that adds DMA must make its buffers non-cacheable or clean and
 * invalidate them.
 * NOTE: built and linked only; no STM32H743 has run this code here (docs/hardware-stm32h7.md).
 */
#include "rr_board.h"

#include <stdbool.h>
#include <stddef.h>

#include "h7_config.h"

#if !defined(RR_CYCLES_HZ) || !defined(RR_CORE_CLOCK_HZ)
#error "RR_CYCLES_HZ or RR_CORE_CLOCK_HZ is missing: build with codegen/rrgen/toolchain.py"
#endif

/* boards/stm32h7.toml documents the clock that board_init aims for. */
_Static_assert(RR_CORE_CLOCK_HZ == H7_SYSCLK_VOS0_HZ,
               "core_clock_hz in boards/stm32h7.toml differs from H7_SYSCLK_VOS0_HZ");
_Static_assert(RR_CYCLES_HZ == RR_CORE_CLOCK_HZ,
               "cycle_counter_hz in boards/stm32h7.toml must equal core_clock_hz (DWT)");
_Static_assert(H7_HSE_HZ / H7_PLL1_M_HSE * H7_PLL1_N_VOS0 / H7_PLL1_P == H7_SYSCLK_VOS0_HZ,
               "PLL1 constants do not give H7_SYSCLK_VOS0_HZ from the HSE");
_Static_assert(H7_HSI_HZ / H7_PLL1_M_HSI * H7_PLL1_N_VOS0 / H7_PLL1_P == H7_SYSCLK_VOS0_HZ,
               "PLL1 constants do not give H7_SYSCLK_VOS0_HZ from the HSI");
_Static_assert(H7_HSE_HZ / H7_PLL1_M_HSE * H7_PLL1_N_VOS1 / H7_PLL1_P == H7_SYSCLK_VOS1_HZ,
               "PLL1 constants do not give H7_SYSCLK_VOS1_HZ");

#define REG(address) (*(volatile uint32_t *)(address))

/* Cortex-M7 system control block, caches, MPU and DWT (Armv7-M ARM, B3). */
#define SCB_CCR REG(0xE000ED14u)
#define SCB_CCR_DC (1u << 16)
#define SCB_CCR_IC (1u << 17)
#define SCB_CCSIDR REG(0xE000ED80u)
#define SCB_CSSELR REG(0xE000ED84u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_DCISW REG(0xE000EF60u)

#define MPU_CTRL REG(0xE000ED94u)
#define MPU_RNR REG(0xE000ED98u)
#define MPU_RBAR REG(0xE000ED9Cu)
#define MPU_RASR REG(0xE000EDA0u)
#define MPU_CTRL_ENABLE (1u << 0)
#define MPU_CTRL_PRIVDEFENA (1u << 2)

#define DEMCR REG(0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)
#define DWT_LAR_UNLOCK 0xC5ACCE55u
#define DWT_CTRL_CYCCNTENA (1u << 0)

/* PWR (RM0433, chapter "Power control (PWR)"). */
#define PWR_BASE 0x58024800u
#define PWR_CSR1 REG(PWR_BASE + 0x04u)
#define PWR_CR3 REG(PWR_BASE + 0x0Cu)
#define PWR_D3CR REG(PWR_BASE + 0x18u)
#define PWR_CSR1_ACTVOSRDY (1u << 13)
#define PWR_CR3_BYPASS (1u << 0)
#define PWR_CR3_LDOEN (1u << 1)
#define PWR_CR3_SCUEN (1u << 2)
#define PWR_D3CR_VOSRDY (1u << 13)
#define PWR_D3CR_VOS_MASK (3u << 14)
#define PWR_D3CR_VOS1 (3u << 14)

/* SYSCFG_PWRCR ODEN: overdrive, VOS0 on top of VOS1 (RM0433, SYSCFG chapter). */
#define SYSCFG_PWRCR REG(0x58000400u + 0x2Cu)
#define SYSCFG_PWRCR_ODEN (1u << 0)

#define DBGMCU_IDCODE REG(0x5C001000u)

/* RCC (RM0433, chapter "Reset and clock control (RCC)"). */
#define RCC_BASE 0x58024400u
#define RCC_CR REG(RCC_BASE + 0x00u)
#define RCC_CFGR REG(RCC_BASE + 0x10u)
#define RCC_D1CFGR REG(RCC_BASE + 0x18u)
#define RCC_D2CFGR REG(RCC_BASE + 0x1Cu)
#define RCC_D3CFGR REG(RCC_BASE + 0x20u)
#define RCC_PLLCKSELR REG(RCC_BASE + 0x28u)
#define RCC_PLLCFGR REG(RCC_BASE + 0x2Cu)
#define RCC_PLL1DIVR REG(RCC_BASE + 0x30u)
#define RCC_D1CCIPR REG(RCC_BASE + 0x4Cu)
#define RCC_D2CCIP2R REG(RCC_BASE + 0x54u)
#define RCC_AHB3ENR REG(RCC_BASE + 0xD4u)
#define RCC_AHB4ENR REG(RCC_BASE + 0xE0u)
#define RCC_APB4ENR REG(RCC_BASE + 0xF4u)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSEBYP (1u << 18)
#define RCC_CR_PLL1ON (1u << 24)
#define RCC_CR_PLL1RDY (1u << 25)
#define RCC_CFGR_SW_MASK 7u
#define RCC_CFGR_SWS_MASK (7u << 3)
#define RCC_CFGR_SW_PLL1 3u
#define RCC_CFGR_SWS_PLL1 (3u << 3)
#define RCC_PLLSRC_HSI 0u
#define RCC_PLLSRC_HSE 2u
#define RCC_PLLCFGR_DIVP1EN (1u << 16)
#define RCC_PLLCFGR_DIVQ1EN (1u << 17)
#define RCC_PLLCFGR_DIVR1EN (1u << 18)
#define RCC_AHB3ENR_QSPIEN (1u << 14)
#define RCC_APB4ENR_SYSCFGEN (1u << 1)

/* Prescaler field values: /2 is 0b1000 for D1CPRE and HPRE, 0b100 for the APB ones. */
#define RCC_AHB_DIV1 0u
#define RCC_AHB_DIV2 8u
#define RCC_APB_DIV2 4u
_Static_assert(H7_D1CPRE_DIV == 1u && H7_HPRE_DIV == 2u && H7_APB_DIV == 2u,
               "board.c encodes D1CPRE /1, HPRE /2 and APB /2 only");

#define FLASH_ACR REG(0x52002000u)

/* QUADSPI registers (RM0433, chapter "Quad-SPI interface (QUADSPI)"). */
#define QSPI_BASE 0x52005000u
#define QSPI_CR REG(QSPI_BASE + 0x00u)
#define QSPI_DCR REG(QSPI_BASE + 0x04u)
#define QSPI_SR REG(QSPI_BASE + 0x08u)
#define QSPI_FCR REG(QSPI_BASE + 0x0Cu)
#define QSPI_DLR REG(QSPI_BASE + 0x10u)
#define QSPI_CCR REG(QSPI_BASE + 0x14u)
#define QSPI_ABR REG(QSPI_BASE + 0x1Cu)
#define QSPI_DR8 (*(volatile uint8_t *)(QSPI_BASE + 0x20u))
#define QSPI_CR_EN (1u << 0)
#define QSPI_CR_SSHIFT (1u << 4)
#define QSPI_SR_TCF (1u << 1)
#define QSPI_SR_BUSY (1u << 5)
#define QSPI_FCR_ALL 0x1Bu               /* CTOF, CSMF, CTCF, CTEF */
#define QSPI_CCR_IMODE_1 (1u << 8)
#define QSPI_CCR_ADMODE_4 (3u << 10)
#define QSPI_CCR_ADSIZE_24 (2u << 12)
#define QSPI_CCR_ABMODE_4 (3u << 14)
#define QSPI_CCR_ABSIZE_8 (0u << 16)
#define QSPI_CCR_DCYC(n) ((uint32_t)(n) << 18)
#define QSPI_CCR_DMODE_1 (1u << 24)
#define QSPI_CCR_DMODE_4 (3u << 24)
#define QSPI_CCR_FMODE_READ (1u << 26)
#define QSPI_CCR_FMODE_MAPPED (3u << 26)
#define QSPI_WINDOW 0x90000000u

/* W25Q commands: read status register 2, volatile write enable, write status register 2. */
#define NOR_READ_SR2 0x35u
#define NOR_VOLATILE_WREN 0x50u
#define NOR_WRITE_SR2 0x31u
#define NOR_SR2_QE 0x02u

#define GPIO_BASE(port) (0x58020000u + 0x400u * (port))

/* What board_init reached; read by board_cycles_hz, uart.c and a debugger. */
typedef struct {
    uint32_t core_hz;       /* CPU clock */
    uint32_t pclk1_hz;      /* APB1, the USART3 kernel clock */
    uint32_t hclk_hz;       /* AXI/AHB, the QUADSPI kernel clock */
    uint32_t rev_id;        /* DBGMCU_IDCODE REV_ID */
    uint8_t vos;            /* 0 or 1; 3 = reset voltage scale, PLL not started */
    uint8_t hse;            /* 1 when the PLL runs from the HSE */
    uint8_t qspi;           /* 0 not needed, 1 memory-mapped, 2 needed but failed */
} h7_status_t;

volatile h7_status_t h7_status;

/* Bounds of section .rr_external, the part of the image in external flash, from the
 * linker script. They are weak because a script without an external region defines
 * neither, and then both addresses are 0. */
extern const uint8_t __external_start__[] __attribute__((weak));
extern const uint8_t __external_end__[] __attribute__((weak));

static inline void barrier(void)
{
    __asm volatile("dsb\n\tisb" ::: "memory");
}

/*
 * Wait until (*reg & mask) == want, for at most timeout core clock cycles as counted by
 * DWT CYCCNT. The loop also ends after `timeout` iterations (each takes at least one
 * cycle), so it ends even if the counter were stopped. Returns whether the bits matched.
 */
static bool wait_bits(volatile uint32_t *reg, uint32_t mask, uint32_t want, uint32_t timeout)
{
    uint32_t start = DWT_CYCCNT;
    for (uint32_t i = 0u; i < timeout; ++i) {
        if ((*reg & mask) == want) {
            return true;
        }
        if (DWT_CYCCNT - start >= timeout) {
            break;
        }
    }
    return (*reg & mask) == want;
}

static void enable_cycle_counter(void)
{
    /* The Cortex-M7 DWT needs trace enabled and its lock opened before CYCCNT counts. */
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = DWT_LAR_UNLOCK;
    DWT_CYCCNT = 0u;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

/*
 * Supply and voltage scaling (RM0433 PWR chapter, "Power supply configuration" and
 * "Voltage scaling"). The NUCLEO-H743ZI(2) powers VCORE from the internal LDO. PWR_CR3
 * takes one write after power-on; ACTVOSRDY then reports a valid supply. Returns the
 * scale reached: 0 (VOS0), 1 (VOS1) or 3 (left at the reset scale VOS3).
 */
static uint8_t set_voltage_scale(void)
{
    PWR_CR3 = (PWR_CR3 & ~(PWR_CR3_SCUEN | PWR_CR3_BYPASS)) | PWR_CR3_LDOEN;
    if (!wait_bits(&PWR_CSR1, PWR_CSR1_ACTVOSRDY, PWR_CSR1_ACTVOSRDY,
                   H7_TIMEOUT_SHORT_CYCLES)) {
        return 3u;
    }
    PWR_D3CR = (PWR_D3CR & ~PWR_D3CR_VOS_MASK) | PWR_D3CR_VOS1;
    (void)PWR_D3CR;
    if (!wait_bits(&PWR_D3CR, PWR_D3CR_VOSRDY, PWR_D3CR_VOSRDY, H7_TIMEOUT_SHORT_CYCLES)) {
        return 3u;
    }
    /* VOS0 is VOS1 plus the overdrive (SYSCFG_PWRCR ODEN); 480 MHz needs revision V. */
    if (h7_status.rev_id != H7_REV_ID_V) {
        return 1u;
    }
    RCC_APB4ENR |= RCC_APB4ENR_SYSCFGEN;
    (void)RCC_APB4ENR;
    SYSCFG_PWRCR |= SYSCFG_PWRCR_ODEN;
    (void)SYSCFG_PWRCR;
    if (!wait_bits(&PWR_D3CR, PWR_D3CR_VOSRDY, PWR_D3CR_VOSRDY, H7_TIMEOUT_SHORT_CYCLES)) {
        SYSCFG_PWRCR &= ~SYSCFG_PWRCR_ODEN;
        (void)wait_bits(&PWR_D3CR, PWR_D3CR_VOSRDY, PWR_D3CR_VOSRDY, H7_TIMEOUT_SHORT_CYCLES);
        return 1u;
    }
    return 0u;
}

/*
 * HSE in bypass mode: the ST-LINK drives an 8 MHz clock into PH0 (RCC "HSE clock"
 * section). Returns false, with the HSE off again, if HSERDY does not rise in 100 ms,
 * e.g. on a board whose solder bridges take the MCO away.
 */
static bool start_hse_bypass(void)
{
    RCC_CR |= RCC_CR_HSEBYP;
    RCC_CR |= RCC_CR_HSEON;
    if (wait_bits(&RCC_CR, RCC_CR_HSERDY, RCC_CR_HSERDY, H7_TIMEOUT_HSE_CYCLES)) {
        return true;
    }
    RCC_CR &= ~RCC_CR_HSEON;
    (void)wait_bits(&RCC_CR, RCC_CR_HSERDY, 0u, H7_TIMEOUT_SHORT_CYCLES);
    RCC_CR &= ~RCC_CR_HSEBYP;
    return false;
}

/* Start PLL1 for SYSCLK = 2 MHz * n / P (RCC "PLL description"). Returns whether it locked. */
static bool start_pll1(bool hse, uint32_t n)
{
    uint32_t m = hse ? H7_PLL1_M_HSE : H7_PLL1_M_HSI;
    RCC_PLLCKSELR = (RCC_PLLCKSELR & ~((0x3Fu << 4) | 3u)) | (m << 4) |
                    (hse ? RCC_PLLSRC_HSE : RCC_PLLSRC_HSI);
    /* Integer mode (PLL1FRACEN 0), wide VCO (PLL1VCOSEL 0), reference range, outputs on. */
    RCC_PLLCFGR = (RCC_PLLCFGR & ~0xFu & ~(7u << 16)) | (H7_PLL1_RGE << 2) |
                  RCC_PLLCFGR_DIVP1EN | RCC_PLLCFGR_DIVQ1EN | RCC_PLLCFGR_DIVR1EN;
    RCC_PLL1DIVR = (n - 1u) | ((H7_PLL1_P - 1u) << 9) | ((H7_PLL1_Q - 1u) << 16) |
                   ((H7_PLL1_R - 1u) << 24);
    RCC_CR |= RCC_CR_PLL1ON;
    if (wait_bits(&RCC_CR, RCC_CR_PLL1RDY, RCC_CR_PLL1RDY, H7_TIMEOUT_SHORT_CYCLES)) {
        return true;
    }
    RCC_CR &= ~RCC_CR_PLL1ON;
    return false;
}

/*
 * Clock tree: voltage scale first, then HSE (or HSI), PLL1, prescalers, flash wait states
 * and finally the switch of SYSCLK to PLL1. On any failure the core stays on the HSI.
 */
static void init_clocks(void)
{
    h7_status.core_hz = H7_HSI_HZ;
    h7_status.hclk_hz = H7_HSI_HZ;
    h7_status.pclk1_hz = H7_HSI_HZ;
    h7_status.rev_id = DBGMCU_IDCODE >> 16;
    h7_status.vos = set_voltage_scale();
    if (h7_status.vos == 3u) {
        return;
    }
    uint32_t sysclk = h7_status.vos == 0u ? H7_SYSCLK_VOS0_HZ : H7_SYSCLK_VOS1_HZ;
    uint32_t n = h7_status.vos == 0u ? H7_PLL1_N_VOS0 : H7_PLL1_N_VOS1;
    uint32_t latency = h7_status.vos == 0u ? H7_FLASH_LATENCY_VOS0 : H7_FLASH_LATENCY_VOS1;

    bool hse = start_hse_bypass();
    if (!start_pll1(hse, n)) {
        return;
    }
    h7_status.hse = hse ? 1u : 0u;

    /* Prescalers before the switch, so that no bus ever runs above its limit. */
    RCC_D1CFGR = (RCC_AHB_DIV1 << 8) | (RCC_APB_DIV2 << 4) | RCC_AHB_DIV2;
    RCC_D2CFGR = (RCC_APB_DIV2 << 8) | (RCC_APB_DIV2 << 4);
    RCC_D3CFGR = RCC_APB_DIV2 << 4;

    /* Wait states for the new AXI clock; read back before the clock goes up. The reset
     * value (7 WS) is safe for the HSI, so a failed write leaves the HSI running. */
    uint32_t acr = latency | (H7_FLASH_WRHIGHFREQ << 4);
    FLASH_ACR = acr;
    if (!wait_bits(&FLASH_ACR, 0x3Fu, acr, H7_TIMEOUT_SHORT_CYCLES)) {
        return;
    }

    RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL1;
    if (!wait_bits(&RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL1, H7_TIMEOUT_SHORT_CYCLES)) {
        RCC_CFGR &= ~RCC_CFGR_SW_MASK; /* back to the HSI */
        (void)wait_bits(&RCC_CFGR, RCC_CFGR_SWS_MASK, 0u, H7_TIMEOUT_SHORT_CYCLES);
        return;
    }
    h7_status.core_hz = sysclk / H7_D1CPRE_DIV;
    h7_status.hclk_hz = h7_status.core_hz / H7_HPRE_DIV;
    h7_status.pclk1_hz = h7_status.hclk_hz / H7_APB_DIV;
}

/* ---------------------------------------------------------------------------------------
 * MPU (Armv7-M PMSAv7): a higher region number wins where regions overlap. PRIVDEFENA
 * keeps the default map for every address no region covers (DTCM, ITCM, peripherals).
 * ------------------------------------------------------------------------------------- */

#define RASR_XN (1u << 28)
#define RASR_AP_NONE (0u << 24)
#define RASR_AP_RW (3u << 24)
#define RASR_AP_RO (6u << 24)
#define RASR_STRONGLY_ORDERED 0u                          /* TEX 000, C 0, B 0 */
#define RASR_NORMAL_WT ((0u << 19) | (1u << 17))          /* TEX 000, C 1, B 0 */
#define RASR_NORMAL_WBWA ((1u << 19) | (1u << 17) | (1u << 16)) /* TEX 001, C 1, B 1 */
#define RASR_SRD(mask) ((uint32_t)(mask) << 8)
#define RASR_SIZE_LOG2(n) ((uint32_t)((n) - 1u) << 1)
#define RASR_ENABLE 1u

typedef struct {
    uint32_t base;
    uint32_t rasr;
} mpu_region_t;

/* The table in docs/hardware-stm32h7.md, "MPU regions", lists the same rows. */
static const mpu_region_t mpu_regions[] = {
    /* 0, 1: FMC and QSPI windows, no access: stops speculative reads of absent memory. */
    {0x60000000u, RASR_XN | RASR_AP_NONE | RASR_STRONGLY_ORDERED | RASR_SIZE_LOG2(29u)},
    {0x80000000u, RASR_XN | RASR_AP_NONE | RASR_STRONGLY_ORDERED | RASR_SIZE_LOG2(29u)},
    /* 2: internal flash, 2 MB: code and weights, read-only, write-through. */
    {0x08000000u, RASR_AP_RO | RASR_NORMAL_WT | RASR_SIZE_LOG2(21u)},
    /* 3: AXI SRAM, 512 KB: the model arena, normal write-back memory, no code. */
    {0x24000000u, RASR_XN | RASR_AP_RW | RASR_NORMAL_WBWA | RASR_SIZE_LOG2(19u)},
    /* 4: SRAM1-3, 288 KB inside a 512 KB region whose top three 64 KB parts are off. */
    {0x30000000u, RASR_XN | RASR_AP_RW | RASR_NORMAL_WBWA | RASR_SRD(0xE0u) |
                  RASR_SIZE_LOG2(19u)},
    /* 5: SRAM4, 64 KB. */
    {0x38000000u, RASR_XN | RASR_AP_RW | RASR_NORMAL_WBWA | RASR_SIZE_LOG2(16u)},
};
#define MPU_QSPI_REGION 6u /* 0x90000000, enabled by init_qspi only when it works */

static void init_mpu(void)
{
    __asm volatile("dmb" ::: "memory");
    MPU_CTRL = 0u;
    for (uint32_t i = 0u; i < sizeof mpu_regions / sizeof mpu_regions[0]; ++i) {
        MPU_RNR = i;
        MPU_RBAR = mpu_regions[i].base;
        MPU_RASR = mpu_regions[i].rasr | RASR_ENABLE;
    }
    MPU_RNR = MPU_QSPI_REGION;
    MPU_RASR = 0u;
    MPU_CTRL = MPU_CTRL_PRIVDEFENA | MPU_CTRL_ENABLE;
    barrier();
}

/* Open the QSPI window: read-only, write-through cacheable, code allowed. */
static void mpu_enable_qspi(void)
{
    MPU_CTRL = 0u;
    barrier();
    MPU_RNR = MPU_QSPI_REGION;
    MPU_RBAR = QSPI_WINDOW;
    MPU_RASR = RASR_AP_RO | RASR_NORMAL_WT | RASR_SIZE_LOG2(H7_QSPI_SIZE_LOG2) | RASR_ENABLE;
    MPU_CTRL = MPU_CTRL_PRIVDEFENA | MPU_CTRL_ENABLE;
    barrier();
}

/* ---------------------------------------------------------------------------------------
 * Caches: invalidate, then enable (Armv7-M ARM, "Cache maintenance operations").
 * ------------------------------------------------------------------------------------- */

static void enable_caches(void)
{
    barrier();
    SCB_ICIALLU = 0u;
    barrier();
    SCB_CCR |= SCB_CCR_IC;
    barrier();

    /* Data cache: invalidate every line by set and way (CCSIDR gives the geometry). */
    SCB_CSSELR = 0u;
    barrier();
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    uint32_t set_shift = (ccsidr & 7u) + 4u;
    uint32_t way_shift = ways > 1u ? (uint32_t)__builtin_clz(ways - 1u) : 0u;
    for (uint32_t set = 0u; set < sets; ++set) {
        for (uint32_t way = 0u; way < ways; ++way) {
            SCB_DCISW = (ways > 1u ? way << way_shift : 0u) | (set << set_shift);
        }
    }
    barrier();
    SCB_CCR |= SCB_CCR_DC;
    barrier();
}

/* ---------------------------------------------------------------------------------------
 * QUADSPI: indirect commands to set the quad enable bit, then memory-mapped reads.
 * ------------------------------------------------------------------------------------- */

static void qspi_pin(uint32_t spec)
{
    uint32_t port = spec >> 8;
    uint32_t pin = (spec >> 4) & 0xFu;
    uint32_t af = spec & 0xFu;
    uint32_t base = GPIO_BASE(port);
    RCC_AHB4ENR |= 1u << port;
    (void)RCC_AHB4ENR;
    REG(base + 0x00u) = (REG(base + 0x00u) & ~(3u << (2u * pin))) | (2u << (2u * pin));
    REG(base + 0x08u) |= 3u << (2u * pin); /* very high speed */
    uint32_t afr = base + (pin < 8u ? 0x20u : 0x24u);
    uint32_t shift = 4u * (pin & 7u);
    REG(afr) = (REG(afr) & ~(0xFu << shift)) | (af << shift);
}

/* Run one indirect command; `data` is sent (write) or received (read) when non-NULL. */
static bool qspi_command(uint32_t ccr, uint8_t *data, bool read)
{
    if (!wait_bits(&QSPI_SR, QSPI_SR_BUSY, 0u, H7_QSPI_TIMEOUT_CYCLES)) {
        return false;
    }
    QSPI_FCR = QSPI_FCR_ALL;
    QSPI_DLR = 0u; /* one data byte when the command has a data phase */
    QSPI_CCR = ccr | (read ? QSPI_CCR_FMODE_READ : 0u);
    if (data != NULL && !read) {
        QSPI_DR8 = *data;
    }
    if (!wait_bits(&QSPI_SR, QSPI_SR_TCF, QSPI_SR_TCF, H7_QSPI_TIMEOUT_CYCLES)) {
        return false;
    }
    if (data != NULL && read) {
        *data = QSPI_DR8;
    }
    QSPI_FCR = QSPI_FCR_ALL;
    return true;
}

static bool init_qspi(void)
{
    static const uint32_t pins[] = {H7_QSPI_PIN_CLK, H7_QSPI_PIN_NCS, H7_QSPI_PIN_IO0,
                                    H7_QSPI_PIN_IO1, H7_QSPI_PIN_IO2, H7_QSPI_PIN_IO3};
    for (uint32_t i = 0u; i < sizeof pins / sizeof pins[0]; ++i) {
        qspi_pin(pins[i]);
    }
    RCC_D1CCIPR &= ~(3u << 4); /* QSPISEL = rcc_hclk3 */
    RCC_AHB3ENR |= RCC_AHB3ENR_QSPIEN;
    (void)RCC_AHB3ENR;

    /* QSPI clock = HCLK / (PRESCALER + 1), at most H7_QSPI_MAX_HZ. */
    uint32_t prescaler = (h7_status.hclk_hz + H7_QSPI_MAX_HZ - 1u) / H7_QSPI_MAX_HZ - 1u;
    QSPI_CR = 0u;
    QSPI_DCR = ((H7_QSPI_SIZE_LOG2 - 1u) << 16) | (2u << 8); /* FSIZE, CSHT 3 cycles */
    QSPI_CR = (prescaler << 24) | QSPI_CR_SSHIFT | QSPI_CR_EN;

    /* Quad I/O needs the QE bit; set it in the volatile status register (no wear). */
    uint8_t sr2 = 0u;
    if (!qspi_command(QSPI_CCR_IMODE_1 | QSPI_CCR_DMODE_1 | NOR_READ_SR2, &sr2, true)) {
        return false;
    }
    if ((sr2 & NOR_SR2_QE) == 0u) {
        uint8_t value = (uint8_t)(sr2 | NOR_SR2_QE);
        if (!qspi_command(QSPI_CCR_IMODE_1 | NOR_VOLATILE_WREN, NULL, false) ||
            !qspi_command(QSPI_CCR_IMODE_1 | QSPI_CCR_DMODE_1 | NOR_WRITE_SR2, &value, false) ||
            !qspi_command(QSPI_CCR_IMODE_1 | QSPI_CCR_DMODE_1 | NOR_READ_SR2, &sr2, true) ||
            (sr2 & NOR_SR2_QE) == 0u) {
            return false;
        }
    }

    /* Memory-mapped Fast Read Quad I/O: instruction on 1 line, address, mode byte, dummy
     * cycles and data on 4 lines. */
    if (!wait_bits(&QSPI_SR, QSPI_SR_BUSY, 0u, H7_QSPI_TIMEOUT_CYCLES)) {
        return false;
    }
    QSPI_ABR = H7_QSPI_MODE_BYTE;
    QSPI_CCR = QSPI_CCR_FMODE_MAPPED | QSPI_CCR_DMODE_4 | QSPI_CCR_DCYC(H7_QSPI_DUMMY_CYCLES) |
               QSPI_CCR_ABSIZE_8 | QSPI_CCR_ABMODE_4 | QSPI_CCR_ADSIZE_24 | QSPI_CCR_ADMODE_4 |
               QSPI_CCR_IMODE_1 | H7_QSPI_READ_INSTRUCTION;
    mpu_enable_qspi();
    return true;
}

/* Whether the linked image placed anything in the QSPI window (section .rr_external). */
static bool image_uses_qspi(void)
{
    uintptr_t start = (uintptr_t)__external_start__;
    uintptr_t end = (uintptr_t)__external_end__;
    return start >= QSPI_WINDOW && end > start;
}

/* Whether the QSPI part fits the chip that h7_config.h describes. */
static bool image_fits_qspi(void)
{
    /* NOTE: 24-bit addressing reaches 16 MB. A larger chip needs its 4-byte address
     * mode and read instruction, which init_qspi does not set up. */
    return (uintptr_t)__external_end__ - QSPI_WINDOW <= (1u << H7_QSPI_SIZE_LOG2);
}

void board_init(void)
{
    enable_cycle_counter(); /* first: the wait loops below count its cycles */
    init_clocks();
    init_mpu();
    enable_caches();
    board_uart_init();
    /* Without a working QSPI the window stays no-access: the first read of a QSPI weight
     * ends in a fault that main.c reports over the UART, instead of wrong numbers. */
    if (image_uses_qspi()) {
        h7_status.qspi = image_fits_qspi() && init_qspi() ? 1u : 2u;
    }
    DWT_CYCCNT = 0u;
}

uint32_t h7_usart_kernel_hz(void)
{
    return h7_status.pclk1_hz;
}

uint32_t board_cycles(void)
{
    return DWT_CYCCNT;
}

uint32_t board_cycles_hz(void)
{
    return h7_status.core_hz;
}
