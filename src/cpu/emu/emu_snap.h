/*
 * Emulator state for snapshots beyond struct cpu_state (snap.c): the
 * IOAPIC, per-vCPU MSRs and debug registers that cpu_state has no room
 * for, pending NMI/INIT/SIPI; and the CPU model string. These are the
 * cpu_backend save_extra/restore_extra/cpu_model hooks of the emu backend.
 */
#ifndef TERN_CPU_EMU_EMU_SNAP_H
#define TERN_CPU_EMU_EMU_SNAP_H

#include <stdint.h>

struct vm;
struct dev_buf;

int emu_snap_save(struct vm *vm, struct dev_buf *out);
int emu_snap_restore(struct vm *vm, const void *data, uint64_t len);
int emu_snap_cpu_model(struct vm *vm, char *buf, unsigned len);

/* The backend-neutral record (state/cpu_neutral.h). */
struct cpu_neutral;
void emu_snap_cpuid(struct vm *vm, uint32_t leaf, uint32_t sub, uint32_t out[4]);
int emu_snap_export(struct vm *vm, struct cpu_neutral *n);
int emu_snap_import(struct vm *vm, const struct cpu_neutral *n);

#endif
