/*
 * A small machine for system-level tests of the emulator: 16 MiB of RAM,
 * long mode set up directly (page tables, GDT, IDT, TSS written by the
 * test), guest code copied to ESV_CODE, the local APIC and IOAPIC on the
 * MMIO path. Guest programs report through memory at ESV_DATA and end with
 * "cli; hlt" (run returns VCPU_EXIT_HLT).
 *
 * Guest-physical map (identity-mapped, 4 KiB pages below 2 MiB, 2 MiB pages
 * up to 16 MiB, the APIC/IOAPIC page at 0xFEC00000-0xFEFFFFFF uncached):
 *   0x1000 PML4, 0x2000 PDPT, 0x3000 PD, 0x4000 PT, 0x5000 PD for 3-4 GiB
 *   0x6000 GDT   0x7000 IDT   0x8000 TSS
 *   0x9000..0xa000   kernel stack (RSP 0xa000)
 *   0xa000..0xb000   TSS.RSP0 stack (0xb000)
 *   0xb000..0xc000   IST1 stack (0xc000)
 *   0xc000..0xd000   user stack (0xd000)
 *   0x10000          code
 *   0x20000          data (results)
 *   0x30000          supervisor-only page; 0x31000 not present
 */
#ifndef TERN_TESTS_EMU_SYS_VM_H
#define TERN_TESTS_EMU_SYS_VM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/emu/emu.h"

#define ESV_MEM (16u << 20)
#define ESV_CODE 0x10000ull
#define ESV_DATA 0x20000ull
#define ESV_SUPER_PAGE 0x30000ull
#define ESV_ABSENT_PAGE 0x31000ull
#define ESV_GDT 0x6000ull
#define ESV_IDT 0x7000ull
#define ESV_TSS 0x8000ull
#define ESV_KSTACK 0xa000ull
#define ESV_RSP0 0xb000ull
#define ESV_IST1 0xc000ull
#define ESV_USTACK 0xd000ull
#define ESV_MAX_CPUS 4

/* GDT selectors (Linux's layout, so SYSCALL/SYSRET use STAR = 0x0023001000000000). */
#define ESV_KCODE 0x10
#define ESV_KDATA 0x18
#define ESV_UCODE32 0x23
#define ESV_UDATA 0x2b
#define ESV_UCODE 0x33
#define ESV_TSS_SEL 0x40

/* A test port: bytes written to 0xe9 are collected in the log. */
#define ESV_LOG_PORT 0xe9

struct esv {
	struct guest_mem gm;
	struct emu_vm ev;
	struct emu_cpu *cpu[ESV_MAX_CPUS];
	int ncpus;
	pthread_mutex_t lock;
	char log[256];
	unsigned nlog;
	unsigned pio_count;
};

int esv_create(struct esv *v, int ncpus);
void esv_destroy(struct esv *v);
/* Copy code to ESV_CODE. */
void esv_load(struct esv *v, const void *code, size_t len);
/* An IDT gate: type 0xe (interrupt) or 0xf (trap). */
void esv_gate(struct esv *v, unsigned vec, uint64_t target, unsigned ist, unsigned dpl,
	      unsigned type, int present);
/* Long mode, CPL 0, at rip with RSP = rsp, interrupts off. */
void esv_enter(struct esv *v, int cpu, uint64_t rip, uint64_t rsp);
/* Run until something other than a kick; at most max_insns (0: no limit). */
enum vcpu_exit esv_run(struct esv *v, int cpu, uint64_t max_insns);
uint64_t esv_rd(struct esv *v, uint64_t gpa);
void esv_wr(struct esv *v, uint64_t gpa, uint64_t val);

#endif
