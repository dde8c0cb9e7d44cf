/*
 * uart.c: polled driver for USART3 of the STM32H743, which the NUCLEO-H743ZI routes to
 * the ST-LINK virtual COM port on PD8 (TX) and PD9 (RX), alternate function 7.
 *
 * Pipeline stage: run. Target: stm32h7. Register offsets and bits per RM0433. The USART
 * kernel clock is PCLK1 (RCC_D2CCIP2R USART234578SEL = 0): 120 MHz at 480 MHz, 100 MHz at
 * 400 MHz, 64 MHz when board.c stayed on the HSI. BRR is computed from the clock reached.
 */
#include "rr_board.h"

#include "h7_config.h"

#if !defined(RR_UART_BASE) || !defined(RR_UART_BAUD)
#error "RR_UART_BASE or RR_UART_BAUD missing: build with rrgen/toolchain.py"
#endif

#define REG(address) (*(volatile uint32_t *)(address))

#define RCC_BASE 0x58024400u
#define RCC_AHB4ENR REG(RCC_BASE + 0x0E0u)
#define RCC_APB1LENR REG(RCC_BASE + 0x0E8u)
#define RCC_D2CCIP2R REG(RCC_BASE + 0x054u)
#define RCC_D2CCIP2R_USART234578SEL 7u
#define RCC_AHB4ENR_GPIODEN (1u << 3)
#define RCC_APB1LENR_USART3EN (1u << 18)

#define GPIOD_BASE 0x58020C00u
#define GPIOD_MODER REG(GPIOD_BASE + 0x00u)
#define GPIOD_AFRH REG(GPIOD_BASE + 0x24u)

#define USART_CR1 REG((uint32_t)(RR_UART_BASE) + 0x00u)
#define USART_BRR REG((uint32_t)(RR_UART_BASE) + 0x0Cu)
#define USART_ISR REG((uint32_t)(RR_UART_BASE) + 0x1Cu)
#define USART_ICR REG((uint32_t)(RR_UART_BASE) + 0x20u)
#define USART_RDR REG((uint32_t)(RR_UART_BASE) + 0x24u)
#define USART_TDR REG((uint32_t)(RR_UART_BASE) + 0x28u)

#define CR1_UE (1u << 0)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define ISR_ERRORS 0x0Fu /* PE, FE, NE, ORE; cleared through ICR bits 0-3 */
#define ISR_RXNE (1u << 5)
#define ISR_TXE (1u << 7)

/* Oversampling by 16: BRR = kernel clock / baud, rounded. 120 MHz gives 1042 (0.03 %
 * fast), 100 MHz 868 (0.01 %), 64 MHz 556 (0.08 %). */
static uint32_t usart_brr(uint32_t kernel_hz)
{
    return (kernel_hz + (RR_UART_BAUD) / 2u) / (RR_UART_BAUD);
}

void board_uart_init(void)
{
    /* Clocks for GPIOD and USART3; read back so the writes land before the next access. */
    RCC_AHB4ENR |= RCC_AHB4ENR_GPIODEN;
    (void)RCC_AHB4ENR;
    RCC_D2CCIP2R &= ~RCC_D2CCIP2R_USART234578SEL; /* kernel clock: PCLK1 */
    RCC_APB1LENR |= RCC_APB1LENR_USART3EN;
    (void)RCC_APB1LENR;

    /* PD8 and PD9: alternate function mode (0b10), AF7. */
    GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);
    GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;

    /* 8N1, no flow control. */
    USART_CR1 = 0u;
    USART_BRR = usart_brr(h7_usart_kernel_hz());
    USART_CR1 = CR1_UE | CR1_TE | CR1_RE;
}

void board_uart_putc(uint8_t byte)
{
    while ((USART_ISR & ISR_TXE) == 0u) {
    }
    USART_TDR = byte;
}

int board_uart_getc(void)
{
    for (;;) {
        uint32_t status = USART_ISR;
        if ((status & ISR_ERRORS) != 0u) {
            USART_ICR = status & ISR_ERRORS;
        }
        if ((status & ISR_RXNE) != 0u) {
            return (int)(USART_RDR & 0xFFu);
        }
    }
}
