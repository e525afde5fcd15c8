/*
 * Differential harness: run instruction bytes natively and in the emulator,
 * compare the results. See emu_harness.h.
 *
 * Native side: one RWX code page holds a generated prologue (save host
 * callee-saved registers, load FXSAVE image, flags and all GPRs from the
 * context page), the code under test at EH_CODE_OFF, and an epilogue (store
 * everything back, restore the host stack). Code and context pages are
 * adjacent so the prologue/epilogue address the context RIP-relatively.
 * Faults come back as signals on an alternate stack (the code's RSP points
 * into the data buffer) and are turned into vectors from REG_TRAPNO.
 *
 * Emulator side: a small guest RAM with 4-level page tables that map the
 * code page's and the data buffer's host linear addresses to guest pages,
 * so both worlds see the same addresses. The code runs at CPL 3 in 64-bit
 * mode until the UD2 the harness appends after it.
 */
#include "emu_harness.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "cpu/emu/emu.h"
#include "vmm/mem.h"

#define EH_CODE_OFF 256
#define EH_PAGE 4096ull
#define EH_RAM (4ull << 20)
/* Guest-physical layout of the emulator side. */
#define G_PML4 0x1000ull
#define G_TABLES 0x2000ull /* page-table pages are allocated from here */
#define G_CODE 0x100000ull
#define G_DATA 0x200000ull

/* Context page layout (offsets from the context page start). */
struct native_ctx {
	uint64_t in_gpr[16];
	uint64_t in_flags;
	uint64_t out_gpr[16];
	uint64_t out_flags;
	uint64_t host_rsp;
	uint64_t pad;
	uint8_t fx_in[512] __attribute__((aligned(16)));
	uint8_t fx_out[512] __attribute__((aligned(16)));
};

struct emu_harness {
	uint8_t *code;		/* RWX page; the context page follows */
	struct native_ctx *ctx; /* code + 4096 */
	uint8_t *mem;		/* data buffer, EH_MEM_SIZE */
	void *altstack;
	size_t prologue_len;
	/* Emulator side. */
	struct guest_mem gm;
	struct emu_vm ev;
	struct emu_cpu *cpu;
	uint64_t next_table;
};

/*
 * The signal handler needs to find its way back: one jump buffer per thread.
 * Test-only state; tern itself keeps no such globals.
 */
static __thread sigjmp_buf *eh_jmp;
static __thread ucontext_t eh_fault_uc;

/* ---- Tiny x86-64 emitter for the prologue/epilogue ---- */

struct emit {
	uint8_t *base, *p;
};

static void e_bytes(struct emit *e, const void *b, size_t n)
{
	memcpy(e->p, b, n);
	e->p += n;
}

static void e_u8(struct emit *e, uint8_t b)
{
	*e->p++ = b;
}

/* A RIP-relative modrm operand referring to the absolute host address target. */
static void e_riprel(struct emit *e, uint8_t reg_field, const void *target, size_t tail)
{
	e_u8(e, (uint8_t)(((reg_field & 7) << 3) | 5));
	int32_t disp = (int32_t)((const uint8_t *)target - (e->p + 4 + tail));

	e_bytes(e, &disp, 4);
}

/* mov r64, [rip+target] (load) or mov [rip+target], r64 (store). */
static void e_mov_rip(struct emit *e, unsigned reg, const void *target, bool store)
{
	e_u8(e, (uint8_t)(0x48 | (reg >= 8 ? 4 : 0)));
	e_u8(e, store ? 0x89 : 0x8b);
	e_riprel(e, (uint8_t)reg, target, 0);
}

static void emit_prologue(struct emu_harness *h)
{
	struct emit e = {h->code, h->code};
	static const uint8_t save[] = {0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57};

	e_bytes(&e, save, sizeof(save));
	e_mov_rip(&e, 4, &h->ctx->host_rsp, true);
	/* fxrstor64 [rip+fx_in] */
	e_u8(&e, 0x48), e_u8(&e, 0x0f), e_u8(&e, 0xae);
	e_riprel(&e, 1, h->ctx->fx_in, 0);
	/* mov rax, [in_flags]; push rax; popfq */
	e_mov_rip(&e, 0, &h->ctx->in_flags, false);
	e_u8(&e, 0x50), e_u8(&e, 0x9d);
	for (unsigned r = 0; r < 16; r++)
		e_mov_rip(&e, r, &h->ctx->in_gpr[r], false);
	/* jmp rel32 to the code under test */
	e_u8(&e, 0xe9);
	int32_t rel = (int32_t)((h->code + EH_CODE_OFF) - (e.p + 4));

	e_bytes(&e, &rel, 4);
	h->prologue_len = (size_t)(e.p - e.base);
}

static void emit_epilogue(struct emu_harness *h, uint8_t *at)
{
	struct emit e = {at, at};
	static const uint8_t restore[] = {0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d,
					  0x41, 0x5c, 0x5d, 0x5b, 0xc3};

	for (unsigned r = 0; r < 16; r++)
		e_mov_rip(&e, r, &h->ctx->out_gpr[r], true);
	e_mov_rip(&e, 4, &h->ctx->host_rsp, false);
	/* pushfq; pop rax; mov [out_flags], rax; cld */
	e_u8(&e, 0x9c), e_u8(&e, 0x58);
	e_mov_rip(&e, 0, &h->ctx->out_flags, true);
	e_u8(&e, 0xfc);
	/* fxsave64 [rip+fx_out] */
	e_u8(&e, 0x48), e_u8(&e, 0x0f), e_u8(&e, 0xae);
	e_riprel(&e, 0, h->ctx->fx_out, 0);
	e_bytes(&e, restore, sizeof(restore));
}

/* ---- Guest page tables ---- */

static uint64_t *gpte(struct emu_harness *h, uint64_t gpa)
{
	return gm_ptr(&h->gm, gpa, 8);
}

static void map_page(struct emu_harness *h, uint64_t la, uint64_t gpa)
{
	uint64_t table = G_PML4;

	for (int level = 4; level > 1; level--) {
		uint64_t *e = gpte(h, table + ((la >> (12 + 9 * (level - 1))) & 511) * 8);

		if (!(*e & 1)) {
			*e = h->next_table | 7;
			h->next_table += EH_PAGE;
		}
		table = *e & 0x000ffffffffff000ull;
	}
	*gpte(h, table + ((la >> 12) & 511) * 8) = gpa | 7;
}

static int emu_side_init(struct emu_harness *h)
{
	int err = gm_init(&h->gm, EH_RAM);

	if (err)
		return err;
	err = emu_vm_init(&h->ev, &h->gm);
	if (err)
		return err;
	h->cpu = aligned_alloc(64, (sizeof(struct emu_cpu) + 63) & ~63ul);
	if (!h->cpu)
		return -ENOMEM;
	err = emu_cpu_init(h->cpu, &h->ev, 0);
	if (err)
		return err;
	h->next_table = G_TABLES;
	map_page(h, (uint64_t)h->code, G_CODE);
	for (uint64_t off = 0; off < EH_MEM_SIZE; off += EH_PAGE)
		map_page(h, (uint64_t)h->mem + off, G_DATA + off);
	return 0;
}

struct emu_harness *eh_create(void)
{
	struct emu_harness *h = calloc(1, sizeof(*h));
	stack_t ss;

	if (!h)
		return NULL;
	h->code = mmap(NULL, 2 * EH_PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->mem =
	    mmap(NULL, EH_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->altstack = malloc(1 << 16);
	if (h->code == MAP_FAILED || h->mem == MAP_FAILED || !h->altstack)
		goto fail;
	h->ctx = (struct native_ctx *)(h->code + EH_PAGE);
	emit_prologue(h);
	ss.ss_sp = h->altstack;
	ss.ss_size = 1 << 16;
	ss.ss_flags = 0;
	if (sigaltstack(&ss, NULL))
		goto fail;
	if (emu_side_init(h))
		goto fail;
	return h;
fail:
	eh_destroy(h);
	return NULL;
}

void eh_destroy(struct emu_harness *h)
{
	stack_t ss = {.ss_flags = SS_DISABLE};

	if (!h)
		return;
	if (h->cpu) {
		emu_cpu_destroy(h->cpu);
		free(h->cpu);
	}
	if (h->ev.gm)
		emu_vm_destroy(&h->ev);
	if (h->gm.hva)
		gm_destroy(&h->gm);
	if (h->code && h->code != MAP_FAILED)
		munmap(h->code, 2 * EH_PAGE);
	if (h->mem && h->mem != MAP_FAILED)
		munmap(h->mem, EH_MEM_SIZE);
	sigaltstack(&ss, NULL);
	free(h->altstack);
	free(h);
}

uint64_t eh_mem_addr(const struct emu_harness *h)
{
	return (uint64_t)h->mem;
}

void eh_state_init(const struct emu_harness *h, struct eh_state *s)
{
	uint16_t fcw = 0x37f;
	uint32_t mxcsr = 0x1f80;

	memset(s, 0, sizeof(*s));
	s->gpr[EH_RSP] = (uint64_t)h->mem + EH_MEM_SIZE - 256;
	s->gpr[EH_RSI] = (uint64_t)h->mem;
	s->gpr[EH_RDI] = (uint64_t)h->mem + 4096;
	s->rflags = 0;
	memcpy(s->fxsave + 0, &fcw, 2);
	memcpy(s->fxsave + 24, &mxcsr, 4);
	s->fault = -1;
}

/* ---- Native run ---- */

static void on_signal(int sig, siginfo_t *si, void *ucv)
{
	if (!eh_jmp) {
		/* Not from code under test: let the default action happen. */
		signal(sig, SIG_DFL);
		return;
	}
	memcpy(&eh_fault_uc, ucv, sizeof(eh_fault_uc));
	siglongjmp(*eh_jmp, 1);
}

static const int uc_reg[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP,
			       REG_RSI, REG_RDI, REG_R8,  REG_R9,  REG_R10, REG_R11,
			       REG_R12, REG_R13, REG_R14, REG_R15};

int eh_run_native(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
		  struct eh_state *out)
{
	static const int sigs[] = {SIGFPE, SIGSEGV, SIGILL, SIGTRAP, SIGBUS};
	struct sigaction sa = {0}, old[5];
	sigjmp_buf jb;
	volatile int faulted = 0;

	if (len > EH_CODE_MAX)
		return -E2BIG;
	memcpy(h->code + EH_CODE_OFF, code, len);
	emit_epilogue(h, h->code + EH_CODE_OFF + len);
	memcpy(h->ctx->in_gpr, in->gpr, sizeof(in->gpr));
	h->ctx->in_flags = (in->rflags & (EH_FLAGS_ARITH | EH_FLAG_DF)) | 0x202;
	memcpy(h->ctx->fx_in, in->fxsave, 512);
	memcpy(h->mem, in->mem, EH_MEM_SIZE);
	*out = *in;

	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (int k = 0; k < 5; k++)
		sigaction(sigs[k], &sa, &old[k]);
	eh_jmp = &jb;
	if (sigsetjmp(jb, 1) == 0)
		((void (*)(void))h->code)();
	else
		faulted = 1;
	eh_jmp = NULL;
	for (int k = 0; k < 5; k++)
		sigaction(sigs[k], &old[k], NULL);

	if (faulted) {
		const greg_t *g = eh_fault_uc.uc_mcontext.gregs;

		for (int r = 0; r < 16; r++)
			out->gpr[r] = (uint64_t)g[uc_reg[r]];
		out->rflags = (uint64_t)g[REG_EFL];
		out->fault = (int)g[REG_TRAPNO];
		if (eh_fault_uc.uc_mcontext.fpregs)
			memcpy(out->fxsave, eh_fault_uc.uc_mcontext.fpregs, 512);
		/* The kernel's #DE/#UD signals carry DF as it was; restore the ABI's DF=0. */
		__asm__ volatile("cld");
	} else {
		memcpy(out->gpr, h->ctx->out_gpr, sizeof(out->gpr));
		out->rflags = h->ctx->out_flags;
		memcpy(out->fxsave, h->ctx->fx_out, 512);
		out->fault = -1;
	}
	memcpy(out->mem, h->mem, EH_MEM_SIZE);
	return 0;
}

/* ---- Emulator run ---- */

static void emu_load(struct emu_harness *h, const struct eh_state *in, uint64_t rip)
{
	struct emu_cpu *c = h->cpu;

	memcpy(c->gpr, in->gpr, sizeof(c->gpr));
	c->rip = rip;
	emu_set_rflags(c, (in->rflags & (EH_FLAGS_ARITH | EH_FLAG_DF)) | 0x202);
	memset(c->seg, 0, sizeof(c->seg));
	for (int s = 0; s < 6; s++) {
		c->seg[s].present = 1;
		c->seg[s].s = 1;
		c->seg[s].dpl = 3;
		c->seg[s].type = 3;
		c->seg[s].limit = 0xffffffff;
	}
	c->seg[SEG_CS].sel = 0x33;
	c->seg[SEG_CS].type = 0xb;
	c->seg[SEG_CS].l = 1;
	c->seg[SEG_SS].sel = 0x2b;
	c->cpl = 3;
	c->cr0 = 0x80050033; /* PG WP NE ET MP PE */
	c->cr4 = 0x6a0;	     /* OSXMMEXCPT OSFXSR PGE PAE */
	c->efer = 0xd01;     /* NXE LMA LME SCE */
	c->cr3 = G_PML4;
	c->mode64 = true;
	emu_fpu_from_fxsave(c, in->fxsave);
	emu_tlb_flush(c, true);
	c->stop_on_fault = true;
	c->fault_vec = -1;
}

int eh_run_emu(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
	       struct eh_state *out)
{
	static const uint8_t ud2[2] = {0x0f, 0x0b};
	struct emu_cpu *c = h->cpu;
	uint64_t start = (uint64_t)h->code + EH_CODE_OFF, end = start + len;
	enum vcpu_exit ex;

	if (len > EH_CODE_MAX)
		return -E2BIG;
	if (gm_write(&h->gm, G_CODE + EH_CODE_OFF, code, len) ||
	    gm_write(&h->gm, G_CODE + EH_CODE_OFF + len, ud2, sizeof(ud2)) ||
	    gm_write(&h->gm, G_DATA, in->mem, EH_MEM_SIZE))
		return -EFAULT;
	emu_load(h, in, start);
	ex = emu_exec(c, 10000000);
	if (ex != VCPU_EXIT_ERROR) {
		fprintf(stderr, "eh_run_emu: code did not finish (exit %d, rip %#llx)\n", ex,
			(unsigned long long)c->rip);
		return -ETIMEDOUT;
	}
	*out = *in;
	memcpy(out->gpr, c->gpr, sizeof(out->gpr));
	out->rflags = emu_rflags(c);
	emu_fpu_to_fxsave(c, out->fxsave);
	out->fault = (c->fault_vec == EMU_UD && c->rip == end) ? -1 : c->fault_vec;
	if (gm_read(&h->gm, G_DATA, out->mem, EH_MEM_SIZE))
		return -EFAULT;
	return 0;
}

/* ---- Comparison ---- */

struct eh_mask eh_mask_default(void)
{
	struct eh_mask m = {.flags = EH_FLAGS_ARITH | EH_FLAG_DF};

	return m;
}

static const char *const gpr_name[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
					 "r8",	"r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

static bool cmp_bytes(const uint8_t *a, const uint8_t *b, size_t n, const char *what,
		      const char *label)
{
	for (size_t k = 0; k < n; k++) {
		if (a[k] != b[k]) {
			fprintf(stderr, "%s: %s differs at byte %zu: native %02x emu %02x\n", label,
				what, k, a[k], b[k]);
			return false;
		}
	}
	return true;
}

bool eh_compare(const struct eh_state *n, const struct eh_state *e, const struct eh_mask *m,
		const char *label)
{
	bool ok = true;

	if (n->fault != e->fault) {
		fprintf(stderr, "%s: fault native %d emu %d\n", label, n->fault, e->fault);
		ok = false;
	}
	for (int r = 0; r < 16; r++) {
		if ((m->gpr_skip >> r) & 1)
			continue;
		if (n->gpr[r] != e->gpr[r]) {
			fprintf(stderr, "%s: %s native %#llx emu %#llx\n", label, gpr_name[r],
				(unsigned long long)n->gpr[r], (unsigned long long)e->gpr[r]);
			ok = false;
		}
	}
	if ((n->rflags ^ e->rflags) & m->flags) {
		fprintf(stderr, "%s: rflags native %#llx emu %#llx (compared bits %#llx)\n", label,
			(unsigned long long)n->rflags, (unsigned long long)e->rflags,
			(unsigned long long)m->flags);
		ok = false;
	}
	if (!m->skip_mem && !cmp_bytes(n->mem, e->mem, EH_MEM_SIZE, "memory", label))
		ok = false;
	if (m->xmm && !cmp_bytes(n->fxsave + 160, e->fxsave + 160, 256, "xmm", label))
		ok = false;
	if (m->mxcsr && !cmp_bytes(n->fxsave + 24, e->fxsave + 24, 4, "mxcsr", label))
		ok = false;
	if (m->x87) {
		if (!cmp_bytes(n->fxsave, e->fxsave, 5, "fcw/fsw/ftw", label))
			ok = false;
		for (int r = 0; r < 8; r++)
			if (!cmp_bytes(n->fxsave + 32 + 16 * r, e->fxsave + 32 + 16 * r, 10, "st",
				       label))
				ok = false;
	}
	return ok;
}

bool eh_check(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
	      const struct eh_mask *m, const char *label)
{
	struct eh_state *nat = malloc(sizeof(*nat)), *emu = malloc(sizeof(*emu));
	bool ok = false;

	if (!nat || !emu)
		goto out;
	if (eh_run_native(h, code, len, in, nat) || eh_run_emu(h, code, len, in, emu)) {
		fprintf(stderr, "%s: harness failure\n", label);
		goto out;
	}
	ok = eh_compare(nat, emu, m, label);
out:
	free(nat);
	free(emu);
	return ok;
}
