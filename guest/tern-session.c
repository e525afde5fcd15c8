/*
 * tern-session: lead the guest command's session, and end it only once the
 * command's output has left through the serial port.
 *
 * usage: tern-session CMD [ARG...]      (as a session leader: setsid cttyhack)
 *
 * When a session leader exits, the kernel hangs up its controlling terminal
 * (disassociate_ctty -> tty_vhangup_session), and a hangup discards what the
 * tty driver has not transmitted yet (tty_ldisc_hangup -> uart_flush_buffer).
 * The 8250 driver moves bytes from its buffer to the UART only in its THRE
 * interrupt handler, which may run on another CPU, and on an emulated or
 * busy host much later than the write. A command that leads its session and
 * exits right after its last write therefore loses that output now and then,
 * and a tcdrain() afterwards has nothing left to wait for.
 *
 * So this program leads the session in the command's place: it runs CMD as
 * its child in its own process group (the terminal's foreground group, so
 * Ctrl-C and friends reach CMD as before), waits for it, waits until the
 * terminal has sent everything (tcdrain), and only then exits, with CMD's
 * status: its exit code, or 128 + N if signal N ended it (as a shell says).
 * CMD is looked up in PATH like execvp(3) does; not found is 127, found but
 * not executable 126.
 */
#include "rt.h"

#define SIGINT 2
#define SIGQUIT 3
#define SIGTSTP 20
#define SIGTTIN 21
#define SIGTTOU 22

#define SIG_DFL 0ul
#define SIG_IGN 1ul

#define ENOENT 2
#define ENOTDIR 20

#define DEFAULT_PATH "/usr/sbin:/usr/bin:/sbin:/bin"
#define PATH_BUF 4096

/* The kernel's struct sigaction on x86-64 (not libc's). */
struct k_sigaction {
	unsigned long handler;
	unsigned long flags;
	unsigned long restorer;
	unsigned long mask;
};

/*
 * Signals the leader must survive while it waits: the terminal sends them to
 * the whole foreground group, the leader included. SIGTTOU also lets the
 * drain proceed if CMD left another process group in the foreground.
 */
static const int held_signals[] = {SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU};

static void set_held_signals(unsigned long handler)
{
	struct k_sigaction sa = {.handler = handler};

	for (unsigned i = 0; i < sizeof(held_signals) / sizeof(held_signals[0]); i++)
		syscall4(SYS_RT_SIGACTION, held_signals[i], (long)&sa, 0, sizeof(sa.mask));
}

static int has_slash(const char *s)
{
	for (; *s; s++)
		if (*s == '/')
			return 1;
	return 0;
}

static const char *env_path(char **envp)
{
	for (; *envp; envp++) {
		const char *e = *envp;

		if (e[0] == 'P' && e[1] == 'A' && e[2] == 'T' && e[3] == 'H' && e[4] == '=')
			return e + 5;
	}
	return DEFAULT_PATH;
}

/*
 * execve() file with argv (argv[-1] is writable: it is our own argv[0]). A
 * file the kernel cannot execute (a script without #!) runs under /bin/sh,
 * as execvp(3) does. Returns only on failure, with the negative errno.
 */
static long try_exec(const char *file, char **argv, char **envp)
{
	long err = syscall3(SYS_EXECVE, (long)file, (long)argv, (long)envp);

	if (err == -ENOEXEC) {
		const char *name = argv[0];

		argv[-1] = "sh";
		argv[0] = (char *)file;
		syscall3(SYS_EXECVE, (long)"/bin/sh", (long)(argv - 1), (long)envp);
		argv[0] = (char *)name;
	}
	return err;
}

/* Copy dir "/" name into buf; 0 if it does not fit. */
static int join_path(char *buf, const char *dir, unsigned long dlen, const char *name)
{
	unsigned long nlen = str_len(name), n = 0;

	if (dlen + 1 + nlen + 1 > PATH_BUF)
		return 0;
	for (unsigned long i = 0; i < dlen; i++)
		buf[n++] = dir[i];
	buf[n++] = '/';
	for (unsigned long i = 0; i <= nlen; i++)
		buf[n++] = name[i];
	return 1;
}

/* execvp(3)'s search. Returns only on failure: the status a shell reports. */
static int exec_cmd(char **argv, char **envp)
{
	char buf[PATH_BUF];
	const char *name = argv[0], *p;
	int denied = 0;
	long err;

	if (!*name)
		return 127;
	if (has_slash(name)) {
		err = try_exec(name, argv, envp);
		return err == -ENOENT || err == -ENOTDIR ? 127 : 126;
	}
	for (p = env_path(envp);; p++) {
		const char *end = p;

		while (*end && *end != ':')
			end++;
		/* An empty PATH entry means the current directory. */
		if (end == p ? join_path(buf, ".", 1, name)
			     : join_path(buf, p, (unsigned long)(end - p), name)) {
			err = try_exec(buf, argv, envp);
			if (err == -EACCES)
				denied = 1;
			else if (err != -ENOENT && err != -ENOTDIR)
				return 126;
		}
		if (!*end)
			break;
		p = end;
	}
	return denied ? 126 : 127;
}

static void report_exec_failure(const char *name, int status)
{
	put_fd(2, "tern-session: ");
	put_fd(2, name);
	put_fd(2, status == 127 ? ": not found\n" : ": cannot execute\n");
}

/* The status a shell shows for a wait4() result. */
static int shell_status(int st)
{
	if ((st & 0x7f) == 0)
		return (st >> 8) & 0xff;
	return 128 + (st & 0x7f);
}

int guest_main(long argc, char **argv)
{
	char **envp = argv + argc + 1;
	long pid, r;
	int st = 0, status;

	if (argc < 2) {
		put_fd(2, "usage: tern-session CMD [ARG...]\n");
		return 2;
	}
	/* Held before the fork, so no window in which Ctrl-C ends the leader. */
	set_held_signals(SIG_IGN);
	pid = syscall3(SYS_FORK, 0, 0, 0);
	if (pid == 0) {
		set_held_signals(SIG_DFL);
		status = exec_cmd(argv + 1, envp);
		report_exec_failure(argv[1], status);
		return status;
	}
	if (pid < 0) {
		put_fd(2, "tern-session: fork failed\n");
		return 127;
	}
	do
		r = syscall4(SYS_WAIT4, pid, (long)&st, 0, 0);
	while (r == -EINTR);
	status = r == pid ? shell_status(st) : 127;
	/* What CMD wrote may still wait for the UART: send it before the hangup can drop it. */
	tty_drain(1);
	tty_drain(2);
	return status;
}
