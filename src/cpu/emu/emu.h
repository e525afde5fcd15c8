/*
 * tern's x86-64 emulator: internal contract between its parts.
 *
 *   decode.c  Zydis -> struct emu_insn, decoded-block cache keyed by guest-physical
 *             page, self-modifying-code invalidation           (core)
 *   exec.c    run loop, dispatch, integer ISA, lazy flags       (core)
 *   mmu.c     4-level paging, soft TLB, linear memory access, dirty tracking (core)
 *   sys.c     exceptions and interrupt delivery, system instructions, MSRs, CPUID
 *   apic.c    local APIC per vCPU, IOAPIC, timers
 *   backend.c struct cpu_backend glue: vCPU threads, HLT sleep, kick
 *   fpu.c / sse.c  x87, SSE/SSE2, FXSAVE/FXRSTOR
 *
 * Faults: any part may call emu_raise() while executing an instruction; it
 * longjmps back to the run loop, which delivers the exception. Instructions
 * therefore do all their loads and checks before changing architectural state
 * where the architecture requires it. c->rip stays at the start of the
 * executing instruction until it completes; handlers that branch set
 * c->next_rip.
 */
#ifndef TERN_CPU_EMU_EMU_H
#define TERN_CPU_EMU_EMU_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdnoreturn.h>

#include "cpu/cpu.h"
#include "vmm/mem.h"

struct emu_cpu;
struct emu_vm;
struct emu_insn;

/* ---- Register ids used in decoded operands ---- */
enum {
	EMU_R_RAX = 0, /* 0..15: general registers in encoding order, size from the operand */
	EMU_R_AH = 16, /* 16..19: AH CH DH BH */
	EMU_R_RIP = 20,
	EMU_R_ES = 24,	 /* 24..29: ES CS SS DS FS GS (EMU_R_ES + enum emu_seg) */
	EMU_R_CR0 = 32,	 /* 32..47 */
	EMU_R_DR0 = 48,	 /* 48..55 */
	EMU_R_ST0 = 56,	 /* 56..63: x87 stack, relative to TOP */
	EMU_R_MM0 = 64,	 /* 64..71 */
	EMU_R_XMM0 = 72, /* 72..87 */
	EMU_R_NONE = 255,
};

enum emu_seg { SEG_ES = 0, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS, SEG_NONE = 7 };

enum emu_opkind {
	EMU_OP_NONE = 0,
	EMU_OP_REG,
	EMU_OP_MEM, /* [seg: base + index*scale + disp] */
	EMU_OP_IMM, /* value in .disp, sign- or zero-extended as the ISA says */
	EMU_OP_REL, /* relative branch target: next_rip + .disp */
	EMU_OP_PTR, /* far pointer immediate: offset in .disp bits 0-31, selector in 32-47 */
};

struct emu_operand {
	uint8_t kind;  /* enum emu_opkind */
	uint8_t size;  /* operand size in bytes (1,2,4,8,10,16, ...) */
	uint8_t reg;   /* EMU_OP_REG: register id */
	uint8_t base;  /* EMU_OP_MEM: base register id or EMU_R_NONE */
	uint8_t index; /* EMU_OP_MEM: index register id or EMU_R_NONE */
	uint8_t scale; /* EMU_OP_MEM: 1, 2, 4, 8 */
	uint8_t seg;   /* EMU_OP_MEM: enum emu_seg after overrides */
	uint8_t asize; /* EMU_OP_MEM: address size in bytes (2, 4, 8) */
	int64_t disp;  /* displacement, immediate or relative offset */
};
/* 16 bytes: every cached instruction holds four of these. */
_Static_assert(sizeof(struct emu_operand) == 16, "emu_operand grew");

/* Prefix bits in struct emu_insn.pfx. */
enum {
	EMU_PFX_LOCK = 1 << 0,
	EMU_PFX_REP = 1 << 1,	/* F3 on string insns (REP / REPE) */
	EMU_PFX_REPNE = 1 << 2, /* F2 on string insns */
	EMU_PFX_OSIZE = 1 << 3, /* 66 present */
};

/*
 * Mnemonic flags: decode.c looks up far JMP/CALL/RET as
 * (ZydisMnemonic | EMU_MN_FAR) and MOV to/from CRn/DRn as
 * (ZYDIS_MNEMONIC_MOV | EMU_MN_CRDR), so emu_sys_handler() can claim them
 * without taking the near forms; struct emu_insn.mnemonic keeps the flags.
 */
#define EMU_MN_FAR 0x8000u
#define EMU_MN_CRDR 0x4000u

typedef void (*emu_handler)(struct emu_cpu *c, const struct emu_insn *i);

/* Legacy and SSE encodings have at most three visible operands; more (VEX, XOP) decode as #UD. */
#define EMU_MAX_OPS 3

struct emu_insn {
	emu_handler fn;
	uint16_t mnemonic; /* ZydisMnemonic */
	uint8_t len;
	uint8_t nops;  /* visible operands */
	uint8_t osize; /* operand size, bytes */
	uint8_t asize; /* address size, bytes */
	uint8_t pfx;   /* EMU_PFX_* */
	uint8_t seg;   /* effective data segment for implicit memory operands (string ops) */
	struct emu_operand op[EMU_MAX_OPS];
};

/*
 * Each part maps the mnemonics it implements to handlers; decode.c asks them
 * in turn and uses a #UD handler for what nobody implements.
 */
emu_handler emu_int_handler(unsigned mnemonic); /* exec.c */
emu_handler emu_sys_handler(unsigned mnemonic); /* sys.c */
emu_handler emu_fpu_handler(unsigned mnemonic); /* fpu.c / sse.c */

/*
 * decode.c: the vCPU is about to sleep in HLT (no block is running): if it has been
 * mostly idle, drop its decoded code and return the memory to the host.
 */
void emu_bc_idle(struct emu_cpu *c, uint64_t now_ns);
/* Blocks in the decoded-block cache and bytes mapped for them. */
void emu_bc_stats(const struct emu_cpu *c, size_t *blocks, size_t *chunk_bytes);

#include "cpu/emu/emu_fpu.h"
#include "cpu/emu/emu_sys.h"
#include "cpu/emu/emu_core.h"

/* ---- Exceptions ---- */
enum {
	EMU_DE = 0,
	EMU_DB = 1,
	EMU_NMI = 2,
	EMU_BP = 3,
	EMU_OF = 4,
	EMU_BR = 5,
	EMU_UD = 6,
	EMU_NM = 7,
	EMU_DF = 8,
	EMU_TS = 10,
	EMU_NP = 11,
	EMU_SS = 12,
	EMU_GP = 13,
	EMU_PF = 14,
	EMU_MF = 16,
	EMU_AC = 17,
	EMU_MC = 18,
	EMU_XM = 19,
};
#define EMU_NO_ERR UINT32_MAX

/* Record a fault at c->rip and longjmp to the run loop (sys.c). For #PF, c->cr2 is set first. */
noreturn void emu_raise(struct emu_cpu *c, int vector, uint32_t error_code);

/* ---- Flags (exec.c: lazily evaluated; these materialize / load them) ---- */
uint64_t emu_rflags(struct emu_cpu *c);
void emu_set_rflags(struct emu_cpu *c, uint64_t v);

/* ---- Operands (exec.c) ---- */
/* Linear address of a memory operand (segment base applied as the mode requires). */
uint64_t emu_ea(struct emu_cpu *c, const struct emu_operand *o);
/* Read/write operand n of i: register, memory or immediate, zero-extended to 64 bits. */
uint64_t emu_op_read(struct emu_cpu *c, const struct emu_insn *i, int n);
void emu_op_write(struct emu_cpu *c, const struct emu_insn *i, int n, uint64_t v);
/* Register access with x86 sub-register rules (32-bit writes zero the upper half). */
uint64_t emu_reg_read(struct emu_cpu *c, unsigned reg, unsigned size);
void emu_reg_write(struct emu_cpu *c, unsigned reg, unsigned size, uint64_t v);

/* ---- Linear memory (mmu.c); faults raise #PF/#GP through emu_raise() ---- */
uint64_t emu_read(struct emu_cpu *c, uint64_t la, unsigned size); /* size 1,2,4,8 */
void emu_write(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v);
void emu_read_buf(struct emu_cpu *c, uint64_t la, void *buf, unsigned len);
void emu_write_buf(struct emu_cpu *c, uint64_t la, const void *buf, unsigned len);
/* Supervisor-mode accesses regardless of CPL (descriptor tables, interrupt stack frames). */
uint64_t emu_read_sys(struct emu_cpu *c, uint64_t la, unsigned size);
void emu_write_sys(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v);
/*
 * Host pointer for an aligned-or-not access of size bytes that stays within
 * one guest page of RAM, translated for write (marks dirty, A/D bits), for
 * LOCKed read-modify-write with host atomics. NULL if the target is MMIO or
 * the access crosses a page: the caller then falls back to read+write.
 */
void *emu_host_ptr_rw(struct emu_cpu *c, uint64_t la, unsigned size);
/* Drop TLB entries: all (MOV CR3, CR0/CR4 paging bits) or one page (INVLPG). */
void emu_tlb_flush(struct emu_cpu *c, bool include_global);
void emu_tlb_flush_page(struct emu_cpu *c, uint64_t la);

/*
 * ---- Hooks the core calls; the system part (sys.c) implements them ----
 * Weak fallbacks in the core let it link and run its own tests without sys.c.
 */
/* After emu_raise() longjmped to the run loop: deliver c->fault_vec/fault_err. */
void emu_deliver_fault(struct emu_cpu *c);
/*
 * Called at block boundaries when c->sys.pending_irq, c->sys.kick or
 * c->sys.halted is set, and every EMU_EVENT_PERIOD blocks (timers):
 * deliver interrupts, sleep in HLT, ... Return true to make emu_exec()
 * return *exit.
 */
bool emu_check_events(struct emu_cpu *c, enum vcpu_exit *exit);
#define EMU_EVENT_PERIOD 256
/* MOV/POP to a segment register: load selector sel into c->seg[seg] with checks; may raise. */
void emu_load_seg(struct emu_cpu *c, int seg, uint16_t sel);
/*
 * Rules for code that changes modes (sys.c): after writing CR3, CR0.PG/WP,
 * CR4.PGE/PAE or EFER.NXE call emu_tlb_flush(); after changing CS, CR0.PE,
 * EFER.LMA or anything else that changes how following instructions decode,
 * set c->stop_block so the run loop starts a new block (the decoded-block
 * cache is keyed by mode, which is recomputed there; c->mode64 too).
 * Instructions whose handler comes from emu_sys_handler() always end their
 * block.
 */

/* ---- Run loop (exec.c) ---- */
/* Execute until the vCPU must return to the VMM or max_insns have run (0: no limit). */
enum vcpu_exit emu_exec(struct emu_cpu *c, uint64_t max_insns);

/* ---- Setup (emu core: decode.c/exec.c/mmu.c) ---- */
int emu_vm_init(struct emu_vm *ev, struct guest_mem *gm);
void emu_vm_destroy(struct emu_vm *ev);
int emu_cpu_init(struct emu_cpu *c, struct emu_vm *ev, int id);
void emu_cpu_destroy(struct emu_cpu *c);
/* Architectural state in/out (sys.c, uses fpu.c for the FXSAVE image). */
void emu_get_state(struct emu_cpu *c, struct cpu_state *st);
void emu_set_state(struct emu_cpu *c, const struct cpu_state *st);

#endif
