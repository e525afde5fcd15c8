/* Private interface between the emulator's system files: sys.c, sys_insn.c, sys_msr.c. */
#ifndef TERN_CPU_EMU_SYS_INT_H
#define TERN_CPU_EMU_SYS_INT_H

#include "cpu/emu/emu.h"

/* RFLAGS. */
#define X_CF 0x1ull
#define X_PF 0x4ull
#define X_AF 0x10ull
#define X_ZF 0x40ull
#define X_SF 0x80ull
#define X_TF 0x100ull
#define X_IF 0x200ull
#define X_DF 0x400ull
#define X_OF 0x800ull
#define X_IOPL 0x3000ull
#define X_NT 0x4000ull
#define X_RF 0x10000ull
#define X_VM 0x20000ull
#define X_AC 0x40000ull
#define X_VIF 0x80000ull
#define X_VIP 0x100000ull
#define X_ID 0x200000ull

/* Control registers. */
#define X_CR0_PE 0x1ull
#define X_CR0_MP 0x2ull
#define X_CR0_EM 0x4ull
#define X_CR0_TS 0x8ull
#define X_CR0_ET 0x10ull
#define X_CR0_NE 0x20ull
#define X_CR0_WP 0x10000ull
#define X_CR0_AM 0x40000ull
#define X_CR0_NW 0x20000000ull
#define X_CR0_CD 0x40000000ull
#define X_CR0_PG 0x80000000ull
#define X_CR4_TSD 0x4ull
#define X_CR4_DE 0x8ull
#define X_CR4_PSE 0x10ull
#define X_CR4_PAE 0x20ull
#define X_CR4_MCE 0x40ull
#define X_CR4_PGE 0x80ull
#define X_CR4_PCE 0x100ull
#define X_CR4_OSFXSR 0x200ull
#define X_CR4_OSXMMEXCPT 0x400ull
#define X_EFER_SCE 0x1ull
#define X_EFER_LME 0x100ull
#define X_EFER_LMA 0x400ull
#define X_EFER_NXE 0x800ull

/* Segment descriptor types (s = 1). */
#define DESC_CODE 0x8
#define DESC_CONFORMING 0x4
#define DESC_RW 0x2 /* readable code / writable data */

/* Event kinds for sys_deliver(). */
enum sys_event { EV_EXC, EV_EXT, EV_NMI, EV_SOFT, EV_SOFTEXC, EV_ICEBP };

/* sys_insn.c: the handler for a mnemonic, or NULL. */
emu_handler sys_insn_handler(unsigned mnemonic);

/* sys.c */
void sys_deliver(struct emu_cpu *c, unsigned vec, uint32_t err, enum sys_event kind,
		 uint64_t ret_rip);
void sys_update_mode(struct emu_cpu *c);
uint64_t sys_read_desc(struct emu_cpu *c, uint16_t sel, bool sys16, uint64_t *hi);
void sys_desc_to_seg(uint64_t d, uint16_t sel, struct cpu_seg *s);
void sys_load_cs(struct emu_cpu *c, uint16_t sel, uint64_t d, unsigned cpl);
uint64_t sys_rsp_mask(const struct emu_cpu *c);
uint64_t sys_stack_base(const struct emu_cpu *c);
void sys_set_pending(struct emu_cpu *c);
void sys_reset_real(struct emu_cpu *c, uint16_t cs_sel, uint64_t cs_base, uint64_t rip);
bool sys_canonical(uint64_t la);
/* RFLAGS bits an IRET/POPF at the current CPL may change. */
uint64_t sys_flags_mask(const struct emu_cpu *c, unsigned osize);

#endif
