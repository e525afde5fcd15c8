/*
 * The control API's HTTP side: the Unix socket, libmicrohttpd, request
 * bodies. What each endpoint does lives in vm_api.c.
 *
 * libmicrohttpd runs one thread per connection (at most API_MAX_CONNS) and
 * closes a connection idle for API_CONN_TIMEOUT_S, so one slow or stuck
 * client never keeps another from being served. Request bodies are bounded
 * by API_MAX_BODY: a larger Content-Length is refused before the body is
 * read, a larger chunked body is drained and refused.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/api_int.h"
#include "util/dl.h"
#include "util/log.h"

/*
 * libmicrohttpd is loaded when the first server starts, not linked: linked,
 * it and the TLS libraries it depends on cost every tern process about 2 ms
 * of loading and initialisation at exec, restores and clones included, and
 * most processes never serve the API.
 */
#define MHD_SONAME "libmicrohttpd.so.12"

static struct {
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_lookup_connection_value) *lookup_connection_value;
} mhd;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;
static bool mhd_ok;

static void mhd_load(void)
{
	const struct dl_sym syms[] = {
	    {"MHD_start_daemon", (void **)&mhd.start_daemon},
	    {"MHD_stop_daemon", (void **)&mhd.stop_daemon},
	    {"MHD_create_response_from_buffer", (void **)&mhd.create_response_from_buffer},
	    {"MHD_add_response_header", (void **)&mhd.add_response_header},
	    {"MHD_queue_response", (void **)&mhd.queue_response},
	    {"MHD_destroy_response", (void **)&mhd.destroy_response},
	    {"MHD_lookup_connection_value", (void **)&mhd.lookup_connection_value},
	};

	mhd_ok = dl_load("api", MHD_SONAME, syms, sizeof(syms) / sizeof(syms[0]));
}

/* What we keep per request between the calls libmicrohttpd makes for it. */
struct req_ctx {
	char *buf;
	size_t len;
	bool too_big;
};

int api_error(struct json_object **out, int status, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*out = json_object_new_object();
	if (*out)
		json_object_object_add(*out, "error", json_object_new_string(msg));
	return status;
}

static enum MHD_Result send_json(struct api *api, struct MHD_Connection *c, int status,
				 struct json_object *obj, const char *allow)
{
	static const char oom[] = "{\"error\":\"out of memory\"}\n";
	struct MHD_Response *resp;
	const char *text = obj ? json_object_to_json_string_ext(
				     obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
			       : NULL;
	enum MHD_Result r;

	__atomic_fetch_add(&api->nrequests, 1, __ATOMIC_RELAXED);
	if (status >= 400)
		__atomic_fetch_add(&api->nerrors, 1, __ATOMIC_RELAXED);
	if (text) {
		size_t n = strlen(text);
		char *copy = malloc(n + 2);

		if (copy) {
			memcpy(copy, text, n);
			memcpy(copy + n, "\n", 2);
		}
		resp = copy ? mhd.create_response_from_buffer(n + 1, copy, MHD_RESPMEM_MUST_FREE)
			    : NULL;
		if (!resp)
			free(copy);
	} else {
		resp = NULL;
	}
	if (!resp) {
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		resp = mhd.create_response_from_buffer(sizeof(oom) - 1, (void *)oom,
						       MHD_RESPMEM_PERSISTENT);
		if (!resp)
			return MHD_NO; /* libmicrohttpd closes the connection */
	}
	mhd.add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	if (allow)
		mhd.add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
	r = mhd.queue_response(c, (unsigned)status, resp);
	mhd.destroy_response(resp);
	return r;
}

static enum MHD_Result send_error(struct api *api, struct MHD_Connection *c, int status,
				  const char *msg)
{
	struct json_object *obj = NULL;
	enum MHD_Result r;

	api_error(&obj, status, "%s", msg);
	r = send_json(api, c, status, obj, NULL);
	json_object_put(obj);
	return r;
}

/* A declared Content-Length above the limit: refuse before reading the body. */
static bool declared_too_big(struct MHD_Connection *c)
{
	const char *cl =
	    mhd.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	unsigned long long n;
	char *end;

	if (!cl)
		return false;
	errno = 0;
	n = strtoull(cl, &end, 10);
	/* libmicrohttpd rejects malformed lengths itself; be safe anyway. */
	return errno || end == cl || n > API_MAX_BODY;
}

static void body_append(struct req_ctx *rc, const char *data, size_t n)
{
	char *nb;

	if (rc->too_big)
		return; /* keep draining, answer 413 at the end */
	if (n > API_MAX_BODY - rc->len) {
		rc->too_big = true;
		return;
	}
	nb = realloc(rc->buf, rc->len + n);
	if (!nb) {
		rc->too_big = true;
		return;
	}
	memcpy(nb + rc->len, data, n);
	rc->buf = nb;
	rc->len += n;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct api *api = cls;
	struct req_ctx *rc = *con_cls;
	struct json_object *out = NULL;
	const char *allow = NULL;
	enum MHD_Result r;
	int status;

	if (!rc) {
		/* First call: headers only. */
		if (declared_too_big(c))
			return send_error(api, c, MHD_HTTP_CONTENT_TOO_LARGE,
					  "request body larger than 65536 bytes");
		rc = calloc(1, sizeof(*rc));
		if (!rc)
			return MHD_NO;
		*con_cls = rc;
		return MHD_YES;
	}
	if (*upload_size) {
		body_append(rc, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (rc->too_big)
		return send_error(api, c, MHD_HTTP_CONTENT_TOO_LARGE,
				  "request body larger than 65536 bytes");
	status = api_dispatch(api, method, url, rc->buf ? rc->buf : "", rc->len, &out, &allow);
	r = send_json(api, c, status, out, allow);
	json_object_put(out);
	return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct req_ctx *rc = *con_cls;

	if (rc) {
		free(rc->buf);
		free(rc);
		*con_cls = NULL;
	}
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[256];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	if (n && msg[n - 1] == '\n')
		msg[n - 1] = 0;
	pr_debug("api: %s", msg);
}

/*
 * Decide what to do with whatever is at path: nothing there is fine, a
 * socket nobody listens on is a leftover of a dead process and is removed,
 * anything else is refused.
 */
static int clear_stale_socket(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, err;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		pr_err("api: %s exists and is not a socket; not replacing it", path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	err = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) ? -errno : 0;
	close(fd);
	if (!err) {
		pr_err("api: another process serves %s already", path);
		return -EADDRINUSE;
	}
	if (err != -ECONNREFUSED) {
		pr_err("api: cannot check the socket %s: %s", path, strerror(-err));
		return err;
	}
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	pr_debug("api: removed the stale socket %s", path);
	return 0;
}

static int make_listen_socket(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, err;

	if (!*path || strlen(path) >= sizeof(sa.sun_path)) {
		pr_err("api: socket path '%s' is empty or longer than %zu bytes", path,
		       sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	err = clear_stale_socket(path, &sa);
	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * On Linux the socket inode's mode becomes the file's mode at bind(), so
	 * the file never exists with wider permissions than 0600; the chmod()
	 * after bind() covers kernels that ignore it.
	 */
	if (fchmod(fd, 0600) < 0 || bind(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		pr_err("api: cannot bind %s: %s", path, strerror(-err));
		goto fail;
	}
	if (chmod(path, 0600) < 0 || listen(fd, API_MAX_CONNS) < 0) {
		err = -errno;
		pr_err("api: cannot listen on %s: %s", path, strerror(-err));
		unlink(path);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return err;
}

int api_start(struct vm *vm, const char *socket_path, struct api **out)
{
	struct api *api = calloc(1, sizeof(*api));
	int err;

	if (!api)
		return -ENOMEM;
	pthread_once(&mhd_once, mhd_load);
	if (!mhd_ok) {
		free(api);
		return -ENOSYS;
	}
	api->vm = vm;
	api->path = strdup(socket_path);
	if (!api->path) {
		err = -ENOMEM;
		goto fail;
	}
	pthread_mutex_init(&api->action_lock, NULL);
	clock_gettime(CLOCK_MONOTONIC, &api->t_start);
	api->listen_fd = make_listen_socket(socket_path);
	if (api->listen_fd < 0) {
		err = api->listen_fd;
		goto fail_mutex;
	}
	api->mhd = mhd.start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
		MHD_USE_ERROR_LOG,
	    0, NULL, NULL, on_request, api, MHD_OPTION_LISTEN_SOCKET, api->listen_fd,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)API_CONN_TIMEOUT_S,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)API_MAX_CONNS, MHD_OPTION_NOTIFY_COMPLETED,
	    on_completed, api, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, api, MHD_OPTION_END);
	if (!api->mhd) {
		pr_err("api: cannot start the HTTP server on %s", socket_path);
		err = -EIO;
		close(api->listen_fd);
		unlink(socket_path);
		goto fail_mutex;
	}
	pr_info("api: serving on %s", socket_path);
	*out = api;
	return 0;

fail_mutex:
	pthread_mutex_destroy(&api->action_lock);
fail:
	free(api->path);
	free(api);
	return err;
}

void api_stop(struct api *api)
{
	if (!api)
		return;
	/* Joins the connection threads; closes the listen socket it was given. */
	mhd.stop_daemon(api->mhd);
	unlink(api->path);
	pthread_mutex_destroy(&api->action_lock);
	free(api->path);
	free(api);
}
