/*
 * The control API's endpoints: a route table, request body checks, and one
 * handler per action. Every handler returns an HTTP status and a JSON body;
 * errors are {"error": "..."} (docs/api.md).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/api_int.h"
#include "api/stats.h"
#include "vmm/vm.h"

#define API_VERSION 1
#define JSON_MAX_DEPTH 16

enum {
	M_GET = 1 << 0,
	M_PUT = 1 << 1,
	M_POST = 1 << 2,
	M_PATCH = 1 << 3,
};

struct api_req {
	unsigned method;	  /* one M_* bit */
	struct json_object *body; /* a JSON object, or NULL when the request had no body */
};

typedef int (*api_handler)(struct api *api, const struct api_req *req, struct json_object **out);

struct api_route {
	const char *path;
	unsigned methods;
	const char *allow; /* the Allow header of a 405 */
	api_handler fn;
};

/* ---- reading the VM ---- */

static double seconds_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Seconds with millisecond precision, printed as such rather than with 17 digits. */
static struct json_object *new_seconds(double s)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%.3f", s);
	return json_object_new_double_s(s, buf);
}

static const char *vcpu_state_str(enum vcpu_run_state s)
{
	switch (s) {
	case VCPU_CREATED:
		return "created";
	case VCPU_RUNNING:
		return "running";
	case VCPU_PAUSED:
		return "paused";
	case VCPU_STOPPED:
		return "stopped";
	}
	return "unknown";
}

/* The VM as a whole; caller holds vm->lock. */
static const char *vm_state_locked(const struct vm *vm)
{
	if (vm->stop_reason != VM_RUNNING)
		return "stopped";
	if (vm->pause_req)
		return "paused";
	return vm->started ? "running" : "created";
}

static bool vm_is_stopped(struct vm *vm)
{
	bool stopped;

	pthread_mutex_lock(&vm->lock);
	stopped = vm->stop_reason != VM_RUNNING;
	pthread_mutex_unlock(&vm->lock);
	return stopped;
}

static void add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

static void add_str(struct json_object *o, const char *key, const char *v)
{
	json_object_object_add(o, key, v ? json_object_new_string(v) : NULL);
}

static struct json_object *vm_info(struct api *api)
{
	struct vm *vm = api->vm;
	struct json_object *o = json_object_new_object();
	struct json_object *states = json_object_new_array();

	if (!o || !states) {
		json_object_put(o);
		json_object_put(states);
		return NULL;
	}
	pthread_mutex_lock(&vm->lock);
	add_str(o, "state", vm_state_locked(vm));
	add_str(o, "stop_reason",
		vm->stop_reason != VM_RUNNING ? vm_stop_reason_str(vm->stop_reason) : NULL);
	for (int i = 0; i < vm->ncpus; i++)
		json_object_array_add(states,
				      json_object_new_string(vcpu_state_str(vm->vcpus[i].state)));
	pthread_mutex_unlock(&vm->lock);
	add_str(o, "backend", vm->cpu->name);
	json_object_object_add(o, "vcpus", json_object_new_int(vm->ncpus));
	json_object_object_add(o, "vcpu_states", states);
	add_u64(o, "memory_bytes", vm->mem.size);
	add_u64(o, "memory_mib", vm->mem.size >> 20);
	json_object_object_add(o, "uptime_s", new_seconds(seconds_since(&api->t_start)));
	json_object_object_add(o, "api_version", json_object_new_int(API_VERSION));
	return o;
}

/* Host RSS of this process from /proc/self/statm (second field, in pages). */
static uint64_t host_rss_bytes(void)
{
	unsigned long long size, resident;
	FILE *f = fopen("/proc/self/statm", "re");
	int n;

	if (!f)
		return 0;
	n = fscanf(f, "%llu %llu", &size, &resident);
	fclose(f);
	if (n != 2)
		return 0;
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Bytes of guest RAM resident in host memory, by mincore() in 64 MiB steps. */
static uint64_t guest_resident_bytes(const struct guest_mem *gm)
{
	const uint64_t step = 64ull << 20;
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), total = 0;
	unsigned char *vec = malloc(step / page);

	if (!vec || !gm->hva)
		goto out;
	for (uint64_t off = 0; off < gm->size; off += step) {
		uint64_t len = gm->size - off < step ? gm->size - off : step;

		if (mincore(gm->hva + off, len, vec) < 0)
			break;
		for (uint64_t i = 0; i < (len + page - 1) / page; i++)
			total += vec[i] & 1 ? page : 0;
	}
out:
	free(vec);
	return total;
}

static struct json_object *vcpu_stats(const struct vcpu *v, enum vcpu_run_state state)
{
	/* Counters are bumped by the vCPU thread; a relaxed load is enough for stats. */
	uint64_t pio = __atomic_load_n(&v->exits_pio, __ATOMIC_RELAXED);
	uint64_t mmio = __atomic_load_n(&v->exits_mmio, __ATOMIC_RELAXED);
	uint64_t hlt = __atomic_load_n(&v->exits_hlt, __ATOMIC_RELAXED);
	uint64_t other = __atomic_load_n(&v->exits_other, __ATOMIC_RELAXED);
	struct json_object *o = json_object_new_object();
	struct json_object *ex = json_object_new_object();

	if (!o || !ex) {
		json_object_put(o);
		json_object_put(ex);
		return NULL;
	}
	json_object_object_add(o, "id", json_object_new_int(v->id));
	add_str(o, "state", vcpu_state_str(state));
	add_u64(ex, "pio", pio);
	add_u64(ex, "mmio", mmio);
	add_u64(ex, "hlt", hlt);
	add_u64(ex, "other", other);
	add_u64(ex, "total", pio + mmio + hlt + other);
	json_object_object_add(o, "exits", ex);
	return o;
}

static struct json_object *device_stats(struct vm *vm)
{
	struct json_object *arr = json_object_new_array();
	struct device *d;

	if (!arr)
		return NULL;
	/* The registry only grows at the head and is freed by vm_destroy(), after api_stop(). */
	pthread_mutex_lock(&vm->lock);
	d = vm->devices;
	pthread_mutex_unlock(&vm->lock);
	for (; d; d = d->next) {
		struct json_object *o = json_object_new_object();
		struct json_object *c = json_object_new_object();
		struct dev_stats st = {0};

		if (!o || !c) {
			json_object_put(o);
			json_object_put(c);
			continue;
		}
		if (d->ops->stats)
			d->ops->stats(d->dev, &st);
		for (unsigned i = 0; i < st.n && i < DEV_STATS_MAX; i++)
			add_u64(c, st.c[i].name, st.c[i].value);
		add_str(o, "name", d->ops->name ? d->ops->name : "device");
		json_object_object_add(o, "counters", c);
		json_object_array_add(arr, o);
	}
	return arr;
}

static struct json_object *vm_stats(struct api *api)
{
	struct vm *vm = api->vm;
	struct json_object *o = json_object_new_object();
	struct json_object *vcpus = json_object_new_array();
	struct json_object *mem = json_object_new_object();
	struct json_object *apio = json_object_new_object();
	uint64_t total = 0, huge;

	if (!o || !vcpus || !mem || !apio) {
		json_object_put(o);
		json_object_put(vcpus);
		json_object_put(mem);
		json_object_put(apio);
		return NULL;
	}
	for (int i = 0; i < vm->ncpus; i++) {
		enum vcpu_run_state s;
		struct json_object *v;

		pthread_mutex_lock(&vm->lock);
		s = vm->vcpus[i].state;
		pthread_mutex_unlock(&vm->lock);
		v = vcpu_stats(&vm->vcpus[i], s);
		if (v)
			total += json_object_get_uint64(
			    json_object_object_get(json_object_object_get(v, "exits"), "total"));
		json_object_array_add(vcpus, v);
	}
	json_object_object_add(o, "vcpus", vcpus);
	add_u64(o, "exits_total", total);
	add_u64(mem, "guest_bytes", vm->mem.size);
	add_u64(mem, "guest_resident_bytes", guest_resident_bytes(&vm->mem));
	add_str(mem, "backing", gm_backing_name(vm->mem.backing));
	if (gm_huge_bytes(&vm->mem, &huge) == 0)
		add_u64(mem, "guest_huge_bytes", huge);
	add_u64(mem, "host_rss_bytes", host_rss_bytes());
	api_memory_reclaim(api, mem);
	json_object_object_add(o, "memory", mem);
	json_object_object_add(o, "devices", device_stats(vm));
	add_u64(apio, "requests", __atomic_load_n(&api->nrequests, __ATOMIC_RELAXED));
	add_u64(apio, "errors", __atomic_load_n(&api->nerrors, __ATOMIC_RELAXED));
	json_object_object_add(o, "api", apio);
	json_object_object_add(o, "uptime_s", new_seconds(seconds_since(&api->t_start)));
	return o;
}

/* ---- handlers ---- */

static int reply_info(struct api *api, struct json_object **out)
{
	*out = vm_info(api);
	return *out ? MHD_HTTP_OK : api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
}

/* Actions take no parameters: no body, or an empty object. */
static int check_no_fields(const struct api_req *req, struct json_object **out)
{
	if (!req->body)
		return 0;
	json_object_object_foreach(req->body, key, val)
	{
		(void)val;
		return api_error(out, MHD_HTTP_BAD_REQUEST, "unknown field '%.64s'", key);
	}
	return 0;
}

static int do_pause(struct api *api, struct json_object **out)
{
	int err = 0;

	/* The API holds at most one pause of its own; a sweep's pause is not the user's. */
	pthread_mutex_lock(&api->action_lock);
	if (vm_is_stopped(api->vm))
		err = -ESRCH;
	else if (!api->user_paused) {
		err = vm_pause(api->vm);
		api->user_paused = err == 0;
	}
	pthread_mutex_unlock(&api->action_lock);
	if (err == -ESRCH)
		return api_error(out, MHD_HTTP_CONFLICT, "the VM has stopped");
	if (err)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "pause failed: %s",
				 strerror(-err));
	return reply_info(api, out);
}

static int do_resume(struct api *api, struct json_object **out)
{
	bool stopped;

	pthread_mutex_lock(&api->action_lock);
	stopped = vm_is_stopped(api->vm);
	/* Only the API's own pause is undone: another holder's (a sweep) stays. */
	if (!stopped && api->user_paused) {
		vm_resume(api->vm);
		api->user_paused = false;
	}
	pthread_mutex_unlock(&api->action_lock);
	if (stopped)
		return api_error(out, MHD_HTTP_CONFLICT, "the VM has stopped");
	return reply_info(api, out);
}

static int h_pause(struct api *api, const struct api_req *req, struct json_object **out)
{
	int status = check_no_fields(req, out);

	return status ? status : do_pause(api, out);
}

static int h_resume(struct api *api, const struct api_req *req, struct json_object **out)
{
	int status = check_no_fields(req, out);

	return status ? status : do_resume(api, out);
}

static int h_shutdown(struct api *api, const struct api_req *req, struct json_object **out)
{
	int status = check_no_fields(req, out);

	if (status)
		return status;
	/* Asynchronous: vm_wait() in the VMM's main thread returns and tears down. */
	vm_request_stop(api->vm, VM_STOP_USER);
	return reply_info(api, out);
}

static int h_vm(struct api *api, const struct api_req *req, struct json_object **out)
{
	struct json_object *state;
	const char *want;

	if (req->method == M_GET)
		return reply_info(api, out);
	/* PATCH /vm {"state": "paused" | "running"} */
	if (!req->body || !json_object_object_get_ex(req->body, "state", &state) ||
	    !json_object_is_type(state, json_type_string))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "expected {\"state\": \"paused\"} or {\"state\": \"running\"}");
	if (json_object_object_length(req->body) != 1)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "only \"state\" can be changed");
	want = json_object_get_string(state);
	if (!strcmp(want, "paused"))
		return do_pause(api, out);
	if (!strcmp(want, "running"))
		return do_resume(api, out);
	return api_error(out, MHD_HTTP_BAD_REQUEST,
			 "state must be \"paused\" or \"running\", not \"%.32s\"", want);
}

static int h_stats(struct api *api, const struct api_req *req, struct json_object **out)
{
	*out = vm_stats(api);
	return *out ? MHD_HTTP_OK : api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
}

static int h_balloon(struct api *api, const struct api_req *req, struct json_object **out)
{
	return api_balloon(api, req->method == M_PUT, req->body, out);
}

static int h_sweep(struct api *api, const struct api_req *req, struct json_object **out)
{
	return api_sweep(api, req->body, out);
}

static int h_version(struct api *api, const struct api_req *req, struct json_object **out)
{
	*out = json_object_new_object();
	if (!*out)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	add_str(*out, "name", "tern");
	json_object_object_add(*out, "api_version", json_object_new_int(API_VERSION));
	return MHD_HTTP_OK;
}

/*
 * Restore into a running VM has its endpoint reserved and its request body
 * checked, but is not implemented yet: 501, never a pretend success.
 */
static int not_yet(const struct api_req *req, struct json_object **out, const char *what,
		   bool needs_path)
{
	struct json_object *path;

	if (needs_path && (!req->body || !json_object_object_get_ex(req->body, "path", &path) ||
			   !json_object_is_type(path, json_type_string)))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "expected {\"path\": \"...\"}");
	return api_error(out, MHD_HTTP_NOT_IMPLEMENTED, "%s is not implemented yet", what);
}

static int h_snapshot(struct api *api, const struct api_req *req, struct json_object **out)
{
	return api_snapshot(api, req->body, out);
}

static int h_restore(struct api *api, const struct api_req *req, struct json_object **out)
{
	return not_yet(req, out, "restore", true);
}

static int h_clone(struct api *api, const struct api_req *req, struct json_object **out)
{
	return api_clone(api, req->body, out);
}

static const struct api_route routes[] = {
    {"/version", M_GET, "GET", h_version},
    {"/vm", M_GET | M_PATCH, "GET, PATCH", h_vm},
    {"/vm/stats", M_GET, "GET", h_stats},
    {"/vm/pause", M_PUT | M_POST, "PUT, POST", h_pause},
    {"/vm/resume", M_PUT | M_POST, "PUT, POST", h_resume},
    {"/vm/shutdown", M_PUT | M_POST, "PUT, POST", h_shutdown},
    {"/vm/snapshot", M_PUT | M_POST, "PUT, POST", h_snapshot},
    {"/vm/restore", M_PUT | M_POST, "PUT, POST", h_restore},
    {"/vm/clone", M_PUT | M_POST, "PUT, POST", h_clone},
    {"/vm/balloon", M_GET | M_PUT, "GET, PUT", h_balloon},
    {"/vm/sweep", M_PUT | M_POST, "PUT, POST", h_sweep},
};

static unsigned method_bit(const char *m)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {{"GET", M_GET}, {"PUT", M_PUT}, {"POST", M_POST}, {"PATCH", M_PATCH}};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(m, names[i].name))
			return names[i].bit;
	return 0;
}

/* Parse a request body: empty means none; otherwise exactly one JSON object. */
static int parse_body(const char *body, size_t len, struct json_object **obj,
		      struct json_object **out)
{
	struct json_tokener *tok;
	size_t i;

	*obj = NULL;
	for (i = 0; i < len && strchr(" \t\r\n", body[i]) && body[i]; i++)
		;
	if (i == len)
		return 0;
	if (memchr(body, 0, len))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "request body contains a NUL byte");
	tok = json_tokener_new_ex(JSON_MAX_DEPTH);
	if (!tok)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	*obj = json_tokener_parse_ex(tok, body, (int)len);
	if (!*obj || json_tokener_get_error(tok) != json_tokener_success) {
		enum json_tokener_error e = json_tokener_get_error(tok);

		json_object_put(*obj);
		*obj = NULL;
		json_tokener_free(tok);
		return api_error(out, MHD_HTTP_BAD_REQUEST, "bad JSON: %s",
				 e == json_tokener_continue ? "unexpected end of input"
							    : json_tokener_error_desc(e));
	}
	for (i = json_tokener_get_parse_end(tok); i < len; i++) {
		if (!strchr(" \t\r\n", body[i])) {
			json_tokener_free(tok);
			json_object_put(*obj);
			*obj = NULL;
			return api_error(out, MHD_HTTP_BAD_REQUEST,
					 "bad JSON: trailing data after the object");
		}
	}
	json_tokener_free(tok);
	if (!json_object_is_type(*obj, json_type_object)) {
		json_object_put(*obj);
		*obj = NULL;
		return api_error(out, MHD_HTTP_BAD_REQUEST, "the body must be a JSON object");
	}
	return 0;
}

int api_dispatch(struct api *api, const char *method, const char *url, const char *body, size_t len,
		 struct json_object **out, const char **allow)
{
	const struct api_route *r = NULL;
	struct api_req req = {.method = method_bit(method)};
	int status;

	*out = NULL;
	*allow = NULL;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (!strcmp(url, routes[i].path))
			r = &routes[i];
	if (!r && api_is_disks_url(url)) {
		status = parse_body(body, len, &req.body, out);
		if (status)
			return status;
		status = api_disks(api, method, url, req.body, out, allow);
		json_object_put(req.body);
		return status;
	}
	if (!r)
		return api_error(out, MHD_HTTP_NOT_FOUND, "no such endpoint: %.128s", url);
	if (!(req.method & r->methods)) {
		*allow = r->allow;
		return api_error(out, MHD_HTTP_METHOD_NOT_ALLOWED,
				 "%.16s is not allowed on %s (%s)", method, r->path, r->allow);
	}
	status = parse_body(body, len, &req.body, out);
	if (status)
		return status;
	status = r->fn(api, &req, out);
	json_object_put(req.body);
	return status;
}
