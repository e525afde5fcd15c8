/*
 * A few lines of runtime for tern's freestanding guest helpers (tern-exit,
 * tern-session, tern-spin): raw x86-64 Linux syscalls and a _start that calls
 * guest_main(argc, argv). No libc, so building the guest needs only a C
 * compiler, not a static C library. Guest-side only; never linked into tern.
 */
#ifndef TERN_GUEST_RT_H
#define TERN_GUEST_RT_H

#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_MMAP 9
#define SYS_MUNMAP 11
#define SYS_PREAD64 17
#define SYS_PWRITE64 18
#define SYS_RT_SIGACTION 13
#define SYS_IOCTL 16
#define SYS_FORK 57
#define SYS_EXECVE 59
#define SYS_EXIT 60
#define SYS_WAIT4 61
#define SYS_FSYNC 74
#define SYS_SYSINFO 99
#define SYS_IOPERM 173
#define SYS_CLOCK_GETTIME 228

#define EINTR 4
#define ENOEXEC 8
#define EACCES 13

#define TCSBRK 0x5409 /* with a non-zero argument: tcdrain() */

static inline long syscall3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static inline long syscall4(long nr, long a, long b, long c, long d)
{
	register long r10 __asm__("r10") = d;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

/*
 * tcdrain(): wait until the terminal on fd has transmitted everything
 * written to it (the serial driver's buffer is empty and LSR says the
 * transmitter is idle). Not a terminal: returns at once.
 */
static inline long syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static inline void tty_drain(int fd)
{
	/* Bounded: a signal that keeps interrupting must not hold the exit forever. */
	for (int tries = 0; tries < 16; tries++)
		if (syscall3(SYS_IOCTL, fd, TCSBRK, 1) != -EINTR)
			break;
}

static inline unsigned long str_len(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	return n;
}

static inline void put_fd(int fd, const char *s)
{
	syscall3(SYS_WRITE, fd, (long)s, (long)str_len(s));
}

static inline void put_ulong(int fd, unsigned long v)
{
	char buf[24];
	int i = (int)sizeof(buf) - 1;

	buf[i] = '\0';
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 0);
	put_fd(fd, buf + i);
}

/* Strict decimal up to max: a typo must not turn into a plausible value. */
static inline int parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v > (max - (unsigned long)(*s - '0')) / 10)
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	*out = v;
	return 0;
}

int guest_main(long argc, char **argv);

/* Called from _start with the initial stack: argc, then argv. */
__attribute__((used, noreturn)) void rt_start(long *sp)
{
	syscall3(SYS_EXIT, guest_main(sp[0], (char **)(sp + 1)), 0, 0);
	__builtin_unreachable();
}

__asm__(".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call rt_start\n"
	"	hlt\n");

#endif
