/*
 * The emulator's CPU model as CPUID leaves, without an emulator: the emu
 * backend answers CPUID with it, and the KVM backend presents it (its
 * feature bits limited to what the host's KVM offers) for a VM created
 * with cpu_model_cfg.baseline, so that guest can move to the emulator.
 */
#ifndef TERN_CPU_EMU_EMU_CPUID_H
#define TERN_CPU_EMU_EMU_CPUID_H

#include <stdint.h>

struct emu_cpuid_ctx {
	uint32_t ncpus, apic_id;
	uint32_t tsc_khz, apic_tick_ns; /* advertised in leaves 0x15, 0x16, 0x40000010 */
};

void emu_cpuid_model(const struct emu_cpuid_ctx *x, uint32_t leaf, uint32_t sub, uint32_t out[4]);

#endif
