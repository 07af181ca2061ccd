/* Arm semihosting calls for the Cortex-M firmware harness (see ob_semihost.h). */
#include <string.h>

#include "ob_semihost.h"

enum {
    SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_READ = 0x06, SYS_FLEN = 0x0C,
    SYS_GET_CMDLINE = 0x15, SYS_EXIT = 0x18, SYS_EXIT_EXTENDED = 0x20
};
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

static uintptr_t ob_sh_call(uintptr_t op, const void *arg)
{
    register uintptr_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void ob_sh_puts(const char *s) { ob_sh_call(SYS_WRITE0, s); }

int ob_sh_cmdline(char *buf, size_t size)
{
    uintptr_t block[2];
    block[0] = (uintptr_t)buf;
    block[1] = size;
    if (ob_sh_call(SYS_GET_CMDLINE, block) != 0) return -1;
    buf[block[1] < size ? block[1] : size - 1] = '\0';
    return 0;
}

int ob_sh_open(const char *path)
{
    uintptr_t block[3];
    block[0] = (uintptr_t)path;
    block[1] = 1;                       /* "rb" */
    block[2] = strlen(path);
    return (int)ob_sh_call(SYS_OPEN, block);
}

long ob_sh_flen(int fd)
{
    uintptr_t block[1];
    block[0] = (uintptr_t)fd;
    return (long)ob_sh_call(SYS_FLEN, block);
}

size_t ob_sh_read(int fd, void *buf, size_t n)
{
    uintptr_t block[3];
    block[0] = (uintptr_t)fd;
    block[1] = (uintptr_t)buf;
    block[2] = n;
    return (size_t)ob_sh_call(SYS_READ, block);
}

void ob_sh_close(int fd)
{
    uintptr_t block[1];
    block[0] = (uintptr_t)fd;
    ob_sh_call(SYS_CLOSE, block);
}

void ob_sh_exit(int status)
{
    uintptr_t block[2];
    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = (uintptr_t)status;
    ob_sh_call(SYS_EXIT_EXTENDED, block);
    ob_sh_call(SYS_EXIT, (const void *)(uintptr_t)ADP_STOPPED_APPLICATION_EXIT);   /* older hosts */
    for (;;) {
    }
}
