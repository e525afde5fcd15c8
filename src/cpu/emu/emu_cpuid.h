/*
 * The emulator's CPU model as CPUID leaves, without an emulator: the emu
 * backend answers CPUID with it, and the KVM backend presents it (its
 * feature bits limited to what the host's KVM offers) for a VM created
 * with cpu_model_cfg.baseline, so that guest can move to the emulator.
 */
#ifndef TERN_CPU_EMU_EMU_CPUID_H
#define TERN_CPU_EMU_EMU_CPUID_H

#include <stdint.h>

/* The leaves whose feature bits (and address widths) a host's KVM may limit. */
#define EMU_CPUID_LIMITS 6
extern const uint32_t emu_cpuid_limit_ids[EMU_CPUID_LIMITS][2];

struct emu_cpuid_ctx {
	uint32_t ncpus, apic_id;
	uint32_t tsc_khz, apic_tick_ns; /* advertised in leaves 0x15, 0x16, 0x40000010 */
	/*
	 * NULL: the emulator's full model. Else per emu_cpuid_limit_ids entry
	 * what a host's KVM offers: the portable model shows only the
	 * emulator's features that KVM has too, so the guest can move there.
	 */
	const uint32_t (*limit)[4];
};

void emu_cpuid_model(const struct emu_cpuid_ctx *x, uint32_t leaf, uint32_t sub, uint32_t out[4]);

#endif
