/*
 * tern-exit: hand the guest command's exit status to the VMM.
 *
 * usage: tern-exit STATUS        (STATUS is 0..255)
 *
 * Writes STATUS as one byte to tern's exit device (I/O port TERN_EXIT_PORT,
 * see docs/guest-interface.md). The default guest's kernel is built without
 * /dev/port, so busybox alone cannot reach an I/O port; this program asks
 * the kernel for that one port with ioperm(2) and writes it directly.
 *
 * It is freestanding (no libc, raw syscalls) so that building the guest
 * needs only a C compiler, not a static C library. It runs inside the guest
 * only and is never linked into tern.
 */
#include "arch/x86/layout.h"

#define SYS_WRITE 1
#define SYS_IOPERM 173
#define SYS_EXIT 60

static long syscall3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static unsigned long str_len(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	return n;
}

static void say(const char *s)
{
	syscall3(SYS_WRITE, 2, (long)s, (long)str_len(s));
}

/* Strict decimal 0..255: a typo must not turn into a plausible status. */
static int parse_status(const char *s)
{
	int v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > 255)
			return -1;
	}
	return v;
}

static int run(long argc, char **argv)
{
	int status;
	long err;

	if (argc != 2) {
		say("usage: tern-exit STATUS (0..255)\n");
		return 2;
	}
	status = parse_status(argv[1]);
	if (status < 0) {
		say("tern-exit: STATUS must be a number from 0 to 255\n");
		return 2;
	}
	err = syscall3(SYS_IOPERM, TERN_EXIT_PORT, 1, 1);
	if (err < 0) {
		say("tern-exit: ioperm failed (not root?)\n");
		return 1;
	}
	__asm__ volatile("outb %b0, %w1"
			 :
			 : "a"((unsigned char)status), "Nd"((unsigned short)TERN_EXIT_PORT));
	return 0;
}

/* Called from _start with the initial stack: argc, then argv. */
__attribute__((used, noreturn)) void tern_exit_main(long *sp)
{
	syscall3(SYS_EXIT, run(sp[0], (char **)(sp + 1)), 0, 0);
	__builtin_unreachable();
}

__asm__(".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call tern_exit_main\n"
	"	hlt\n");
