/*
 * Snapshots and clones of the running VM through the API (docs/api.md):
 *
 *   PUT /vm/snapshot  {"state": PATH, "mem": PATH}  ("path" is taken for
 *                     "state"; "mem" defaults to the state path with .mem)
 *   PUT /vm/clone     {"dir": DIR, "count": N}: snapshot into DIR, then start
 *                     N clones as separate processes (tern clone --detach)
 */
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/api_int.h"
#include "state/machine_desc.h"
#include "state/snapshot.h"

#define PATH_LEN_MAX 4000
#define CLONES_MAX 64

extern char **environ;

/* A string member: absent (NULL, 0), or a path of 1..PATH_LEN_MAX bytes without NUL. */
static int get_path(struct json_object *body, const char *key, const char **out)
{
	struct json_object *v;
	int len;

	*out = NULL;
	if (!body || !json_object_object_get_ex(body, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	len = json_object_get_string_len(v);
	*out = json_object_get_string(v);
	if (len < 1 || len > PATH_LEN_MAX || strlen(*out) != (size_t)len)
		return -EINVAL;
	return 0;
}

static int save_status(int err)
{
	if (err == -ENOTSUP || err == -ESRCH)
		return MHD_HTTP_CONFLICT;
	if (err == -ENOENT || err == -EACCES || err == -ENOTDIR || err == -EROFS)
		return MHD_HTTP_BAD_REQUEST;
	return MHD_HTTP_INTERNAL_SERVER_ERROR;
}

static int save(struct api *api, const char *state, const char *mem_arg, struct json_object **out)
{
	char *mem = mem_arg ? strdup(mem_arg) : snapshot_default_mem_path(state);
	struct snapshot_stats st;
	int err;

	if (!mem)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	err = snapshot_save_stats(api->vm, state, mem, &st);
	if (err) {
		free(mem);
		return api_error(out, save_status(err), "snapshot to %.256s: %s", state,
				 err == -ENOTSUP ? "this VM cannot be snapshotted (see tern's log)"
						 : strerror(-err));
	}
	*out = json_object_new_object();
	if (*out) {
		json_object_object_add(*out, "state", json_object_new_string(state));
		json_object_object_add(*out, "mem", json_object_new_string(mem));
		json_object_object_add(*out, "live", json_object_new_boolean(st.live));
		json_object_object_add(*out, "pause_us",
				       json_object_new_int64((int64_t)(st.pause_ns / 1000)));
		json_object_object_add(*out, "total_ms",
				       json_object_new_int64((int64_t)(st.total_ns / 1000000)));
		json_object_object_add(*out, "copied_before_write",
				       json_object_new_int64((int64_t)st.cbw_pages));
	}
	free(mem);
	return *out ? MHD_HTTP_OK : api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
}

int api_snapshot(struct api *api, struct json_object *body, struct json_object **out)
{
	const char *state, *legacy, *mem;

	if (get_path(body, "state", &state) || get_path(body, "path", &legacy) ||
	    get_path(body, "mem", &mem) || (!state && !legacy))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "expected {\"state\": PATH, \"mem\": PATH} (mem optional; "
				 "\"path\" is taken for \"state\")");
	return save(api, state ? state : legacy, mem, out);
}

/* ---- clones ---- */

static int get_count(struct json_object *body, unsigned *count)
{
	struct json_object *v;
	int64_t n;

	*count = 1;
	if (!body || !json_object_object_get_ex(body, "count", &v))
		return 0;
	if (!json_object_is_type(v, json_type_int))
		return -EINVAL;
	n = json_object_get_int64(v);
	if (n < 1 || n > CLONES_MAX)
		return -EINVAL;
	*count = (unsigned)n;
	return 0;
}

/*
 * A clone's disk overlay is backed by the source's disk file; a source that
 * keeps writing that file would change what every clone reads.
 */
static bool has_writable_disk(struct api *api)
{
	const struct machine_desc *d = snapshot_description(api->vm);

	for (unsigned i = 0; d && i < d->ndisks; i++)
		if (!d->disks[i].readonly)
			return true;
	return false;
}

/* tern clone --detach, its output in DIR/clone.log; its exit status or -errno. */
static int run_clone_cmd(const char *dir, const char *state, unsigned count)
{
	char n[16], *log = NULL;
	/* "--": a state path may start with '-'. */
	char *argv[] = {"tern",	     "clone",	  "--detach", "--count",     n,
			"--out-dir", (char *)dir, "--",	      (char *)state, NULL};
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int err, st;

	snprintf(n, sizeof(n), "%u", count);
	if (asprintf(&log, "%s/clone.log", dir) < 0)
		return -ENOMEM;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	err = -posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	free(log);
	if (err)
		return err;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static struct json_object *clone_list(const char *dir, unsigned count)
{
	struct json_object *a = json_object_new_array();

	for (unsigned i = 0; a && i < count; i++) {
		struct json_object *c = json_object_new_object();
		char path[PATH_LEN_MAX + 64];
		int pid = -1;
		FILE *f;

		snprintf(path, sizeof(path), "%s/clone-%u/pid", dir, i);
		f = fopen(path, "r");
		if (f) {
			if (fscanf(f, "%d", &pid) != 1)
				pid = -1;
			fclose(f);
		}
		snprintf(path, sizeof(path), "%s/clone-%u/console.log", dir, i);
		json_object_object_add(c, "index", json_object_new_int((int)i));
		json_object_object_add(c, "pid", json_object_new_int(pid));
		json_object_object_add(c, "console", json_object_new_string(path));
		json_object_array_add(a, c);
	}
	return a;
}

int api_clone(struct api *api, struct json_object *body, struct json_object **out)
{
	char state[PATH_LEN_MAX + 32];
	const char *dir;
	unsigned count;
	int status, rc;

	if (get_path(body, "dir", &dir) || !dir || get_count(body, &count))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "expected {\"dir\": DIR, \"count\": 1..%d}", CLONES_MAX);
	if (has_writable_disk(api))
		return api_error(out, MHD_HTTP_CONFLICT,
				 "the VM has a writable disk it keeps writing: clone a snapshot "
				 "taken with the VM stopped (tern clone), or use read-only disks");
	if (mkdir(dir, 0755) && errno != EEXIST)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "%.256s: %s", dir, strerror(errno));
	snprintf(state, sizeof(state), "%s/source.state", dir);
	status = save(api, state, NULL, out);
	if (status != MHD_HTTP_OK)
		return status;
	rc = run_clone_cmd(dir, state, count);
	if (rc)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR,
				 "tern clone failed (%s); see %.256s/clone.log",
				 rc < 0 ? strerror(-rc) : "non-zero exit", dir);
	json_object_object_add(*out, "dir", json_object_new_string(dir));
	json_object_object_add(*out, "clones", clone_list(dir, count));
	return MHD_HTTP_OK;
}
