/*
 * KVM backend, snapshots: the save_extra/restore_extra/cpu_model hooks of
 * cpu/cpu.h. struct cpu_state holds what both backends share; this holds
 * the rest of what KVM keeps for a VM, read and written through KVM's own
 * ioctls: per vCPU the whole XSAVE area (AVX and later, not only the FXSAVE
 * image), every MSR KVM lists as savable, debug registers, pending events
 * (NMI, injected interrupt, SIPI vector, latched INIT), the MP state (an AP
 * the guest never started must stay waiting for INIT/SIPI), the TSC rate;
 * per VM the in-kernel PIC and IOAPIC, the PIT if one was created and the
 * KVM clock.
 *
 * Layout, version 1 (little-endian, every field put one by one):
 *   u32 version, u32 vCPU count, u32 flags (bit 0 irqchip, bit 1 PIT)
 *   u64 KVM clock (ns, KVM_GET_CLOCK)
 *   irqchip: 2 x PIC (master, slave): 16 x u8 in kvm_pic_state order;
 *            IOAPIC: u64 base, u32 register select, u32 id, u32 irr,
 *            24 x u64 redirection entries
 *   PIT:     u32 flags, 3 x channel (u32 count, u16 latched count, then
 *            u8 count_latched, status_latched, status, read_state,
 *            write_state, write_latch, rw_mode, mode, bcd, gate)
 *   per vCPU:
 *     u32 TSC kHz (0: unknown), u32 MP state (KVM_MP_STATE_*)
 *     events: u8 exception injected, vector, has error code, pending;
 *             u32 error code; u8 interrupt injected, vector, soft, shadow;
 *             u8 NMI injected, pending, masked, pad; u32 SIPI vector;
 *             u8 SMM, SMI pending, SMM inside NMI, latched INIT
 *     6 x u64 dr0-3, dr6, dr7
 *     u32 XCR count (<= 16), count x (u32 XCR, u64 value)
 *     u32 XSAVE bytes (0, or 576 up to this host's size), the area in
 *         KVM_GET_XSAVE layout
 *     u32 MSR count, count x (u32 index, u64 value), indexes ascending
 *
 * Restoring reads an untrusted file: the whole record is parsed and checked
 * (version, counts, lengths, every value KVM would take as an index or a
 * mode) before any ioctl changes the VM. It runs after set_state() of every
 * vCPU and replaces what that set from the shared record.
 */
#include "cpu/kvm/kvm_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <zlib.h>

#include "arch/x86/layout.h"
#include "state/cpu_neutral.h"
#include "state/snapfile.h"
#include "util/log.h"

#define KSNAP_VERSION 1u
#define KSNAP_IRQCHIP 1u
#define KSNAP_PIT 2u
#define KSNAP_PIC_BYTES 16
#define KSNAP_XSAVE_MIN 576 /* legacy area + XSAVE header */
#define KSNAP_MAX_TSC_KHZ 100000000u

#define MSR_IA32_TSC 0x10
#define MSR_KVM_WALL_CLOCK 0x11
#define MSR_IA32_TSC_DEADLINE 0x6e0
#define MSR_KVM_WALL_CLOCK_NEW 0x4b564d00
#define MSR_KVM_ASYNC_PF_INT 0x4b564d06
#define MSR_TSC_AUX 0xc0000103

struct ksnap_cpu {
	uint32_t tsc_khz, mp_state;
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dr;
	struct kvm_xcrs xcrs;
	const uint8_t *xsave; /* into the record */
	uint32_t xsave_len;
	struct kvm_msrs *msrs;
};

struct ksnap {
	uint32_t flags;
	uint64_t clock;
	struct kvm_irqchip chip[3]; /* PIC master, PIC slave, IOAPIC */
	struct kvm_pit_state2 pit;
	struct ksnap_cpu *cpu;
	int ncpus;
};

/* ---------------------------------------------------------------- saving */

static int put_u8s(struct dev_buf *b, const uint8_t *v, unsigned n)
{
	return dev_buf_put(b, v, n);
}

static int put_pic(struct dev_buf *b, const struct kvm_pic_state *p)
{
	const uint8_t v[KSNAP_PIC_BYTES] = {
	    p->last_irr,
	    p->irr,
	    p->imr,
	    p->isr,
	    p->priority_add,
	    p->irq_base,
	    p->read_reg_select,
	    p->poll,
	    p->special_mask,
	    p->init_state,
	    p->auto_eoi,
	    p->rotate_on_auto_eoi,
	    p->special_fully_nested_mode,
	    p->init4,
	    p->elcr,
	    p->elcr_mask,
	};

	return put_u8s(b, v, sizeof(v));
}

static int save_pic(struct kvm_vm_priv *kv, uint32_t chip_id, struct dev_buf *b)
{
	struct kvm_irqchip c = {.chip_id = chip_id};
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_IRQCHIP, &c);

	return rc < 0 ? rc : put_pic(b, &c.chip.pic);
}

static int save_ioapic(struct kvm_vm_priv *kv, struct dev_buf *b)
{
	struct kvm_irqchip c = {.chip_id = KVM_IRQCHIP_IOAPIC};
	const struct kvm_ioapic_state *io = &c.chip.ioapic;
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_IRQCHIP, &c);

	if (rc < 0)
		return rc;
	rc = snap_put_u64(b, io->base_address);
	if (!rc)
		rc = snap_put_u32(b, io->ioregsel);
	if (!rc)
		rc = snap_put_u32(b, io->id);
	if (!rc)
		rc = snap_put_u32(b, io->irr);
	for (int i = 0; !rc && i < KVM_IOAPIC_NUM_PINS; i++)
		rc = snap_put_u64(b, io->redirtbl[i].bits);
	return rc;
}

static int save_pit(const struct kvm_pit_state2 *ps, struct dev_buf *b)
{
	int rc = snap_put_u32(b, ps->flags);

	for (int i = 0; !rc && i < 3; i++) {
		const struct kvm_pit_channel_state *c = &ps->channels[i];
		const uint8_t v[10] = {
		    c->count_latched, c->status_latched, c->status, c->read_state, c->write_state,
		    c->write_latch,   c->rw_mode,	 c->mode,   c->bcd,	   c->gate};

		rc = snap_put_u32(b, c->count);
		if (!rc)
			rc = snap_put_u16(b, c->latched_count);
		if (!rc)
			rc = put_u8s(b, v, sizeof(v));
	}
	return rc;
}

/* The PIT exists only if someone created it (KVM_CREATE_PIT2): ENXIO says it does not. */
static int pit_get(struct kvm_vm_priv *kv, struct kvm_pit_state2 *ps, bool *present)
{
	int err;

	*present = false;
	memset(ps, 0, sizeof(*ps));
	if (!kv->irqchip)
		return 0;
	if (ioctl(kv->vm_fd, KVM_GET_PIT2, ps) == 0) {
		*present = true;
		return 0;
	}
	if (errno == ENXIO)
		return 0;
	err = errno;
	pr_err("kvm: KVM_GET_PIT2 failed: %s", strerror(err));
	return -err;
}

static int save_vm(struct kvm_vm_priv *kv, int ncpus, struct dev_buf *b)
{
	struct kvm_clock_data clk = {0};
	struct kvm_pit_state2 ps;
	bool pit;
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_CLOCK, &clk);

	if (!rc)
		rc = pit_get(kv, &ps, &pit);
	if (rc < 0)
		return rc;
	rc = snap_put_u32(b, KSNAP_VERSION);
	if (!rc)
		rc = snap_put_u32(b, (uint32_t)ncpus);
	if (!rc)
		rc = snap_put_u32(b, (kv->irqchip ? KSNAP_IRQCHIP : 0) | (pit ? KSNAP_PIT : 0));
	if (!rc)
		rc = snap_put_u64(b, clk.clock);
	if (!rc && kv->irqchip)
		rc = save_pic(kv, KVM_IRQCHIP_PIC_MASTER, b);
	if (!rc && kv->irqchip)
		rc = save_pic(kv, KVM_IRQCHIP_PIC_SLAVE, b);
	if (!rc && kv->irqchip)
		rc = save_ioapic(kv, b);
	if (!rc && pit)
		rc = save_pit(&ps, b);
	return rc;
}

static int put_events(struct dev_buf *b, const struct kvm_vcpu_events *ev)
{
	const uint8_t exc[4] = {ev->exception.injected, ev->exception.nr,
				ev->exception.has_error_code, ev->exception.pending};
	const uint8_t intr_nmi[8] = {
	    ev->interrupt.injected, ev->interrupt.nr, ev->interrupt.soft, ev->interrupt.shadow,
	    ev->nmi.injected,	    ev->nmi.pending,  ev->nmi.masked,	  0};
	const uint8_t smi[4] = {ev->smi.smm, ev->smi.pending, ev->smi.smm_inside_nmi,
				ev->smi.latched_init};
	int rc = put_u8s(b, exc, sizeof(exc));

	if (!rc)
		rc = snap_put_u32(b, ev->exception.error_code);
	if (!rc)
		rc = put_u8s(b, intr_nmi, sizeof(intr_nmi));
	if (!rc)
		rc = snap_put_u32(b, ev->sipi_vector);
	if (!rc)
		rc = put_u8s(b, smi, sizeof(smi));
	return rc;
}

static int save_events(int fd, struct dev_buf *b)
{
	struct kvm_vcpu_events ev;
	int rc = KVM_IOCTL(fd, KVM_GET_VCPU_EVENTS, &ev);

	return rc < 0 ? rc : put_events(b, &ev);
}

static int save_debugregs(int fd, struct dev_buf *b)
{
	struct kvm_debugregs dr;
	int rc = KVM_IOCTL(fd, KVM_GET_DEBUGREGS, &dr);

	for (int i = 0; rc >= 0 && i < 4; i++)
		rc = snap_put_u64(b, dr.db[i]);
	if (rc >= 0)
		rc = snap_put_u64(b, dr.dr6);
	if (rc >= 0)
		rc = snap_put_u64(b, dr.dr7);
	return rc < 0 ? rc : 0;
}

static int save_xsave(struct kvm_vm_priv *kv, int fd, struct dev_buf *b)
{
	struct kvm_xcrs x;
	uint8_t *buf;
	int rc;

	if (!kv->xsave_size) {
		rc = snap_put_u32(b, 0);	     /* no XCRs */
		return rc ? rc : snap_put_u32(b, 0); /* no XSAVE area */
	}
	rc = KVM_IOCTL(fd, KVM_GET_XCRS, &x);
	if (rc < 0)
		return rc;
	if (x.nr_xcrs > KVM_MAX_XCRS)
		return -EINVAL;
	rc = snap_put_u32(b, x.nr_xcrs);
	for (uint32_t i = 0; !rc && i < x.nr_xcrs; i++) {
		rc = snap_put_u32(b, x.xcrs[i].xcr);
		if (!rc)
			rc = snap_put_u64(b, x.xcrs[i].value);
	}
	if (rc)
		return rc;
	buf = calloc(1, (size_t)kv->xsave_size);
	if (!buf)
		return -ENOMEM;
	rc = kvm_xsave_get(kv, fd, buf);
	if (!rc)
		rc = snap_put_u32(b, (uint32_t)kv->xsave_size);
	if (!rc)
		rc = dev_buf_put(b, buf, (uint64_t)kv->xsave_size);
	free(buf);
	return rc;
}

/*
 * Read every MSR of KVM's savable list. Some of the list depend on CPUID
 * features or host support and are refused; KVM_GET_MSRS stops at the first
 * refused one, so skip it and go on with the rest.
 */
static int msrs_read_all(struct kvm_vm_priv *kv, int fd, struct kvm_msrs **out)
{
	struct kvm_msrs *all, *one;
	uint32_t n = kv->nmsr_index, got = 0;

	all = calloc(1, sizeof(*all) + (n ? n : 1) * sizeof(struct kvm_msr_entry));
	one = calloc(1, sizeof(*one) + (n ? n : 1) * sizeof(struct kvm_msr_entry));
	if (!all || !one) {
		free(all);
		free(one);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n;) {
		int rc;

		one->nmsrs = n - i;
		for (uint32_t j = 0; j < one->nmsrs; j++)
			one->entries[j] = (struct kvm_msr_entry){.index = kv->msr_index[i + j]};
		rc = ioctl(fd, KVM_GET_MSRS, one);
		if (rc < 0) {
			rc = -errno;
			pr_err("kvm: KVM_GET_MSRS failed: %s", strerror(-rc));
			free(all);
			free(one);
			return rc;
		}
		memcpy(&all->entries[got], one->entries, (size_t)rc * sizeof(one->entries[0]));
		got += (uint32_t)rc;
		i += (uint32_t)rc + 1; /* past the refused one (if rc < count) */
	}
	all->nmsrs = got;
	free(one);
	*out = all;
	return 0;
}

static int save_msrs(struct kvm_vm_priv *kv, int fd, struct dev_buf *b)
{
	struct kvm_msrs *m = NULL;
	int rc = msrs_read_all(kv, fd, &m);

	if (rc)
		return rc;
	rc = snap_put_u32(b, m->nmsrs);
	for (uint32_t i = 0; !rc && i < m->nmsrs; i++) {
		rc = snap_put_u32(b, m->entries[i].index);
		if (!rc)
			rc = snap_put_u64(b, m->entries[i].data);
	}
	free(m);
	return rc;
}

static int save_cpu(struct kvm_vm_priv *kv, struct vcpu *vcpu, struct dev_buf *b)
{
	int fd = kvm_vcpu(vcpu)->fd;
	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
	int khz = ioctl(fd, KVM_GET_TSC_KHZ, 0); /* not every KVM has it: 0 then */
	int rc = 0;

	if (kv->irqchip)
		rc = KVM_IOCTL(fd, KVM_GET_MP_STATE, &mp);
	if (!rc)
		rc = snap_put_u32(b, khz > 0 ? (uint32_t)khz : 0);
	if (!rc)
		rc = snap_put_u32(b, mp.mp_state);
	if (!rc)
		rc = save_events(fd, b);
	if (!rc)
		rc = save_debugregs(fd, b);
	if (!rc)
		rc = save_xsave(kv, fd, b);
	if (!rc)
		rc = save_msrs(kv, fd, b);
	return rc;
}

int kvm_snap_save(struct vm *vm, struct dev_buf *out)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	int rc = save_vm(kv, vm->ncpus, out);

	for (int i = 0; !rc && i < vm->ncpus; i++) {
		if (!vm->vcpus[i].backend)
			return -EINVAL;
		rc = save_cpu(kv, &vm->vcpus[i], out);
	}
	return rc;
}

/* ------------------------------------------------- parsing and checking */

static bool all_le(const uint8_t *v, unsigned n, uint8_t max)
{
	for (unsigned i = 0; i < n; i++) {
		if (v[i] > max)
			return false;
	}
	return true;
}

static bool parse_pic(struct snap_rd *r, struct kvm_irqchip *c, uint32_t chip_id)
{
	struct kvm_pic_state *p = &c->chip.pic;
	uint8_t v[KSNAP_PIC_BYTES];

	snap_rd_bytes(r, v, sizeof(v));
	c->chip_id = chip_id;
	*p = (struct kvm_pic_state){
	    .last_irr = v[0],
	    .irr = v[1],
	    .imr = v[2],
	    .isr = v[3],
	    .priority_add = v[4],
	    .irq_base = v[5],
	    .read_reg_select = v[6],
	    .poll = v[7],
	    .special_mask = v[8],
	    .init_state = v[9],
	    .auto_eoi = v[10],
	    .rotate_on_auto_eoi = v[11],
	    .special_fully_nested_mode = v[12],
	    .init4 = v[13],
	    .elcr = v[14],
	    .elcr_mask = v[15],
	};
	/* KVM's i8259 switches on init_state and tests the flags as booleans. */
	return p->priority_add <= 7 && p->init_state <= 3 && all_le(v + 6, 3, 1) &&
	       all_le(v + 10, 4, 1);
}

static bool parse_ioapic(struct snap_rd *r, struct kvm_irqchip *c)
{
	struct kvm_ioapic_state *io = &c->chip.ioapic;

	c->chip_id = KVM_IRQCHIP_IOAPIC;
	io->base_address = snap_rd_u64(r);
	io->ioregsel = snap_rd_u32(r);
	io->id = snap_rd_u32(r);
	io->irr = snap_rd_u32(r);
	for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		io->redirtbl[i].bits = snap_rd_u64(r);
	/* KVM routes MMIO by base_address: it must stay where the machine put it. */
	return io->base_address == IOAPIC_BASE && io->ioregsel <= 0xff && io->id <= 0xff &&
	       !(io->irr >> KVM_IOAPIC_NUM_PINS);
}

static bool parse_pit(struct snap_rd *r, struct kvm_pit_state2 *ps)
{
	bool ok;

	memset(ps, 0, sizeof(*ps));
	ps->flags = snap_rd_u32(r);
	ok = !(ps->flags & ~(uint32_t)(KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON));
	for (int i = 0; i < 3; i++) {
		struct kvm_pit_channel_state *c = &ps->channels[i];
		uint8_t v[10];

		c->count = snap_rd_u32(r);
		c->latched_count = snap_rd_u16(r);
		snap_rd_bytes(r, v, sizeof(v));
		c->count_latched = v[0];
		c->status_latched = v[1];
		c->status = v[2];
		c->read_state = v[3];
		c->write_state = v[4];
		c->write_latch = v[5];
		c->rw_mode = v[6];
		c->mode = v[7];
		c->bcd = v[8];
		c->gate = v[9];
		/*
		 * Counter modes 0-5 (0xff: never programmed, as KVM resets it), access
		 * modes 0-3, read/write states 0-4, as KVM's 8254 has them.
		 */
		ok = ok && c->count <= 0x10000 && c->count_latched <= 3 && c->status_latched <= 1 &&
		     c->read_state <= 4 && c->write_state <= 4 && c->rw_mode <= 3 &&
		     (c->mode <= 5 || c->mode == 0xff) && c->bcd <= 1 && c->gate <= 1;
	}
	return ok;
}

static bool mp_state_ok(uint32_t mp, bool irqchip)
{
	if (!irqchip)
		return mp == KVM_MP_STATE_RUNNABLE;
	return mp == KVM_MP_STATE_RUNNABLE || mp == KVM_MP_STATE_UNINITIALIZED ||
	       mp == KVM_MP_STATE_INIT_RECEIVED || mp == KVM_MP_STATE_HALTED ||
	       mp == KVM_MP_STATE_SIPI_RECEIVED;
}

static bool parse_events(struct snap_rd *r, struct kvm_vcpu_events *ev)
{
	uint8_t a[4], b[8], c[4];

	memset(ev, 0, sizeof(*ev));
	snap_rd_bytes(r, a, 4);
	ev->exception.error_code = snap_rd_u32(r);
	snap_rd_bytes(r, b, 8);
	ev->sipi_vector = snap_rd_u32(r);
	snap_rd_bytes(r, c, 4);
	ev->exception.injected = a[0];
	ev->exception.nr = a[1];
	ev->exception.has_error_code = a[2];
	ev->exception.pending = a[3];
	ev->interrupt.injected = b[0];
	ev->interrupt.nr = b[1];
	ev->interrupt.soft = b[2];
	ev->interrupt.shadow = b[3];
	ev->nmi.injected = b[4];
	ev->nmi.pending = b[5];
	ev->nmi.masked = b[6];
	ev->smi.smm = c[0];
	ev->smi.pending = c[1];
	ev->smi.smm_inside_nmi = c[2];
	ev->smi.latched_init = c[3];
	ev->flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
		    KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
	/* KVM keeps at most two NMIs pending; exceptions are vectors 0-31. */
	return a[1] < 32 && a[0] <= 1 && a[2] <= 1 && a[3] <= 1 && b[0] <= 1 && b[2] <= 1 &&
	       b[3] <= (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI) && b[4] <= 1 &&
	       b[5] <= 2 && b[6] <= 1 && b[7] == 0 && ev->sipi_vector <= 0xff && all_le(c, 4, 1);
}

static bool parse_debugregs(struct snap_rd *r, struct kvm_debugregs *dr)
{
	memset(dr, 0, sizeof(*dr));
	for (int i = 0; i < 4; i++)
		dr->db[i] = snap_rd_u64(r);
	dr->dr6 = snap_rd_u64(r);
	dr->dr7 = snap_rd_u64(r);
	/* KVM refuses DR6/DR7 with bits above 31 set. */
	return !(dr->dr6 >> 32) && !(dr->dr7 >> 32);
}

static bool parse_xsave(struct kvm_vm_priv *kv, struct snap_rd *r, struct ksnap_cpu *c)
{
	uint32_t n = snap_rd_u32(r);

	if (n > KVM_MAX_XCRS)
		return false;
	memset(&c->xcrs, 0, sizeof(c->xcrs));
	c->xcrs.nr_xcrs = n;
	for (uint32_t i = 0; i < n; i++) {
		c->xcrs.xcrs[i].xcr = snap_rd_u32(r);
		c->xcrs.xcrs[i].value = snap_rd_u64(r);
	}
	c->xsave_len = snap_rd_u32(r);
	if (c->xsave_len == 0)
		return n == 0 || kv->xsave_size;
	/* An area from a bigger XSAVE than this host's would lose state: refuse it. */
	if (!kv->xsave_size || c->xsave_len < KSNAP_XSAVE_MIN ||
	    c->xsave_len > (uint32_t)kv->xsave_size)
		return false;
	c->xsave = snap_rd_ptr(r, c->xsave_len);
	return c->xsave != NULL;
}

static bool parse_msrs(struct kvm_vm_priv *kv, struct snap_rd *r, struct ksnap_cpu *c)
{
	uint32_t n = snap_rd_u32(r);

	/* Each MSR at most once, and only those this KVM lists as savable. */
	if (r->err || n > kv->nmsr_index || n > (r->len - r->off) / 12)
		return false;
	c->msrs = calloc(1, sizeof(*c->msrs) + (n ? n : 1) * sizeof(struct kvm_msr_entry));
	if (!c->msrs)
		return false;
	c->msrs->nmsrs = n;
	for (uint32_t i = 0; i < n; i++) {
		struct kvm_msr_entry *e = &c->msrs->entries[i];

		e->index = snap_rd_u32(r);
		e->data = snap_rd_u64(r);
		if (r->err || !kvm_msr_supported(kv, e->index))
			return false;
		if (i > 0 && e->index <= c->msrs->entries[i - 1].index)
			return false;
	}
	return true;
}

static bool parse_cpu(struct kvm_vm_priv *kv, struct snap_rd *r, struct ksnap_cpu *c)
{
	c->tsc_khz = snap_rd_u32(r);
	c->mp_state = snap_rd_u32(r);
	if (c->tsc_khz > KSNAP_MAX_TSC_KHZ || !mp_state_ok(c->mp_state, kv->irqchip))
		return false;
	return parse_events(r, &c->ev) && parse_debugregs(r, &c->dr) && parse_xsave(kv, r, c) &&
	       parse_msrs(kv, r, c) && !r->err;
}

static void ksnap_free(struct ksnap *s)
{
	for (int i = 0; s->cpu && i < s->ncpus; i++)
		free(s->cpu[i].msrs);
	free(s->cpu);
}

static int parse_vm(struct vm *vm, struct snap_rd *r, struct ksnap *s)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	bool ok = true;

	if (snap_rd_u32(r) != KSNAP_VERSION)
		return r->err ? -EINVAL : -EPROTONOSUPPORT;
	if (snap_rd_u32(r) != (uint32_t)vm->ncpus)
		return -EINVAL;
	s->flags = snap_rd_u32(r);
	s->clock = snap_rd_u64(r);
	if (s->flags & ~(KSNAP_IRQCHIP | KSNAP_PIT) ||
	    !!(s->flags & KSNAP_IRQCHIP) != kv->irqchip || ((s->flags & KSNAP_PIT) && !kv->irqchip))
		return -EINVAL;
	if (kv->irqchip) {
		ok = parse_pic(r, &s->chip[0], KVM_IRQCHIP_PIC_MASTER) &&
		     parse_pic(r, &s->chip[1], KVM_IRQCHIP_PIC_SLAVE) &&
		     parse_ioapic(r, &s->chip[2]);
	}
	if (ok && (s->flags & KSNAP_PIT))
		ok = parse_pit(r, &s->pit);
	return ok && !r->err ? 0 : -EINVAL;
}

/* Check the whole record; nothing is changed. */
static int ksnap_parse(struct vm *vm, const void *data, uint64_t len, struct ksnap *s)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	struct snap_rd r = {.p = data, .len = data ? len : 0};
	int rc;

	memset(s, 0, sizeof(*s));
	rc = parse_vm(vm, &r, s);
	if (rc)
		return rc;
	s->cpu = calloc((size_t)vm->ncpus, sizeof(*s->cpu));
	if (!s->cpu)
		return -ENOMEM;
	s->ncpus = vm->ncpus;
	for (int i = 0; i < vm->ncpus; i++) {
		if (!vm->vcpus[i].backend || !parse_cpu(kv, &r, &s->cpu[i]))
			return -EINVAL;
	}
	return r.off == r.len && !r.err ? 0 : -EINVAL;
}

/* ------------------------------------------------------------- restoring */

static int restore_tsc_khz(int fd, uint32_t khz)
{
	int now = ioctl(fd, KVM_GET_TSC_KHZ, 0);

	if (khz == 0 || now <= 0 || (uint32_t)now == khz)
		return 0;
	/* Needs TSC scaling in hardware; without it the guest's TSC runs at this host's rate. */
	if (ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)khz) < 0)
		pr_warn("kvm: restore: cannot run the guest's TSC at %u kHz (host %d kHz): %s", khz,
			now, strerror(errno));
	return 0;
}

static int restore_xsave(struct kvm_vm_priv *kv, int fd, const struct ksnap_cpu *c)
{
	uint8_t *buf;
	int rc;

	if (c->xcrs.nr_xcrs) {
		rc = KVM_IOCTL(fd, KVM_SET_XCRS, (void *)&c->xcrs);
		if (rc < 0)
			return rc;
	}
	if (!c->xsave_len)
		return 0;
	/* KVM reads a buffer of its own size; what a smaller area lacks stays zero (init state). */
	buf = calloc(1, (size_t)kv->xsave_size);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, c->xsave, c->xsave_len);
	rc = KVM_IOCTL(fd, KVM_SET_XSAVE, buf);
	free(buf);
	return rc < 0 ? rc : 0;
}

/* One MSR. A refusal is fine when the MSR already holds the value (read-only feature MSRs). */
static int msr_restore_one(int fd, const struct kvm_msr_entry *e)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} b = {.hdr.nmsrs = 1, .e = {*e}};
	int rc;

	/* A wall-clock MSR write makes KVM store the time at that address, 0 included. */
	if ((e->index == MSR_KVM_WALL_CLOCK || e->index == MSR_KVM_WALL_CLOCK_NEW) && !e->data)
		return 0;
	rc = ioctl(fd, KVM_SET_MSRS, &b);
	if (rc == 1)
		return 0;
	if (rc < 0) {
		rc = -errno;
		pr_err("kvm: restore: KVM_SET_MSRS %#x: %s", e->index, strerror(-rc));
		return rc;
	}
	b.e[0].data = 0;
	if (ioctl(fd, KVM_GET_MSRS, &b) == 1 && b.e[0].data == e->data)
		return 0;
	pr_err("kvm: restore: MSR %#x refuses the saved value %#llx", e->index,
	       (unsigned long long)e->data);
	return -EINVAL;
}

/*
 * Write order: the TSC first (TSC_ADJUST and the deadline are relative to
 * it), the async-PF vector before the MSR that enables it, the TSC deadline
 * last (it arms the LAPIC timer, which set_state already configured).
 */
static int msr_rank(uint32_t index)
{
	switch (index) {
	case MSR_IA32_TSC:
		return 0;
	case MSR_KVM_ASYNC_PF_INT:
		return 1;
	case MSR_IA32_TSC_DEADLINE:
		return 3;
	default:
		return 2;
	}
}

static int restore_msrs(int fd, const struct kvm_msrs *m)
{
	for (int rank = 0; rank <= 3; rank++) {
		for (uint32_t i = 0; i < m->nmsrs; i++) {
			int rc;

			if (msr_rank(m->entries[i].index) != rank)
				continue;
			rc = msr_restore_one(fd, &m->entries[i]);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int restore_cpu(struct kvm_vm_priv *kv, struct vcpu *vcpu, const struct ksnap_cpu *c)
{
	int fd = kvm_vcpu(vcpu)->fd;
	struct kvm_mp_state mp = {.mp_state = c->mp_state};
	struct kvm_debugregs dr = c->dr;
	struct kvm_vcpu_events ev = c->ev;
	int rc = restore_tsc_khz(fd, c->tsc_khz);

	if (!rc)
		rc = restore_xsave(kv, fd, c);
	if (!rc)
		rc = KVM_IOCTL(fd, KVM_SET_DEBUGREGS, &dr);
	if (rc >= 0)
		rc = restore_msrs(fd, c->msrs);
	/* The MP state before the events: the SIPI vector and latched INIT belong to it. */
	if (!rc && kv->irqchip)
		rc = KVM_IOCTL(fd, KVM_SET_MP_STATE, &mp);
	if (rc >= 0)
		rc = KVM_IOCTL(fd, KVM_SET_VCPU_EVENTS, &ev);
	return rc < 0 ? rc : 0;
}

/* A PIT in the snapshot that this VM lacks is created: the restored VM must have one. */
static int restore_pit(struct kvm_vm_priv *kv, const struct kvm_pit_state2 *saved)
{
	struct kvm_pit_config cfg = {.flags = 0};
	struct kvm_pit_state2 ps;
	bool present;
	int rc = pit_get(kv, &ps, &present);

	if (!rc && !present)
		rc = KVM_IOCTL(kv->vm_fd, KVM_CREATE_PIT2, &cfg);
	ps = *saved;
	if (rc >= 0)
		rc = KVM_IOCTL(kv->vm_fd, KVM_SET_PIT2, &ps);
	return rc < 0 ? rc : 0;
}

static int restore_vm(struct kvm_vm_priv *kv, struct ksnap *s)
{
	struct kvm_clock_data clk = {.clock = s->clock};
	int rc = 0;

	for (int i = 0; kv->irqchip && !rc && i < 3; i++)
		rc = KVM_IOCTL(kv->vm_fd, KVM_SET_IRQCHIP, &s->chip[i]);
	if (rc >= 0 && (s->flags & KSNAP_PIT))
		rc = restore_pit(kv, &s->pit);
	/* Last: guest time continues from the saved value, not from now. */
	if (rc >= 0)
		rc = KVM_IOCTL(kv->vm_fd, KVM_SET_CLOCK, &clk);
	return rc < 0 ? rc : 0;
}

int kvm_snap_restore(struct vm *vm, const void *data, uint64_t len)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	struct ksnap s;
	int rc = ksnap_parse(vm, data, len, &s);

	if (rc) {
		pr_err("kvm: restore: malformed backend state (%s)", strerror(-rc));
		ksnap_free(&s);
		return rc;
	}
	for (int i = 0; !rc && i < vm->ncpus; i++)
		rc = restore_cpu(kv, &vm->vcpus[i], &s.cpu[i]);
	if (!rc)
		rc = restore_vm(kv, &s);
	ksnap_free(&s);
	return rc;
}

/* ------------------------------------------------------------- CPU model */

/*
 * The feature words the guest is given: what a guest may have detected at
 * boot and relies on. Topology fields (APIC IDs, counts) are left out: they
 * follow the vCPU count, which the snapshot fixes anyway.
 */
static uint32_t feature_crc(const struct kvm_cpuid2 *c)
{
	static const struct {
		uint32_t fn, idx;
		uint8_t regs; /* bit 0 eax, 1 ebx, 2 ecx, 3 edx */
	} words[] = {
	    {1, 0, 0xc},	  {7, 0, 0xe},		{7, 1, 0x1},
	    {0xd, 0, 0x9},	  {0xd, 1, 0x1},	{0x80000001, 0, 0xc},
	    {0x80000007, 0, 0x8}, {0x80000008, 0, 0x3}, {0x40000001, 0, 0x1},
	};
	uint32_t crc = 0;

	for (unsigned i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		const struct kvm_cpuid_entry2 *e = kvm_cpuid_find(c, words[i].fn, words[i].idx);
		const uint32_t r[4] = {e ? e->eax : 0, e ? e->ebx : 0, e ? e->ecx : 0,
				       e ? e->edx : 0};

		for (int j = 0; j < 4; j++) {
			uint32_t v = (words[i].regs >> j) & 1 ? r[j] : 0;

			crc = (uint32_t)crc32(crc, (const uint8_t *)&v, sizeof(v));
		}
	}
	return crc;
}

/* "kvm <vendor> <family>-<model> <feature CRC>", e.g. "kvm GenuineIntel 6-85 1a2b3c4d". */
int kvm_snap_cpu_model(struct vm *vm, char *buf, unsigned len)
{
	const struct kvm_cpuid2 *c = kvm_vm(vm)->cpuid;
	const struct kvm_cpuid_entry2 *l0 = kvm_cpuid_find(c, 0, 0), *l1 = kvm_cpuid_find(c, 1, 0);
	uint32_t vendor[3], fam, model;
	int n;

	if (!l0 || !l1)
		return -EINVAL;
	vendor[0] = l0->ebx;
	vendor[1] = l0->edx;
	vendor[2] = l0->ecx;
	fam = (l1->eax >> 8) & 0xf;
	model = (l1->eax >> 4) & 0xf;
	if (fam == 0xf)
		fam += (l1->eax >> 20) & 0xff;
	if (fam == 0x6 || fam >= 0xf)
		model |= ((l1->eax >> 16) & 0xf) << 4;
	n = snprintf(buf, len, "kvm %.12s %u-%u %08x", (const char *)vendor, fam, model,
		     feature_crc(c));
	return n < 0 || (unsigned)n >= len ? -ENOSPC : 0;
}

/* ------------------------------------------- the backend-neutral record */

void kvm_snap_cpuid(struct vm *vm, uint32_t leaf, uint32_t sub, uint32_t out[4])
{
	const struct kvm_cpuid_entry2 *e = kvm_cpuid_find(kvm_vm(vm)->cpuid, leaf, sub);

	out[0] = e ? e->eax : 0;
	out[1] = e ? e->ebx : 0;
	out[2] = e ? e->ecx : 0;
	out[3] = e ? e->edx : 0;
	/* As kvm_cpuid_set() gives every vCPU: HTT says the package has several. */
	if (leaf == 1 && e)
		out[3] = vm->ncpus > 1 ? out[3] | 1u << 28 : out[3] & ~(1u << 28);
}

static int msr_get1(int fd, uint32_t index, uint64_t *v)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} b = {.hdr.nmsrs = 1, .e = {{.index = index}}};

	if (ioctl(fd, KVM_GET_MSRS, &b) != 1)
		return -EIO;
	*v = b.e[0].data;
	return 0;
}

/*
 * Has the guest used the 8259 PIC or the 8254 PIT (which the emulator does
 * not have)? An initialized, unmasked PIC or a programmed PIT channel says so.
 */
static int legacy_in_use(struct kvm_vm_priv *kv, bool *used)
{
	struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
	struct kvm_pit_state2 ps;
	bool pit;
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_IRQCHIP, &pic);

	if (rc >= 0)
		rc = pit_get(kv, &ps, &pit);
	if (rc < 0)
		return rc;
	*used = pic.chip.pic.irq_base && pic.chip.pic.imr != 0xff;
	for (int i = 0; pit && i < 3; i++)
		*used |= ps.channels[i].mode <= 5 && ps.channels[i].count;
	return 0;
}

static int export_ioapic(struct kvm_vm_priv *kv, struct cpu_neutral *n)
{
	struct kvm_irqchip c = {.chip_id = KVM_IRQCHIP_IOAPIC};
	const struct kvm_ioapic_state *io = &c.chip.ioapic;
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_IRQCHIP, &c);

	if (rc < 0)
		return rc;
	n->ioapic_id = io->id & 0xf;
	n->ioapic_sel = io->ioregsel & 0xff;
	/* KVM's irr holds the lines that are asserted (level) or latched (edge). */
	n->ioapic_levels = io->irr & ((1u << CPU_NEUTRAL_PINS) - 1);
	for (int i = 0; i < CPU_NEUTRAL_PINS; i++)
		n->redir[i] = io->redirtbl[i].bits;
	return 0;
}

static int export_cpu(struct kvm_vm_priv *kv, int fd, struct cpu_neutral_vcpu *o)
{
	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dr;
	int rc = kv->irqchip ? KVM_IOCTL(fd, KVM_GET_MP_STATE, &mp) : 0;

	if (rc >= 0)
		rc = KVM_IOCTL(fd, KVM_GET_VCPU_EVENTS, &ev);
	if (rc >= 0)
		rc = KVM_IOCTL(fd, KVM_GET_DEBUGREGS, &dr);
	if (rc < 0)
		return rc;
	if (msr_get1(fd, MSR_TSC_AUX, &o->tsc_aux))
		o->tsc_aux = 0; /* a CPU without RDTSCP */
	o->tsc_aux &= 0xffffffffull;
	o->mp_state = mp.mp_state == KVM_MP_STATE_HALTED     ? CPU_MP_HALTED
		      : mp.mp_state == KVM_MP_STATE_RUNNABLE ? CPU_MP_RUNNABLE
							     : CPU_MP_WAIT_SIPI;
	o->nmi_pending = ev.nmi.pending || ev.nmi.injected;
	o->nmi_blocked = ev.nmi.masked & 1;
	o->sipi_pending = mp.mp_state == KVM_MP_STATE_SIPI_RECEIVED;
	o->sipi_vector = (uint8_t)ev.sipi_vector;
	for (int i = 0; i < 4; i++)
		o->dr[i] = dr.db[i];
	o->dr[4] = dr.dr6 & 0xffffffffull;
	o->dr[5] = dr.dr7 & 0xffffffffull;
	return 0;
}

int kvm_snap_export(struct vm *vm, struct cpu_neutral *n)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	bool legacy = false;
	int rc;

	if (!kv->irqchip)
		return -ENOTSUP; /* no IOAPIC or LAPIC to describe */
	rc = legacy_in_use(kv, &legacy);
	if (!rc)
		rc = export_ioapic(kv, n);
	if (rc)
		return rc;
	n->flags =
	    (kv->model.baseline ? CPU_NEUTRAL_BASELINE : 0) | (legacy ? CPU_NEUTRAL_LEGACY : 0);
	n->tsc_khz = kv->model.tsc_khz;
	n->apic_tick_ns = kv->model.apic_tick_ns;
	for (int i = 0; !rc && i < vm->ncpus; i++) {
		if (!vm->vcpus[i].backend)
			return -EINVAL;
		rc = export_cpu(kv, kvm_vcpu(&vm->vcpus[i])->fd, &n->cpu[i]);
	}
	return rc;
}

static int import_ioapic(struct kvm_vm_priv *kv, const struct cpu_neutral *n)
{
	struct kvm_irqchip c = {.chip_id = KVM_IRQCHIP_IOAPIC};
	struct kvm_ioapic_state *io = &c.chip.ioapic;
	int rc = KVM_IOCTL(kv->vm_fd, KVM_GET_IRQCHIP, &c);

	if (rc < 0)
		return rc;
	io->id = n->ioapic_id;
	io->ioregsel = n->ioapic_sel;
	io->irr = n->ioapic_levels;
	for (int i = 0; i < CPU_NEUTRAL_PINS; i++)
		io->redirtbl[i].bits = n->redir[i];
	rc = KVM_IOCTL(kv->vm_fd, KVM_SET_IRQCHIP, &c);
	return rc < 0 ? rc : 0;
}

static int import_cpu(int fd, const struct cpu_neutral_vcpu *o)
{
	static const uint32_t mp_of[] = {KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_HALTED,
					 KVM_MP_STATE_INIT_RECEIVED};
	struct kvm_mp_state mp = {.mp_state = o->sipi_pending ? KVM_MP_STATE_SIPI_RECEIVED
							      : mp_of[o->mp_state]};
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dr = {.dr6 = o->dr[4], .dr7 = o->dr[5]};
	struct kvm_msr_entry aux = {.index = MSR_TSC_AUX, .data = o->tsc_aux};
	int rc;

	/* An AP never started waits for its INIT/SIPI in KVM as UNINITIALIZED. */
	if (o->mp_state == CPU_MP_WAIT_SIPI && !o->sipi_pending)
		mp.mp_state = KVM_MP_STATE_UNINITIALIZED;
	memcpy(dr.db, o->dr, sizeof(dr.db));
	rc = KVM_IOCTL(fd, KVM_SET_DEBUGREGS, &dr);
	if (rc >= 0 && o->tsc_aux)
		rc = msr_restore_one(fd, &aux);
	if (rc >= 0)
		rc = KVM_IOCTL(fd, KVM_SET_MP_STATE, &mp);
	if (rc >= 0)
		rc = KVM_IOCTL(fd, KVM_GET_VCPU_EVENTS, &ev);
	if (rc < 0)
		return rc;
	ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	ev.nmi.pending = o->nmi_pending;
	ev.nmi.injected = 0;
	ev.nmi.masked = o->nmi_blocked;
	ev.sipi_vector = o->sipi_vector;
	rc = KVM_IOCTL(fd, KVM_SET_VCPU_EVENTS, &ev);
	return rc < 0 ? rc : 0;
}

int kvm_snap_import(struct vm *vm, const struct cpu_neutral *n)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	int rc;

	if (!kv->irqchip || n->ncpus != (uint32_t)vm->ncpus)
		return -EINVAL;
	rc = import_ioapic(kv, n);
	for (int i = 0; !rc && i < vm->ncpus; i++)
		rc = import_cpu(kvm_vcpu(&vm->vcpus[i])->fd, &n->cpu[i]);
	return rc;
}
