/*
 * tern run: boot a guest, connect its serial console to this terminal, and
 * exit with the status of the command it ran (see docs/cli.md).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "arch/x86/machine.h"
#include "cmd/cmd.h"
#include "cmd/console.h"
#include "cmd/vmopts.h"
#include "state/machine_desc.h"
#include "hw/serial.h"
#include "util/log.h"
#include "vmm/vm.h"

static void run_usage(FILE *f)
{
	fprintf(f, "usage: tern run [options] [-- COMMAND [ARGS...]]\n"
		   "\n"
		   "Boot a Linux guest. With a COMMAND, run it in the guest and exit with its\n"
		   "status; without one, attach this terminal to the guest's console\n"
		   "(Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A).\n"
		   "\n"
		   "options:\n");
	vmopts_usage(f);
	fprintf(f,
		"\n"
		"exit status: the command's status; %d bad arguments; 1 tern failed;\n"
		"%d the guest panicked, rebooted, triple-faulted or stopped without\n"
		"reporting a status; %d stopped from the host (Ctrl-A x, a signal).\n",
		EXIT_USAGE, EXIT_GUEST_FAILED, EXIT_STOPPED);
}

/* ---- the run itself ------------------------------------------------------------- */

static int run_vm(const struct vmopts *o)
{
	struct console con;
	struct api *api = NULL;
	sigset_t sigs;
	struct vm vm;
	int err, rc = 1;

	console_block_signals(&sigs);

	/* One builder for run, snapshot, restore and clone (state/machine_desc.h). */
	err = machine_create(&vm, &o->desc, STDOUT_FILENO);
	if (err) {
		fprintf(stderr, "tern: cannot set up the machine: %s\n", strerror(-err));
		return 1;
	}
	/* Before the console thread, so a refused socket leaves nothing to stop. */
	if (o->desc.api_socket)
		err = api_start(&vm, o->desc.api_socket, &api);
	if (!err)
		err = console_start(&con, &vm, &sigs);
	if (err) {
		fprintf(stderr, "tern: cannot set up the machine: %s\n", strerror(-err));
		goto out;
	}
	err = vm_start(&vm);
	if (!err) {
		enum vm_stop_reason why = vm_wait(&vm);

		console_stop(&con);
		rc = console_exit_code(&vm, why, o->argv != NULL, &con);
	} else {
		vm_wait(&vm);
		console_stop(&con);
		fprintf(stderr, "tern: cannot start the vCPUs: %s\n", strerror(-err));
	}
out:
	api_stop(api);
	vm_destroy(&vm);
	return rc;
}

int cmd_run(int argc, char **argv)
{
	struct vmopts o;
	bool help = false;
	int rc;

	rc = vmopts_parse(&o, "run", argc, argv, NULL, &help);
	if (rc || help) {
		if (help)
			run_usage(stdout);
		goto out;
	}
	if (o.verbose)
		log_set_level(o.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	rc = vmopts_finish(&o);
	if (!rc)
		rc = run_vm(&o);
out:
	vmopts_free(&o);
	return rc;
}
