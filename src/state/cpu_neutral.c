/*
 * The backend-neutral record (state/cpu_neutral.h). Layout, version 1,
 * little-endian, every field put one by one:
 *   u32 version, u32 flags, u32 TSC kHz, u32 LAPIC timer tick ns
 *   10 x (u32 leaf, u32 subleaf, u32 eax, ebx, ecx, edx), in
 *        cpu_neutral_leaf_ids order
 *   IOAPIC: u32 id, u32 register select, u32 line levels, 24 x u64 redirection
 *   u32 vCPU count, per vCPU: u32 MP state, u8 NMI pending, NMI blocked,
 *        SIPI pending, SIPI vector, 6 x u64 dr0-3 dr6 dr7, u64 TSC_AUX
 */
#include "state/cpu_neutral.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state/snapfile.h"
#include "vmm/vm.h"

#define MAX_TSC_KHZ 100000000u /* 100 GHz */
#define MAX_TICK_NS 1000u      /* a LAPIC timer of at least 1 MHz */

const uint32_t cpu_neutral_leaf_ids[CPU_NEUTRAL_LEAVES][2] = {
    {0, 0},   {1, 0},	{6, 0},		 {7, 0},	  {7, 1},
    {0xd, 0}, {0xd, 1}, {0x80000001, 0}, {0x80000007, 0}, {0x80000008, 0},
};

void cpu_neutral_read_cpuid(struct vm *vm, struct cpu_neutral *n)
{
	for (unsigned i = 0; i < CPU_NEUTRAL_LEAVES; i++) {
		struct cpu_neutral_leaf *l = &n->leaves[i];

		l->leaf = cpu_neutral_leaf_ids[i][0];
		l->sub = cpu_neutral_leaf_ids[i][1];
		vm->cpu->cpuid(vm, l->leaf, l->sub, l->r);
		if (l->leaf == 1)
			l->r[1] = 0; /* EBX: APIC id and counts, not the model */
	}
}

int cpu_neutral_encode(const struct cpu_neutral *n, struct dev_buf *b)
{
	const uint32_t head[4] = {CPU_NEUTRAL_VERSION, n->flags, n->tsc_khz, n->apic_tick_ns};
	int err = 0;

	for (int i = 0; !err && i < 4; i++)
		err = snap_put_u32(b, head[i]);
	for (unsigned i = 0; !err && i < CPU_NEUTRAL_LEAVES; i++) {
		const struct cpu_neutral_leaf *l = &n->leaves[i];

		err = snap_put_u32(b, l->leaf);
		err = err ? err : snap_put_u32(b, l->sub);
		for (int j = 0; !err && j < 4; j++)
			err = snap_put_u32(b, l->r[j]);
	}
	err = err ? err : snap_put_u32(b, n->ioapic_id);
	err = err ? err : snap_put_u32(b, n->ioapic_sel);
	err = err ? err : snap_put_u32(b, n->ioapic_levels);
	for (int i = 0; !err && i < CPU_NEUTRAL_PINS; i++)
		err = snap_put_u64(b, n->redir[i]);
	err = err ? err : snap_put_u32(b, n->ncpus);
	for (uint32_t i = 0; !err && i < n->ncpus; i++) {
		const struct cpu_neutral_vcpu *c = &n->cpu[i];
		const uint8_t ev[4] = {c->nmi_pending, c->nmi_blocked, c->sipi_pending,
				       c->sipi_vector};

		err = snap_put_u32(b, c->mp_state);
		err = err ? err : dev_buf_put(b, ev, sizeof(ev));
		for (int j = 0; !err && j < 6; j++)
			err = snap_put_u64(b, c->dr[j]);
		err = err ? err : snap_put_u64(b, c->tsc_aux);
	}
	return err;
}

int cpu_neutral_save(struct vm *vm, struct dev_buf *out)
{
	struct cpu_neutral *n;
	int err;

	if (!vm->cpu->export_neutral || !vm->cpu->cpuid)
		return -ENOTSUP;
	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	cpu_neutral_read_cpuid(vm, n);
	n->ncpus = (uint32_t)vm->ncpus;
	err = vm->cpu->export_neutral(vm, n);
	if (!err)
		err = cpu_neutral_encode(n, out);
	free(n);
	return err;
}

static bool vcpu_ok(const struct cpu_neutral_vcpu *c)
{
	/* DR6/DR7 are 32-bit registers; the upper halves must be zero. */
	return c->mp_state <= CPU_MP_WAIT_SIPI && c->nmi_pending <= 1 && c->nmi_blocked <= 1 &&
	       c->sipi_pending <= 1 && !(c->dr[4] >> 32) && !(c->dr[5] >> 32) &&
	       !(c->tsc_aux >> 32);
}

static void decode_vcpu(struct snap_rd *r, struct cpu_neutral_vcpu *c)
{
	uint8_t ev[4];

	c->mp_state = snap_rd_u32(r);
	snap_rd_bytes(r, ev, sizeof(ev));
	c->nmi_pending = ev[0];
	c->nmi_blocked = ev[1];
	c->sipi_pending = ev[2];
	c->sipi_vector = ev[3];
	for (int j = 0; j < 6; j++)
		c->dr[j] = snap_rd_u64(r);
	c->tsc_aux = snap_rd_u64(r);
}

static bool head_ok(const struct cpu_neutral *n)
{
	if (n->flags & ~(CPU_NEUTRAL_BASELINE | CPU_NEUTRAL_LEGACY))
		return false;
	if (!n->tsc_khz || n->tsc_khz > MAX_TSC_KHZ || !n->apic_tick_ns ||
	    n->apic_tick_ns > MAX_TICK_NS)
		return false;
	for (unsigned i = 0; i < CPU_NEUTRAL_LEAVES; i++) {
		if (n->leaves[i].leaf != cpu_neutral_leaf_ids[i][0] ||
		    n->leaves[i].sub != cpu_neutral_leaf_ids[i][1])
			return false;
	}
	/* IOAPIC ids are 4 bits, its register window has 0x40 registers. */
	return n->ioapic_id <= 0xf && n->ioapic_sel <= 0xff &&
	       !(n->ioapic_levels >> CPU_NEUTRAL_PINS);
}

int cpu_neutral_decode(const void *data, uint64_t len, struct cpu_neutral *n)
{
	struct snap_rd r = {.p = data, .len = data ? len : 0};

	memset(n, 0, sizeof(*n));
	if (snap_rd_u32(&r) != CPU_NEUTRAL_VERSION)
		return r.err ? -EINVAL : -EPROTONOSUPPORT;
	n->flags = snap_rd_u32(&r);
	n->tsc_khz = snap_rd_u32(&r);
	n->apic_tick_ns = snap_rd_u32(&r);
	for (unsigned i = 0; i < CPU_NEUTRAL_LEAVES; i++) {
		n->leaves[i].leaf = snap_rd_u32(&r);
		n->leaves[i].sub = snap_rd_u32(&r);
		for (int j = 0; j < 4; j++)
			n->leaves[i].r[j] = snap_rd_u32(&r);
	}
	n->ioapic_id = snap_rd_u32(&r);
	n->ioapic_sel = snap_rd_u32(&r);
	n->ioapic_levels = snap_rd_u32(&r);
	for (int i = 0; i < CPU_NEUTRAL_PINS; i++)
		n->redir[i] = snap_rd_u64(&r);
	n->ncpus = snap_rd_u32(&r);
	if (r.err || !head_ok(n) || n->ncpus < 1 || n->ncpus > CPU_NEUTRAL_MAX_CPUS)
		return -EINVAL;
	for (uint32_t i = 0; i < n->ncpus; i++) {
		decode_vcpu(&r, &n->cpu[i]);
		if (r.err || !vcpu_ok(&n->cpu[i]))
			return -EINVAL;
	}
	return r.off == r.len ? 0 : -EINVAL;
}

void cpu_neutral_model(const struct cpu_neutral *n, struct cpu_model_cfg *m)
{
	m->baseline = n->flags & CPU_NEUTRAL_BASELINE;
	m->tsc_khz = n->tsc_khz;
	m->apic_tick_ns = n->apic_tick_ns;
}

/* ---- the CPU feature rule ---- */

/* Per recorded leaf, per register: how the target's value must relate to the saved one. */
enum rule { IGNORE, EQUAL, SUBSET, WIDTHS, FAMILY };

static const struct {
	uint8_t rule[4];
	uint32_t dynamic[4]; /* bits that follow the guest's own settings (OSXSAVE, OSPKE) */
} rules[CPU_NEUTRAL_LEAVES] = {
    {{IGNORE, EQUAL, EQUAL, EQUAL}, {0}}, /* 0: vendor */
    {{FAMILY, IGNORE, SUBSET, SUBSET}, {0, 0, 1u << 27, 0}},
    {{SUBSET, IGNORE, IGNORE, IGNORE}, {0}}, /* 6: ARAT */
    {{IGNORE, SUBSET, SUBSET, SUBSET}, {0, 0, 1u << 4, 0}},
    {{SUBSET, IGNORE, IGNORE, IGNORE}, {0}}, /* 7.1 */
    {{SUBSET, IGNORE, IGNORE, SUBSET}, {0}}, /* 0xd.0: XCR0 components */
    {{SUBSET, IGNORE, IGNORE, IGNORE}, {0}}, /* 0xd.1: XSAVEOPT, XSAVEC, ... */
    {{IGNORE, IGNORE, SUBSET, SUBSET}, {0}}, /* 0x80000001 */
    {{IGNORE, IGNORE, IGNORE, SUBSET}, {0}}, /* 0x80000007: invariant TSC */
    {{WIDTHS, SUBSET, IGNORE, IGNORE}, {0}}, /* 0x80000008 */
};

static uint32_t family_of(uint32_t eax)
{
	uint32_t fam = (eax >> 8) & 0xf;

	return fam == 0xf ? fam + ((eax >> 20) & 0xff) : fam;
}

/* Appends "CPUID.leaf.sub REG ..." to why; returns false when the target falls short. */
static bool reg_ok(unsigned li, int reg, uint32_t saved, uint32_t here, char *why, size_t wl)
{
	static const char *const names[4] = {"EAX", "EBX", "ECX", "EDX"};
	size_t used = strlen(why);
	uint32_t missing = 0;
	const char *what = "bits";

	saved &= ~rules[li].dynamic[reg];
	here &= ~rules[li].dynamic[reg];
	switch (rules[li].rule[reg]) {
	case IGNORE:
		return true;
	case EQUAL:
		missing = saved != here ? saved : 0;
		what = "value (vendor)";
		break;
	case FAMILY:
		missing = family_of(saved) != family_of(here) ? saved : 0;
		what = "family";
		break;
	case SUBSET:
		missing = saved & ~here;
		break;
	case WIDTHS: /* physical and linear address bits: at least the saved ones */
		if ((saved & 0xff) > (here & 0xff) || ((saved >> 8) & 0xff) > ((here >> 8) & 0xff))
			missing = saved & 0xffff;
		what = "address widths";
		break;
	}
	if (!missing)
		return true;
	if (used < wl)
		snprintf(why + used, wl - used, "%sCPUID %#x.%u %s %s %#x (here %#x)",
			 used ? ", " : "", cpu_neutral_leaf_ids[li][0], cpu_neutral_leaf_ids[li][1],
			 names[reg], what, missing, here);
	return false;
}

int cpu_neutral_check(struct vm *vm, const struct cpu_neutral *saved, char *why, size_t wl)
{
	struct cpu_neutral here;
	char miss[384] = "";
	bool ok = true;

	if (!vm->cpu->cpuid || !vm->cpu->import_neutral) {
		snprintf(why, wl, "the %s backend cannot take a snapshot from another backend",
			 vm->cpu->name);
		return -ENOTSUP;
	}
	cpu_neutral_read_cpuid(vm, &here);
	for (unsigned i = 0; i < CPU_NEUTRAL_LEAVES; i++) {
		for (int reg = 0; reg < 4; reg++)
			ok &= reg_ok(i, reg, saved->leaves[i].r[reg], here.leaves[i].r[reg], miss,
				     sizeof(miss));
	}
	if (!ok) {
		snprintf(why, wl,
			 "the %s backend here cannot offer the CPU the guest was given: %s",
			 vm->cpu->name, miss);
		return -EXDEV;
	}
	if ((saved->flags & CPU_NEUTRAL_LEGACY) && vm->cpu == &cpu_backend_emu) {
		snprintf(why, wl,
			 "the guest uses the 8259 PIC or 8254 PIT, which the emulator "
			 "does not have");
		return -EXDEV;
	}
	return 0;
}
