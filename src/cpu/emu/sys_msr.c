/*
 * MSRs, CPUID and time.
 *
 * CPUID advertises exactly what the emulator implements. The vendor is
 * GenuineIntel so that Linux takes the TSC and APIC timer frequencies from
 * leaves 0x15/0x16 instead of calibrating against a PIT we do not have, and
 * ARAT + TSC-deadline so it needs no PIT or HPET at all.
 * MSRs the emulator does not know raise #GP, as on hardware: Linux probes
 * optional ones with rdmsr_safe().
 */
#include <string.h>
#include <time.h>

#include "cpu/emu/emu_cpuid.h"
#include "cpu/emu/sys_int.h"

uint64_t emu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* TSC ticks since VM creation at host monotonic time ns (1 GHz: ns). */
uint64_t emu_ns_to_tsc(const struct emu_vm *ev, uint64_t ns)
{
	uint64_t d = ns - ev->sys.time_base;

	if (ev->sys.tsc_khz == 1000000)
		return d;
	return (uint64_t)((unsigned __int128)d * ev->sys.tsc_khz / 1000000u);
}

/*
 * Host monotonic ns at which the VM-wide TSC (no per-vCPU offset) reads
 * tsc; negative: before the VM was created (a deadline long past).
 */
uint64_t emu_tsc_to_ns(const struct emu_vm *ev, int64_t tsc)
{
	uint64_t mag = tsc < 0 ? -(uint64_t)tsc : (uint64_t)tsc, ns;

	if (ev->sys.tsc_khz == 1000000)
		return (uint64_t)tsc + ev->sys.time_base;
	ns = (uint64_t)((unsigned __int128)mag * 1000000u / ev->sys.tsc_khz);
	return tsc < 0 ? ev->sys.time_base - ns : ev->sys.time_base + ns;
}

/* The TSC: ticks since VM creation plus the guest's offset. */
uint64_t emu_rdtsc(struct emu_cpu *c)
{
	return emu_ns_to_tsc(c->vm, emu_now_ns()) + (uint64_t)c->sys.tsc_offset;
}

/* ---- CPUID ---- */

#define FAMILY 6
#define MODEL 0x6a /* a server core with few model quirks in Linux */
#define STEPPING 6

/* Leaf 1 EDX: FPU PSE TSC MSR PAE CX8 APIC MTRR PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2. */
#define F1_EDX                                                                                     \
	((1u << 0) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 9) |       \
	 (1u << 12) | (1u << 13) | (1u << 15) | (1u << 16) | (1u << 17) | (1u << 19) |             \
	 (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26))
/* Leaf 1 ECX: CX16, POPCNT, TSC-deadline, RDRAND (host getrandom), hypervisor. */
#define F1_ECX ((1u << 13) | (1u << 23) | (1u << 24) | (1u << 30) | (1u << 31))
/*
 * Leaf 7 EBX: IA32_TSC_ADJUST. With an invariant TSC it makes Linux trust
 * the TSC without a clocksource watchdog, which would otherwise compare it
 * against jiffies that an emulated guest cannot keep exact.
 * ERMS (EBX) and FSRM (EDX): REP MOVSB/STOSB are the core's fastest copies
 * (host memcpy/memset per page), so Linux should prefer them.
 * EDX: IA32_ARCH_CAPABILITIES.
 */
#define F7_EBX ((1u << 1) | (1u << 9))
#define F7_EDX ((1u << 4) | (1u << 29))
/* 0x80000001 ECX: LAHF/SAHF in 64-bit mode. EDX: SYSCALL, NX, 1 GiB pages, RDTSCP, LM. */
#define F81_ECX (1u << 0)
#define F81_EDX ((1u << 11) | (1u << 20) | (1u << 26) | (1u << 27) | (1u << 29))

/*
 * Not vulnerable to what Linux would otherwise mitigate at great cost in an
 * emulator (page-table isolation, buffer clearing with VERW): there is no
 * speculation here.  RDCL_NO, SKIP_L1DFL_VMENTRY, SSB_NO, MDS_NO,
 * PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO,
 * PBRSB_NO, GDS_NO, RFDS_NO.
 */
#define ARCH_CAPS                                                                                  \
	((1ull << 0) | (1ull << 3) | (1ull << 4) | (1ull << 5) | (1ull << 6) | (1ull << 8) |       \
	 (1ull << 13) | (1ull << 14) | (1ull << 15) | (1ull << 20) | (1ull << 24) | (1ull << 26) | \
	 (1ull << 27))

static void put_str(uint32_t out[4], const char *s)
{
	memcpy(out, s, 16);
}

/* APIC-ID bits that number the cores of the one package. */
static unsigned core_shift(const struct emu_cpuid_ctx *x)
{
	unsigned n = x->ncpus > 1 ? x->ncpus : 1, shift = 0;

	while ((1u << shift) < n)
		shift++;
	return shift;
}

/*
 * Leaf 0xB: all vCPUs are single-thread cores of one package, so Linux
 * shares what it measured on the boot CPU (loops_per_jiffy) with the APs
 * instead of calibrating again.
 */
static void topology_leaf(const struct emu_cpuid_ctx *x, uint32_t sub, uint32_t out[4])
{
	out[2] = sub & 0xff;
	out[3] = x->apic_id;
	if (sub == 0) {
		out[1] = 1;
		out[2] |= 1u << 8; /* SMT level */
	} else if (sub == 1) {
		out[0] = core_shift(x);
		out[1] = x->ncpus > 1 ? x->ncpus : 1;
		out[2] |= 2u << 8; /* core level */
	}
}

/*
 * Leaf 0x15: TSC = crystal * EBX / EAX with the crystal the LAPIC timer's
 * input, so Linux calibrates neither (1 GHz TSC, 25 MHz crystal by default).
 */
static void timing_leaf(const struct emu_cpuid_ctx *x, uint32_t out[4])
{
	uint32_t crystal_khz = 1000000u / (x->apic_tick_ns ? x->apic_tick_ns : 1);
	uint32_t a = crystal_khz, b = x->tsc_khz;

	/*
	 * The ratio in lowest terms: Linux computes crystal kHz * EBX / EAX in
	 * 32 bits, and 25000 * 1000000 would wrap (a 1 GHz TSC taken for 141
	 * MHz, the guest's clock running 7 times too fast).
	 */
	while (b) {
		uint32_t t = a % b;

		a = b;
		b = t;
	}
	out[0] = a ? crystal_khz / a : 0;
	out[1] = a ? x->tsc_khz / a : 0;
	out[2] = crystal_khz * 1000u;
}

const uint32_t emu_cpuid_limit_ids[EMU_CPUID_LIMITS][2] = {
    {1, 0}, {6, 0}, {7, 0}, {0x80000001, 0}, {0x80000007, 0}, {0x80000008, 0},
};

/* Feature registers per limited leaf (bit 0 eax .. 3 edx); 0x80000008 EAX is widths. */
_Static_assert(EMU_CPUID_LIMITS == 6, "cpu_kvm_host_limits() and emu_sys_vm.limit hold 6 leaves");

static const uint8_t limit_regs[EMU_CPUID_LIMITS] = {0xc, 0x1, 0xe, 0xc, 0x8, 0};

static uint32_t min_byte(uint32_t a, uint32_t b, unsigned shift)
{
	uint32_t x = a >> shift & 0xff, y = b >> shift & 0xff;

	return (a & ~(0xffu << shift)) | (x < y ? x : y) << shift;
}

static void apply_limit(const uint32_t host[4], unsigned li, uint32_t out[4])
{
	/* HTT follows the vCPU count on both backends (KVM's table sets it per vCPU). */
	const uint32_t keep_edx = emu_cpuid_limit_ids[li][0] == 1 ? 1u << 28 : 0;

	for (int j = 0; j < 4; j++) {
		if (limit_regs[li] >> j & 1)
			out[j] &= host[j] | (j == 3 ? keep_edx : 0);
	}
	if (emu_cpuid_limit_ids[li][0] == 1)
		out[2] |= 1u << 31; /* "running under a hypervisor": true on either backend */
	if (emu_cpuid_limit_ids[li][0] == 0x80000008) {
		out[0] = min_byte(out[0], host[0], 0); /* physical address bits */
		out[0] = min_byte(out[0], host[0], 8); /* linear address bits */
	}
}

static void emu_cpuid_full(const struct emu_cpuid_ctx *x, uint32_t leaf, uint32_t sub,
			   uint32_t out[4]);

void emu_cpuid_model(const struct emu_cpuid_ctx *x, uint32_t leaf, uint32_t sub, uint32_t out[4])
{
	emu_cpuid_full(x, leaf, sub, out);
	for (unsigned i = 0; x->limit && i < EMU_CPUID_LIMITS; i++) {
		if (emu_cpuid_limit_ids[i][0] == leaf && emu_cpuid_limit_ids[i][1] == sub)
			apply_limit(x->limit[i], i, out);
	}
}

static void emu_cpuid_full(const struct emu_cpuid_ctx *x, uint32_t leaf, uint32_t sub,
			   uint32_t out[4])
{
	static const char brand[48] = "tern virtual CPU @ 1.00GHz";

	memset(out, 0, 16);
	switch (leaf) {
	case 0:
		out[0] = 0x16;
		memcpy(&out[1], "Genu", 4);
		memcpy(&out[3], "ineI", 4);
		memcpy(&out[2], "ntel", 4);
		break;
	case 1:
		out[0] = STEPPING | (MODEL & 0xf) << 4 | FAMILY << 8 | (MODEL >> 4) << 16;
		/* CLFLUSH line 8 qwords; logical IDs per package; APIC id. */
		out[1] = 8u << 8 | (1u << core_shift(x)) << 16 | (x->apic_id & 0xff) << 24;
		out[2] = F1_ECX;
		out[3] = F1_EDX | (x->ncpus > 1 ? 1u << 28 : 0); /* HTT: several per package */
		break;
	case 0xb:
		topology_leaf(x, sub, out);
		break;
	case 6:
		out[0] = 1u << 2; /* ARAT: the APIC timer keeps running in idle */
		break;
	case 7:
		if (sub == 0) {
			out[1] = F7_EBX;
			out[3] = F7_EDX;
		}
		break;
	case 0x15:
		timing_leaf(x, out);
		break;
	case 0x16:
		out[0] = x->tsc_khz / 1000;
		out[1] = out[0];
		out[2] = 100;
		break;
	case 0x40000000:
		/* Hypervisor leaves: a signature no guest has drivers for, and the timing leaf. */
		out[0] = 0x40000010;
		memcpy(&out[1], "TernTernTern", 12);
		break;
	case 0x40000010:
		out[0] = x->tsc_khz;					     /* TSC kHz */
		out[1] = 1000000u / (x->apic_tick_ns ? x->apic_tick_ns : 1); /* APIC timer kHz */
		break;
	case 0x80000000:
		out[0] = 0x80000008;
		break;
	case 0x80000001:
		out[2] = F81_ECX;
		out[3] = F81_EDX;
		break;
	case 0x80000002:
	case 0x80000003:
	case 0x80000004:
		put_str(out, brand + (leaf - 0x80000002) * 16);
		break;
	case 0x80000007:
		out[3] = 1u << 8; /* invariant TSC */
		break;
	case 0x80000008:
		out[0] = 48u << 8 | 40u; /* 48-bit linear, 40-bit physical */
		break;
	default:
		break;
	}
}

void emu_cpuid(struct emu_cpu *c, uint32_t leaf, uint32_t sub, uint32_t out[4])
{
	const struct emu_cpuid_ctx x = {
	    .ncpus = c->vm->ncpus > 1 ? (uint32_t)c->vm->ncpus : 1,
	    .apic_id = c->sys.apic.id,
	    .tsc_khz = c->vm->sys.tsc_khz,
	    .apic_tick_ns = c->vm->sys.apic_tick_ns,
	    .limit = c->vm->sys.has_limit ? (const uint32_t(*)[4])c->vm->sys.limit : NULL,
	};

	emu_cpuid_model(&x, leaf, sub, out);
}

/* ---- MSRs ---- */

enum {
	MSR_TSC = 0x10,
	MSR_PLATFORM_ID = 0x17,
	MSR_APIC_BASE = 0x1b,
	MSR_FEATURE_CONTROL = 0x3a,
	MSR_TSC_ADJUST = 0x3b,
	MSR_SPEC_CTRL = 0x48,
	MSR_PRED_CMD = 0x49,
	MSR_UCODE_REV = 0x8b,
	MSR_MTRRCAP = 0xfe,
	MSR_ARCH_CAPABILITIES = 0x10a,
	MSR_SYSENTER_CS = 0x174,
	MSR_SYSENTER_ESP = 0x175,
	MSR_SYSENTER_EIP = 0x176,
	MSR_MISC_ENABLE = 0x1a0,
	MSR_DEBUGCTL = 0x1d9,
	MSR_MTRR_VAR = 0x200, /* 0x200..0x20f: base/mask pairs */
	MSR_MTRR_FIX64K = 0x250,
	MSR_MTRR_FIX16K = 0x258, /* and 0x259 */
	MSR_MTRR_FIX4K = 0x268,	 /* ..0x26f */
	MSR_PAT = 0x277,
	MSR_MTRR_DEF_TYPE = 0x2ff,
	MSR_TSC_DEADLINE = 0x6e0,
	MSR_EFER = 0xc0000080,
	MSR_STAR = 0xc0000081,
	MSR_LSTAR = 0xc0000082,
	MSR_CSTAR = 0xc0000083,
	MSR_SFMASK = 0xc0000084,
	MSR_FS_BASE = 0xc0000100,
	MSR_GS_BASE = 0xc0000101,
	MSR_KERNEL_GS_BASE = 0xc0000102,
	MSR_TSC_AUX = 0xc0000103,
};

/* Index into mtrr_fixed[] of a fixed-range MTRR, or -1. */
static int mtrr_fixed_index(uint32_t idx)
{
	if (idx == MSR_MTRR_FIX64K)
		return 0;
	if (idx == MSR_MTRR_FIX16K || idx == MSR_MTRR_FIX16K + 1)
		return 1 + (int)(idx - MSR_MTRR_FIX16K);
	if (idx >= MSR_MTRR_FIX4K && idx < MSR_MTRR_FIX4K + 8)
		return 3 + (int)(idx - MSR_MTRR_FIX4K);
	return -1;
}

bool emu_msr_read(struct emu_cpu *c, uint32_t idx, uint64_t *v)
{
	struct emu_sys_cpu *s = &c->sys;
	int fx = mtrr_fixed_index(idx);

	if (fx >= 0) {
		*v = s->mtrr_fixed[fx];
		return true;
	}
	if (idx >= MSR_MTRR_VAR && idx < MSR_MTRR_VAR + 16) {
		*v = s->mtrr_var[idx - MSR_MTRR_VAR];
		return true;
	}
	switch (idx) {
	case MSR_TSC:
		*v = emu_rdtsc(c);
		break;
	case MSR_PLATFORM_ID:
	case MSR_UCODE_REV:
	case MSR_DEBUGCTL:
		*v = 0;
		break;
	case MSR_APIC_BASE:
		*v = s->apic_base;
		break;
	case MSR_FEATURE_CONTROL:
		*v = 1; /* locked, VMX off */
		break;
	case MSR_TSC_ADJUST:
		*v = s->tsc_adjust;
		break;
	case MSR_SPEC_CTRL:
		*v = s->spec_ctrl;
		break;
	case MSR_MTRRCAP:
		*v = 8 | 1u << 8 | 1u << 10; /* 8 variable ranges, fixed ranges, WC */
		break;
	case MSR_ARCH_CAPABILITIES:
		*v = ARCH_CAPS;
		break;
	case MSR_SYSENTER_CS:
		*v = s->sysenter_cs;
		break;
	case MSR_SYSENTER_ESP:
		*v = s->sysenter_esp;
		break;
	case MSR_SYSENTER_EIP:
		*v = s->sysenter_eip;
		break;
	case MSR_MISC_ENABLE:
		*v = s->misc_enable;
		break;
	case MSR_PAT:
		*v = s->pat;
		break;
	case MSR_MTRR_DEF_TYPE:
		*v = s->mtrr_def_type;
		break;
	case MSR_TSC_DEADLINE:
		*v = emu_apic_get_deadline(c);
		break;
	case MSR_EFER:
		*v = c->efer;
		break;
	case MSR_STAR:
		*v = s->star;
		break;
	case MSR_LSTAR:
		*v = s->lstar;
		break;
	case MSR_CSTAR:
		*v = s->cstar;
		break;
	case MSR_SFMASK:
		*v = s->sfmask;
		break;
	case MSR_FS_BASE:
		*v = c->seg[SEG_FS].base;
		break;
	case MSR_GS_BASE:
		*v = c->seg[SEG_GS].base;
		break;
	case MSR_KERNEL_GS_BASE:
		*v = s->kernel_gs_base;
		break;
	case MSR_TSC_AUX:
		*v = s->tsc_aux;
		break;
	default:
		return false;
	}
	return true;
}

static bool write_efer(struct emu_cpu *c, uint64_t v)
{
	const uint64_t ok = X_EFER_SCE | X_EFER_LME | X_EFER_LMA | X_EFER_NXE;
	uint64_t old = c->efer;

	if (v & ~ok)
		return false;
	/* LME cannot change while paging is on; LMA is the CPU's to set. */
	if ((c->cr0 & X_CR0_PG) && ((v ^ old) & X_EFER_LME))
		return false;
	c->efer = (v & ~X_EFER_LMA) | (old & X_EFER_LMA);
	if ((v ^ old) & X_EFER_NXE)
		emu_tlb_flush(c, true);
	return true;
}

/* PAT and MTRR memory types: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB, 7 UC- (PAT only). */
static bool valid_pat(uint64_t v)
{
	for (int n = 0; n < 8; n++) {
		unsigned t = (v >> (n * 8)) & 0xff;

		if (t > 7 || t == 2 || t == 3)
			return false;
	}
	return true;
}

bool emu_msr_write(struct emu_cpu *c, uint32_t idx, uint64_t v)
{
	struct emu_sys_cpu *s = &c->sys;
	int fx = mtrr_fixed_index(idx);

	if (fx >= 0) {
		s->mtrr_fixed[fx] = v;
		return true;
	}
	if (idx >= MSR_MTRR_VAR && idx < MSR_MTRR_VAR + 16) {
		s->mtrr_var[idx - MSR_MTRR_VAR] = v;
		return true;
	}
	switch (idx) {
	case MSR_TSC_ADJUST:
		/* Moves the TSC by the difference, as writing IA32_TSC moves the adjust. */
		s->tsc_offset += (int64_t)(v - s->tsc_adjust);
		s->tsc_adjust = v;
		emu_apic_set_deadline(c, emu_apic_get_deadline(c));
		return true;
	case MSR_TSC: {
		int64_t old = s->tsc_offset;

		s->tsc_offset = (int64_t)(v - emu_ns_to_tsc(c->vm, emu_now_ns()));
		s->tsc_adjust += (uint64_t)(s->tsc_offset - old);
		/* A moved TSC moves the deadline's host time. */
		emu_apic_set_deadline(c, emu_apic_get_deadline(c));
		return true;
	}
	case MSR_APIC_BASE:
		/* No x2APIC (bit 10); keep the BSP flag; the base must stay page aligned. */
		if (v & ((1ull << 10) | 0x6ff | ~0xffffffffffull))
			return false;
		s->apic_base = (v & ~(1ull << 8)) | (s->apic_base & (1ull << 8));
		return true;
	case MSR_FEATURE_CONTROL:
	case MSR_UCODE_REV:
	case MSR_PRED_CMD:
	case MSR_DEBUGCTL:
		return true;
	case MSR_SPEC_CTRL:
		s->spec_ctrl = v & 7;
		return true;
	case MSR_SYSENTER_CS:
		s->sysenter_cs = v & 0xffff;
		return true;
	case MSR_SYSENTER_ESP:
		s->sysenter_esp = v;
		return true;
	case MSR_SYSENTER_EIP:
		s->sysenter_eip = v;
		return true;
	case MSR_MISC_ENABLE:
		s->misc_enable = v;
		return true;
	case MSR_PAT:
		if (!valid_pat(v))
			return false;
		s->pat = v;
		return true;
	case MSR_MTRR_DEF_TYPE:
		s->mtrr_def_type = v & 0xcff;
		return true;
	case MSR_TSC_DEADLINE:
		emu_apic_set_deadline(c, v);
		return true;
	case MSR_EFER:
		return write_efer(c, v);
	case MSR_STAR:
		s->star = v;
		return true;
	case MSR_LSTAR:
	case MSR_CSTAR:
	case MSR_FS_BASE:
	case MSR_GS_BASE:
	case MSR_KERNEL_GS_BASE:
		if (!sys_canonical(v))
			return false;
		if (idx == MSR_LSTAR)
			s->lstar = v;
		else if (idx == MSR_CSTAR)
			s->cstar = v;
		else if (idx == MSR_FS_BASE)
			c->seg[SEG_FS].base = v;
		else if (idx == MSR_GS_BASE)
			c->seg[SEG_GS].base = v;
		else
			s->kernel_gs_base = v;
		return true;
	case MSR_SFMASK:
		s->sfmask = v & 0xffffffffull;
		return true;
	case MSR_TSC_AUX:
		s->tsc_aux = v & 0xffffffffull;
		return true;
	default:
		return false;
	}
}
