/*
 * tern snapshot: boot a guest as tern run does and snapshot it when its
 * console prints a marker (or after a time): the way to make a warm
 * snapshot that 'tern restore' resumes. A running VM is snapshotted
 * through its control API instead (PUT /vm/snapshot).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
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
#include "hw/pci.h"
#include "hw/serial.h"
#include "state/snapshot.h"
#include "util/log.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define EXIT_USAGE 2
#define MARKER_MAX 256
#define DEFAULT_CMDLINE                                                                            \
	"console=ttyS0 reboot=k panic=-1 loglevel=4 8250.nr_uarts=1 cryptomgr.notests"

struct snap_opts {
	char *kernel, *initrd;
	const char *cmdline, *accel, *state, *mem, *marker;
	uint64_t mem_mib, after_ms;
	int cpus, verbose;
	bool keep_running;
	struct snap_machine_desc disks;
	char **argv;
	int argc;
};

struct watcher {
	struct vm *vm;
	struct serial *ser;
	const struct snap_opts *o;
	int out_fd; /* read end of the guest's console pipe */
	int result; /* 1: not taken yet, 0: saved, <0: failed */
	pthread_t thread;
};

static void snap_usage(FILE *f)
{
	fprintf(
	    f, "usage: tern snapshot --state PATH [--mem PATH] (--at-output STRING | --after SEC)\n"
	       "                     [--keep-running] [run options] [-- COMMAND [ARGS...]]\n"
	       "\n"
	       "Boot a guest like 'tern run' and snapshot it once its console prints STRING\n"
	       "(or SEC seconds after boot). The snapshot is a state file and a sparse memory\n"
	       "file; 'tern restore PATH' resumes it. Without --keep-running the VM stops after\n"
	       "the snapshot and tern exits 0.\n"
	       "\n"
	       "run options: --kernel PATH --initrd PATH --cmdline STR --cpus N --memory MIB\n"
	       "             --disk PATH[,readonly] --accel kvm|emu|auto -v (as for tern run)\n"
	       "  --mem PATH      memory file (default: the state path with .mem as extension)\n");
}

static int usage_error(const char *msg, const char *arg)
{
	fprintf(stderr, "tern snapshot: %s '%s'; see 'tern snapshot --help'\n", msg, arg);
	return EXIT_USAGE;
}

static char *default_guest_file(const char *name)
{
	char exe[PATH_MAX], *path = NULL;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n > 0) {
		char *slash;

		exe[n] = 0;
		slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		if (asprintf(&path, "%s/../guest/out/%s", exe, name) < 0)
			return NULL;
		if (!access(path, R_OK))
			return path;
		free(path);
	}
	return asprintf(&path, "guest/out/%s", name) < 0 ? NULL : path;
}

static char *base64(const unsigned char *raw, size_t len)
{
	static const char tbl[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *out = malloc((len + 2) / 3 * 4 + 1);
	size_t o = 0;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)raw[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)raw[i + 1] << 8;
		if (i + 2 < len)
			v |= raw[i + 2];
		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? tbl[v & 63] : '=';
	}
	out[o] = 0;
	return out;
}

/* The guest command goes to the guest's init as NUL-separated argv, base64 (guest-interface.md). */
static char *build_cmdline(const struct snap_opts *o)
{
	unsigned char *raw = NULL;
	char *b64 = NULL, *cmd = NULL;
	size_t len = 0;

	if (o->argv) {
		for (int a = 0; a < o->argc; a++)
			len += strlen(o->argv[a]) + 1;
		raw = malloc(len);
		if (!raw)
			return NULL;
		len = 0;
		for (int a = 0; a < o->argc; a++) {
			memcpy(raw + len, o->argv[a], strlen(o->argv[a]) + 1);
			len += strlen(o->argv[a]) + 1;
		}
		b64 = base64(raw, len);
		free(raw);
		if (!b64)
			return NULL;
	}
	if (asprintf(&cmd, "%s%s%s%s%s", DEFAULT_CMDLINE, o->cmdline ? " " : "",
		     o->cmdline ? o->cmdline : "", b64 ? " tern.cmd=" : "", b64 ? b64 : "") < 0)
		cmd = NULL;
	free(b64);
	return cmd;
}

static int parse_num(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int add_disk(struct snap_opts *o, const char *arg)
{
	const char *comma = strrchr(arg, ',');
	unsigned n = o->disks.ndisks;
	bool ro = comma && !strcmp(comma, ",readonly");

	if (n == SNAP_MAX_DISKS)
		return usage_error("at most 16 disks:", arg);
	if (comma && !ro && strcmp(comma, ",rw"))
		return usage_error("the only disk options are ,readonly and ,rw:", arg);
	o->disks.disks[n].path = comma ? strndup(arg, (size_t)(comma - arg)) : strdup(arg);
	o->disks.disks[n].readonly = ro;
	if (!o->disks.disks[n].path)
		return 1;
	o->disks.ndisks++;
	return 0;
}

enum {
	O_KERNEL = 256,
	O_INITRD,
	O_CMDLINE,
	O_CPUS,
	O_MEMORY,
	O_DISK,
	O_ACCEL,
	O_STATE,
	O_MEM,
	O_AT,
	O_AFTER,
	O_KEEP
};

static int parse_one(struct snap_opts *o, int c, const char *arg)
{
	uint64_t v;

	switch (c) {
	case O_KERNEL:
		free(o->kernel);
		o->kernel = strdup(arg);
		return 0;
	case O_INITRD:
		free(o->initrd);
		o->initrd = strdup(arg);
		return 0;
	case O_CMDLINE:
		o->cmdline = arg;
		return 0;
	case O_CPUS:
		if (parse_num(arg, 1, 64, &v))
			return usage_error("--cpus: give a number from 1 to 64, not", arg);
		o->cpus = (int)v;
		return 0;
	case O_MEMORY:
		if (parse_num(arg, 64, 1024 * 1024, &o->mem_mib))
			return usage_error("--memory: give MiB from 64 to 1048576, not", arg);
		return 0;
	case O_DISK:
		return add_disk(o, arg);
	case O_ACCEL:
		if (strcmp(arg, "kvm") && strcmp(arg, "emu") && strcmp(arg, "auto"))
			return usage_error("--accel: choose kvm, emu or auto, not", arg);
		o->accel = arg;
		return 0;
	case O_STATE:
		o->state = arg;
		return 0;
	case O_MEM:
		o->mem = arg;
		return 0;
	case O_AT:
		if (!*arg || strlen(arg) > MARKER_MAX)
			return usage_error("--at-output: give 1 to 256 characters, not", arg);
		o->marker = arg;
		return 0;
	case O_AFTER:
		if (parse_num(arg, 0, 86400, &v))
			return usage_error("--after: give seconds from 0 to 86400, not", arg);
		o->after_ms = v * 1000;
		return 0;
	case O_KEEP:
		o->keep_running = true;
		return 0;
	case 'v':
		o->verbose++;
		return 0;
	}
	return EXIT_USAGE;
}

static int parse_args(struct snap_opts *o, int argc, char **argv, bool *help)
{
	static const struct option longopts[] = {
	    {"kernel", required_argument, NULL, O_KERNEL},
	    {"initrd", required_argument, NULL, O_INITRD},
	    {"cmdline", required_argument, NULL, O_CMDLINE},
	    {"cpus", required_argument, NULL, O_CPUS},
	    {"memory", required_argument, NULL, O_MEMORY},
	    {"disk", required_argument, NULL, O_DISK},
	    {"accel", required_argument, NULL, O_ACCEL},
	    {"state", required_argument, NULL, O_STATE},
	    {"mem", required_argument, NULL, O_MEM},
	    {"at-output", required_argument, NULL, O_AT},
	    {"after", required_argument, NULL, O_AFTER},
	    {"keep-running", no_argument, NULL, O_KEEP},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c, err;

	o->cpus = 1;
	o->mem_mib = 256;
	o->accel = "auto";
	o->after_ms = UINT64_MAX;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+vh", longopts, NULL)) != -1) {
		if (c == 'h') {
			*help = true;
			return 0;
		}
		if (c == '?' || c == ':')
			return usage_error("unknown option or missing value:", argv[optind - 1]);
		err = parse_one(o, c, optarg);
		if (err)
			return err;
	}
	if (optind < argc) {
		o->argv = argv + optind;
		o->argc = argc - optind;
	}
	if (!o->state)
		return usage_error("--state PATH is required", "");
	if (!o->marker && o->after_ms == UINT64_MAX)
		return usage_error("say when: --at-output STRING or --after SECONDS", "");
	return 0;
}

static uint64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Keep the last MARKER_MAX bytes of output so a marker split across reads is still found. */
static bool scan(char *tail, size_t *tlen, const char *buf, size_t n, const char *marker)
{
	char win[2 * MARKER_MAX + 1024 + 1];
	size_t len = 0, keep;

	if (!marker)
		return false;
	for (size_t off = 0; off < n;) {
		size_t take = n - off < 1024 ? n - off : 1024;

		memcpy(win, tail, *tlen);
		memcpy(win + *tlen, buf + off, take);
		len = *tlen + take;
		win[len] = 0;
		if (memmem(win, len, marker, strlen(marker)))
			return true;
		keep = len < MARKER_MAX ? len : MARKER_MAX;
		memcpy(tail, win + len - keep, keep);
		*tlen = keep;
		off += take;
	}
	return false;
}

static void take(struct watcher *w)
{
	char *mem = w->o->mem ? strdup(w->o->mem) : snapshot_default_mem_path(w->o->state);

	w->result = mem ? snapshot_save(w->vm, w->o->state, mem) : -ENOMEM;
	if (!w->result)
		fprintf(stderr, "tern: snapshot saved: %s, %s\n", w->o->state, mem);
	free(mem);
	if (w->result || !w->o->keep_running)
		vm_request_stop(w->vm, VM_STOP_USER);
}

/* Copies the guest's console to stdout, watching for the marker and the deadline. */
static void *watch_thread(void *arg)
{
	struct watcher *w = arg;
	uint64_t deadline = w->o->after_ms == UINT64_MAX ? UINT64_MAX : now_ms() + w->o->after_ms;
	char tail[MARKER_MAX], buf[4096];
	size_t tlen = 0;

	for (;;) {
		struct pollfd p = {.fd = w->out_fd, .events = POLLIN};
		int n = poll(&p, 1, 20);
		ssize_t got = 0;

		serial_flush(w->ser);
		if (n > 0) {
			got = read(w->out_fd, buf, sizeof(buf));
			if (got <= 0)
				break; /* the write end closed: the VM is gone */
			if (write(STDOUT_FILENO, buf, (size_t)got) < 0)
				pr_warn_once("cannot write the guest's output: %s",
					     strerror(errno));
		}
		if (w->result == 1 &&
		    (scan(tail, &tlen, buf, got > 0 ? (size_t)got : 0, w->o->marker) ||
		     now_ms() >= deadline))
			take(w);
	}
	return NULL;
}

static int build(struct vm *vm, const struct snap_opts *o, const char *cmdline, int console_fd)
{
	struct machine_config mc = {.kernel_path = o->kernel,
				    .initrd_path = o->initrd,
				    .cmdline = cmdline,
				    .console_fd = console_fd};
	int err = pci_init(vm);

	if (!err)
		err = virtio_rng_add(vm);
	for (unsigned i = 0; !err && i < o->disks.ndisks; i++)
		err = virtio_blk_add(vm, o->disks.disks[i].path, o->disks.disks[i].readonly);
	if (!err)
		err = x86_machine_setup(vm, &mc);
	if (!err)
		err = snapshot_describe(vm, &o->disks);
	return err;
}

static int boot_and_snapshot(const struct snap_opts *o, const char *cmdline)
{
	struct vm_config cfg = {.mem_size = o->mem_mib << 20, .ncpus = o->cpus};
	struct watcher w = {.o = o, .result = 1};
	struct vm vm;
	int pipefd[2], err;
	bool kvm = !strcmp(o->accel, "kvm") || (!strcmp(o->accel, "auto") && cpu_kvm_has_hw_virt());

	signal(SIGPIPE, SIG_IGN);
	cfg.cpu = kvm ? &cpu_backend_kvm : &cpu_backend_emu;
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return 1;
	fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20); /* never block the guest's console on us */
	err = vm_create(&vm, &cfg);
	if (err) {
		fprintf(stderr, "tern: cannot create the VM: %s\n", strerror(-err));
		close(pipefd[0]);
		close(pipefd[1]);
		return 1;
	}
	err = build(&vm, o, cmdline, pipefd[1]);
	if (err) {
		fprintf(stderr, "tern: cannot set up the machine: %s\n", strerror(-err));
		goto out;
	}
	w.vm = &vm;
	w.ser = ((struct x86_machine *)vm.machine)->com1;
	w.out_fd = pipefd[0];
	err = -pthread_create(&w.thread, NULL, watch_thread, &w);
	if (err)
		goto out;
	err = vm_start(&vm);
	vm_wait(&vm);
	serial_flush(w.ser);
	close(pipefd[1]);
	pipefd[1] = -1;
	pthread_join(w.thread, NULL);
	if (!err && w.result == 1) {
		fprintf(stderr,
			"tern snapshot: the guest stopped (%s) before the snapshot was "
			"taken\n",
			vm_stop_reason_str(vm.stop_reason));
		err = -ESRCH;
	} else if (!err) {
		err = w.result;
	}
out:
	vm_destroy(&vm);
	close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	return err ? 1 : 0;
}

int cmd_snapshot(int argc, char **argv)
{
	struct snap_opts o;
	bool help = false;
	char *cmdline = NULL;
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv, &help);
	if (rc || help) {
		if (help)
			snap_usage(stdout);
		goto out;
	}
	if (o.verbose)
		log_set_level(o.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	if (!o.kernel) {
		o.kernel = default_guest_file("vmlinuz");
		if (!o.initrd)
			o.initrd = default_guest_file("initrd");
	}
	if (!o.kernel || access(o.kernel, R_OK) || (o.initrd && access(o.initrd, R_OK))) {
		fprintf(stderr,
			"tern snapshot: cannot read the kernel or initrd; build the default "
			"guest with 'make guest' or pass --kernel/--initrd\n");
		rc = EXIT_USAGE;
		goto out;
	}
	cmdline = build_cmdline(&o);
	rc = cmdline ? boot_and_snapshot(&o, cmdline) : 1;
out:
	free(cmdline);
	free(o.kernel);
	free(o.initrd);
	for (unsigned i = 0; i < o.disks.ndisks; i++)
		free((char *)o.disks.disks[i].path);
	return rc;
}
