/*
 * The machine options every command that boots a guest takes (tern run,
 * tern snapshot): --kernel, --initrd, --cmdline, --cpus, --memory, --disk,
 * --balloon, --accel, --api-socket, -v and the guest command after them.
 * They fill one struct machine_desc (state/machine_desc.h), which
 * machine_create() turns into a machine and snapshots carry.
 */
#ifndef TERN_CMD_VMOPTS_H
#define TERN_CMD_VMOPTS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "state/machine_desc.h"

#define VMOPTS_EXIT_USAGE 2
/* A command's own options use getopt values from here up. */
#define VMOPTS_CMD_BASE 1000

struct vmopts {
	const char *cmd; /* "run", "snapshot": for messages */
	struct machine_desc desc;
	const char *cmdline; /* --cmdline, appended to tern's defaults */
	char **argv;	     /* the guest command, or NULL */
	int argc;
	int verbose;
};

/*
 * A command's own options: getopt_long entries (values >= VMOPTS_CMD_BASE,
 * ending with a zero entry) and the function that takes them, returning 0 or
 * an exit status.
 */
struct vmopts_extra {
	const struct option *longopts;
	int (*parse)(void *ctx, int c, const char *arg);
	void *ctx;
};

/*
 * Parse argv (argv[0] is the subcommand) into o. *help is set for -h.
 * Returns 0 or an exit status (a message was printed). Free with vmopts_free().
 */
int vmopts_parse(struct vmopts *o, const char *cmd, int argc, char **argv,
		 const struct vmopts_extra *extra, bool *help);

/*
 * After parsing: the default guest's kernel and initrd when none was
 * given, both readable, and the kernel command line (tern's defaults, then
 * --cmdline, then the guest command) in o->desc.cmdline. 0 or an exit status.
 */
int vmopts_finish(struct vmopts *o);

/* The option lines of the usage text. */
void vmopts_usage(FILE *f);

void vmopts_free(struct vmopts *o);

#endif
