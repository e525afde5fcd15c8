/* Emulator core state: struct emu_cpu and struct emu_vm. Included by emu.h only. */
#ifndef TERN_CPU_EMU_EMU_CORE_H
#define TERN_CPU_EMU_EMU_CORE_H

struct vcpu;

/* Lazy flags: the last flag-setting operation, evaluated on demand. */
struct emu_lazyflags {
	uint64_t res, src1, src2;
	uint32_t op;   /* which operation produced them (exec.c's enum) */
	uint32_t size; /* operand size in bytes */
};

/* Soft TLB entry: one guest-linear page -> host pointer to guest RAM. */
struct emu_tlb_entry {
	uint64_t tag;  /* linear page number | valid bit, per access kind */
	uint8_t *host; /* host address of the page start */
	uint64_t gpa;  /* guest-physical page address */
	bool global;   /* from a G=1 PTE: survives emu_tlb_flush(c, false) */
	uint8_t shift; /* log2 of the mapping's page size (12, 21, 30): INVLPG range */
};
#define EMU_TLB_SIZE 256

struct emu_block_cache; /* decode.c */
#define EMU_JC_GLOBAL (1ull << 63)
#define EMU_UD_LOG_WORDS 32

struct emu_cpu {
	/* Architectural state. */
	uint64_t gpr[16];
	uint64_t rip, next_rip;
	uint64_t rflags; /* all bits except the six arithmetic ones, which live in lf */
	struct emu_lazyflags lf;
	struct cpu_seg seg[6]; /* enum emu_seg order */
	struct cpu_seg ldtr, tr;
	struct cpu_dtable gdtr, idtr;
	uint64_t cr0, cr2, cr3, cr4, efer, xcr0;
	uint64_t dr[8];
	unsigned cpl;		/* cached CS.DPL */
	bool mode64;		/* EFER.LMA && CS.L: decode and address 64-bit */
	struct emu_fpu fpu;	/* emu_fpu.h */
	struct emu_sys_cpu sys; /* emu_sys.h: MSRs, APIC, events */

	/* MMU. */
	struct emu_tlb_entry tlb_r[EMU_TLB_SIZE], tlb_w[EMU_TLB_SIZE], tlb_x[EMU_TLB_SIZE];
	uint64_t tlb_flush_seen; /* last emu_vm.tlb_flush_gen acted on */
	/*
	 * In emu_exec() and not asleep in HLT: the only state in which it writes
	 * through tlb_w, so the only one the backend's sync_dirty waits for.
	 */
	bool active;

	/* Run loop. */
	jmp_buf jmp;
	int fault_vec; /* set by emu_raise() */
	uint32_t fault_err;
	uint64_t icount; /* instructions retired (a block that faults part-way is not counted) */
	uint64_t insn_limit; /* emu_exec() returns once icount reaches it */
	struct emu_block_cache *bc;
	bool stop_block;    /* end the current block after this instruction */
	bool stop_on_fault; /* tests: emu_exec() returns VCPU_EXIT_ERROR on a fault, undelivered */
	bool fault_unhandled; /* set by the fallback emu_deliver_fault() when sys.c is absent */
	uint8_t dmode;	      /* decode mode of the current block (decode.c's enum) */
	uint32_t event_tick;  /* blocks since emu_check_events() last ran */
	uint64_t block_page;  /* guest-physical page of the executing block (self-modifying code) */
	/*
	 * Linear-address shortcuts to blocks (jump cache, successor links) carry
	 * the epoch they depend on: jc_epoch, which every TLB flush bumps, or,
	 * for code fetched through a global translation, jc_gepoch, which only
	 * global flushes and INVLPG bump, so kernel shortcuts survive CR3 writes.
	 * jc_gepoch values have EMU_JC_GLOBAL set; the two never collide.
	 */
	uint64_t jc_epoch, jc_gepoch;

	struct emu_vm *vm;
	struct vcpu *vcpu; /* NULL in unit tests */
	int id;
};

/* I/O callbacks: the backend points them at vm_pio()/vm_mmio(); tests at their own. */
struct emu_io {
	void (*pio)(void *opaque, struct emu_cpu *c, uint16_t port, void *data, unsigned size,
		    int is_write);
	void (*mmio)(void *opaque, struct emu_cpu *c, uint64_t gpa, void *data, unsigned size,
		     int is_write);
	void *opaque;
};

struct emu_vm {
	struct guest_mem *gm;
	struct emu_io io;
	/* Self-modifying code: pages holding decoded code, and a generation per page. */
	uint64_t *code_pages; /* bitmap over gm pages (shared with gm->code_pages) */
	uint32_t *code_gen;   /* bumped on every write to a code page */
	/*
	 * Bumped with any code_gen entry: a shortcut to a block stamped with the
	 * current value needs no look at its page's generation (rarely moves:
	 * ~1,700 times in a boot of the default guest).
	 */
	uint64_t code_wgen;
	/* Bumped to make every vCPU drop its write TLB entries (dirty log reset, new code page). */
	uint64_t tlb_flush_gen;
	int ncpus;
	struct emu_cpu **cpus;
	uint64_t ud_logged[EMU_UD_LOG_WORDS]; /* mnemonics already reported as unimplemented */
	struct emu_sys_vm sys;		      /* emu_sys.h: IOAPIC, shared time base */
};

#endif
