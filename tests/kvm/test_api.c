/*
 * The control API driving a real guest on KVM: vCPU 0 counts in guest memory
 * and reports every 1024th step with an OUT to a counting device; vCPU 1
 * waits in KVM for a SIPI that never comes. Over real HTTP on the Unix
 * socket: info, pause (the count stops), resume (it moves again), stats (exit
 * counts grow, the device's counters show), the error answers while the
 * guest runs, two clients at once, and shutdown (vm_wait() returns).
 */
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "api/stats.h"
#include "kvm/lib/kvm_util.h"
#include "unit/api_util.h"

#define TICK_PORT 0x521

__asm__(".pushsection .text\n"
	".globl guest_api_start, guest_api_end\n"
	"guest_api_start:\n"
	"	mov $0x200000, %rdi\n" /* GUEST_DATA_ADDR */
	"	xor %eax, %eax\n"
	"1:	incq (%rdi)\n"
	"	inc %eax\n"
	"	test $0x3ff, %eax\n"
	"	jnz 1b\n"
	"	mov $0x521, %dx\n"
	"	out %al, %dx\n"
	"	jmp 1b\n"
	"guest_api_end:\n"
	".popsection\n");
extern const char guest_api_start[], guest_api_end[];

struct ticker {
	uint64_t ticks;
};

static void tick_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct ticker *t = opaque;

	__atomic_fetch_add(&t->ticks, 1, __ATOMIC_RELAXED);
}

static void tick_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	memset(data, 0xff, size);
}

static const struct bus_ops tick_ops = {.read = tick_read, .write = tick_write};

static void tick_stats(void *dev, struct dev_stats *st)
{
	struct ticker *t = dev;

	dev_stats_add(st, "ticks", __atomic_load_n(&t->ticks, __ATOMIC_RELAXED));
}

static const struct device_ops tick_dev_ops = {.name = "ticker", .stats = tick_stats};

static uint64_t guest_count(struct vm *vm)
{
	uint64_t *p = gm_ptr(&vm->mem, GUEST_DATA_ADDR, 8);

	TEST_ASSERT(p, "the counter is not in guest RAM");
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* True once the guest's count passes n, waiting at most 20 s (PVM is slow). */
static bool count_passes(struct vm *vm, uint64_t n)
{
	double t0 = test_now();

	while (test_now() - t0 < 20) {
		if (guest_count(vm) > n)
			return true;
		usleep(1000);
	}
	return false;
}

static void expect_status(const char *sock, const char *method, const char *path, const char *body,
			  int want)
{
	struct json_object *o;
	int got = api_call(sock, method, path, body, &o);

	TEST_ASSERT(got == want, "%s %s: got %d, expected %d", method, path, got, want);
	if (want >= 400)
		TEST_ASSERT(jstr(o, "error"), "%s %s: no error message", method, path);
	json_object_put(o);
}

static void check_info_and_stats(struct vm *vm, const char *sock, struct ticker *t)
{
	struct json_object *a, *b, *dev;
	uint64_t n;

	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm", NULL, &a), 200);
	TEST_ASSERT(!strcmp(jstr(a, "state"), "running"), "state %s", jstr(a, "state"));
	TEST_ASSERT(!strcmp(jstr(a, "backend"), "kvm"), "backend %s", jstr(a, "backend"));
	TEST_ASSERT_EQ(ju64(a, "vcpus"), 2);
	TEST_ASSERT_EQ(ju64(a, "memory_bytes"), 16 << 20);
	json_object_put(a);

	TEST_ASSERT(count_passes(vm, 0), "the guest never started counting");
	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm/stats", NULL, &a), 200);
	n = __atomic_load_n(&t->ticks, __ATOMIC_RELAXED);
	TEST_ASSERT(count_passes(vm, guest_count(vm) + 8 * 1024), "the guest stopped counting");
	while (__atomic_load_n(&t->ticks, __ATOMIC_RELAXED) < n + 4)
		usleep(1000);
	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm/stats", NULL, &b), 200);
	TEST_ASSERT(stats_exits(b) > stats_exits(a), "exits did not grow: %llu -> %llu",
		    (unsigned long long)stats_exits(a), (unsigned long long)stats_exits(b));
	TEST_ASSERT(ju64(json_object_array_get_idx(jget(b, "vcpus"), 0), "exits.pio") > 0,
		    "vCPU 0 shows no port I/O exits");
	dev = json_object_array_get_idx(jget(b, "devices"), 0);
	TEST_ASSERT(!strcmp(jstr(dev, "name"), "ticker"), "device %s", jstr(dev, "name"));
	TEST_ASSERT(ju64(dev, "counters.ticks") > n, "device counter did not grow");
	TEST_ASSERT(ju64(b, "memory.host_rss_bytes") > ju64(b, "memory.guest_resident_bytes"),
		    "RSS must cover the resident guest pages");
	json_object_put(a);
	json_object_put(b);
}

static void check_pause_resume(struct vm *vm, const char *sock)
{
	struct json_object *o, *s1, *s2;
	uint64_t c;

	TEST_ASSERT_EQ(api_call(sock, "PUT", "/vm/pause", NULL, &o), 200);
	TEST_ASSERT(!strcmp(jstr(o, "state"), "paused"), "state %s", jstr(o, "state"));
	json_object_put(o);
	TEST_ASSERT_EQ(vm->vcpus[0].state, VCPU_PAUSED);
	TEST_ASSERT_EQ(vm->vcpus[1].state, VCPU_PAUSED);
	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm/stats", NULL, &s1), 200);
	c = guest_count(vm);
	usleep(200000);
	TEST_ASSERT(guest_count(vm) == c, "a paused guest counted from %llu to %llu",
		    (unsigned long long)c, (unsigned long long)guest_count(vm));
	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm/stats", NULL, &s2), 200);
	TEST_ASSERT_EQ(stats_exits(s2), stats_exits(s1));
	json_object_put(s1);
	json_object_put(s2);

	TEST_ASSERT_EQ(api_call(sock, "PUT", "/vm/resume", NULL, &o), 200);
	TEST_ASSERT(!strcmp(jstr(o, "state"), "running"), "state %s", jstr(o, "state"));
	json_object_put(o);
	TEST_ASSERT(count_passes(vm, c), "the guest did not count again after resume");
}

static void check_errors(struct vm *vm, const char *sock)
{
	static const char huge[] = "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
				   "Content-Length: 1073741824\r\n\r\n{{{{{{{{";
	char resp[2048];
	double t0;
	int fd;

	expect_status(sock, "PUT", "/vm/pause", "{\"x\": ", 400);
	expect_status(sock, "GET", "/vm/teleport", NULL, 404);
	expect_status(sock, "DELETE", "/vm", NULL, 405);
	expect_status(sock, "GET", "/vm/shutdown", NULL, 405);
	/* This test's VM has no machine description: refused, not half-saved. */
	expect_status(sock, "PUT", "/vm/snapshot", "{\"path\": \"snap\"}", 409);
	TEST_ASSERT(access("snap", F_OK) != 0, "a refused snapshot left a file behind");
	TEST_ASSERT_EQ(raw_exchange(sock, huge, sizeof(huge) - 1, resp, sizeof(resp), 10000), 413);

	/* Two clients: one sends half a request and waits; the other is served at once. */
	fd = http_unix_connect(sock, 30000);
	TEST_ASSERT(fd >= 0, "connect: %s", strerror(-fd));
	TEST_ASSERT_EQ(send(fd, "PUT /vm/pause HTTP/1.1\r\n", 24, 0), 24);
	t0 = test_now();
	expect_status(sock, "GET", "/vm", NULL, 200);
	expect_status(sock, "GET", "/vm/stats", NULL, 200);
	TEST_ASSERT(test_now() - t0 < 5, "the second client waited %.1f s", test_now() - t0);
	close(fd);
	/* None of it stopped the guest. */
	TEST_ASSERT(count_passes(vm, guest_count(vm)), "the guest stopped counting");
}

int main(void)
{
	char dir[] = "/tmp/tern-api-kvm-XXXXXX", sock[64];
	struct ticker t = {0};
	struct api *api;
	struct json_object *o;
	struct vm vm;
	double t0;

	kvm_require();
	TEST_ASSERT(mkdtemp(dir), "mkdtemp");
	snprintf(sock, sizeof(sock), "%s/api.sock", dir);
	test_vm_create(&vm, &cpu_backend_kvm, 16 << 20, 2);
	TEST_ASSERT_EQ(bus_register(&vm.pio, TICK_PORT, 1, &tick_ops, &t, "ticker"), 0);
	TEST_ASSERT_EQ(vm_add_device(&vm, &tick_dev_ops, &t), 0);
	test_guest_load(&vm, guest_api_start, guest_api_end);
	test_vcpu_enter_long_mode(&vm.vcpus[0], 0);
	TEST_ASSERT_EQ(api_start(&vm, sock, &api), 0);
	TEST_ASSERT_EQ(vm_start(&vm), 0);

	check_info_and_stats(&vm, sock, &t);
	check_pause_resume(&vm, sock);
	check_errors(&vm, sock);

	t0 = test_now();
	alarm(60); /* a shutdown that never lands must fail the test, not hang it */
	TEST_ASSERT_EQ(api_call(sock, "PUT", "/vm/shutdown", NULL, &o), 200);
	json_object_put(o);
	TEST_ASSERT_EQ(vm_wait(&vm), VM_STOP_USER);
	alarm(0);
	TEST_ASSERT_EQ(vm.vcpus[0].state, VCPU_STOPPED);
	TEST_ASSERT_EQ(vm.vcpus[1].state, VCPU_STOPPED);
	TEST_ASSERT_EQ(api_call(sock, "GET", "/vm", NULL, &o), 200);
	TEST_ASSERT(!strcmp(jstr(o, "state"), "stopped"), "state %s", jstr(o, "state"));
	json_object_put(o);
	printf("shutdown to vm_wait(): %.3f s\n", test_now() - t0);

	api_stop(api);
	TEST_ASSERT(access(sock, F_OK) < 0, "api_stop() left the socket behind");
	vm_destroy(&vm);
	rmdir(dir);
	printf("PASS: control API on a KVM guest: info, stats, pause, resume, errors, shutdown\n");
	return 0;
}
