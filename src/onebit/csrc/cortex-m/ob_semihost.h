/* Arm semihosting (the debugger / emulator services a bare-metal program reaches with BKPT 0xAB):
 * console output, file input and the exit status. Only the firmware harness uses it; the onebit library
 * itself needs no I/O at all. See Arm "Semihosting for AArch32 and AArch64", version 2. */
#ifndef OB_SEMIHOST_H
#define OB_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/* Write a NUL-terminated string to the host console (SYS_WRITE0). */
void ob_sh_puts(const char *s);
/* The command line given to the emulator (qemu: -semihosting-config ...,arg=...); 0 on success. */
int ob_sh_cmdline(char *buf, size_t size);
/* Open a host file for binary reading; returns a handle >= 0 or -1. */
int ob_sh_open(const char *path);
/* Length of an open file in bytes, or -1. */
long ob_sh_flen(int fd);
/* Read exactly `n` bytes; returns the number of bytes NOT read (0 = all read). */
size_t ob_sh_read(int fd, void *buf, size_t n);
void ob_sh_close(int fd);
/* End the program with `status` as the emulator's exit status (SYS_EXIT_EXTENDED). */
void ob_sh_exit(int status) __attribute__((noreturn));

#endif
