/* onebit bare-metal harness for Cortex-M (runs in qemu-system-arm with semihosting).
 *
 * Reads raw uint8 CHW images (ONEBIT_INPUT_BYTES each, the CIFAR-10 binary layout without labels) from a
 * host file through semihosting, classifies them one at a time with the static arena and weights, and
 * prints one line per image:
 *     <index> <predicted class> <logit 0> ... <logit K-1> ticks <SysTick ticks of this image>
 * integer modes: the integer logits (real value = logit * ONEBIT_LOGIT_SCALE); float mode: the IEEE bits of
 * each float32 logit in hexadecimal, so the host can compare them bit for bit. A last line gives the
 * totals, the arena and the stack's high-water mark. Exit status 0, or 1 with a message on bad input.
 *
 * The arena is sized for the one mode this firmware is built for (OB_FIRMWARE_MODE = ONEBIT_INT,
 * ONEBIT_INT8 or ONEBIT_FLOAT). Timing: SysTick counts processor clock ticks (24-bit, wraps counted by its interrupt);
 * under qemu -icount shift=0 every executed instruction advances the emulated clock by 1 ns, so
 * instructions = ticks * 1e9 / clock (see `--tick-check`). These are emulated counts, not cycles.
 *
 * Command line (qemu -semihosting-config enable=on,target=native,arg=onebit,arg=FILE):
 *     FILE            classify every image of FILE
 *     --tick-check N  run a loop of exactly 2*N+c instructions and print its ticks (timer calibration)
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "onebit.h"
#include "ob_semihost.h"

#ifndef OB_FIRMWARE_MODE
#define OB_FIRMWARE_MODE ONEBIT_INT
#endif
#if OB_FIRMWARE_MODE == ONEBIT_INT
#if !ONEBIT_HAS_INT
#error "integer-mode firmware needs an export with --calibrate"
#endif
#define OB_ARENA ONEBIT_ARENA_BYTES_I
#define OB_INTEGER 1
#define OB_MODE_NAME "int"
#define OB_KERNELS onebit_kernel_name()
#elif OB_FIRMWARE_MODE == ONEBIT_INT8
#if !ONEBIT_HAS_INT8
#error "8-bit firmware needs an export with --calibrate (and a multiple of 4 channels into every convolution)"
#endif
#define OB_ARENA ONEBIT_ARENA_BYTES_8
#define OB_INTEGER 1
#define OB_MODE_NAME "int8"
#define OB_KERNELS onebit_kernel8_name()
#else
#define OB_ARENA ONEBIT_ARENA_BYTES_F
#define OB_INTEGER 0
#define OB_MODE_NAME "float"
#define OB_KERNELS onebit_kernel_name()
#endif

uint32_t ob_stack_used(void);

static unsigned char ob_arena[OB_ARENA] __attribute__((aligned(16)));
static uint8_t ob_image[ONEBIT_INPUT_BYTES];

/* ---- SysTick: 24-bit down counter on the processor clock, wraps counted in its interrupt ---- */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
static volatile uint32_t ob_wraps;

void ob_systick_handler(void) { ob_wraps++; }

static void ob_timer_start(void)
{
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u;                      /* enable, interrupt on wrap, processor clock */
}

static uint64_t ob_ticks(void)
{
    uint32_t w, v;
    do {
        w = ob_wraps;
        v = SYST_CVR;
    } while (w != ob_wraps);
    return ((uint64_t)w << 24) + (0xFFFFFFu - v);
}

/* ---- text output without stdio ---- */
static char ob_line[64 + ONEBIT_NUM_CLASSES * 12];
static size_t ob_len;

static void ob_put(const char *s) { while (*s && ob_len + 1 < sizeof ob_line) ob_line[ob_len++] = *s++; }

static void ob_put_u64(uint64_t v)
{
    char buf[24];
    int i = 23;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    ob_put(buf + i);
}

static void ob_put_i64(int64_t v)
{
    if (v < 0) {
        ob_put("-");
        ob_put_u64((uint64_t)(-(v + 1)) + 1u);
    } else {
        ob_put_u64((uint64_t)v);
    }
}

#if !OB_INTEGER
static void ob_put_hex32(uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[11];
    int i;
    buf[0] = '0';
    buf[1] = 'x';
    for (i = 0; i < 8; i++) buf[2 + i] = digits[(v >> (28 - 4 * i)) & 15u];
    buf[10] = '\0';
    ob_put(buf);
}
#endif

static void ob_flush(void)
{
    ob_line[ob_len++] = '\n';
    ob_line[ob_len] = '\0';
    ob_sh_puts(ob_line);
    ob_len = 0;
}

static int ob_fail(const char *what, const char *detail)
{
    ob_put("onebit_mcu: ");
    ob_put(what);
    ob_put(detail);
    ob_flush();
    return 1;
}

/* ---- command line ---- */
static char ob_cmdline[256];

static int ob_args(char **argv, int max)
{
    int argc = 0;
    char *p = ob_cmdline;
    if (ob_sh_cmdline(ob_cmdline, sizeof ob_cmdline) != 0) return 0;
    while (*p && argc < max) {
        while (*p == ' ') *p++ = '\0';
        if (!*p) break;
        argv[argc++] = p;
        while (*p && *p != ' ') p++;
    }
    return argc;
}

static uint32_t ob_parse_u32(const char *s)
{
    uint32_t v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10u + (uint32_t)(*s++ - '0');
    return v;
}

static int ob_tick_check(uint32_t n)
{
    uint64_t t0, t1;
    uint32_t i = n;
    t0 = ob_ticks();
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(i) :: "cc");
    t1 = ob_ticks();
    ob_put("tick-check loop_instructions ");
    ob_put_u64(2u * (uint64_t)n);
    ob_put(" ticks ");
    ob_put_u64(t1 - t0);
    ob_flush();
    return 0;
}

int main(void)
{
    char *argv[8];
    const int argc = ob_args(argv, 8);
    const char *path = argc >= 2 ? argv[argc - 1] : "images.bin";
    float logits[ONEBIT_NUM_CLASSES];
    int32_t lq[ONEBIT_NUM_CLASSES];
    uint64_t total = 0;
    long n, count, flen;
    int fd, c;
    ob_timer_start();
    if (argc >= 3 && strcmp(argv[argc - 2], "--tick-check") == 0) return ob_tick_check(ob_parse_u32(argv[argc - 1]));
    fd = ob_sh_open(path);
    if (fd < 0) return ob_fail("cannot open ", path);
    flen = ob_sh_flen(fd);
    if (flen <= 0 || flen % (long)ONEBIT_INPUT_BYTES) return ob_fail("not a whole number of images: ", path);
    count = flen / (long)ONEBIT_INPUT_BYTES;
    for (n = 0; n < count; n++) {
        uint64_t t0, t1;
        int rc, pred = 0;
        if (ob_sh_read(fd, ob_image, sizeof ob_image) != 0) return ob_fail("read failed: ", path);
        t0 = ob_ticks();
#if OB_INTEGER
        rc = onebit_run(OB_FIRMWARE_MODE, ob_image, 1, NULL, lq, ob_arena, sizeof ob_arena, 1);
#else
        rc = onebit_run(ONEBIT_FLOAT, ob_image, 1, logits, NULL, ob_arena, sizeof ob_arena, 1);
#endif
        t1 = ob_ticks();
        total += t1 - t0;
        if (rc != ONEBIT_OK) return ob_fail("inference failed", "");
        ob_put_i64(n);
        for (c = 1; c < ONEBIT_NUM_CLASSES; c++) {
#if OB_INTEGER
            if (lq[c] > lq[pred]) pred = c;
#else
            if (logits[c] > logits[pred]) pred = c;
#endif
        }
        ob_put(" ");
        ob_put_i64(pred);
        for (c = 0; c < ONEBIT_NUM_CLASSES; c++) {
            ob_put(" ");
#if OB_INTEGER
            ob_put_i64(lq[c]);
#else
            {
                uint32_t bits;
                memcpy(&bits, &logits[c], sizeof bits);
                ob_put_hex32(bits);
            }
#endif
        }
        ob_put(" ticks ");
        ob_put_u64(t1 - t0);
        ob_flush();
    }
    ob_sh_close(fd);
    ob_put("done images ");
    ob_put_i64(count);
    ob_put(" ticks ");
    ob_put_u64(total);
    ob_put(" mode ");
    ob_put(OB_MODE_NAME);
    ob_put(" kernels ");
    ob_put(OB_KERNELS);
    ob_put(" arena_bytes ");
    ob_put_u64(sizeof ob_arena);
    ob_put(" stack_used ");
    ob_put_u64(ob_stack_used());
    ob_flush();
    (void)logits;
    (void)lq;
    return 0;
}
