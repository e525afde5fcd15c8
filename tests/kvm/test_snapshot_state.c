/*
 * What the KVM backend's snapshot record carries beyond struct cpu_state,
 * checked ioctl by ioctl: state is put into a VM through KVM directly, the
 * VM is saved (get_state + save_extra), destroyed, a new VM is restored
 * (set_state + restore_extra), and KVM must report the same state there:
 *  - the XSAVE area beyond the FXSAVE image (AVX upper halves) and XCR0;
 *  - MSRs that struct cpu_state has no field for;
 *  - debug registers; a pending NMI and an interrupt shadow; an AP that got
 *    INIT and waits for SIPI;
 *  - the PIC and IOAPIC registers; a PIT created on the first VM appears,
 *    with its channel state, on the second;
 *  - the TSC continues from the saved value, not from the time that passed.
 * A record from an irqchip VM is refused by a VM without one, and a VM
 * without an irqchip round-trips its own.
 */
#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cpu/kvm/kvm_priv.h"
#include "kvm/lib/kvm_util.h"

#define NCPUS 2
#define MEM_SIZE (16ull << 20)
#define XSTATE_AVX 4ull
#define MSR_IA32_TSC 0x10

static int vfd(struct vm *vm, int i)
{
	return kvm_vcpu(&vm->vcpus[i])->fd;
}

static uint64_t msr_get(struct vm *vm, int cpu, uint32_t index)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} b = {.hdr.nmsrs = 1, .e = {{.index = index}}};

	TEST_ASSERT(__kvm_ioctl(vfd(vm, cpu), KVM_GET_MSRS, &b) == 1, "get MSR %#x", index);
	return b.e[0].data;
}

static void msr_set(struct vm *vm, int cpu, uint32_t index, uint64_t v)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} b = {.hdr.nmsrs = 1, .e = {{.index = index, .data = v}}};

	TEST_ASSERT(__kvm_ioctl(vfd(vm, cpu), KVM_SET_MSRS, &b) == 1, "set MSR %#x", index);
}

/* MSRs outside cpu_state, with a value different from their reset value. */
static const struct {
	uint32_t index;
	uint64_t value;
} test_msrs[] = {
    {0x4b564d06, 0xec},	    /* KVM async PF interrupt vector */
    {0x4b564d05, 0},	    /* KVM poll control (reset: 1) */
    {0x4b564d04, 0x300001}, /* KVM PV EOI, enabled at 3 MiB */
    {0xc0000103, 0x5a5a},   /* TSC_AUX */
};
#define NTEST_MSRS (sizeof(test_msrs) / sizeof(test_msrs[0]))

struct saved {
	struct cpu_state st[NCPUS];
	struct dev_buf extra;
	uint64_t tsc_khz;
};

static void save_vm(struct vm *vm, struct saved *s)
{
	int r;

	for (int i = 0; i < vm->ncpus; i++)
		vcpu_get_state(&vm->vcpus[i], &s->st[i]);
	memset(&s->extra, 0, sizeof(s->extra));
	r = vm->cpu->save_extra(vm, &s->extra);
	TEST_ASSERT(r == 0, "save_extra: %s", strerror(-r));
}

static void restore_vm(struct vm *vm, const struct saved *s)
{
	int r;

	for (int i = 0; i < vm->ncpus; i++)
		vcpu_set_state(&vm->vcpus[i], &s->st[i]);
	r = vm->cpu->restore_extra(vm, s->extra.data, s->extra.len);
	TEST_ASSERT(r == 0, "restore_extra: %s", strerror(-r));
}

static uint32_t avx_offset(struct vm *vm)
{
	const struct kvm_cpuid2 *c = kvm_vm(vm)->cpuid;

	for (uint32_t i = 0; i < c->nent; i++) {
		if (c->entries[i].function == 0xd && c->entries[i].index == 2)
			return c->entries[i].ebx;
	}
	return 0;
}

static bool msr_listed(struct vm *vm, uint32_t index)
{
	return kvm_msr_supported(kvm_vm(vm), index);
}

/* Put state into vCPU 0 (and the AP) that cpu_state cannot carry. */
static unsigned setup_cpus(struct vm *vm, uint8_t *xsave_out, uint32_t avx)
{
	struct kvm_xcrs x = {.nr_xcrs = 1, .xcrs = {{.xcr = 0, .value = 7}}};
	struct kvm_debugregs dr;
	struct kvm_vcpu_events ev;
	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_INIT_RECEIVED};
	unsigned nmsrs = 0;
	uint64_t bv;

	if (avx) {
		kvm_ioctl(vfd(vm, 0), KVM_SET_XCRS, &x);
		kvm_ioctl(vfd(vm, 0), KVM_GET_XSAVE, xsave_out);
		memcpy(&bv, xsave_out + 512, 8);
		bv |= XSTATE_AVX | 3;
		memcpy(xsave_out + 512, &bv, 8);
		for (int i = 0; i < 256; i++)
			xsave_out[avx + i] = (uint8_t)(0x80 + i);
		kvm_ioctl(vfd(vm, 0), KVM_SET_XSAVE, xsave_out);
	}
	for (unsigned i = 0; i < NTEST_MSRS; i++) {
		if (!msr_listed(vm, test_msrs[i].index))
			continue;
		msr_set(vm, 0, test_msrs[i].index, test_msrs[i].value);
		nmsrs++;
	}
	msr_set(vm, 0, MSR_IA32_TSC, 1ull << 40);
	kvm_ioctl(vfd(vm, 0), KVM_GET_DEBUGREGS, &dr);
	dr.db[0] = 0x123000;
	dr.db[3] = 0xfff000;
	dr.dr7 = 0x401;
	kvm_ioctl(vfd(vm, 0), KVM_SET_DEBUGREGS, &dr);
	kvm_ioctl(vfd(vm, 0), KVM_NMI, NULL);
	kvm_ioctl(vfd(vm, 0), KVM_GET_VCPU_EVENTS, &ev);
	ev.interrupt.shadow = KVM_X86_SHADOW_INT_STI;
	ev.flags = KVM_VCPUEVENT_VALID_SHADOW;
	kvm_ioctl(vfd(vm, 0), KVM_SET_VCPU_EVENTS, &ev);

	/* The AP got INIT and waits for a SIPI (KVM never reports a SIPI vector before it). */
	kvm_ioctl(vfd(vm, 1), KVM_SET_MP_STATE, &mp);
	return nmsrs;
}

/* Some KVMs (PVM) run the guest on the host's TSC and ignore writes to it. */
static bool tsc_writable(struct vm *vm, uint64_t khz)
{
	uint64_t tsc = msr_get(vm, 0, MSR_IA32_TSC);

	return tsc >= (1ull << 40) && tsc - (1ull << 40) < khz * 500;
}

static void check_cpus(struct vm *vm, const uint8_t *xsave_want, uint32_t avx, uint64_t khz,
		       bool check_tsc)
{
	uint8_t *xs = calloc(1, (size_t)kvm_vm(vm)->xsave_size);
	struct kvm_xcrs x;
	struct kvm_debugregs dr;
	struct kvm_vcpu_events ev;
	struct kvm_mp_state mp;
	uint64_t tsc;

	TEST_ASSERT(xs, "calloc");
	if (avx) {
		kvm_ioctl(vfd(vm, 0), KVM_GET_XCRS, &x);
		TEST_ASSERT_EQ(x.xcrs[0].value, 7);
		kvm_ioctl(vfd(vm, 0), KVM_GET_XSAVE, xs);
		TEST_ASSERT(!memcmp(xs + avx, xsave_want + avx, 256), "AVX upper halves lost");
		TEST_ASSERT(xs[512] & XSTATE_AVX, "XSTATE_BV lost AVX");
	}
	for (unsigned i = 0; i < NTEST_MSRS; i++) {
		if (msr_listed(vm, test_msrs[i].index))
			TEST_ASSERT_EQ(msr_get(vm, 0, test_msrs[i].index), test_msrs[i].value);
	}
	/* About a second passed between save and restore; the guest's TSC must not show it. */
	tsc = msr_get(vm, 0, MSR_IA32_TSC);
	TEST_ASSERT(!check_tsc || (tsc >= (1ull << 40) && tsc - (1ull << 40) < khz * 500),
		    "TSC %#llx after restore, saved %#llx (%llu kHz)", (unsigned long long)tsc,
		    1ull << 40, (unsigned long long)khz);
	kvm_ioctl(vfd(vm, 0), KVM_GET_DEBUGREGS, &dr);
	TEST_ASSERT_EQ(dr.db[0], 0x123000);
	TEST_ASSERT_EQ(dr.db[3], 0xfff000);
	TEST_ASSERT_EQ(dr.dr7, 0x401);
	kvm_ioctl(vfd(vm, 0), KVM_GET_VCPU_EVENTS, &ev);
	TEST_ASSERT_EQ(ev.nmi.pending, 1);
	TEST_ASSERT_EQ(ev.interrupt.shadow, KVM_X86_SHADOW_INT_STI);

	kvm_ioctl(vfd(vm, 1), KVM_GET_MP_STATE, &mp);
	TEST_ASSERT_EQ(mp.mp_state, KVM_MP_STATE_INIT_RECEIVED);
	free(xs);
}

static void setup_chips(struct vm *vm)
{
	int fd = cpu_kvm_vm_fd(vm);
	struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
	struct kvm_irqchip io = {.chip_id = KVM_IRQCHIP_IOAPIC};
	struct kvm_pit_config cfg = {.flags = 0};
	struct kvm_pit_state2 ps;

	kvm_ioctl(fd, KVM_GET_IRQCHIP, &pic);
	pic.chip.pic.imr = 0xfb;
	pic.chip.pic.irq_base = 0x20;
	kvm_ioctl(fd, KVM_SET_IRQCHIP, &pic);
	kvm_ioctl(fd, KVM_GET_IRQCHIP, &io);
	io.chip.ioapic.redirtbl[3].bits = 0x0300000000010034ull; /* masked, vector 0x34, APIC 3 */
	kvm_ioctl(fd, KVM_SET_IRQCHIP, &io);

	kvm_ioctl(fd, KVM_CREATE_PIT2, &cfg);
	kvm_ioctl(fd, KVM_GET_PIT2, &ps);
	ps.channels[2].mode = 2;
	ps.channels[2].rw_mode = 3;
	ps.channels[2].count = 1000;
	ps.channels[2].gate = 1;
	kvm_ioctl(fd, KVM_SET_PIT2, &ps);
}

static void check_chips(struct vm *vm)
{
	int fd = cpu_kvm_vm_fd(vm);
	struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
	struct kvm_irqchip io = {.chip_id = KVM_IRQCHIP_IOAPIC};
	struct kvm_pit_state2 ps;

	kvm_ioctl(fd, KVM_GET_IRQCHIP, &pic);
	TEST_ASSERT_EQ(pic.chip.pic.imr, 0xfb);
	TEST_ASSERT_EQ(pic.chip.pic.irq_base, 0x20);
	kvm_ioctl(fd, KVM_GET_IRQCHIP, &io);
	TEST_ASSERT_EQ(io.chip.ioapic.redirtbl[3].bits, 0x0300000000010034ull);
	kvm_ioctl(fd, KVM_GET_PIT2, &ps); /* the PIT exists now */
	TEST_ASSERT_EQ(ps.channels[2].mode, 2);
	TEST_ASSERT_EQ(ps.channels[2].count, 1000);
	TEST_ASSERT_EQ(ps.channels[2].gate, 1);
}

static void test_full(void)
{
	struct vm a, b;
	struct saved s;
	uint8_t *xs;
	uint32_t avx;
	bool check_tsc;
	int khz;

	test_vm_create(&a, &cpu_backend_kvm, MEM_SIZE, NCPUS);
	avx = avx_offset(&a);
	xs = calloc(1, (size_t)kvm_vm(&a)->xsave_size + 1);
	TEST_ASSERT(xs, "calloc");
	if (avx + 256 > (uint32_t)kvm_vm(&a)->xsave_size)
		avx = 0;
	TEST_ASSERT(setup_cpus(&a, xs, avx) >= 2, "fewer than two test MSRs are savable here");
	setup_chips(&a);
	khz = ioctl(vfd(&a, 0), KVM_GET_TSC_KHZ, 0);
	TEST_ASSERT(khz > 0, "KVM_GET_TSC_KHZ");
	check_tsc = tsc_writable(&a, (uint64_t)khz);
	if (!check_tsc)
		printf("note: this KVM ignores TSC writes; TSC continuity not checked\n");
	save_vm(&a, &s);
	vm_destroy(&a);
	usleep(1000 * 1000);

	test_vm_create(&b, &cpu_backend_kvm, MEM_SIZE, NCPUS);
	TEST_ASSERT(__kvm_ioctl(cpu_kvm_vm_fd(&b), KVM_GET_PIT2, &(struct kvm_pit_state2){0}) ==
			-ENXIO,
		    "a new VM has no PIT");
	restore_vm(&b, &s);
	check_cpus(&b, xs, avx, (uint64_t)khz, check_tsc);
	check_chips(&b);
	vm_destroy(&b);
	dev_buf_free(&s.extra);
	free(xs);
	if (!avx)
		printf("note: no AVX state here; XSAVE checked through the FXSAVE part only\n");
}

static void test_noirqchip(void)
{
	struct vm a, b;
	struct saved s;
	int r;

	test_vm_create(&a, &cpu_backend_kvm, MEM_SIZE, 1);
	save_vm(&a, &s);
	vm_destroy(&a);
	test_vm_create(&b, &cpu_backend_kvm_noirqchip, MEM_SIZE, 1);
	r = b.cpu->restore_extra(&b, s.extra.data, s.extra.len);
	TEST_ASSERT(r == -EINVAL, "an irqchip record restored into a VM without one: %d", r);
	dev_buf_free(&s.extra);

	msr_set(&b, 0, 0x4b564d05, 0);
	save_vm(&b, &s);
	vm_destroy(&b);
	test_vm_create(&a, &cpu_backend_kvm_noirqchip, MEM_SIZE, 1);
	restore_vm(&a, &s);
	TEST_ASSERT_EQ(msr_get(&a, 0, 0x4b564d05), 0);
	r = a.cpu->restore_extra(&a, s.extra.data, s.extra.len - 1);
	TEST_ASSERT(r == -EINVAL, "truncated: %d", r);
	vm_destroy(&a);
	dev_buf_free(&s.extra);
}

int main(void)
{
	kvm_require();
	test_full();
	test_noirqchip();
	printf("PASS: KVM snapshot record: XSAVE, MSRs, debug registers, events, MP state, "
	       "PIC/IOAPIC/PIT (and the TSC where KVM lets it be set) survive a new VM; irqchip "
	       "mismatch refused\n");
	return 0;
}
