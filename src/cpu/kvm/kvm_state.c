/*
 * KVM backend, vCPU state: struct cpu_state <-> KVM's registers, special
 * registers, MSRs, x87/SSE state, local APIC and pending events.
 *
 * set_state() orders its ioctls the way KVM needs them: special registers
 * (with the APIC base, which selects xAPIC/x2APIC mode) before the LAPIC
 * registers, XCR0 before the XSAVE area it validates, the TSC before the
 * TSC deadline that is relative to it, and events last.
 */
#include "cpu/kvm/kvm_priv.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "util/log.h"

#define MSR_IA32_TSC 0x10
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MSR_IA32_CR_PAT 0x277
#define MSR_IA32_TSC_DEADLINE 0x6e0
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_KVM_WALL_CLOCK_NEW 0x4b564d00
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01

#define MISC_ENABLE_FAST_STRING 1ull
#define XSTATE_FP_SSE 3ull
#define FXSAVE_SIZE 512

/* Order matters: TSC before TSC_DEADLINE. */
static const struct {
	uint32_t index;
	size_t off;
} kvm_state_msrs[] = {
    {MSR_IA32_SYSENTER_CS, offsetof(struct cpu_state, sysenter_cs)},
    {MSR_IA32_SYSENTER_ESP, offsetof(struct cpu_state, sysenter_esp)},
    {MSR_IA32_SYSENTER_EIP, offsetof(struct cpu_state, sysenter_eip)},
    {MSR_STAR, offsetof(struct cpu_state, star)},
    {MSR_LSTAR, offsetof(struct cpu_state, lstar)},
    {MSR_CSTAR, offsetof(struct cpu_state, cstar)},
    {MSR_SYSCALL_MASK, offsetof(struct cpu_state, sfmask)},
    {MSR_KERNEL_GS_BASE, offsetof(struct cpu_state, kernel_gs_base)},
    {MSR_IA32_CR_PAT, offsetof(struct cpu_state, pat)},
    {MSR_IA32_MISC_ENABLE, offsetof(struct cpu_state, misc_enable)},
    {MSR_IA32_TSC, offsetof(struct cpu_state, tsc)},
    {MSR_IA32_TSC_DEADLINE, offsetof(struct cpu_state, tsc_deadline)},
    {MSR_KVM_SYSTEM_TIME_NEW, offsetof(struct cpu_state, kvm_system_time)},
    {MSR_KVM_WALL_CLOCK_NEW, offsetof(struct cpu_state, kvm_wall_clock)},
};
#define KVM_STATE_NMSRS (sizeof(kvm_state_msrs) / sizeof(kvm_state_msrs[0]))

struct kvm_msr_buf {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[KVM_STATE_NMSRS];
};

static uint64_t *msr_field(struct cpu_state *st, size_t i)
{
	return (uint64_t *)((char *)st + kvm_state_msrs[i].off);
}

/* The MSRs of kvm_state_msrs this KVM supports, indices filled in; TSC deadline needs a LAPIC. */
static void msr_buf_init(struct kvm_vm_priv *kv, struct kvm_msr_buf *b, size_t *map)
{
	memset(b, 0, sizeof(*b));
	for (size_t i = 0; i < KVM_STATE_NMSRS; i++) {
		uint32_t idx = kvm_state_msrs[i].index;

		if (!kvm_msr_supported(kv, idx))
			continue;
		if (idx == MSR_IA32_TSC_DEADLINE && !kv->irqchip)
			continue;
		map[b->hdr.nmsrs] = i;
		b->e[b->hdr.nmsrs++].index = idx;
	}
}

static int msrs_io(int fd, unsigned long req, struct kvm_msr_buf *b, const char *name)
{
	int rc = kvm_ioctl_name(fd, req, b, name);

	if (rc < 0)
		return rc;
	/* KVM stops at the first MSR it refuses and returns how many it did. */
	if ((uint32_t)rc != b->hdr.nmsrs) {
		pr_err("kvm: %s stopped at MSR %#x", name, b->e[rc].index);
		return -EINVAL;
	}
	return 0;
}

int kvm_vcpu_init_msrs(struct vcpu *vcpu)
{
	struct kvm_vm_priv *kv = kvm_vm(vcpu->vm);
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} b = {.hdr.nmsrs = 1};

	/* Firmware normally enables fast string operations; Linux expects it. */
	if (!kvm_msr_supported(kv, MSR_IA32_MISC_ENABLE))
		return 0;
	b.e[0].index = MSR_IA32_MISC_ENABLE;
	b.e[0].data = MISC_ENABLE_FAST_STRING;
	return KVM_IOCTL(kvm_vcpu(vcpu)->fd, KVM_SET_MSRS, &b) == 1 ? 0 : -EINVAL;
}

static void seg_from_kvm(struct cpu_seg *d, const struct kvm_segment *s)
{
	d->base = s->base;
	d->limit = s->limit;
	d->sel = s->selector;
	d->type = s->type;
	d->present = s->present;
	d->dpl = s->dpl;
	d->db = s->db;
	d->s = s->s;
	d->l = s->l;
	d->g = s->g;
	d->avl = s->avl;
	d->unusable = s->unusable;
}

static void seg_to_kvm(struct kvm_segment *d, const struct cpu_seg *s)
{
	memset(d, 0, sizeof(*d));
	d->base = s->base;
	d->limit = s->limit;
	d->selector = s->sel;
	d->type = s->type;
	d->present = s->present;
	d->dpl = s->dpl;
	d->db = s->db;
	d->s = s->s;
	d->l = s->l;
	d->g = s->g;
	d->avl = s->avl;
	d->unusable = s->unusable;
}

static void sregs_to_state(struct cpu_state *st, const struct kvm_sregs *s)
{
	seg_from_kvm(&st->cs, &s->cs);
	seg_from_kvm(&st->ds, &s->ds);
	seg_from_kvm(&st->es, &s->es);
	seg_from_kvm(&st->fs, &s->fs);
	seg_from_kvm(&st->gs, &s->gs);
	seg_from_kvm(&st->ss, &s->ss);
	seg_from_kvm(&st->tr, &s->tr);
	seg_from_kvm(&st->ldt, &s->ldt);
	st->gdt.base = s->gdt.base;
	st->gdt.limit = s->gdt.limit;
	st->idt.base = s->idt.base;
	st->idt.limit = s->idt.limit;
	st->cr0 = s->cr0;
	st->cr2 = s->cr2;
	st->cr3 = s->cr3;
	st->cr4 = s->cr4;
	st->cr8 = s->cr8;
	st->efer = s->efer;
	st->apic_base = s->apic_base;
}

static void state_to_sregs(struct kvm_sregs *s, const struct cpu_state *st)
{
	seg_to_kvm(&s->cs, &st->cs);
	seg_to_kvm(&s->ds, &st->ds);
	seg_to_kvm(&s->es, &st->es);
	seg_to_kvm(&s->fs, &st->fs);
	seg_to_kvm(&s->gs, &st->gs);
	seg_to_kvm(&s->ss, &st->ss);
	seg_to_kvm(&s->tr, &st->tr);
	seg_to_kvm(&s->ldt, &st->ldt);
	s->gdt.base = st->gdt.base;
	s->gdt.limit = st->gdt.limit;
	s->idt.base = st->idt.base;
	s->idt.limit = st->idt.limit;
	s->cr0 = st->cr0;
	s->cr2 = st->cr2;
	s->cr3 = st->cr3;
	s->cr4 = st->cr4;
	s->cr8 = st->cr8;
	s->efer = st->efer;
	s->apic_base = st->apic_base;
}

/* kvm_regs lists the GPRs as rax rbx rcx rdx rsi rdi rsp rbp r8..r15; cpu_state in encoding order.
 */
static void regs_to_state(struct cpu_state *st, const struct kvm_regs *r)
{
	const uint64_t g[16] = {r->rax, r->rcx, r->rdx, r->rbx, r->rsp, r->rbp, r->rsi, r->rdi,
				r->r8,	r->r9,	r->r10, r->r11, r->r12, r->r13, r->r14, r->r15};

	memcpy(st->gpr, g, sizeof(g));
	st->rip = r->rip;
	st->rflags = r->rflags;
}

static void state_to_regs(struct kvm_regs *r, const struct cpu_state *st)
{
	const uint64_t *g = st->gpr;

	*r = (struct kvm_regs){
	    .rax = g[0],
	    .rcx = g[1],
	    .rdx = g[2],
	    .rbx = g[3],
	    .rsp = g[4],
	    .rbp = g[5],
	    .rsi = g[6],
	    .rdi = g[7],
	    .r8 = g[8],
	    .r9 = g[9],
	    .r10 = g[10],
	    .r11 = g[11],
	    .r12 = g[12],
	    .r13 = g[13],
	    .r14 = g[14],
	    .r15 = g[15],
	    .rip = st->rip,
	    .rflags = st->rflags,
	};
}

/* struct kvm_fpu <-> the FXSAVE image, for KVMs without XSAVE. */
static void fpu_to_fxsave(uint8_t *fx, const struct kvm_fpu *f)
{
	memset(fx, 0, FXSAVE_SIZE);
	memcpy(fx + 0, &f->fcw, 2);
	memcpy(fx + 2, &f->fsw, 2);
	fx[4] = f->ftwx;
	memcpy(fx + 6, &f->last_opcode, 2);
	memcpy(fx + 8, &f->last_ip, 8);
	memcpy(fx + 16, &f->last_dp, 8);
	memcpy(fx + 24, &f->mxcsr, 4);
	memcpy(fx + 32, f->fpr, sizeof(f->fpr));
	memcpy(fx + 160, f->xmm, sizeof(f->xmm));
}

static void fxsave_to_fpu(struct kvm_fpu *f, const uint8_t *fx)
{
	memset(f, 0, sizeof(*f));
	memcpy(&f->fcw, fx + 0, 2);
	memcpy(&f->fsw, fx + 2, 2);
	f->ftwx = fx[4];
	memcpy(&f->last_opcode, fx + 6, 2);
	memcpy(&f->last_ip, fx + 8, 8);
	memcpy(&f->last_dp, fx + 16, 8);
	memcpy(&f->mxcsr, fx + 24, 4);
	memcpy(f->fpr, fx + 32, sizeof(f->fpr));
	memcpy(f->xmm, fx + 160, sizeof(f->xmm));
}

int kvm_xsave_get(struct kvm_vm_priv *kv, int fd, void *buf)
{
	if (kv->xsave_size > (int)sizeof(struct kvm_xsave))
		return KVM_IOCTL(fd, KVM_GET_XSAVE2, buf);
	return KVM_IOCTL(fd, KVM_GET_XSAVE, buf);
}

static int fpu_get(struct kvm_vm_priv *kv, int fd, struct cpu_state *st)
{
	struct kvm_fpu f;
	uint8_t *buf;
	int rc;

	if (!kv->xsave_size) {
		rc = KVM_IOCTL(fd, KVM_GET_FPU, &f);
		if (rc == 0)
			fpu_to_fxsave(st->fxsave, &f);
		return rc;
	}
	buf = calloc(1, (size_t)kv->xsave_size);
	if (!buf)
		return -ENOMEM;
	/* The XSAVE area starts with the FXSAVE image. */
	rc = kvm_xsave_get(kv, fd, buf);
	if (rc == 0)
		memcpy(st->fxsave, buf, FXSAVE_SIZE);
	free(buf);
	return rc;
}

static int fpu_set(struct kvm_vm_priv *kv, int fd, const struct cpu_state *st)
{
	struct kvm_fpu f;
	uint64_t bv;
	uint8_t *buf;
	int rc;

	if (!kv->xsave_size) {
		fxsave_to_fpu(&f, st->fxsave);
		return KVM_IOCTL(fd, KVM_SET_FPU, &f);
	}
	/* Replace x87/SSE in the current area; other components stay as they are. */
	buf = calloc(1, (size_t)kv->xsave_size);
	if (!buf)
		return -ENOMEM;
	rc = kvm_xsave_get(kv, fd, buf);
	if (rc == 0) {
		memcpy(buf, st->fxsave, FXSAVE_SIZE);
		memcpy(&bv, buf + FXSAVE_SIZE, sizeof(bv));
		bv |= XSTATE_FP_SSE; /* else KVM would load them in their init state */
		memcpy(buf + FXSAVE_SIZE, &bv, sizeof(bv));
		rc = KVM_IOCTL(fd, KVM_SET_XSAVE, buf);
	}
	free(buf);
	return rc;
}

static int xcr0_get(struct kvm_vm_priv *kv, int fd, uint64_t *xcr0)
{
	struct kvm_xcrs x;
	int rc;

	*xcr0 = 1; /* x87 only: the architectural reset value */
	if (!kv->xsave_size)
		return 0;
	rc = KVM_IOCTL(fd, KVM_GET_XCRS, &x);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < x.nr_xcrs && i < KVM_MAX_XCRS; i++) {
		if (x.xcrs[i].xcr == 0)
			*xcr0 = x.xcrs[i].value;
	}
	return 0;
}

static int xcr0_set(struct kvm_vm_priv *kv, int fd, uint64_t xcr0)
{
	struct kvm_xcrs x = {.nr_xcrs = 1};

	if (!kv->xsave_size)
		return 0;
	x.xcrs[0].xcr = 0;
	/* 0 is never valid (x87 is always on); read it as "not set up": the reset value. */
	x.xcrs[0].value = xcr0 ? xcr0 : 1;
	return KVM_IOCTL(fd, KVM_SET_XCRS, &x);
}

static int msrs_get(struct kvm_vm_priv *kv, int fd, struct cpu_state *st)
{
	struct kvm_msr_buf b;
	size_t map[KVM_STATE_NMSRS];
	int rc;

	msr_buf_init(kv, &b, map);
	rc = msrs_io(fd, KVM_GET_MSRS, &b, "KVM_GET_MSRS");
	if (rc)
		return rc;
	for (uint32_t i = 0; i < b.hdr.nmsrs; i++)
		*msr_field(st, map[i]) = b.e[i].data;
	return 0;
}

static int msrs_set(struct kvm_vm_priv *kv, int fd, const struct cpu_state *st)
{
	struct kvm_msr_buf b;
	size_t map[KVM_STATE_NMSRS];

	uint32_t n = 0;

	msr_buf_init(kv, &b, map);
	for (uint32_t i = 0; i < b.hdr.nmsrs; i++) {
		uint64_t v = *msr_field((struct cpu_state *)st, map[i]);

		/*
		 * Writing the wall-clock MSR makes KVM write the time into guest
		 * memory at that address, 0 included: only write an address the
		 * guest set up.
		 */
		if (b.e[i].index == MSR_KVM_WALL_CLOCK_NEW && v == 0)
			continue;
		b.e[n].index = b.e[i].index;
		b.e[n++].data = v;
	}
	b.hdr.nmsrs = n;
	return msrs_io(fd, KVM_SET_MSRS, &b, "KVM_SET_MSRS");
}

/* Exceptions that push an error code (SDM vol. 3, table 6-1). */
static bool vector_has_error_code(int32_t v)
{
	return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

static int events_get(int fd, struct cpu_state *st)
{
	struct kvm_vcpu_events ev;
	int rc = KVM_IOCTL(fd, KVM_GET_VCPU_EVENTS, &ev);

	if (rc < 0)
		return rc;
	st->intr_shadow = ev.interrupt.shadow != 0;
	st->pending_exception = ev.exception.injected ? ev.exception.nr : -1;
	st->pending_error_code = ev.exception.has_error_code ? ev.exception.error_code : 0;
	return 0;
}

static int events_set(int fd, const struct cpu_state *st)
{
	struct kvm_vcpu_events ev;
	int rc = KVM_IOCTL(fd, KVM_GET_VCPU_EVENTS, &ev);

	if (rc < 0)
		return rc;
	if (st->pending_exception >= 32) {
		pr_err("kvm: pending exception vector %d is not an exception",
		       st->pending_exception);
		return -EINVAL;
	}
	ev.exception.injected = st->pending_exception >= 0;
	ev.exception.nr = st->pending_exception >= 0 ? (uint8_t)st->pending_exception : 0;
	ev.exception.has_error_code = vector_has_error_code(st->pending_exception);
	ev.exception.error_code = st->pending_error_code;
	ev.interrupt.shadow = st->intr_shadow ? KVM_X86_SHADOW_INT_MOV_SS : 0;
	/* Only the shadow is flagged; NMI and SIPI state keep what KVM has. */
	ev.flags = KVM_VCPUEVENT_VALID_SHADOW;
	return KVM_IOCTL(fd, KVM_SET_VCPU_EVENTS, &ev);
}

static int lapic_get(struct kvm_vm_priv *kv, int fd, struct cpu_state *st)
{
	struct kvm_lapic_state la;
	struct kvm_mp_state mp;
	int rc;

	memset(st->lapic, 0, sizeof(st->lapic));
	st->halted = false;
	if (!kv->irqchip)
		return 0;
	rc = KVM_IOCTL(fd, KVM_GET_LAPIC, &la);
	if (rc == 0)
		rc = KVM_IOCTL(fd, KVM_GET_MP_STATE, &mp);
	if (rc < 0)
		return rc;
	_Static_assert(sizeof(la.regs) == sizeof(st->lapic), "LAPIC page size");
	memcpy(st->lapic, la.regs, sizeof(st->lapic));
	st->halted = mp.mp_state == KVM_MP_STATE_HALTED;
	return 0;
}

static int lapic_set(struct kvm_vm_priv *kv, int fd, const struct cpu_state *st)
{
	struct kvm_lapic_state la;

	if (!kv->irqchip)
		return 0;
	/*
	 * No real LAPIC page is all zeros (the version register never is):
	 * that is a state built from scratch (boot), which keeps the reset
	 * LAPIC KVM made for this vCPU, with its own APIC ID and masked LVTs.
	 */
	if (!memcmp(st->lapic, (const uint8_t[sizeof(st->lapic)]){0}, sizeof(st->lapic)))
		return 0;
	memcpy(la.regs, st->lapic, sizeof(la.regs));
	return KVM_IOCTL(fd, KVM_SET_LAPIC, &la);
}

static int mp_state_set(struct kvm_vm_priv *kv, int fd, const struct cpu_state *st)
{
	struct kvm_mp_state mp = {
	    .mp_state = st->halted ? KVM_MP_STATE_HALTED : KVM_MP_STATE_RUNNABLE,
	};

	if (!kv->irqchip)
		return 0;
	return KVM_IOCTL(fd, KVM_SET_MP_STATE, &mp);
}

int kvm_get_state(struct vcpu *vcpu, struct cpu_state *st)
{
	struct kvm_vm_priv *kv = kvm_vm(vcpu->vm);
	int fd = kvm_vcpu(vcpu)->fd;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = KVM_IOCTL(fd, KVM_GET_REGS, &regs);
	if (rc == 0)
		rc = KVM_IOCTL(fd, KVM_GET_SREGS, &sregs);
	if (rc)
		return rc;
	regs_to_state(st, &regs);
	sregs_to_state(st, &sregs);
	rc = xcr0_get(kv, fd, &st->xcr0);
	if (!rc)
		rc = fpu_get(kv, fd, st);
	if (!rc)
		rc = lapic_get(kv, fd, st);
	if (!rc)
		rc = msrs_get(kv, fd, st);
	if (!rc)
		rc = events_get(fd, st);
	return rc;
}

int kvm_set_state(struct vcpu *vcpu, const struct cpu_state *st)
{
	struct kvm_vm_priv *kv = kvm_vm(vcpu->vm);
	int fd = kvm_vcpu(vcpu)->fd;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	int rc;

	/* Start from KVM's copy so fields cpu_state lacks (the pending-IRQ bitmap) survive. */
	rc = KVM_IOCTL(fd, KVM_GET_SREGS, &sregs);
	if (rc)
		return rc;
	state_to_sregs(&sregs, st);
	state_to_regs(&regs, st);
	rc = KVM_IOCTL(fd, KVM_SET_SREGS, &sregs);
	if (!rc)
		rc = KVM_IOCTL(fd, KVM_SET_REGS, &regs);
	if (!rc)
		rc = xcr0_set(kv, fd, st->xcr0);
	if (!rc)
		rc = fpu_set(kv, fd, st);
	if (!rc)
		rc = lapic_set(kv, fd, st);
	if (!rc)
		rc = msrs_set(kv, fd, st);
	if (!rc)
		rc = events_set(fd, st);
	if (!rc)
		rc = mp_state_set(kv, fd, st);
	return rc;
}
