/*
 * tern clone: start N VMs from one snapshot, each a 'tern restore' process
 * of its own. They share the snapshot's memory file copy-on-write (each maps
 * it MAP_PRIVATE: the page cache holds one copy for all, a clone owns only
 * the pages it writes), each writes to its own qcow2 overlay on every
 * writable disk of the snapshot, and each gets its own identity (a VM id,
 * its index, a new generation id: state/identity.h).
 *
 * Layout of the output directory: clone-<i>/console.log (the clone's
 * console and tern's messages), clone-<i>/disk<d>.qcow2 (its overlays),
 * clone-<i>/pid (with --detach).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block/nbd.h"
#include "block/qcow2.h"
#include "cmd/cmd.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"
#include "util/log.h"

#define EXIT_USAGE 2
#define MAX_CLONES 1024
#define QCOW2_MAGIC "QFI\xfb"

struct clone_opts {
	const char *state, *mem_arg, *out_dir;
	char *mem, *dir;
	unsigned count, first;
	bool detach;
	int verbose;
};

/* One clone: its directory, disks and the argv of its tern restore. */
struct clone {
	char *dir, *log;
	char *disks[MACHINE_MAX_DISKS];
	char *argv[16 + 2 * MACHINE_MAX_DISKS];
	char index[16];
	pid_t pid;
};

static void clone_usage(FILE *f)
{
	fprintf(f, "usage: tern clone [options] STATEFILE\n"
		   "\n"
		   "Start copies of a snapshot (see 'tern snapshot'), each a VM of its own that\n"
		   "resumes where the snapshot stopped. They share the memory file copy-on-write;\n"
		   "each writes to its own qcow2 overlay on the snapshot's writable disks (which\n"
		   "are not modified) and gets its own identity: a new VM id, its clone index and\n"
		   "a new generation id (docs/snapshot-format.md, \"Clones\").\n"
		   "\n"
		   "options:\n"
		   "  --count N      how many clones (default 1, at most 1024)\n"
		   "  --first-index I  the first clone's index (default 0)\n"
		   "  --out-dir DIR  where each clone's console log and disks go, in DIR/clone-I\n"
		   "                 (default: STATEFILE without its extension, plus .clones)\n"
		   "  --mem PATH     the memory file (default: STATEFILE with .mem as extension)\n"
		   "  --detach       start them and exit; each clone's pid is in DIR/clone-I/pid\n"
		   "  -v, --verbose  more messages (passed on to the clones)\n"
		   "  -h, --help     this text\n"
		   "\n"
		   "exit status: 0 when every clone exited 0 (or, with --detach, started); 1 if\n"
		   "one failed or could not be started; 2 bad arguments or a snapshot that\n"
		   "cannot be restored (then nothing is started).\n");
}

static int usage_error(const char *msg, const char *arg)
{
	fprintf(stderr, "tern clone: %s '%s'; see 'tern clone --help'\n", msg, arg);
	return EXIT_USAGE;
}

static int parse_count(const char *s, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int parse_args(struct clone_opts *o, int argc, char **argv, bool *help)
{
	static const struct option longopts[] = {
	    {"count", required_argument, NULL, 'n'},
	    {"first-index", required_argument, NULL, 'i'},
	    {"out-dir", required_argument, NULL, 'o'},
	    {"mem", required_argument, NULL, 'm'},
	    {"detach", no_argument, NULL, 'd'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;

	o->count = 1;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			if (parse_count(optarg, MAX_CLONES, &o->count) || !o->count)
				return usage_error("--count: give 1 to 1024, not", optarg);
			break;
		case 'i':
			if (parse_count(optarg, 1u << 30, &o->first))
				return usage_error("--first-index: give 0 to 2^30, not", optarg);
			break;
		case 'o':
			o->out_dir = optarg;
			break;
		case 'm':
			o->mem_arg = optarg;
			break;
		case 'd':
			o->detach = true;
			break;
		case 'v':
			o->verbose++;
			break;
		case 'h':
			*help = true;
			return 0;
		default:
			return usage_error("unknown option or missing value:", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return usage_error("give exactly one STATEFILE", optind < argc ? argv[optind] : "");
	o->state = argv[optind];
	return 0;
}

/* "dir/x.state" -> "dir/x.clones" (the default output directory). */
static char *default_out_dir(const char *state)
{
	char *mem = snapshot_default_mem_path(state), *dir = NULL;
	size_t n;

	if (!mem)
		return NULL;
	n = strlen(mem) - strlen(".mem");
	if (asprintf(&dir, "%.*s.clones", (int)n, mem) < 0)
		dir = NULL;
	free(mem);
	return dir;
}

static int make_dir(const char *path)
{
	if (mkdir(path, 0755) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

/* Format and virtual size of a local disk image, for its overlay. */
static int probe_disk(const char *path, const char **fmt, uint64_t *size)
{
	unsigned char hdr[32];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
	} else if (pread(fd, hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr) &&
		   !memcmp(hdr, QCOW2_MAGIC, 4)) {
		*fmt = "qcow2";
		*size = 0;
		for (int i = 24; i < 32; i++) /* big-endian virtual size */
			*size = *size << 8 | hdr[i];
	} else {
		*fmt = "raw";
		*size = (uint64_t)st.st_size;
	}
	close(fd);
	return err;
}

/* The clone's own writable disk: a qcow2 overlay on the snapshot's, by absolute path. */
static int make_overlay(const char *base, const char *overlay)
{
	struct qcow2_create_opts q = {0};
	char abs[PATH_MAX];
	int err;

	if (nbd_is_uri(base)) {
		fprintf(stderr,
			"tern clone: disk %s is a network disk: clones need local disks "
			"(or a read-only one)\n",
			base);
		return -EOPNOTSUPP;
	}
	if (!realpath(base, abs))
		return -errno;
	err = probe_disk(abs, &q.backing_fmt, &q.size);
	if (err)
		return err;
	q.backing = abs;
	unlink(overlay); /* a clone restarted in the same directory starts from the snapshot */
	return qcow2_create(overlay, &q);
}

static int prepare(struct clone *c, const struct clone_opts *o, const struct machine_desc *d,
		   unsigned index)
{
	int n = 0, err;

	snprintf(c->index, sizeof(c->index), "%u", index);
	if (asprintf(&c->dir, "%s/clone-%u", o->dir, index) < 0 ||
	    asprintf(&c->log, "%s/console.log", c->dir) < 0)
		return -ENOMEM;
	err = make_dir(c->dir);
	if (err)
		return err;
	c->argv[n++] = "tern";
	c->argv[n++] = "restore";
	for (int v = 0; v < o->verbose && v < 2; v++)
		c->argv[n++] = "-v";
	c->argv[n++] = "--clone-index";
	c->argv[n++] = c->index;
	c->argv[n++] = "--mem";
	c->argv[n++] = o->mem;
	for (unsigned i = 0; i < d->ndisks; i++) {
		if (d->disks[i].readonly) {
			c->disks[i] = strdup(d->disks[i].path); /* shared: nobody writes it */
		} else if (asprintf(&c->disks[i], "%s/disk%u.qcow2", c->dir, i) < 0) {
			c->disks[i] = NULL;
		} else {
			err = make_overlay(d->disks[i].path, c->disks[i]);
		}
		if (!c->disks[i])
			return -ENOMEM;
		if (err) {
			fprintf(stderr, "tern clone: overlay %s on %s: %s\n", c->disks[i],
				d->disks[i].path, strerror(-err));
			return err;
		}
		c->argv[n++] = "--disk";
		c->argv[n++] = c->disks[i];
	}
	c->argv[n++] = "--"; /* a state path may start with '-' */
	c->argv[n++] = (char *)o->state;
	c->argv[n] = NULL;
	return 0;
}

/* Fork and exec this tern as 'tern restore ...' with its console in the clone's log. */
static int spawn(struct clone *c, bool detach)
{
	int log = open(c->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
	pid_t pid;

	if (log < 0 || in < 0) {
		int err = -errno;

		if (log >= 0)
			close(log);
		return err;
	}
	pid = fork();
	if (pid == 0) {
		if (detach)
			setsid();
		if (dup2(in, STDIN_FILENO) < 0 || dup2(log, STDOUT_FILENO) < 0 ||
		    dup2(log, STDERR_FILENO) < 0)
			_exit(127);
		execv("/proc/self/exe", c->argv);
		_exit(127);
	}
	close(log);
	close(in);
	if (pid < 0)
		return -errno;
	c->pid = pid;
	return 0;
}

static int write_pid(const struct clone *c)
{
	char *path = NULL;
	FILE *f;

	if (asprintf(&path, "%s/pid", c->dir) < 0)
		return -ENOMEM;
	f = fopen(path, "w");
	free(path);
	if (!f)
		return -errno;
	fprintf(f, "%d\n", (int)c->pid);
	return fclose(f) ? -errno : 0;
}

/* Wait for every started clone; 0 if all exited 0. */
static int wait_all(struct clone *cl, unsigned n)
{
	int rc = 0;

	for (unsigned i = 0; i < n; i++) {
		int st;

		if (cl[i].pid <= 0)
			continue;
		pid_t r;

		while ((r = waitpid(cl[i].pid, &st, 0)) < 0 && errno == EINTR)
			;
		if (r < 0) {
			fprintf(stderr, "tern clone: clone %s: %s\n", cl[i].index, strerror(errno));
			rc = 1;
			continue;
		}
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		rc = 1;
		if (WIFEXITED(st))
			fprintf(stderr, "tern clone: clone %s exited with status %d (see %s)\n",
				cl[i].index, WEXITSTATUS(st), cl[i].log);
		else
			fprintf(stderr, "tern clone: clone %s was killed by signal %d (see %s)\n",
				cl[i].index, WIFSIGNALED(st) ? WTERMSIG(st) : 0, cl[i].log);
	}
	return rc;
}

static void clone_free(struct clone *c)
{
	free(c->dir);
	free(c->log);
	for (unsigned i = 0; i < MACHINE_MAX_DISKS; i++)
		free(c->disks[i]);
}

/* Prepare every clone's directory and disks first: a failure then starts nothing. */
static int start_all(struct clone *cl, const struct clone_opts *o, const struct machine_desc *d)
{
	int err = make_dir(o->dir);

	for (unsigned i = 0; !err && i < o->count; i++)
		err = prepare(&cl[i], o, d, o->first + i);
	if (err) {
		fprintf(stderr, "tern clone: cannot prepare the clones in %s: %s\n", o->dir,
			strerror(-err));
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < o->count; i++) {
		err = spawn(&cl[i], o->detach);
		if (!err && o->detach)
			err = write_pid(&cl[i]);
		if (err) {
			fprintf(stderr, "tern clone: cannot start clone %s: %s\n", cl[i].index,
				strerror(-err));
			return 1;
		}
		if (o->detach || o->verbose)
			printf("clone %s: pid %d, console %s\n", cl[i].index, (int)cl[i].pid,
			       cl[i].log);
	}
	fflush(stdout);
	return 0;
}

static int run_clones(struct clone_opts *o)
{
	struct machine_desc d;
	struct clone *cl;
	char why[512] = "";
	int rc;

	if (snapshot_read_desc(o->state, o->mem, &d, why, sizeof(why))) {
		fprintf(stderr, "tern clone: %s; nothing was started\n", why);
		return EXIT_USAGE;
	}
	cl = calloc(o->count, sizeof(*cl));
	if (!cl) {
		machine_desc_clear(&d);
		return 1;
	}
	rc = start_all(cl, o, &d);
	if (!o->detach) {
		int wrc = wait_all(cl, o->count);

		rc = rc ? rc : wrc;
	}
	for (unsigned i = 0; i < o->count; i++)
		clone_free(&cl[i]);
	free(cl);
	machine_desc_clear(&d);
	return rc;
}

int cmd_clone(int argc, char **argv)
{
	struct clone_opts o;
	bool help = false;
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv, &help);
	if (rc || help) {
		if (help)
			clone_usage(stdout);
		return rc;
	}
	if (o.verbose)
		log_set_level(o.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	o.mem = o.mem_arg ? strdup(o.mem_arg) : snapshot_default_mem_path(o.state);
	o.dir = o.out_dir ? strdup(o.out_dir) : default_out_dir(o.state);
	rc = o.mem && o.dir ? run_clones(&o) : 1;
	free(o.mem);
	free(o.dir);
	return rc;
}
