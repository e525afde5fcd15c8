/* tern: a virtual machine monitor for small, fast Linux guests. */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} commands[] = {
    {"run", cmd_run, "boot a guest (default: the built default guest)"},
    {"img", cmd_img, "create, inspect and convert disk images (raw, qcow2)"},
    {"ctl", cmd_ctl, "control a running VM through its API socket"},
    {"snapshot", cmd_snapshot, "boot a guest and snapshot it at a marker or time"},
    {"restore", cmd_restore, "resume a VM from a snapshot where it stopped"},
    {"clone", cmd_clone, "start copy-on-write clones of a snapshot"},
    {"nbd-serve", cmd_nbd_serve, "export a disk image over NBD"},
    {"volume", cmd_volume, "pack many files into one read-only disk, list, unpack"},
    {"replicate", cmd_replicate, "ship a disk's chain to a recovery site, or serve one"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: tern <command> [options]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
	fprintf(f, "\n'tern <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "tern: unknown command '%s'; see 'tern --help'\n", argv[1]);
	return 2;
}
