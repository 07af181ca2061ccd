/* Reset code and vector table for the Cortex-M firmware (any ARMv7-M / ARMv8-M Mainline core).
 *
 * Reset: copy .data from flash, zero .bss, fill the stack with a pattern (so the harness can report the
 * stack's high-water mark), enable the FPU when the build uses one, run main() and end the emulation
 * with its return value as the exit status (semihosting). Faults end it with status 3.
 * The memory map comes from the board's linker script (boards/<board>.ld). */
#include <stdint.h>

#include "ob_semihost.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];
int main(void);
void ob_systick_handler(void);

#define OB_STACK_PAINT 0x5AA5C33Cu
#define OB_CPACR (*(volatile uint32_t *)0xE000ED88u)

void ob_reset_handler(void) __attribute__((noreturn));

void ob_reset_handler(void)
{
    uint32_t *p, *q, *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = __stack_bottom; p < sp - 16;) *p++ = OB_STACK_PAINT;   /* below this frame */
    for (p = __data_start, q = __data_load; p < __data_end;) *p++ = *q++;
    for (p = __bss_start; p < __bss_end;) *p++ = 0;
#if defined(__ARM_FP)
    OB_CPACR |= 0xFu << 20;            /* CP10, CP11: full access to the FPU */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    ob_sh_exit(main());
}

/* Bytes of stack used so far (highest point reached since reset). */
uint32_t ob_stack_used(void)
{
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == OB_STACK_PAINT) p++;
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

static void ob_fault_handler(void)
{
    ob_sh_puts("onebit firmware: fault (hard fault, bus fault or an unexpected interrupt)\n");
    ob_sh_exit(3);
}

typedef void (*ob_vector)(void);

__attribute__((section(".vectors"), used)) const ob_vector ob_vectors[16] = {
    (ob_vector)(uintptr_t)__stack_top,  /* initial stack pointer */
    ob_reset_handler,
    ob_fault_handler,                   /* NMI */
    ob_fault_handler,                   /* HardFault */
    ob_fault_handler,                   /* MemManage */
    ob_fault_handler,                   /* BusFault */
    ob_fault_handler,                   /* UsageFault */
    0, 0, 0, 0,
    ob_fault_handler,                   /* SVCall */
    ob_fault_handler,                   /* DebugMonitor */
    0,
    ob_fault_handler,                   /* PendSV */
    ob_systick_handler,                 /* SysTick */
};
