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

#include "api/api.h"
#include "arch/x86/machine.h"
#include "cmd/cmd.h"
#include "cmd/vmopts.h"
#include "hw/serial.h"
#include "state/snapshot.h"
#include "util/log.h"
#include "vmm/vm.h"

#define MARKER_MAX 256

/* What tern snapshot takes beyond the machine options. */
struct snap_opts {
	struct vmopts vm;
	const char *state, *mem, *marker;
	uint64_t after_ms;
	bool keep_running;
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
	       "file; 'tern restore PATH' resumes it, 'tern clone PATH' starts copies of it.\n"
	       "Without --keep-running the VM stops after the snapshot and tern exits 0.\n"
	       "\n"
	       "  --state PATH    the state file to write\n"
	       "  --mem PATH      memory file (default: the state path with .mem as extension)\n"
	       "  --at-output STRING, --after SEC   when to take it\n"
	       "  --keep-running  go on running after the snapshot\n"
	       "\n"
	       "run options (as for tern run):\n");
	vmopts_usage(f);
}

static int usage_error(const char *msg, const char *arg)
{
	fprintf(stderr, "tern snapshot: %s '%s'; see 'tern snapshot --help'\n", msg, arg);
	return VMOPTS_EXIT_USAGE;
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

enum { O_STATE = VMOPTS_CMD_BASE, O_MEM, O_AT, O_AFTER, O_KEEP };

static int parse_one(void *ctx, int c, const char *arg)
{
	struct snap_opts *o = ctx;
	uint64_t v;

	switch (c) {
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
	}
	return VMOPTS_EXIT_USAGE;
}

static int parse_args(struct snap_opts *o, int argc, char **argv, bool *help)
{
	static const struct option longopts[] = {
	    {"state", required_argument, NULL, O_STATE},
	    {"mem", required_argument, NULL, O_MEM},
	    {"at-output", required_argument, NULL, O_AT},
	    {"after", required_argument, NULL, O_AFTER},
	    {"keep-running", no_argument, NULL, O_KEEP},
	    {NULL, 0, NULL, 0},
	};
	const struct vmopts_extra extra = {longopts, parse_one, o};
	int err;

	o->after_ms = UINT64_MAX;
	err = vmopts_parse(&o->vm, "snapshot", argc, argv, &extra, help);
	if (err || *help)
		return err;
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

	struct snapshot_stats st = {0};

	w->result = mem ? snapshot_save_stats(w->vm, w->o->state, mem, &st) : -ENOMEM;
	if (!w->result)
		fprintf(stderr,
			"tern: snapshot saved: %s, %s (paused %.3f ms, %s copy, %.1f ms in all)\n",
			w->o->state, mem, (double)st.pause_ns / 1e6, st.live ? "live" : "paused",
			(double)st.total_ns / 1e6);
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

static int boot_and_snapshot(const struct snap_opts *o)
{
	struct watcher w = {.o = o, .result = 1};
	struct api *api = NULL;
	struct vm vm;
	int pipefd[2], err;

	signal(SIGPIPE, SIG_IGN);
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return 1;
	fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20); /* never block the guest's console on us */
	err = machine_create(&vm, &o->vm.desc, pipefd[1]);
	if (err) {
		fprintf(stderr, "tern: cannot set up the machine: %s\n", strerror(-err));
		close(pipefd[0]);
		close(pipefd[1]);
		return 1;
	}
	if (o->vm.desc.api_socket) {
		err = api_start(&vm, o->vm.desc.api_socket, &api);
		if (err)
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
	api_stop(api);
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
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv, &help);
	if (rc || help) {
		if (help)
			snap_usage(stdout);
		goto out;
	}
	if (o.vm.verbose)
		log_set_level(o.vm.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	rc = vmopts_finish(&o.vm);
	if (!rc)
		rc = boot_and_snapshot(&o);
out:
	vmopts_free(&o.vm);
	return rc;
}
