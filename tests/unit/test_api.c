/*
 * The control API over its real Unix socket, against a struct vm whose vCPU
 * threads run a fake CPU backend: every loop of a fake vCPU is one port
 * write, so exit counts advance exactly while the VM runs. Covers the socket
 * file rules, every endpoint, the error answers, concurrent and slow
 * clients, and tern ctl. The same API on a KVM guest is tests/kvm/test_api.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/api.h"
#include "api/stats.h"
#include "cmd/cmd.h"
#include "unit/api_util.h"
#include "vmm/vm.h"

#define POST_PORT 0x80

struct fake_vcpu {
	int kicked;
};

static int fake_vm_create(struct vm *vm)
{
	return 0;
}

static void fake_vm_destroy(struct vm *vm)
{
}

static int fake_vcpu_create(struct vcpu *v)
{
	v->backend = calloc(1, sizeof(struct fake_vcpu));
	return v->backend ? 0 : -ENOMEM;
}

static void fake_vcpu_destroy(struct vcpu *v)
{
	free(v->backend);
	v->backend = NULL;
}

/* "Run the guest": one port write every 100 us until kicked. */
static enum vcpu_exit fake_run(struct vcpu *v)
{
	struct fake_vcpu *f = v->backend;
	uint8_t b = 0x42;

	while (!__atomic_exchange_n(&f->kicked, 0, __ATOMIC_SEQ_CST)) {
		vm_pio(v, POST_PORT, &b, 1, 1);
		usleep(100);
	}
	return VCPU_EXIT_KICK;
}

static void fake_kick(struct vcpu *v)
{
	struct fake_vcpu *f = v->backend;

	__atomic_store_n(&f->kicked, 1, __ATOMIC_SEQ_CST);
}

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .vcpu_destroy = fake_vcpu_destroy,
    .run = fake_run,
    .kick = fake_kick,
};

/* A device on the POST port that counts writes and reports them through the stats hook. */
struct post_dev {
	uint64_t writes;
	int paused, resumed;
};

static void post_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct post_dev *d = opaque;

	__atomic_fetch_add(&d->writes, 1, __ATOMIC_SEQ_CST);
}

static const struct bus_ops post_ops = {.write = post_write};

static void post_pause(void *p)
{
	((struct post_dev *)p)->paused++;
}

static void post_resume(void *p)
{
	((struct post_dev *)p)->resumed++;
}

static void post_stats(void *p, struct dev_stats *st)
{
	struct post_dev *d = p;

	dev_stats_add(st, "writes", __atomic_load_n(&d->writes, __ATOMIC_SEQ_CST));
	dev_stats_add(st, "pauses", (uint64_t)d->paused);
}

static const struct device_ops post_dev_ops = {
    .name = "post", .pause = post_pause, .resume = post_resume, .stats = post_stats};

/* A second device without a stats hook: listed with no counters. */
static const struct device_ops quiet_dev_ops = {.name = "quiet"};

struct fixture {
	char dir[64];
	char sock[128];
	struct vm vm;
	struct post_dev dev;
	struct api *api;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct vm_config cfg = {.mem_size = 16 << 20, .ncpus = 2, .cpu = &fake_backend};

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/tern-api-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/api.sock", f->dir);
	assert_int_equal(vm_create(&f->vm, &cfg), 0);
	assert_int_equal(bus_register(&f->vm.pio, POST_PORT, 1, &post_ops, &f->dev, "post"), 0);
	assert_int_equal(vm_add_device(&f->vm, &quiet_dev_ops, NULL), 0);
	assert_int_equal(vm_add_device(&f->vm, &post_dev_ops, &f->dev), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	api_stop(f->api);
	vm_destroy(&f->vm);
	unlink(f->sock);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void start_api(struct fixture *f)
{
	assert_int_equal(api_start(&f->vm, f->sock, &f->api), 0);
}

static void start_all(struct fixture *f)
{
	start_api(f);
	assert_int_equal(vm_start(&f->vm), 0);
}

static uint64_t post_writes(struct fixture *f)
{
	return __atomic_load_n(&f->dev.writes, __ATOMIC_SEQ_CST);
}

/* Wait up to 5 s for the guest to make progress past n writes. */
static bool advances_past(struct fixture *f, uint64_t n)
{
	for (int i = 0; i < 5000; i++) {
		if (post_writes(f) > n + 5)
			return true;
		usleep(1000);
	}
	return false;
}

static int count_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

/* ---- the socket file ---- */

static void test_socket_mode_and_removal(void **state)
{
	struct fixture *f = *state;
	int fds = count_fds();
	struct stat st;

	start_api(f);
	assert_int_equal(lstat(f->sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	api_stop(f->api);
	f->api = NULL;
	/* api_stop() removes the file and closes every descriptor it made. */
	assert_int_equal(lstat(f->sock, &st), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(count_fds(), fds);
}

static void test_stale_socket_replaced(void **state)
{
	struct fixture *f = *state;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct json_object *o;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	/* What a crashed tern leaves: a socket file nobody listens on. */
	strcpy(sa.sun_path, f->sock);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, NULL), -ECONNREFUSED);
	start_api(f);
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, &o), 200);
	assert_string_equal(jstr(o, "state"), "created");
	json_object_put(o);
}

static void test_regular_file_never_replaced(void **state)
{
	struct fixture *f = *state;
	struct api *api = NULL;
	char buf[16] = {0};
	int fd = open(f->sock, O_CREAT | O_WRONLY | O_EXCL, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, "precious", 8), 8);
	close(fd);
	assert_int_equal(api_start(&f->vm, f->sock, &api), -EEXIST);
	assert_null(api);
	fd = open(f->sock, O_RDONLY);
	assert_int_equal(read(fd, buf, sizeof(buf)), 8);
	close(fd);
	assert_string_equal(buf, "precious");
}

static void test_live_socket_not_stolen(void **state)
{
	struct fixture *f = *state;
	struct api *second = NULL;
	struct json_object *o;
	char longpath[200];

	start_api(f);
	assert_int_equal(api_start(&f->vm, f->sock, &second), -EADDRINUSE);
	assert_null(second);
	assert_int_equal(api_call(f->sock, "GET", "/version", NULL, &o), 200);
	assert_int_equal(ju64(o, "api_version"), 1);
	json_object_put(o);
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = 0;
	assert_int_equal(api_start(&f->vm, longpath, &second), -ENAMETOOLONG);
}

/* ---- endpoints ---- */

static void test_info(void **state)
{
	struct fixture *f = *state;
	struct json_object *o;

	start_all(f);
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, &o), 200);
	assert_non_null(o);
	assert_string_equal(jstr(o, "state"), "running");
	assert_string_equal(jstr(o, "backend"), "fake");
	assert_int_equal(ju64(o, "vcpus"), 2);
	assert_int_equal(json_object_array_length(jget(o, "vcpu_states")), 2);
	assert_int_equal(ju64(o, "memory_bytes"), 16 << 20);
	assert_int_equal(ju64(o, "memory_mib"), 16);
	assert_null(jget(o, "stop_reason") ? json_object_get_string(jget(o, "stop_reason")) : NULL);
	assert_true(json_object_get_double(jget(o, "uptime_s")) >= 0);
	json_object_put(o);
}

static void test_pause_resume(void **state)
{
	struct fixture *f = *state;
	struct json_object *o;
	uint64_t n;

	start_all(f);
	assert_true(advances_past(f, 0));
	assert_int_equal(api_call(f->sock, "PUT", "/vm/pause", NULL, &o), 200);
	assert_string_equal(jstr(o, "state"), "paused");
	json_object_put(o);
	assert_int_equal(f->dev.paused, 1);
	for (int i = 0; i < 2; i++)
		assert_int_equal(f->vm.vcpus[i].state, VCPU_PAUSED);
	n = post_writes(f);
	usleep(50000);
	assert_int_equal(post_writes(f), n);
	/* Pausing again is a no-op, not a second device pause. */
	assert_int_equal(api_call(f->sock, "POST", "/vm/pause", "{}", NULL), 200);
	assert_int_equal(f->dev.paused, 1);

	assert_int_equal(api_call(f->sock, "PUT", "/vm/resume", NULL, &o), 200);
	assert_string_equal(jstr(o, "state"), "running");
	json_object_put(o);
	assert_int_equal(f->dev.resumed, 1);
	assert_true(advances_past(f, n));
	/* Resuming a running VM does not resume devices that were never paused. */
	assert_int_equal(api_call(f->sock, "PUT", "/vm/resume", NULL, NULL), 200);
	assert_int_equal(f->dev.resumed, 1);
}

static void test_patch_state(void **state)
{
	struct fixture *f = *state;
	struct json_object *o;
	uint64_t n;

	start_all(f);
	assert_int_equal(api_call(f->sock, "PATCH", "/vm", "{\"state\": \"paused\"}", &o), 200);
	assert_string_equal(jstr(o, "state"), "paused");
	json_object_put(o);
	n = post_writes(f);
	usleep(20000);
	assert_int_equal(post_writes(f), n);
	assert_int_equal(api_call(f->sock, "PATCH", "/vm", "{\"state\":\"running\"}", NULL), 200);
	assert_true(advances_past(f, n));
	assert_int_equal(api_call(f->sock, "PATCH", "/vm", "{\"state\":\"frozen\"}", &o), 400);
	assert_non_null(strstr(jstr(o, "error"), "frozen"));
	json_object_put(o);
	assert_int_equal(api_call(f->sock, "PATCH", "/vm", "{\"state\":1}", NULL), 400);
	assert_int_equal(api_call(f->sock, "PATCH", "/vm", NULL, NULL), 400);
	assert_int_equal(
	    api_call(f->sock, "PATCH", "/vm", "{\"state\":\"paused\",\"vcpus\":4}", NULL), 400);
}

static void test_stats(void **state)
{
	struct fixture *f = *state;
	struct json_object *a, *b, *devs, *post = NULL;
	uint64_t pio0;

	start_all(f);
	assert_true(advances_past(f, 0));
	assert_int_equal(api_call(f->sock, "GET", "/vm/stats", NULL, &a), 200);
	assert_true(advances_past(f, post_writes(f)));
	assert_int_equal(api_call(f->sock, "GET", "/vm/stats", NULL, &b), 200);
	/* Every fake-guest loop is one port write: exits must grow between two reads. */
	assert_true(stats_exits(b) > stats_exits(a));
	assert_int_equal(ju64(b, "exits_total"), stats_exits(b));
	assert_int_equal(json_object_array_length(jget(b, "vcpus")), 2);
	pio0 = ju64(json_object_array_get_idx(jget(b, "vcpus"), 0), "exits.pio");
	assert_true(pio0 > 0 && pio0 != UINT64_MAX);
	assert_int_equal(ju64(b, "memory.guest_bytes"), 16 << 20);
	assert_true(ju64(b, "memory.host_rss_bytes") > (1u << 20));
	assert_true(ju64(b, "memory.guest_resident_bytes") <= (16u << 20));
	assert_true(ju64(b, "api.requests") >= 1);
	/* Both devices are listed; the one with a hook reports its real counter. */
	devs = jget(b, "devices");
	assert_int_equal(json_object_array_length(devs), 2);
	for (size_t i = 0; i < 2; i++) {
		struct json_object *d = json_object_array_get_idx(devs, i);

		if (!strcmp(jstr(d, "name"), "post"))
			post = d;
		else
			assert_int_equal(json_object_object_length(jget(d, "counters")), 0);
	}
	assert_non_null(post);
	assert_true(ju64(post, "counters.writes") > 0);
	assert_true(ju64(post, "counters.writes") <= post_writes(f));
	assert_int_equal(ju64(post, "counters.pauses"), 0);
	json_object_put(a);
	json_object_put(b);
}

static void test_dev_stats_bounds(void **state)
{
	struct dev_stats st = {0};
	char longname[100];

	assert_int_equal(dev_stats_add(&st, "", 1), -EINVAL);
	assert_int_equal(dev_stats_add(&st, NULL, 1), -EINVAL);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(dev_stats_add(&st, longname, 7), 0);
	assert_int_equal(strlen(st.c[0].name), DEV_STAT_NAME_MAX - 1);
	for (int i = 1; i < DEV_STATS_MAX; i++)
		assert_int_equal(dev_stats_add(&st, "c", (uint64_t)i), 0);
	assert_int_equal(dev_stats_add(&st, "one_too_many", 1), -ENOSPC);
	assert_int_equal(st.n, DEV_STATS_MAX);
}

static void test_shutdown(void **state)
{
	struct fixture *f = *state;
	struct json_object *o;

	start_all(f);
	assert_int_equal(api_call(f->sock, "PUT", "/vm/pause", NULL, NULL), 200);
	/* Shutdown works on a paused VM too, and vm_wait() returns. */
	assert_int_equal(api_call(f->sock, "PUT", "/vm/shutdown", NULL, &o), 200);
	assert_string_equal(jstr(o, "state"), "stopped");
	json_object_put(o);
	assert_int_equal(vm_wait(&f->vm), VM_STOP_USER);
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, &o), 200);
	assert_string_equal(jstr(o, "state"), "stopped");
	assert_string_equal(jstr(o, "stop_reason"), vm_stop_reason_str(VM_STOP_USER));
	json_object_put(o);
	assert_int_equal(api_call(f->sock, "PUT", "/vm/pause", NULL, &o), 409);
	assert_non_null(jstr(o, "error"));
	json_object_put(o);
	assert_int_equal(api_call(f->sock, "PUT", "/vm/resume", NULL, NULL), 409);
}

/* ---- errors ---- */

static void expect_error(const char *sock, const char *method, const char *path, const char *body,
			 int status, const char *needle)
{
	struct json_object *o;
	const char *msg;

	assert_int_equal(api_call(sock, method, path, body, &o), status);
	assert_non_null(o);
	msg = jstr(o, "error");
	assert_non_null(msg);
	if (needle && !strstr(msg, needle))
		fail_msg("error '%s' does not mention '%s'", msg, needle);
	json_object_put(o);
}

static void test_bad_requests(void **state)
{
	struct fixture *f = *state;

	start_all(f);
	expect_error(f->sock, "GET", "/nope", NULL, 404, "/nope");
	expect_error(f->sock, "GET", "/vm/", NULL, 404, NULL);
	expect_error(f->sock, "DELETE", "/vm", NULL, 405, "GET, PATCH");
	expect_error(f->sock, "GET", "/vm/pause", NULL, 405, "PUT");
	expect_error(f->sock, "POST", "/vm/stats", NULL, 405, NULL);
	expect_error(f->sock, "PUT", "/vm/pause", "{\"now\":", 400, "bad JSON");
	expect_error(f->sock, "PUT", "/vm/pause", "{]", 400, "bad JSON");
	expect_error(f->sock, "PUT", "/vm/pause", "{} {}", 400, "trailing");
	expect_error(f->sock, "PUT", "/vm/pause", "[1, 2]", 400, "object");
	expect_error(f->sock, "PUT", "/vm/pause", "\"x\"", 400, "object");
	expect_error(f->sock, "PUT", "/vm/pause", "{\"force\": true}", 400, "force");
	expect_error(f->sock, "PATCH", "/vm",
		     "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]"
		     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
		     400, "bad JSON");
	/* This VM was built without a machine description: it cannot be snapshotted. */
	expect_error(f->sock, "PUT", "/vm/snapshot", "{\"path\": \"/tmp/x\"}", 409,
		     "cannot be snapshotted");
	expect_error(f->sock, "PUT", "/vm/snapshot", NULL, 400, "path");
	expect_error(f->sock, "PUT", "/vm/snapshot", "{\"state\": 7}", 400, "state");
	/* Restore into a running VM is reserved: 501, not a pretend success. */
	expect_error(f->sock, "PUT", "/vm/restore", "{\"path\": \"/tmp/x\"}", 501, NULL);
	expect_error(f->sock, "PUT", "/vm/clone", NULL, 400, "dir");
	expect_error(f->sock, "PUT", "/vm/clone", "{\"dir\": \"/tmp/x\", \"count\": 0}", 400,
		     "count");
	/* The VM is untouched by all of that. */
	assert_true(advances_past(f, post_writes(f)));
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, NULL), 200);
}

static void test_raw_http_errors(void **state)
{
	struct fixture *f = *state;
	static const char nul_body[] = "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
				       "Content-Length: 3\r\n\r\n{\0}";
	static const char junk[] = "\x16\x03\x01garbage\r\n\r\n";
	static const char del[] =
	    "DELETE /vm/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	char resp[4096];
	struct json_object *o;

	start_all(f);
	/* 405 carries an Allow header. */
	assert_int_equal(raw_exchange(f->sock, del, strlen(del), resp, sizeof(resp), 5000), 405);
	assert_non_null(strstr(resp, "Allow: GET\r\n"));
	assert_non_null(strstr(resp, "Content-Type: application/json"));
	/* A NUL inside the body. */
	assert_int_equal(
	    raw_exchange(f->sock, nul_body, sizeof(nul_body) - 1, resp, sizeof(resp), 5000), 400);
	o = raw_body(resp);
	assert_non_null(jstr(o, "error"));
	json_object_put(o);
	/* Not HTTP at all: an answer or a close, never a hang, and the server lives on. */
	assert_true(raw_exchange(f->sock, junk, sizeof(junk) - 1, resp, sizeof(resp), 5000) >= 0);
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, NULL), 200);
}

static void test_huge_bodies(void **state)
{
	struct fixture *f = *state;
	static const char head[] = "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
				   "Content-Length: 104857600\r\n\r\n";
	size_t big = 4 << 20;
	char *req = malloc(sizeof(head) + big), resp[4096], *p;
	double t0 = api_now();
	struct json_object *o;

	assert_non_null(req);
	start_all(f);
	/* Declared 100 MiB: refused at once, before the body is read. */
	memcpy(req, head, sizeof(head) - 1);
	memset(req + sizeof(head) - 1, ' ', big);
	assert_int_equal(
	    raw_exchange(f->sock, req, sizeof(head) - 1 + big, resp, sizeof(resp), 10000), 413);
	o = raw_body(resp);
	assert_non_null(jstr(o, "error"));
	json_object_put(o);

	/* Chunked, no length up front: drained, then refused. */
	p = req + sprintf(req, "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			       "Transfer-Encoding: chunked\r\n\r\n");
	for (int i = 0; i < 40; i++) {
		p += sprintf(p, "1000\r\n");
		memset(p, ' ', 0x1000);
		p += 0x1000;
		p += sprintf(p, "\r\n");
	}
	p += sprintf(p, "0\r\n\r\n");
	assert_int_equal(raw_exchange(f->sock, req, (size_t)(p - req), resp, sizeof(resp), 10000),
			 413);
	/* A body right at the limit is read (and then judged as JSON). */
	memset(req, ' ', API_MAX_BODY);
	req[0] = '{';
	req[API_MAX_BODY - 1] = '}';
	req[API_MAX_BODY] = 0;
	assert_int_equal(api_call(f->sock, "PUT", "/vm/resume", req, NULL), 200);
	req[API_MAX_BODY] = ' ';
	req[API_MAX_BODY + 1] = 0;
	expect_error(f->sock, "PUT", "/vm/resume", req, 413, NULL);
	assert_true(api_now() - t0 < 10);
	free(req);
	/* None of that paused the VM. */
	assert_true(advances_past(f, post_writes(f)));
}

static void send_str(int fd, const char *str)
{
	assert_int_equal(send(fd, str, strlen(str), 0), (ssize_t)strlen(str));
}

struct hammer {
	const char *sock;
	int ok;
};

static void *hammer_thread(void *arg)
{
	struct hammer *h = arg;

	for (int i = 0; i < 20; i++)
		h->ok += api_call(h->sock, "GET", i & 1 ? "/vm/stats" : "/vm", NULL, NULL) == 200;
	return NULL;
}

static void test_concurrent_clients(void **state)
{
	struct fixture *f = *state;
	struct hammer h[6];
	pthread_t t[6];

	start_all(f);
	for (int i = 0; i < 6; i++) {
		h[i] = (struct hammer){.sock = f->sock};
		assert_int_equal(pthread_create(&t[i], NULL, hammer_thread, &h[i]), 0);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(h[i].ok, 20);
	}
}

static void test_slow_client(void **state)
{
	struct fixture *f = *state;
	struct pollfd pfd;
	char buf[256];
	double t0;
	int fd;

	start_all(f);
	/* A client that sends half a request and then nothing. */
	fd = http_unix_connect(f->sock, 30000);
	assert_true(fd >= 0);
	send_str(fd, "GET /vm HTTP/1.1\r\nHo");
	/* Another client is served meanwhile, promptly. */
	t0 = api_now();
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, NULL), 200);
	assert_int_equal(api_call(f->sock, "PUT", "/vm/pause", NULL, NULL), 200);
	assert_int_equal(api_call(f->sock, "PUT", "/vm/resume", NULL, NULL), 200);
	assert_true(api_now() - t0 < 2);
	/* And the slow one is dropped after the idle timeout instead of holding on forever. */
	pfd = (struct pollfd){.fd = fd, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, (API_CONN_TIMEOUT_S + 5) * 1000), 1);
	assert_true(recv(fd, buf, sizeof(buf), 0) <= 0);
	assert_true(api_now() - t0 >= API_CONN_TIMEOUT_S - 1);
	close(fd);
}

static void test_stop_with_idle_clients(void **state)
{
	struct fixture *f = *state;
	int fds[3];
	double t0;

	start_all(f);
	/* Clients that connected and said nothing, or half a request, or a whole keep-alive one. */
	for (int i = 0; i < 3; i++) {
		fds[i] = http_unix_connect(f->sock, 30000);
		assert_true(fds[i] >= 0);
	}
	send_str(fds[1], "GET /vm HTTP/1.1\r\n");
	send_str(fds[2], "GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
	usleep(100000);
	/* tern run must not hang at exit waiting for them. */
	t0 = api_now();
	api_stop(f->api);
	f->api = NULL;
	assert_true(api_now() - t0 < 2);
	for (int i = 0; i < 3; i++)
		close(fds[i]);
}

static void test_connection_limit(void **state)
{
	struct fixture *f = *state;
	int fds[API_MAX_CONNS + 4], n = 0, r;
	double t0;

	start_all(f);
	/* More idle clients than the server serves at once... */
	for (; n < API_MAX_CONNS + 4; n++) {
		fds[n] = http_unix_connect(f->sock, 30000);
		if (fds[n] < 0)
			break;
	}
	assert_true(n >= API_MAX_CONNS);
	usleep(200000);
	/* ...and a new client is turned away at once (or served), never left hanging. */
	t0 = api_now();
	r = api_call(f->sock, "GET", "/vm", NULL, NULL);
	assert_true(r == 200 || r == -EPIPE || r == -ECONNRESET || r == -EPROTO);
	assert_true(api_now() - t0 < 2);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	usleep(200000);
	/* Once they are gone, everyone is served again. */
	assert_int_equal(api_call(f->sock, "GET", "/vm", NULL, NULL), 200);
}

/* ---- tern ctl ---- */

/* Run tern ctl with stdout and stderr captured; returns its exit status. */
static int run_ctl(char *out, size_t cap, int argc, char **argv)
{
	char path[] = "/tmp/tern-ctl-out-XXXXXX";
	int fd = mkstemp(path), so = dup(1), se = dup(2), rc;
	ssize_t n;

	assert_true(fd >= 0);
	fflush(stdout);
	fflush(stderr);
	dup2(fd, 1);
	dup2(fd, 2);
	rc = cmd_ctl(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(so, 1);
	dup2(se, 2);
	close(so);
	close(se);
	n = pread(fd, out, cap - 1, 0);
	out[n > 0 ? n : 0] = 0;
	close(fd);
	unlink(path);
	return rc;
}

static void test_ctl(void **state)
{
	struct fixture *f = *state;
	char out[16384];
	struct json_object *o;

	start_all(f);
	{
		char *argv[] = {"ctl", f->sock, "info", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 0);
		/* Pretty-printed, and still JSON. */
		assert_non_null(strstr(out, "\"state\": \"running\""));
		assert_non_null(strchr(out, '\n'));
		o = json_tokener_parse(out);
		assert_int_equal(ju64(o, "vcpus"), 2);
		json_object_put(o);
	}
	{
		char *argv[] = {"ctl", f->sock, "pause", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 0);
		assert_non_null(strstr(out, "\"paused\""));
		assert_int_equal(f->vm.vcpus[0].state, VCPU_PAUSED);
	}
	{
		char *argv[] = {"ctl", "--timeout", "5", f->sock, "resume", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 5, argv), 0);
		assert_true(advances_past(f, post_writes(f)));
	}
	{
		char *argv[] = {"ctl", f->sock, "stats", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 0);
		assert_non_null(strstr(out, "\"exits\""));
	}
	{
		char *argv[] = {"ctl", f->sock, "request", "GET", "/nope", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 5, argv), 1);
		assert_non_null(strstr(out, "HTTP 404: no such endpoint: /nope"));
	}
	{
		char *argv[] = {"ctl", f->sock, "snapshot", "/tmp/snap", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 4, argv), 1);
		assert_non_null(strstr(out, "HTTP 409"));
	}
	{
		char *argv[] = {"ctl", f->sock, "request", "PUT", "/vm/pause", "{oops", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 6, argv), 1);
		assert_non_null(strstr(out, "HTTP 400: bad JSON"));
	}
	{
		/* clone needs a directory, and a count of 1..64 */
		char *argv[] = {"ctl", f->sock, "clone", NULL};
		char *argv0[] = {"ctl", f->sock, "clone", "/tmp/clones", "0", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 2);
		assert_int_equal(run_ctl(out, sizeof(out), 5, argv0), 2);
	}
	{
		char *argv[] = {"ctl", f->sock, "frobnicate", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 2);
	}
	{
		char *argv[] = {"ctl", f->sock, NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 2, argv), 2);
	}
	{
		char *argv[] = {"ctl", "--help", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 2, argv), 0);
		assert_non_null(strstr(out, "usage: tern ctl"));
	}
	{
		char *argv[] = {"ctl", f->sock, "shutdown", NULL};

		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 0);
		assert_int_equal(vm_wait(&f->vm), VM_STOP_USER);
	}
	api_stop(f->api);
	f->api = NULL;
	{
		char *argv[] = {"ctl", f->sock, "info", NULL};

		/* Nobody listening: a clear error, not a hang. */
		assert_int_equal(run_ctl(out, sizeof(out), 3, argv), 1);
		assert_non_null(strstr(out, "No such file"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_socket_mode_and_removal, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stale_socket_replaced, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_regular_file_never_replaced, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_live_socket_not_stolen, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_info, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pause_resume, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_patch_state, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stats, setup, teardown),
	    cmocka_unit_test(test_dev_stats_bounds),
	    cmocka_unit_test_setup_teardown(test_shutdown, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_raw_http_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_huge_bodies, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_concurrent_clients, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_slow_client, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stop_with_idle_clients, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connection_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ctl, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
