/*
 * The backend-neutral machine state of a snapshot (docs/snapshot-format.md,
 * section type 6): what both CPU backends have beyond struct cpu_state, in
 * one form, so a snapshot taken on one backend can be restored on the
 * other. It holds the CPU model the guest was given (the CPUID feature
 * leaves, TSC rate, LAPIC timer rate), the IOAPIC, and per vCPU the MP
 * state, NMI/SIPI events, debug registers and TSC_AUX. The LAPIC itself,
 * the TSC, the TSC deadline, pending exceptions and the interrupt shadow
 * are in struct cpu_state already.
 *
 * Every snapshot carries the record; a restore on the backend that took it
 * uses the backend's own record instead (exact), a restore on the other
 * one uses this and ignores the foreign backend record.
 */
#ifndef TERN_STATE_CPU_NEUTRAL_H
#define TERN_STATE_CPU_NEUTRAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"

#define CPU_NEUTRAL_VERSION 1u
#define CPU_NEUTRAL_PINS 24
#define CPU_NEUTRAL_LEAVES 10
#define CPU_NEUTRAL_MAX_CPUS 255

/* flags */
#define CPU_NEUTRAL_BASELINE 1u /* the guest was shown the emulator's CPU model */
#define CPU_NEUTRAL_LEGACY 2u	/* the guest programmed the 8259 PIC or 8254 PIT */

enum cpu_neutral_mp {
	CPU_MP_RUNNABLE = 0,
	CPU_MP_HALTED = 1,    /* HLT with interrupts enabled: an interrupt wakes it */
	CPU_MP_WAIT_SIPI = 2, /* an AP never started: waits for INIT/SIPI */
};

struct cpu_neutral_leaf {
	uint32_t leaf, sub;
	uint32_t r[4]; /* eax ebx ecx edx */
};

struct cpu_neutral_vcpu {
	uint32_t mp_state;
	uint8_t nmi_pending, nmi_blocked, sipi_pending, sipi_vector;
	uint64_t dr[6]; /* dr0-3, dr6, dr7 */
	uint64_t tsc_aux;
};

struct cpu_neutral {
	uint32_t flags;
	uint32_t tsc_khz, apic_tick_ns;
	struct cpu_neutral_leaf leaves[CPU_NEUTRAL_LEAVES];
	uint32_t ioapic_id, ioapic_sel, ioapic_levels;
	uint64_t redir[CPU_NEUTRAL_PINS];
	uint32_t ncpus;
	struct cpu_neutral_vcpu cpu[CPU_NEUTRAL_MAX_CPUS];
};

struct dev_buf;

/* The leaves recorded, in record order: {leaf, subleaf}. */
extern const uint32_t cpu_neutral_leaf_ids[CPU_NEUTRAL_LEAVES][2];

/* Fill n->leaves from vm's CPUID (the backend's cpuid hook). */
void cpu_neutral_read_cpuid(struct vm *vm, struct cpu_neutral *n);

/* Collect vm's neutral state (the VM is paused) and encode it. 0 or -errno. */
int cpu_neutral_save(struct vm *vm, struct dev_buf *out);
int cpu_neutral_encode(const struct cpu_neutral *n, struct dev_buf *out);
/*
 * Decode and check an untrusted record: exact length, version, counts,
 * every value bounded. -EPROTONOSUPPORT for another version, -EINVAL else.
 */
int cpu_neutral_decode(const void *data, uint64_t len, struct cpu_neutral *n);

/* The CPU model a VM must be created with to continue the record's guest. */
void cpu_neutral_model(const struct cpu_neutral *n, struct cpu_model_cfg *m);

/*
 * Can vm (created with cpu_neutral_model()) continue the saved guest? Same
 * vendor and family, every saved feature bit offered, at least the saved
 * address widths and XSAVE components, the same TSC and LAPIC timer rates.
 * 0, or -EXDEV with why naming what is missing.
 */
int cpu_neutral_check(struct vm *vm, const struct cpu_neutral *saved, char *why, size_t wl);

#endif
