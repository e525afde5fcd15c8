/*
 * tern restore: resume a VM from a snapshot where it stopped, with its
 * serial console on this terminal, and exit like tern run does.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "arch/x86/machine.h"
#include "cmd/cmd.h"
#include "hw/serial.h"
#include "state/identity.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"
#include "util/log.h"
#include "vmm/vm.h"

#define EXIT_USAGE 2
#define EXIT_GUEST_FAILED 3
#define EXIT_STOPPED 130

struct rcon {
	struct vm *vm;
	struct serial *ser;
	int in_fd, sig_fd, stop_fd;
	bool tty, escape;
	int got_signal;
	struct termios saved;
	pthread_t thread;
};

static void restore_usage(FILE *f)
{
	fprintf(
	    f, "usage: tern restore [options] STATEFILE\n"
	       "\n"
	       "Resume a VM from a snapshot (see 'tern snapshot'), exactly where it stopped,\n"
	       "with its console on this terminal (Ctrl-A x quits). Guest memory is mapped\n"
	       "copy-on-write from the memory file, which is never modified.\n"
	       "\n"
	       "options:\n"
	       "  --mem PATH     the memory file (default: STATEFILE with .mem for its extension)\n"
	       "  --clone-index N  start it as clone N (a new VM id; see 'tern clone')\n"
	       "  --disk PATH    use PATH for the snapshot's next disk (a copy-on-write overlay\n"
	       "                 of it, or the disk itself for a read-only one); give one\n"
	       "                 per disk of the snapshot, in order\n"
	       "  -v, --verbose  more messages (with the time the restore took)\n"
	       "  -h, --help     this text\n"
	       "\n"
	       "exit status: as 'tern run': the guest command's status; 2 bad arguments or a\n"
	       "snapshot that cannot be restored; 1 tern failed; 3 the guest failed; 130\n"
	       "stopped from the host.\n");
}

static void rcon_inject(struct rcon *c, const uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		done += serial_inject(c->ser, buf + done, len - done);
		if (done == len)
			break;
		serial_flush(c->ser);
		if (poll(&(struct pollfd){.fd = c->stop_fd, .events = POLLIN}, 1, 10) > 0)
			return;
	}
}

/* Terminal keys: Ctrl-A x quits, Ctrl-A Ctrl-A is a literal Ctrl-A. */
static void rcon_keys(struct rcon *c, const uint8_t *buf, size_t len)
{
	uint8_t out[512];
	size_t n = 0;

	for (size_t i = 0; i < len && i < sizeof(out); i++) {
		if (c->escape) {
			c->escape = false;
			if (buf[i] == 'x' || buf[i] == 'X') {
				vm_request_stop(c->vm, VM_STOP_USER);
				break;
			}
			if (buf[i] != 0x01)
				continue;
		} else if (buf[i] == 0x01) {
			c->escape = true;
			continue;
		}
		out[n++] = buf[i];
	}
	rcon_inject(c, out, n);
}

static void rcon_input(struct rcon *c)
{
	uint8_t buf[512];
	ssize_t n = read(c->in_fd, buf, sizeof(buf));

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		c->in_fd = -1; /* EOF: the guest runs on without input */
		return;
	}
	if (c->tty)
		rcon_keys(c, buf, (size_t)n);
	else
		rcon_inject(c, buf, (size_t)n);
}

static void *rcon_thread(void *arg)
{
	struct rcon *c = arg;

	for (;;) {
		struct pollfd p[3] = {{.fd = c->stop_fd, .events = POLLIN},
				      {.fd = c->sig_fd, .events = POLLIN},
				      {.fd = c->in_fd, .events = POLLIN}};
		int n = poll(p, c->in_fd >= 0 ? 3 : 2, 20);

		serial_flush(c->ser);
		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0)
			continue;
		if (p[0].revents)
			break;
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(c->sig_fd, &si, sizeof(si)) == sizeof(si))
				c->got_signal = (int)si.ssi_signo;
			vm_request_stop(c->vm, VM_STOP_USER);
		}
		if (c->in_fd >= 0 && (p[2].revents & (POLLIN | POLLHUP | POLLERR)))
			rcon_input(c);
	}
	serial_flush(c->ser);
	return NULL;
}

static int rcon_start(struct rcon *c, struct vm *vm, const sigset_t *sigs)
{
	struct x86_machine *m = vm->machine;
	int err;

	memset(c, 0, sizeof(*c));
	c->vm = vm;
	c->ser = m->com1;
	c->in_fd = STDIN_FILENO;
	c->sig_fd = signalfd(-1, sigs, SFD_CLOEXEC);
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (c->sig_fd < 0 || c->stop_fd < 0) {
		err = -errno;
		goto fail;
	}
	if (isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, &c->saved)) {
		struct termios raw = c->saved;

		cfmakeraw(&raw);
		c->tty = !tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	}
	err = -pthread_create(&c->thread, NULL, rcon_thread, c);
	if (!err)
		return 0;
	if (c->tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
fail:
	if (c->sig_fd >= 0)
		close(c->sig_fd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	return err;
}

static void rcon_stop(struct rcon *c)
{
	uint64_t one = 1;

	if (write(c->stop_fd, &one, sizeof(one)) != sizeof(one))
		pr_warn("console: cannot signal the console thread");
	pthread_join(c->thread, NULL);
	if (c->tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
	close(c->sig_fd);
	close(c->stop_fd);
}

/* The same statuses as tern run (docs/cli.md). */
static int restore_exit_code(struct vm *vm, enum vm_stop_reason why, const struct rcon *c)
{
	switch (why) {
	case VM_STOP_POWEROFF:
		return vm->exit_status >= 0 ? vm->exit_status : 0;
	case VM_STOP_RESET:
		fprintf(stderr, "tern: the guest rebooted; tern does not restart it\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_PANIC:
		fprintf(stderr, "tern: the guest kernel panicked (see the console output above)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_SHUTDOWN:
		fprintf(stderr, "tern: the guest triple-faulted (CPU shutdown)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_USER:
		if (c->got_signal)
			fprintf(stderr, "tern: stopped by signal %d\n", c->got_signal);
		else
			fprintf(stderr, "tern: stopped (Ctrl-A x)\n");
		return EXIT_STOPPED;
	case VM_STOP_ERROR:
	case VM_RUNNING:
		break;
	}
	fprintf(stderr, "tern: the VM stopped on an internal error (see above)\n");
	return 1;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static int restore_run(const struct snapshot_restore_cfg *cfg, const struct timespec *t0)
{
	struct rcon con;
	sigset_t sigs;
	struct vm vm;
	char why[512] = "";
	int err, rc;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGQUIT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	err = snapshot_restore(&vm, cfg, why, sizeof(why));
	if (err) {
		fprintf(stderr, "tern restore: %s; nothing was started\n", why);
		return EXIT_USAGE;
	}
	err = rcon_start(&con, &vm, &sigs);
	if (err) {
		fprintf(stderr, "tern restore: cannot start the console: %s\n", strerror(-err));
		vm_destroy(&vm);
		return 1;
	}
	err = vm_start(&vm);
	if (!err)
		pr_info("restored: the guest runs again %.1f ms after tern started", ms_since(t0));
	rc = restore_exit_code(&vm, vm_wait(&vm), &con);
	rcon_stop(&con);
	if (err) {
		fprintf(stderr, "tern restore: cannot start the vCPUs: %s\n", strerror(-err));
		rc = 1;
	}
	vm_destroy(&vm);
	return rc;
}

static int usage(const char *msg, const char *arg)
{
	fprintf(stderr, "tern restore: %s '%s'; see 'tern restore --help'\n", msg, arg);
	return EXIT_USAGE;
}

static int parse_index(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v >= IDENTITY_NOT_A_CLONE)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int cmd_restore(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"mem", required_argument, NULL, 'm'},  {"clone-index", required_argument, NULL, 'c'},
	    {"disk", required_argument, NULL, 'd'}, {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	struct snapshot_restore_cfg cfg = {.console_fd = STDOUT_FILENO};
	const char *disks[MACHINE_MAX_DISKS];
	struct timespec t0;
	int c, verbose = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			cfg.mem_path = optarg;
			break;
		case 'c':
			if (parse_index(optarg, &cfg.clone_index))
				return usage("--clone-index: give a number below 4294967295, not",
					     optarg);
			cfg.clone = true;
			break;
		case 'd':
			if (cfg.ndisk_paths == MACHINE_MAX_DISKS)
				return usage("at most 16 disks:", optarg);
			disks[cfg.ndisk_paths++] = optarg;
			cfg.disk_paths = disks;
			break;
		case 'v':
			verbose++;
			break;
		case 'h':
			restore_usage(stdout);
			return 0;
		default:
			fprintf(stderr,
				"tern restore: unknown option or missing value: '%s'; see "
				"'tern restore --help'\n",
				argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "tern restore: give exactly one STATEFILE; see 'tern restore "
				"--help'\n");
		return EXIT_USAGE;
	}
	cfg.state_path = argv[optind];
	if (verbose)
		log_set_level(verbose > 1 ? LOG_DEBUG : LOG_INFO);
	return restore_run(&cfg, &t0);
}
