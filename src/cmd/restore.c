/*
 * tern restore: resume a VM from a snapshot where it stopped, with its
 * serial console on this terminal, and exit like tern run does.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "arch/x86/machine.h"
#include "cmd/cmd.h"
#include "cmd/console.h"
#include "hw/serial.h"
#include "state/identity.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"
#include "util/log.h"
#include "vmm/vm.h"

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
	       "  --accel kvm|emu|auto  the CPU backend to resume on (default auto: the\n"
	       "                 snapshot's if this host can run it, else the other); on the\n"
	       "                 other backend the CPU must offer every feature the guest saw\n"
	       "  -v, --verbose  more messages (with the time the restore took)\n"
	       "  -h, --help     this text\n"
	       "\n"
	       "exit status: as 'tern run': the guest command's status; 2 bad arguments or a\n"
	       "snapshot that cannot be restored; 1 tern failed; 3 the guest failed; 130\n"
	       "stopped from the host.\n");
}

/* The restored guest was running a command (tern.cmd=): it owes an exit status. */
static bool restored_command(struct vm *vm)
{
	const struct machine_desc *d = snapshot_description(vm);

	return d && d->cmdline && strstr(d->cmdline, "tern.cmd=");
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static int restore_run(const struct snapshot_restore_cfg *cfg, const struct timespec *t0)
{
	struct console con;
	sigset_t sigs;
	struct vm vm;
	enum vm_stop_reason why_stopped;
	char why[512] = "";
	int err, rc;

	console_block_signals(&sigs);
	err = snapshot_restore(&vm, cfg, why, sizeof(why));
	if (err) {
		fprintf(stderr, "tern restore: %s; nothing was started\n", why);
		return EXIT_USAGE;
	}
	err = console_start(&con, &vm, &sigs);
	if (err) {
		fprintf(stderr, "tern restore: cannot start the console: %s\n", strerror(-err));
		vm_destroy(&vm);
		return 1;
	}
	err = vm_start(&vm);
	if (!err)
		pr_info("restored: the guest runs again %.1f ms after tern started", ms_since(t0));
	why_stopped = vm_wait(&vm);
	console_stop(&con);
	rc = console_exit_code(&vm, why_stopped, restored_command(&vm), &con);
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
	    {"mem", required_argument, NULL, 'm'},
	    {"clone-index", required_argument, NULL, 'c'},
	    {"disk", required_argument, NULL, 'd'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"accel", required_argument, NULL, 'a'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
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
		case 'a':
			if (strcmp(optarg, "kvm") && strcmp(optarg, "emu") &&
			    strcmp(optarg, "auto"))
				return usage("--accel: choose kvm, emu or auto, not", optarg);
			cfg.accel = optarg;
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
