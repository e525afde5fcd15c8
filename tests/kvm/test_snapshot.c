/*
 * Snapshot and restore on the KVM backend, the way state/ does it: pause,
 * get_state of every vCPU + save_extra + a copy of guest RAM; destroy the
 * VM; build a new one, put RAM back, set_state + restore_extra; run.
 *
 * The guest counts in a register (r12) and in memory, with its LAPIC timer
 * armed (one-shot, vector 0x42) and IOAPIC pin 5 routed to vector 0x41;
 * vCPU 1 is never started. After the restore: the count continues from
 * the saved value, the timer fires with the count it had left (not a fresh
 * one), the IOAPIC still delivers pin 5, vCPU 1 still waits for INIT/SIPI
 * (set_state alone would have made it runnable), guest time (KVM clock)
 * continues from the saved value although the "snapshot" spent a while
 * "on disk". Truncated, extended and corrupted save_extra records are
 * refused before anything changes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cpu/kvm/kvm_priv.h"
#include "kvm/lib/kvm_util.h"

#define PORT 0x510
#define IDT_ADDR 0xa000ull
#define READY 0xee
#define NCPUS 2
#define TMICT 2000000000u /* LAPIC timer ticks at 1 GHz in KVM: 2 s, ample on a loaded host */
#define APIC_TMICT 0x380
#define APIC_TMCCT 0x390
#define MEM_SIZE (16ull << 20)

/* Data at GUEST_DATA_ADDR: counter, timer interrupts, pin 5 interrupts. */
#define D_COUNT 0
#define D_TIMER 16
#define D_PIN5 24

/* rdi = GUEST_DATA_ADDR, esi = initial count of the LAPIC timer. */
__asm__(".pushsection .text\n"
	".globl guest_snap_start, guest_snap_41, guest_snap_42, guest_snap_end\n"
	"guest_snap_start:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n" /* LAPIC on, spurious vector 0xff */
	"	mov $0xfec00000, %ecx\n"
	"	movl $0x1a, (%rcx)\n" /* IOAPIC pin 5, low: vector 0x41, fixed, edge */
	"	movl $0x41, 0x10(%rcx)\n"
	"	movl $0x1b, (%rcx)\n" /* high: destination APIC 0 */
	"	movl $0, 0x10(%rcx)\n"
	"	mov $0xff, %al\n" /* mask the 8259s */
	"	out %al, $0x21\n"
	"	out %al, $0xa1\n"
	"	movl $0xb, 0x3e0(%rbx)\n"  /* timer divide by 1 */
	"	movl $0x42, 0x320(%rbx)\n" /* LVT timer: one-shot, vector 0x42 */
	"	movl %esi, 0x380(%rbx)\n"  /* initial count: armed */
	"	mov $0x510, %dx\n"
	"	mov $0xee, %al\n"
	"	out %al, %dx\n"
	"	xor %r12d, %r12d\n"
	"	sti\n"
	"1:	inc %r12\n"
	"	mov %r12, (%rdi)\n"
	"	jmp 1b\n"
	"guest_snap_42:\n"
	"	push %rax\n"
	"	incq 16(%rdi)\n"
	"	mov $0x42, %al\n"
	"	jmp 2f\n"
	"guest_snap_41:\n"
	"	push %rax\n"
	"	incq 24(%rdi)\n"
	"	mov $0x41, %al\n"
	"2:	push %rdx\n"
	"	movl $0, 0xb0(%rbx)\n" /* EOI */
	"	mov $0x510, %dx\n"
	"	out %al, %dx\n"
	"	pop %rdx\n"
	"	pop %rax\n"
	"	iretq\n"
	"guest_snap_end:\n"
	".popsection\n");
extern const char guest_snap_start[], guest_snap_41[], guest_snap_42[], guest_snap_end[];

struct snapshot {
	struct cpu_state st[NCPUS];
	struct dev_buf extra;
	uint8_t *ram;
	char model[129];
	uint64_t clock;
};

static uint32_t mp_state(struct vcpu *v)
{
	struct kvm_mp_state mp;

	kvm_ioctl(kvm_vcpu(v)->fd, KVM_GET_MP_STATE, &mp);
	return mp.mp_state;
}

static uint64_t kvm_clock(struct vm *vm)
{
	struct kvm_clock_data c = {0};

	kvm_ioctl(cpu_kvm_vm_fd(vm), KVM_GET_CLOCK, &c);
	return c.clock;
}

static void set_gate(struct vm *vm, unsigned vec, const char *handler)
{
	uint64_t addr = GUEST_CODE_ADDR + (uint64_t)(handler - guest_snap_start);
	uint64_t gate[2] = {
	    (addr & 0xffff) | (0x10ull << 16) | (0x8eull << 40) | ((addr >> 16 & 0xffff) << 48),
	    addr >> 32,
	};

	TEST_ASSERT(gm_write(&vm->mem, IDT_ADDR + 16 * vec, gate, sizeof(gate)) == 0, "IDT");
}

static void vm_build(struct vm *vm, struct test_dev *dev)
{
	test_vm_create(vm, &cpu_backend_kvm, MEM_SIZE, NCPUS);
	test_dev_attach(dev, vm, &vm->pio, PORT, 1);
	dev->kick_offset = 0;
}

static void guest_start(struct vm *vm, struct test_dev *dev)
{
	struct vcpu *v = &vm->vcpus[0];
	struct cpu_state st;

	test_guest_load(vm, guest_snap_start, guest_snap_end);
	set_gate(vm, 0x41, guest_snap_41);
	set_gate(vm, 0x42, guest_snap_42);
	test_vcpu_enter_long_mode(v, GUEST_DATA_ADDR);
	vcpu_get_state(v, &st);
	st.gpr[6] = TMICT; /* rsi */
	st.idt.base = IDT_ADDR;
	st.idt.limit = 256 * 16 - 1;
	vcpu_set_state(v, &st);
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev->n, 1);
	test_dev_expect(dev, 0, 0, 1, true, READY);
}

static void snapshot_take(struct vm *vm, struct snapshot *s)
{
	int r;

	for (int i = 0; i < NCPUS; i++)
		vcpu_get_state(&vm->vcpus[i], &s->st[i]);
	memset(&s->extra, 0, sizeof(s->extra));
	r = vm->cpu->save_extra(vm, &s->extra);
	TEST_ASSERT(r == 0, "save_extra: %s", strerror(-r));
	r = vm->cpu->cpu_model(vm, s->model, sizeof(s->model));
	TEST_ASSERT(r == 0, "cpu_model: %s", strerror(-r));
	s->clock = kvm_clock(vm);
	s->ram = malloc(vm->mem.low_size);
	TEST_ASSERT(s->ram, "malloc");
	TEST_ASSERT(gm_read(&vm->mem, 0, s->ram, vm->mem.low_size) == 0, "copy RAM");
}

/* Restore with stderr silenced: the backend logs every refusal. */
static int restore_quiet(struct vm *vm, const void *data, uint64_t len)
{
	int saved = dup(2), null = open("/dev/null", O_WRONLY | O_CLOEXEC), r;

	TEST_ASSERT(saved >= 0 && null >= 0, "dup/open");
	fflush(stderr);
	dup2(null, 2);
	r = vm->cpu->restore_extra(vm, data, len);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(null);
	return r;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* Offsets in the version-1 record (src/cpu/kvm/kvm_snap.c) with the irqchip and no PIT. */
#define OFF_NCPUS 4
#define OFF_FLAGS 8
#define OFF_IOAPIC_BASE (20 + 32)
#define OFF_CPU0 (OFF_IOAPIC_BASE + 8 + 12 + 24 * 8)
#define OFF_MP_STATE (OFF_CPU0 + 4)
#define OFF_EXC_NR (OFF_CPU0 + 8 + 1)
#define OFF_NMI_PENDING (OFF_CPU0 + 8 + 8 + 4 + 1)
#define OFF_DR7 (OFF_CPU0 + 8 + 24 + 5 * 8)
#define OFF_XCRS (OFF_CPU0 + 8 + 24 + 6 * 8)

/* Offset of vCPU 0's MSR count, found by walking its variable-length parts. */
static uint64_t off_msrs(const uint8_t *b)
{
	uint64_t off = OFF_XCRS;

	off += 4 + 12ull * get32(b + off);
	off += 4 + get32(b + off);
	return off;
}

static void expect_refused(struct vm *vm, const struct dev_buf *good, uint64_t off,
			   const void *bytes, unsigned n, int want, const char *what)
{
	uint8_t *b = malloc(good->len);
	int r;

	TEST_ASSERT(b && off + n <= good->len, "%s: offset %llu", what, (unsigned long long)off);
	memcpy(b, good->data, good->len);
	memcpy(b + off, bytes, n);
	r = restore_quiet(vm, b, good->len);
	TEST_ASSERT(r == want, "%s: restore_extra returned %d (%s), expected %d", what, r,
		    strerror(-r), want);
	free(b);
}

static void test_hostile(struct vm *vm, const struct dev_buf *good)
{
	const uint8_t *g = good->data;
	uint64_t m = off_msrs(g);
	uint32_t n = get32(g + m), v;
	uint8_t *b = malloc(good->len + 1);
	uint8_t entry[12];

	TEST_ASSERT(b, "malloc");
	/* Every truncation, and one byte too many. */
	for (uint64_t len = 0; len < good->len; len++)
		TEST_ASSERT(restore_quiet(vm, g, len) == -EINVAL, "truncated to %llu accepted",
			    (unsigned long long)len);
	TEST_ASSERT(restore_quiet(vm, NULL, 0) == -EINVAL, "empty record accepted");
	memcpy(b, g, good->len);
	b[good->len] = 0;
	TEST_ASSERT(restore_quiet(vm, b, good->len + 1) == -EINVAL, "trailing byte accepted");
	free(b);

	v = 2;
	expect_refused(vm, good, 0, &v, 4, -EPROTONOSUPPORT, "version 2");
	v = NCPUS + 1;
	expect_refused(vm, good, OFF_NCPUS, &v, 4, -EINVAL, "vCPU count");
	v = 1 | 4;
	expect_refused(vm, good, OFF_FLAGS, &v, 4, -EINVAL, "unknown flag");
	v = 0;
	expect_refused(vm, good, OFF_FLAGS, &v, 4, -EINVAL, "no irqchip on a VM with one");
	v = 0xfed00000;
	expect_refused(vm, good, OFF_IOAPIC_BASE, &v, 4, -EINVAL, "IOAPIC moved");
	v = 99;
	expect_refused(vm, good, OFF_MP_STATE, &v, 4, -EINVAL, "MP state 99");
	v = KVM_MP_STATE_STOPPED;
	expect_refused(vm, good, OFF_MP_STATE, &v, 4, -EINVAL, "MP state STOPPED");
	expect_refused(vm, good, OFF_EXC_NR, (const uint8_t[]){40}, 1, -EINVAL,
		       "exception vector 40");
	expect_refused(vm, good, OFF_NMI_PENDING, (const uint8_t[]){3}, 1, -EINVAL,
		       "3 NMIs pending");
	expect_refused(vm, good, OFF_DR7 + 7, (const uint8_t[]){0x80}, 1, -EINVAL, "DR7 bit 63");
	v = 17;
	expect_refused(vm, good, OFF_XCRS, &v, 4, -EINVAL, "17 XCRs");
	v = 1u << 20;
	expect_refused(vm, good, OFF_XCRS + 4 + 12 * get32(g + OFF_XCRS), &v, 4, -EINVAL,
		       "1 MiB XSAVE area");
	v = 0xffffffff;
	expect_refused(vm, good, m, &v, 4, -EINVAL, "2^32-1 MSRs");
	TEST_ASSERT(n >= 2, "only %u MSRs saved", n);
	v = 0x800; /* x2APIC register space: not a savable MSR */
	expect_refused(vm, good, m + 4, &v, 4, -EINVAL, "MSR outside KVM's list");
	memcpy(entry, g + m + 4, 12);
	expect_refused(vm, good, m + 4 + 12, entry, 12, -EINVAL, "the same MSR twice");
}

static void test_ap_still_waiting(struct vm *vm, const struct cpu_state *saved)
{
	struct vcpu *ap = &vm->vcpus[1];
	struct cpu_state st;

	TEST_ASSERT_EQ(mp_state(ap), KVM_MP_STATE_UNINITIALIZED);
	/* Run it: it must sleep in KVM until kicked, having executed nothing. */
	test_run_kicked(ap, 200);
	vcpu_get_state(ap, &st);
	TEST_ASSERT_EQ(st.rip, saved->rip);
	TEST_ASSERT_EQ(st.cs.base, saved->cs.base);
	TEST_ASSERT_EQ(mp_state(ap), KVM_MP_STATE_UNINITIALIZED);
}

int main(void)
{
	struct vm a, b;
	struct test_dev dev_a, dev_b;
	struct snapshot s;
	struct cpu_state st;
	char model[129];
	uint64_t count, r12, clock_b, tmcct;
	double fired;
	int r;

	kvm_require();
	vm_build(&a, &dev_a);
	guest_start(&a, &dev_a);
	TEST_ASSERT_EQ(mp_state(&a.vcpus[1]), KVM_MP_STATE_UNINITIALIZED);

	/* Let it count for a while (the timer has 2 s to go), then take the snapshot. */
	test_run_kicked(&a.vcpus[0], 100);
	TEST_ASSERT_EQ(dev_a.n, 1);
	snapshot_take(&a, &s);
	r12 = s.st[0].gpr[12];
	count = test_guest_u64(&a, GUEST_DATA_ADDR + D_COUNT);
	TEST_ASSERT(r12 > 0 && (count == r12 || count + 1 == r12), "r12 %llu, memory %llu",
		    (unsigned long long)r12, (unsigned long long)count);
	TEST_ASSERT_EQ(test_guest_u64(&a, GUEST_DATA_ADDR + D_TIMER), 0);
	tmcct = test_lapic_reg(&s.st[0], APIC_TMCCT);
	TEST_ASSERT(tmcct > 0 && tmcct < TMICT, "saved timer count %llu",
		    (unsigned long long)tmcct);
	vm_destroy(&a);

	/* The snapshot "on disk" for a second: guest time must not see it. */
	usleep(1000 * 1000);

	vm_build(&b, &dev_b);
	TEST_ASSERT_EQ(b.cpu->cpu_model(&b, model, sizeof(model)), 0);
	TEST_ASSERT(!strcmp(model, s.model), "CPU model %s, saved %s", model, s.model);
	TEST_ASSERT(!strncmp(model, "kvm ", 4), "CPU model %s", model);
	TEST_ASSERT(gm_write(&b.mem, 0, s.ram, b.mem.low_size) == 0, "RAM back");
	for (int i = 0; i < NCPUS; i++)
		vcpu_set_state(&b.vcpus[i], &s.st[i]);
	/* set_state alone cannot say "waiting for SIPI": the backend record must. */
	TEST_ASSERT_EQ(mp_state(&b.vcpus[1]), KVM_MP_STATE_RUNNABLE);

	test_hostile(&b, &s.extra);
	TEST_ASSERT_EQ(mp_state(&b.vcpus[1]), KVM_MP_STATE_RUNNABLE); /* nothing was applied */

	r = b.cpu->restore_extra(&b, s.extra.data, s.extra.len);
	TEST_ASSERT(r == 0, "restore_extra: %s", strerror(-r));
	clock_b = kvm_clock(&b);
	/* KVM computes the clock from its master clock snapshot: equal to within a little. */
	TEST_ASSERT(llabs((long long)(clock_b - s.clock)) < 500000000ll,
		    "KVM clock %llu, saved %llu: guest time jumped", (unsigned long long)clock_b,
		    (unsigned long long)s.clock);
	vcpu_get_state(&b.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[12], r12);
	TEST_ASSERT_EQ(test_lapic_reg(&st, APIC_TMICT), TMICT);
	TEST_ASSERT(test_lapic_reg(&st, APIC_TMCCT) <= tmcct && test_lapic_reg(&st, APIC_TMCCT) > 0,
		    "timer count %u after restore, %llu saved: restarted?",
		    test_lapic_reg(&st, APIC_TMCCT), (unsigned long long)tmcct);

	/* The timer fires with what it had left; the count went on meanwhile. */
	fired = test_run_kicked(&b.vcpus[0], 5000);
	TEST_ASSERT_EQ(dev_b.n, 1);
	test_dev_expect(&dev_b, 0, 0, 1, true, 0x42);
	TEST_ASSERT(fired < 4.0, "the timer fired after %.2f s", fired);
	TEST_ASSERT_EQ(test_guest_u64(&b, GUEST_DATA_ADDR + D_TIMER), 1);
	vcpu_get_state(&b.vcpus[0], &st);
	TEST_ASSERT(st.gpr[12] > r12, "r12 %llu, saved %llu", (unsigned long long)st.gpr[12],
		    (unsigned long long)r12);
	TEST_ASSERT(test_guest_u64(&b, GUEST_DATA_ADDR + D_COUNT) >= r12, "count went back");

	/* The IOAPIC routing the guest programmed before the snapshot still delivers. */
	TEST_ASSERT_EQ(b.cpu->irq_line(&b, 5, 1), 0);
	TEST_ASSERT_EQ(b.cpu->irq_line(&b, 5, 0), 0);
	test_run_kicked(&b.vcpus[0], 5000);
	TEST_ASSERT_EQ(dev_b.n, 2);
	test_dev_expect(&dev_b, 1, 0, 1, true, 0x41);
	TEST_ASSERT_EQ(test_guest_u64(&b, GUEST_DATA_ADDR + D_PIN5), 1);

	test_ap_still_waiting(&b, &s.st[1]);

	vm_destroy(&b);
	dev_buf_free(&s.extra);
	free(s.ram);
	printf("PASS: KVM snapshot/restore: counter continues, LAPIC timer keeps its count, "
	       "IOAPIC routing, AP waits for SIPI, KVM clock continues, hostile records "
	       "refused\n");
	return 0;
}
