/* Helpers for the KVM backend tests; see kvm_util.h. */
#include "kvm/lib/kvm_util.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "arch/x86/boot.h"

void test_skip(const char *fmt, ...)
{
	va_list ap;

	fflush(stderr);
	printf("SKIP: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(77);
}

void kvm_require(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		test_skip("/dev/kvm is not usable here: %s", strerror(errno));
	close(fd);
}

int __kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int r = ioctl(fd, req, arg);

	return r < 0 ? -errno : r;
}

int kvm_check_cap(struct vm *vm, long cap)
{
	int fd = vm ? cpu_kvm_vm_fd(vm) : open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	r = __kvm_ioctl(fd, KVM_CHECK_EXTENSION, (void *)cap);
	if (!vm)
		close(fd);
	return r;
}

int __test_vm_create(struct vm *vm, const struct cpu_backend *cpu, uint64_t mem, int ncpus)
{
	struct vm_config cfg = {.mem_size = mem, .ncpus = ncpus, .cpu = cpu};

	return vm_create(vm, &cfg);
}

void test_vm_create(struct vm *vm, const struct cpu_backend *cpu, uint64_t mem, int ncpus)
{
	int r = __test_vm_create(vm, cpu, mem, ncpus);

	TEST_ASSERT(r == 0, "vm_create(%s, %llu MiB, %d vCPUs) failed: %s", cpu->name,
		    (unsigned long long)(mem >> 20), ncpus, strerror(-r));
}

void test_guest_load(struct vm *vm, const void *start, const void *end)
{
	uint64_t len = (uint64_t)((const char *)end - (const char *)start);

	TEST_ASSERT(boot_setup_tables(&vm->mem) == 0, "cannot build page tables and GDT");
	TEST_ASSERT(gm_write(&vm->mem, GUEST_CODE_ADDR, start, len) == 0,
		    "guest code (%llu bytes) does not fit", (unsigned long long)len);
}

void test_vcpu_enter_long_mode(struct vcpu *vcpu, uint64_t rdi)
{
	struct boot_info bi = {.entry = GUEST_CODE_ADDR};
	struct cpu_state st;

	boot_cpu_state(&bi, &st);
	st.gpr[4] = GUEST_STACK_TOP;
	st.gpr[7] = rdi;
	vcpu_set_state(vcpu, &st);
}

int __vcpu_get_state(struct vcpu *vcpu, struct cpu_state *st)
{
	return vcpu->vm->cpu->get_state(vcpu, st);
}

void vcpu_get_state(struct vcpu *vcpu, struct cpu_state *st)
{
	int r = __vcpu_get_state(vcpu, st);

	TEST_ASSERT(r == 0, "get_state(vCPU %d) failed: %s", vcpu->id, strerror(-r));
}

int __vcpu_set_state(struct vcpu *vcpu, const struct cpu_state *st)
{
	return vcpu->vm->cpu->set_state(vcpu, st);
}

void vcpu_set_state(struct vcpu *vcpu, const struct cpu_state *st)
{
	int r = __vcpu_set_state(vcpu, st);

	TEST_ASSERT(r == 0, "set_state(vCPU %d) failed: %s", vcpu->id, strerror(-r));
}

const char *vcpu_exit_str(enum vcpu_exit ex)
{
	switch (ex) {
	case VCPU_EXIT_KICK:
		return "KICK";
	case VCPU_EXIT_HLT:
		return "HLT";
	case VCPU_EXIT_SHUTDOWN:
		return "SHUTDOWN";
	case VCPU_EXIT_ERROR:
		return "ERROR";
	}
	return "?";
}

void vcpu_run_expect(struct vcpu *vcpu, enum vcpu_exit want)
{
	enum vcpu_exit got = vcpu->vm->cpu->run(vcpu);
	struct cpu_state st;

	if (got == want)
		return;
	if (__vcpu_get_state(vcpu, &st) == 0)
		fprintf(stderr, "vCPU %d stopped at rip %#llx\n", vcpu->id,
			(unsigned long long)st.rip);
	TEST_ASSERT(got == want, "run() returned %s, expected %s", vcpu_exit_str(got),
		    vcpu_exit_str(want));
}

uint64_t test_guest_u64(struct vm *vm, uint64_t gpa)
{
	uint64_t v;

	TEST_ASSERT(gm_read(&vm->mem, gpa, &v, 8) == 0, "gm_read(%#llx)", (unsigned long long)gpa);
	return v;
}

uint32_t test_lapic_reg(const struct cpu_state *st, unsigned off)
{
	uint32_t v;

	memcpy(&v, st->lapic + off, 4);
	return v;
}

uint64_t test_dev_pattern(uint64_t offset, unsigned size)
{
	uint64_t v = 0xA1B2C3D4E5F60718ull ^ (offset * 0x0101010101010101ull);

	return size >= 8 ? v : v & ((1ull << (size * 8)) - 1);
}

static void test_dev_record(struct test_dev *d, uint64_t offset, uint64_t value, unsigned size,
			    bool write)
{
	/* Handlers run on the vCPU thread; tests read the log after run() returned. */
	if (d->n < TEST_DEV_LOG)
		d->log[d->n] = (struct test_access){offset, value, size, write};
	d->n++;
}

static void test_dev_read(void *opaque, uint64_t offset, void *data, unsigned size)
{
	struct test_dev *d = opaque;
	uint64_t v = test_dev_pattern(offset, size);

	memcpy(data, &v, size);
	test_dev_record(d, offset, v, size, false);
}

static void test_dev_write(void *opaque, uint64_t offset, const void *data, unsigned size)
{
	struct test_dev *d = opaque;
	uint64_t v = 0;

	memcpy(&v, data, size);
	test_dev_record(d, offset, v, size, true);
	if (offset == d->kick_offset)
		d->vm->cpu->kick(&d->vm->vcpus[0]);
}

static const struct bus_ops test_dev_ops = {.read = test_dev_read, .write = test_dev_write};

void test_dev_attach(struct test_dev *d, struct vm *vm, struct io_bus *bus, uint64_t base,
		     uint64_t len)
{
	int r;

	memset(d, 0, sizeof(*d));
	d->vm = vm;
	d->kick_offset = UINT64_MAX;
	r = bus_register(bus, base, len, &test_dev_ops, d, "test");
	TEST_ASSERT(r == 0, "bus_register(%#llx, %llu) failed: %s", (unsigned long long)base,
		    (unsigned long long)len, strerror(-r));
}

void test_dev_expect(const struct test_dev *d, unsigned i, uint64_t offset, unsigned size,
		     bool write, uint64_t value)
{
	const struct test_access *a = &d->log[i];

	TEST_ASSERT(i < d->n && i < TEST_DEV_LOG, "access %u never happened (%u recorded)", i,
		    d->n);
	TEST_ASSERT(a->offset == offset && a->size == size && a->write == write &&
			a->value == value,
		    "access %u: %s offset %#llx size %u value %#llx; expected %s offset %#llx "
		    "size %u value %#llx",
		    i, a->write ? "write" : "read", (unsigned long long)a->offset, a->size,
		    (unsigned long long)a->value, write ? "write" : "read",
		    (unsigned long long)offset, size, (unsigned long long)value);
}

double test_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A watchdog that kicks a vCPU after ms unless told the run is over. */
struct kicker {
	struct vcpu *vcpu;
	unsigned ms;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

static void *kick_later(void *arg)
{
	struct kicker *k = arg;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += k->ms / 1000;
	ts.tv_nsec += (long)(k->ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&k->lock);
	while (!k->done && pthread_cond_timedwait(&k->cond, &k->lock, &ts) != ETIMEDOUT)
		;
	if (!k->done)
		k->vcpu->vm->cpu->kick(k->vcpu);
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

/* run() until it returns KICK, at the latest ms from now; returns how long it ran (s). */
double test_run_kicked(struct vcpu *v, unsigned ms)
{
	struct kicker k = {.vcpu = v, .ms = ms};
	double t0 = test_now(), t;
	pthread_t th;

	pthread_mutex_init(&k.lock, NULL);
	pthread_cond_init(&k.cond, NULL);
	TEST_ASSERT(pthread_create(&th, NULL, kick_later, &k) == 0, "pthread_create");
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	t = test_now() - t0;
	pthread_mutex_lock(&k.lock);
	k.done = true;
	pthread_cond_signal(&k.cond);
	pthread_mutex_unlock(&k.lock);
	pthread_join(th, NULL);
	pthread_mutex_destroy(&k.lock);
	pthread_cond_destroy(&k.cond);
	return t;
}
