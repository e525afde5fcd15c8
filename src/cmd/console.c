/* The terminal side of a running VM (console.h). */
#include <errno.h>
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
#include <unistd.h>

#include "arch/x86/machine.h"
#include "cmd/console.h"
#include "hw/serial.h"
#include "util/log.h"

void console_block_signals(sigset_t *sigs)
{
	sigemptyset(sigs);
	sigaddset(sigs, SIGINT);
	sigaddset(sigs, SIGTERM);
	sigaddset(sigs, SIGHUP);
	sigaddset(sigs, SIGQUIT);
	pthread_sigmask(SIG_BLOCK, sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void console_inject(struct console *c, const uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		done += serial_inject(c->ser, buf + done, len - done);
		if (done == len)
			break;
		/* The guest is not reading: wait, but give up once the VM stops. */
		serial_flush(c->ser);
		if (poll(&(struct pollfd){.fd = c->stop_fd, .events = POLLIN}, 1, 10) > 0)
			return;
	}
}

/* Terminal input: Ctrl-A x quits, Ctrl-A Ctrl-A is a literal Ctrl-A. */
static void console_keys(struct console *c, const uint8_t *buf, size_t len)
{
	uint8_t out[512];
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		uint8_t k = buf[i];

		if (c->escape) {
			c->escape = false;
			if (k == 'x' || k == 'X') {
				vm_request_stop(c->vm, VM_STOP_USER);
				break;
			}
			if (k != 0x01)
				continue; /* unknown escape: swallowed */
		} else if (k == 0x01) {
			c->escape = true;
			continue;
		}
		out[n++] = k;
	}
	console_inject(c, out, n);
}

static void console_read_input(struct console *c)
{
	uint8_t buf[512];
	ssize_t n = read(c->in_fd, buf, c->tty ? sizeof(buf) : sizeof(buf) / 2);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		c->in_fd = -1; /* EOF: the guest keeps running, it just gets no more input */
		return;
	}
	if (c->tty)
		console_keys(c, buf, (size_t)n);
	else
		console_inject(c, buf, (size_t)n);
}

static void *console_thread(void *arg)
{
	struct console *c = arg;

	for (;;) {
		struct pollfd p[3] = {{.fd = c->stop_fd, .events = POLLIN},
				      {.fd = c->sig_fd, .events = POLLIN},
				      {.fd = c->in_fd, .events = POLLIN}};
		int n = poll(p, c->in_fd >= 0 ? 3 : 2, 20);

		/* Idle or not, push out what the guest wrote without a newline (prompts). */
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
			console_read_input(c);
	}
	serial_flush(c->ser);
	return NULL;
}

int console_start(struct console *c, struct vm *vm, const sigset_t *sigs)
{
	struct x86_machine *m = vm->machine;
	int err;

	memset(c, 0, sizeof(*c));
	c->vm = vm;
	c->ser = m->com1;
	c->in_fd = STDIN_FILENO;
	c->sig_fd = signalfd(-1, sigs, SFD_CLOEXEC);
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (c->sig_fd < 0 || c->stop_fd < 0)
		goto fail;
	if (isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, &c->saved)) {
		struct termios raw = c->saved;

		cfmakeraw(&raw);
		if (!tcsetattr(STDIN_FILENO, TCSANOW, &raw))
			c->tty = true;
	}
	err = pthread_create(&c->thread, NULL, console_thread, c);
	if (err) {
		errno = err;
		goto fail;
	}
	return 0;
fail:
	err = -errno;
	if (c->tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
	if (c->sig_fd >= 0)
		close(c->sig_fd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	return err;
}

void console_stop(struct console *c)
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

/* What tern exits with, and a line saying why when it was not the command's own status. */
int console_exit_code(const struct vm *vm, enum vm_stop_reason why, bool command,
		      const struct console *con)
{
	int status = vm->exit_status;

	switch (why) {
	case VM_STOP_POWEROFF:
		if (status >= 0)
			return status;
		if (!command)
			return 0;
		fprintf(stderr, "tern: the guest powered off without reporting the command's "
				"exit status\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_RESET:
		if (!command) {
			fprintf(stderr, "tern: the guest rebooted; tern does not restart it\n");
			return 0;
		}
		fprintf(stderr, "tern: the guest rebooted before the command finished\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_PANIC:
		fprintf(stderr, "tern: the guest kernel panicked (see the console output above)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_SHUTDOWN:
		fprintf(stderr, "tern: the guest triple-faulted (CPU shutdown)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_USER:
		if (con->got_signal)
			fprintf(stderr, "tern: stopped by signal %d\n", con->got_signal);
		else
			fprintf(stderr, "tern: stopped from the host (Ctrl-A x or the API)\n");
		return EXIT_STOPPED;
	case VM_STOP_ERROR:
	case VM_RUNNING:
		break;
	}
	fprintf(stderr, "tern: the VM stopped on an internal error (see above)\n");
	return 1;
}
