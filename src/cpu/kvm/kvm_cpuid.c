/*
 * KVM backend, CPUID: what the host's KVM supports (KVM_GET_SUPPORTED_CPUID),
 * with the topology leaves rewritten so every vCPU reports the same single
 * package of ncpus cores, one thread each, and its own APIC ID. Left as
 * KVM reports them, they describe the host (e.g. its thread count), and a
 * Linux guest then builds a topology that does not match its vCPUs.
 */
#include "cpu/kvm/kvm_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cpu/emu/emu_cpuid.h"
#include "util/log.h"

/* Room for the topology subleaves added per vCPU. */
#define KVM_CPUID_EXTRA 8

/* Not in every kernel header yet (Linux 6.11). */
#ifndef KVM_CAP_X86_APIC_BUS_CYCLES_NS
#define KVM_CAP_X86_APIC_BUS_CYCLES_NS 232
#endif
#define KVM_APIC_TICK_NS 1 /* KVM's LAPIC timer runs at 1 GHz unless told otherwise */

static int cpuid_load_supported(struct kvm_vm_priv *kv)
{
	for (uint32_t n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));

		if (!c)
			return -ENOMEM;
		c->nent = n;
		if (ioctl(kv->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			kv->cpuid = c;
			return 0;
		}
		free(c);
		if (errno != E2BIG) {
			pr_err("kvm: KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
			return -errno;
		}
	}
	return -E2BIG;
}

const struct kvm_cpuid_entry2 *kvm_cpuid_find(const struct kvm_cpuid2 *c, uint32_t fn, uint32_t idx)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function == fn &&
		    (!(e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e->index == idx))
			return e;
	}
	return NULL;
}

/* The emulator's leaves, as (leaf, subleaf); 0xB is rewritten per vCPU later. */
static const uint32_t baseline_leaves[][2] = {
    {0, 0},	     {1, 0},	      {6, 0},	       {7, 0},
    {0xb, 0},	     {0x15, 0},	      {0x16, 0},       {0x40000000, 0},
    {0x40000010, 0}, {0x80000000, 0}, {0x80000001, 0}, {0x80000002, 0},
    {0x80000003, 0}, {0x80000004, 0}, {0x80000007, 0}, {0x80000008, 0},
};

/* What host offers for the leaves the portable model limits. */
static void host_limits(const struct kvm_cpuid2 *host, uint32_t lim[EMU_CPUID_LIMITS][4])
{
	for (unsigned i = 0; i < EMU_CPUID_LIMITS; i++) {
		const struct kvm_cpuid_entry2 *h =
		    kvm_cpuid_find(host, emu_cpuid_limit_ids[i][0], emu_cpuid_limit_ids[i][1]);

		lim[i][0] = h ? h->eax : 0;
		lim[i][1] = h ? h->ebx : 0;
		lim[i][2] = h ? h->ecx : 0;
		lim[i][3] = h ? h->edx : 0;
	}
}

int cpu_kvm_host_limits(uint32_t lim[6][4])
{
	struct kvm_vm_priv kv = {.vm_fd = -1};
	int rc;

	kv.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kv.kvm_fd < 0)
		return -errno;
	rc = cpuid_load_supported(&kv);
	close(kv.kvm_fd);
	if (rc)
		return rc;
	host_limits(kv.cpuid, lim);
	free(kv.cpuid);
	return 0;
}

static void baseline_entry(const struct emu_cpuid_ctx *x, const uint32_t id[2],
			   struct kvm_cpuid_entry2 *e)
{
	uint32_t r[4];

	emu_cpuid_model(x, id[0], id[1], r);
	*e = (struct kvm_cpuid_entry2){.function = id[0], .index = id[1]};
	if (id[0] == 7 || id[0] == 0xb)
		e->flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
	e->eax = r[0];
	e->ebx = r[1];
	e->ecx = r[2];
	e->edx = r[3];
}

/* Replace kv->cpuid by the emulator's model (timing leaves fixed per vCPU later). */
static int cpuid_baseline(struct kvm_vm_priv *kv, int ncpus)
{
	const unsigned n = sizeof(baseline_leaves) / sizeof(baseline_leaves[0]);
	uint32_t lim[EMU_CPUID_LIMITS][4];
	const struct emu_cpuid_ctx x = {.ncpus = ncpus > 0 ? (uint32_t)ncpus : 1,
					.tsc_khz = kv->model.tsc_khz,
					.apic_tick_ns = kv->model.apic_tick_ns,
					.limit = (const uint32_t(*)[4])lim};
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));

	if (!c)
		return -ENOMEM;
	host_limits(kv->cpuid, lim);
	c->nent = n;
	for (unsigned i = 0; i < n; i++)
		baseline_entry(&x, baseline_leaves[i], &c->entries[i]);
	free(kv->cpuid);
	kv->cpuid = c;
	return 0;
}

/* The LAPIC timer's input period; KVM's own (1 ns) needs nothing. */
static int set_apic_tick(struct kvm_vm_priv *kv)
{
	struct kvm_enable_cap cap = {.cap = KVM_CAP_X86_APIC_BUS_CYCLES_NS,
				     .args = {kv->model.apic_tick_ns}};

	if (kv->model.apic_tick_ns == KVM_APIC_TICK_NS)
		return 0;
	if (!kv->irqchip || ioctl(kv->vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
		pr_err("kvm: cannot run the LAPIC timer at %u ns per tick (KVM's is %u ns): %s",
		       kv->model.apic_tick_ns, KVM_APIC_TICK_NS,
		       kv->irqchip ? strerror(errno) : "no in-kernel irqchip");
		return -ENOTSUP;
	}
	return 0;
}

int kvm_cpuid_load(struct kvm_vm_priv *kv, const struct cpu_model_cfg *model, int ncpus)
{
	int rc = cpuid_load_supported(kv);

	kv->model = *model;
	/* KVM's own timer rate unless asked: not every KVM can change it. */
	if (!kv->model.apic_tick_ns)
		kv->model.apic_tick_ns = KVM_APIC_TICK_NS;
	if (!rc && model->baseline)
		rc = cpuid_baseline(kv, ncpus);
	if (!rc)
		rc = set_apic_tick(kv);
	return rc;
}

/* Bits needed to number n things (APIC ID field width). */
static uint32_t id_bits(uint32_t n)
{
	uint32_t b = 0;

	while ((1u << b) < n)
		b++;
	return b;
}

struct topo {
	uint32_t ncpus, apic_id, core_bits;
	bool intel, amd;
};

static void fix_leaf1(struct kvm_cpuid_entry2 *e, const struct topo *t)
{
	uint32_t count = 1u << t->core_bits;

	e->ebx &= 0x0000ffff;
	e->ebx |= (t->apic_id & 0xff) << 24;
	e->ebx |= (count > 255 ? 255 : count) << 16;
	if (t->ncpus > 1)
		e->edx |= 1u << 28; /* HTT: the count field above is valid */
	else
		e->edx &= ~(1u << 28);
}

/* Deterministic cache parameters (Intel leaf 4, AMD 0x8000001D): who shares each cache. */
static void fix_cache_leaf(struct kvm_cpuid_entry2 *e, const struct topo *t, bool intel4)
{
	uint32_t level = (e->eax >> 5) & 7;
	uint32_t sharing = level >= 3 ? (1u << t->core_bits) - 1 : 0;

	if ((e->eax & 0x1f) == 0) /* no cache at this subleaf */
		return;
	e->eax &= ~(0xfffu << 14);
	e->eax |= (sharing & 0xfff) << 14;
	if (intel4) {
		e->eax &= 0x03ffffff;
		e->eax |= (((1u << t->core_bits) - 1) & 0x3f) << 26;
	}
}

/* Extended topology (0xB, 0x1F): level 0 SMT (1 thread), level 1 core (ncpus), then end. */
static void fill_ext_topo(struct kvm_cpuid_entry2 *e, uint32_t fn, uint32_t idx,
			  const struct topo *t)
{
	memset(e, 0, sizeof(*e));
	e->function = fn;
	e->index = idx;
	e->flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
	e->edx = t->apic_id;
	e->ecx = idx & 0xff;
	if (idx == 0) {
		e->eax = 0;
		e->ebx = 1;
		e->ecx |= 1u << 8;
	} else if (idx == 1) {
		e->eax = t->core_bits;
		e->ebx = t->ncpus;
		e->ecx |= 2u << 8;
	}
}

static void fix_amd_leaves(struct kvm_cpuid_entry2 *e, const struct topo *t)
{
	if (e->function == 0x80000008) {
		e->ecx &= ~0xf0ffu;
		e->ecx |= (t->ncpus - 1) & 0xff;
		e->ecx |= (t->core_bits & 0xf) << 12;
	} else if (e->function == 0x8000001e) {
		e->eax = t->apic_id;
		e->ebx = t->apic_id & 0xff; /* core id; one thread per core */
		e->ecx = 0;		    /* node 0, one node */
	} else if (e->function == 0x80000001 && t->ncpus > 1) {
		e->ecx |= 1u << 1; /* CmpLegacy: HTT means cores, not threads */
	}
}

/*
 * Build this vCPU's table: drop the host's 0xB/0x1F subleaves, append ours,
 * patch the others in place.
 */
static uint32_t build_cpuid(struct kvm_cpuid2 *out, const struct kvm_cpuid2 *in,
			    const struct topo *t)
{
	bool has_b = false, has_1f = false;
	uint32_t n = 0;

	for (uint32_t i = 0; i < in->nent; i++) {
		struct kvm_cpuid_entry2 e = in->entries[i];

		if (e.function == 0xb || e.function == 0x1f) {
			has_b |= e.function == 0xb;
			has_1f |= e.function == 0x1f;
			continue;
		}
		if (e.function == 1)
			fix_leaf1(&e, t);
		else if (e.function == 4 && t->intel)
			fix_cache_leaf(&e, t, true);
		else if (e.function == 0x8000001d && t->amd)
			fix_cache_leaf(&e, t, false);
		else if (t->amd)
			fix_amd_leaves(&e, t);
		out->entries[n++] = e;
	}
	for (uint32_t idx = 0; idx < 3; idx++) {
		if (has_b)
			fill_ext_topo(&out->entries[n++], 0xb, idx, t);
		if (has_1f)
			fill_ext_topo(&out->entries[n++], 0x1f, idx, t);
	}
	return n;
}

static void vendor_of(const struct kvm_cpuid2 *c, struct topo *t)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function != 0)
			continue;
		/* "GenuineIntel" / "AuthenticAMD" (and Hygon, which follows AMD): EBX is enough. */
		t->intel = e->ebx == 0x756e6547;
		t->amd = e->ebx == 0x68747541 || e->ebx == 0x6f677948;
	}
}

/*
 * The guest's TSC rate: the model's if it names one (needs TSC scaling
 * unless it is this host's), else what KVM gives the first vCPU.
 */
static int tsc_rate(struct kvm_vm_priv *kv, int fd)
{
	int now = ioctl(fd, KVM_GET_TSC_KHZ, 0);

	if (now <= 0)
		return kv->model.tsc_khz ? -ENOTSUP : 0;
	if (!kv->model.tsc_khz) {
		kv->model.tsc_khz = (uint32_t)now;
		return 0;
	}
	if ((uint32_t)now == kv->model.tsc_khz)
		return 0;
	if (ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)kv->model.tsc_khz) < 0) {
		pr_err("kvm: cannot run the guest's TSC at %u kHz: this host's runs at %d kHz "
		       "and KVM cannot scale it (%s)",
		       kv->model.tsc_khz, now, strerror(errno));
		return -ENOTSUP;
	}
	return 0;
}

/* The emulator's timing leaves say the rates this VM really runs at. */
static void baseline_timing(struct kvm_vm_priv *kv, uint32_t ncpus)
{
	static const uint32_t leaves[] = {0x15, 0x16, 0x40000010};
	const struct emu_cpuid_ctx x = {
	    .ncpus = ncpus, .tsc_khz = kv->model.tsc_khz, .apic_tick_ns = kv->model.apic_tick_ns};

	for (unsigned i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
		struct kvm_cpuid_entry2 *e =
		    (struct kvm_cpuid_entry2 *)kvm_cpuid_find(kv->cpuid, leaves[i], 0);
		uint32_t r[4];

		if (!e)
			continue;
		emu_cpuid_model(&x, leaves[i], 0, r);
		e->eax = r[0];
		e->ebx = r[1];
		e->ecx = r[2];
		e->edx = r[3];
	}
}

int kvm_cpuid_set(struct vcpu *vcpu)
{
	struct kvm_vm_priv *kv = kvm_vm(vcpu->vm);
	struct topo t = {
	    .ncpus = vcpu->vm->ncpus > 0 ? (uint32_t)vcpu->vm->ncpus : 1,
	    .apic_id = (uint32_t)vcpu->id,
	};
	struct kvm_cpuid2 *c;
	int rc;

	rc = tsc_rate(kv, kvm_vcpu(vcpu)->fd);
	if (rc)
		return rc;
	if (kv->model.baseline)
		baseline_timing(kv, t.ncpus);
	t.core_bits = id_bits(t.ncpus);
	vendor_of(kv->cpuid, &t);
	c = calloc(1, sizeof(*c) +
			  (kv->cpuid->nent + KVM_CPUID_EXTRA) * sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return -ENOMEM;
	c->nent = build_cpuid(c, kv->cpuid, &t);
	rc = KVM_IOCTL(kvm_vcpu(vcpu)->fd, KVM_SET_CPUID2, c);
	free(c);
	return rc < 0 ? rc : 0;
}
