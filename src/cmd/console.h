/*
 * The terminal side of a running VM, shared by tern run and tern restore:
 * stdin goes to the guest's serial port (raw mode on a terminal, Ctrl-A x
 * quits, Ctrl-A Ctrl-A sends Ctrl-A), signals stop the VM, guest output is
 * flushed; and the mapping from why the VM stopped to tern's exit status.
 */
#ifndef TERN_CMD_CONSOLE_H
#define TERN_CMD_CONSOLE_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <termios.h>

#include "vmm/vm.h"

#define EXIT_USAGE 2
#define EXIT_GUEST_FAILED 3 /* panic, reboot, triple fault, no status reported */
#define EXIT_STOPPED 130    /* stopped from the host: Ctrl-A x, the API, a signal */

struct serial;

struct console {
	struct vm *vm;
	struct serial *ser;
	int in_fd;   /* -1 after EOF */
	bool tty;    /* in_fd is a terminal we put in raw mode */
	bool escape; /* last key was Ctrl-A */
	int sig_fd, stop_fd;
	int got_signal;
	pthread_t thread;
	struct termios saved;
};

/*
 * Block the signals the console thread turns into a stop (every thread
 * created afterwards inherits the mask) and ignore SIGPIPE.
 */
void console_block_signals(sigset_t *sigs);
/* Start the console thread on vm's COM1; 0 or -errno. */
int console_start(struct console *c, struct vm *vm, const sigset_t *sigs);
/* Stop it and restore the terminal. */
void console_stop(struct console *c);

/*
 * tern's exit status for a VM that stopped for `why`, printing a line when it
 * is not the guest command's own status (docs/cli.md). command: the guest was
 * given a command, so powering off or rebooting without a status is a failure.
 */
int console_exit_code(const struct vm *vm, enum vm_stop_reason why, bool command,
		      const struct console *c);

#endif
