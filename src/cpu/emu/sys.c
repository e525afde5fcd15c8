/*
 * Exceptions and interrupts: emu_raise(), delivery through the IDT (long
 * mode; real mode for completeness), #DF/triple-fault escalation, the event
 * check at block boundaries (timers, interrupt injection, HLT sleep, kick,
 * INIT/SIPI), segment loads, and the vCPU state in/out.
 */
#include <errno.h>
#include <string.h>

#include "arch/x86/layout.h"
#include "cpu/emu/core.h"
#include "cpu/emu/sys_int.h"
#include "util/log.h"

noreturn void emu_raise(struct emu_cpu *c, int vector, uint32_t error_code)
{
	c->fault_vec = vector;
	c->fault_err = error_code;
	longjmp(c->jmp, 1);
}

/*
 * Defined here, next to emu_get_state() which every user of the emulator
 * links, so that a static link always takes it over the core's weak
 * fallback (an archive member is only pulled for a symbol still undefined).
 */
emu_handler emu_sys_handler(unsigned mnemonic)
{
	return sys_insn_handler(mnemonic);
}

void sys_set_pending(struct emu_cpu *c)
{
	__atomic_store_n(&c->sys.pending_irq, 1, __ATOMIC_RELEASE);
}

bool sys_canonical(uint64_t la)
{
	return (uint64_t)((int64_t)(la << 16) >> 16) == la;
}

/* Recompute what depends on CS, CR0 and EFER, and end the block so decoding follows. */
void sys_update_mode(struct emu_cpu *c)
{
	const struct cpu_seg *cs = &c->seg[SEG_CS];

	c->mode64 = (c->efer & X_EFER_LMA) && cs->l;
	c->cpl = (c->cr0 & X_CR0_PE) ? cs->dpl : 0;
	c->stop_block = true;
}

uint64_t sys_rsp_mask(const struct emu_cpu *c)
{
	if (c->mode64)
		return ~0ull;
	return c->seg[SEG_SS].db ? 0xffffffffull : 0xffffull;
}

uint64_t sys_stack_base(const struct emu_cpu *c)
{
	return c->mode64 ? 0 : c->seg[SEG_SS].base;
}

uint64_t sys_flags_mask(const struct emu_cpu *c, unsigned osize)
{
	uint64_t m =
	    X_CF | X_PF | X_AF | X_ZF | X_SF | X_TF | X_DF | X_OF | X_NT | X_RF | X_AC | X_ID;
	unsigned iopl = (c->rflags & X_IOPL) >> 12;

	if (c->cpl == 0)
		m |= X_IOPL | X_IF | X_VIF | X_VIP;
	else if (c->cpl <= iopl)
		m |= X_IF;
	if (osize == 2)
		m &= 0xffff;
	return m;
}

/* ---- Descriptors ---- */

void sys_desc_to_seg(uint64_t d, uint16_t sel, struct cpu_seg *s)
{
	uint32_t limit = (uint32_t)(d & 0xffff) | (uint32_t)((d >> 32) & 0xf0000);

	s->sel = sel;
	s->base = ((d >> 16) & 0xffffff) | ((d >> 56) << 24);
	s->g = d >> 55 & 1;
	s->limit = s->g ? (limit << 12) | 0xfff : limit;
	s->type = d >> 40 & 0xf;
	s->s = d >> 44 & 1;
	s->dpl = d >> 45 & 3;
	s->present = d >> 47 & 1;
	s->avl = d >> 52 & 1;
	s->l = d >> 53 & 1;
	s->db = d >> 54 & 1;
	s->unusable = 0;
}

/*
 * The descriptor sel names, from the GDT or LDT; #GP(sel) if it lies outside
 * the table. sys16: a system descriptor, 16 bytes in long mode (*hi gets the
 * upper half).
 */
uint64_t sys_read_desc(struct emu_cpu *c, uint16_t sel, bool sys16, uint64_t *hi)
{
	uint64_t base, limit, off = sel & ~7u;
	bool wide = sys16 && (c->efer & X_EFER_LMA);

	if (sel & 4) {
		if (c->ldtr.unusable || !c->ldtr.present)
			emu_raise(c, EMU_GP, sel & 0xfffc);
		base = c->ldtr.base;
		limit = c->ldtr.limit;
	} else {
		base = c->gdtr.base;
		limit = c->gdtr.limit;
	}
	if (off + (wide ? 15 : 7) > limit)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (hi)
		*hi = wide ? emu_read_sys(c, base + off + 8, 8) : 0;
	return emu_read_sys(c, base + off, 8);
}

static void seg_null(struct cpu_seg *s, uint16_t sel)
{
	memset(s, 0, sizeof(*s));
	s->sel = sel;
	s->unusable = 1;
}

/* Load CS from descriptor d with the given CPL (the selector's RPL becomes cpl). */
void sys_load_cs(struct emu_cpu *c, uint16_t sel, uint64_t d, unsigned cpl)
{
	sys_desc_to_seg(d, (uint16_t)((sel & ~3u) | cpl), &c->seg[SEG_CS]);
	c->seg[SEG_CS].dpl = (uint8_t)cpl;
	sys_update_mode(c);
}

static void load_seg_real(struct emu_cpu *c, int seg, uint16_t sel)
{
	struct cpu_seg *s = &c->seg[seg];

	s->sel = sel;
	s->base = (uint64_t)sel << 4;
	s->present = 1;
	s->unusable = 0;
}

void emu_load_seg(struct emu_cpu *c, int seg, uint16_t sel)
{
	struct cpu_seg *s;
	unsigned rpl = sel & 3;
	uint64_t d;
	struct cpu_seg n;

	if (seg < SEG_ES || seg > SEG_GS)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	s = &c->seg[seg];
	if (seg == SEG_SS) {
		/* The instruction after a load of SS runs before any interrupt. */
		c->sys.intr_shadow = true;
		c->sys.shadow_rip = c->next_rip;
		sys_set_pending(c);
	}
	if (!(c->cr0 & X_CR0_PE)) {
		load_seg_real(c, seg, sel);
		return;
	}
	if (seg == SEG_CS)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	if ((sel & ~3u) == 0) {
		if (seg == SEG_SS && !(c->mode64 && c->cpl != 3 && rpl == c->cpl))
			emu_raise(c, EMU_GP, 0);
		seg_null(s, sel);
		if (seg == SEG_SS)
			s->dpl = (uint8_t)c->cpl;
		return;
	}
	d = sys_read_desc(c, sel, false, NULL);
	sys_desc_to_seg(d, sel, &n);
	if (seg == SEG_SS) {
		if (rpl != c->cpl || !n.s || (n.type & DESC_CODE) || !(n.type & DESC_RW) ||
		    n.dpl != c->cpl)
			emu_raise(c, EMU_GP, sel & 0xfffc);
		if (!n.present)
			emu_raise(c, EMU_SS, sel & 0xfffc);
	} else {
		if (!n.s || ((n.type & DESC_CODE) && !(n.type & DESC_RW)))
			emu_raise(c, EMU_GP, sel & 0xfffc);
		bool conforming_code = (n.type & DESC_CODE) && (n.type & DESC_CONFORMING);

		if (!conforming_code && (n.dpl < rpl || n.dpl < c->cpl))
			emu_raise(c, EMU_GP, sel & 0xfffc);
		if (!n.present)
			emu_raise(c, EMU_NP, sel & 0xfffc);
	}
	*s = n;
}

/* ---- Event delivery ---- */

static bool has_error_code(unsigned vec)
{
	return vec == EMU_DF || vec == EMU_TS || vec == EMU_NP || vec == EMU_SS || vec == EMU_GP ||
	       vec == EMU_PF || vec == EMU_AC || vec == 21;
}

static bool contributory(int vec)
{
	return vec == 0 || vec == EMU_TS || vec == EMU_NP || vec == EMU_SS || vec == EMU_GP;
}

static void deliver_real(struct emu_cpu *c, unsigned vec, uint64_t ret_rip)
{
	uint64_t ent, sp = c->gpr[4], base = c->seg[SEG_SS].base;
	uint16_t fl = (uint16_t)emu_rflags(c);

	if (vec * 4 + 3 > c->idtr.limit)
		emu_raise(c, EMU_GP, vec * 8 + 2);
	ent = emu_read_sys(c, c->idtr.base + vec * 4, 4);
	emu_write_sys(c, base + ((sp - 2) & 0xffff), 2, fl);
	emu_write_sys(c, base + ((sp - 4) & 0xffff), 2, c->seg[SEG_CS].sel);
	emu_write_sys(c, base + ((sp - 6) & 0xffff), 2, ret_rip & 0xffff);
	c->gpr[4] = (sp & ~0xffffull) | ((sp - 6) & 0xffff);
	c->rflags &= ~(X_IF | X_TF | X_AC | X_RF);
	load_seg_real(c, SEG_CS, (uint16_t)(ent >> 16));
	c->rip = c->next_rip = ent & 0xffff;
	c->stop_block = true;
}

/* Error code for faults found while reading the IDT gate of vec. */
static uint32_t idt_err(unsigned vec, enum sys_event kind)
{
	return vec * 8 + 2 + (kind == EV_EXT || kind == EV_EXC || kind == EV_NMI);
}

/*
 * Long-mode delivery: 16-byte gates, 64-bit frame (SS, RSP, RFLAGS, CS, RIP,
 * error code) on a 16-byte aligned stack, switching to TSS.RSPn on a
 * privilege change or to an IST stack. All loads and the frame writes
 * happen before any register changes, so a fault on the way leaves the
 * interrupted state intact for the #DF that follows.
 */
static void deliver_long(struct emu_cpu *c, unsigned vec, uint32_t err, enum sys_event kind,
			 uint64_t ret_rip)
{
	uint64_t lo, hi, cd, target, rsp, frame[6];
	unsigned type, ist, new_cpl, n = 0;
	uint16_t sel;
	struct cpu_seg ncs;

	if (vec * 16 + 15 > c->idtr.limit)
		emu_raise(c, EMU_GP, idt_err(vec, kind));
	lo = emu_read_sys(c, c->idtr.base + vec * 16, 8);
	hi = emu_read_sys(c, c->idtr.base + vec * 16 + 8, 8);
	type = lo >> 40 & 0xf;
	if (type != 0xe && type != 0xf)
		emu_raise(c, EMU_GP, idt_err(vec, kind));
	if ((kind == EV_SOFT || kind == EV_SOFTEXC) && c->cpl > (lo >> 45 & 3))
		emu_raise(c, EMU_GP, idt_err(vec, kind));
	if (!(lo >> 47 & 1))
		emu_raise(c, EMU_NP, idt_err(vec, kind));
	sel = (uint16_t)(lo >> 16);
	target = (lo & 0xffff) | ((lo >> 32) & 0xffff0000ull) | (hi << 32);
	ist = lo >> 32 & 7;

	if ((sel & ~3u) == 0)
		emu_raise(c, EMU_GP, kind == EV_EXT || kind == EV_EXC);
	cd = sys_read_desc(c, sel, false, NULL);
	sys_desc_to_seg(cd, sel, &ncs);
	if (!ncs.s || !(ncs.type & DESC_CODE) || !ncs.l || ncs.db || ncs.dpl > c->cpl)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (!ncs.present)
		emu_raise(c, EMU_NP, sel & 0xfffc);
	new_cpl = (ncs.type & DESC_CONFORMING) ? c->cpl : ncs.dpl;
	if (!sys_canonical(target))
		emu_raise(c, EMU_GP, 0);

	if (ist)
		rsp = emu_read_sys(c, c->tr.base + 0x24 + (ist - 1) * 8, 8);
	else if (new_cpl < c->cpl)
		rsp = emu_read_sys(c, c->tr.base + 4 + new_cpl * 8, 8);
	else
		rsp = c->gpr[4];
	if (!sys_canonical(rsp))
		emu_raise(c, EMU_SS, 0);
	rsp &= ~0xfull;

	if (has_error_code(vec) && kind == EV_EXC)
		frame[n++] = err == EMU_NO_ERR ? 0 : err;
	frame[n++] = ret_rip;
	frame[n++] = c->seg[SEG_CS].sel;
	frame[n++] = emu_rflags(c);
	frame[n++] = c->gpr[4];
	frame[n++] = c->seg[SEG_SS].sel;
	for (unsigned k = 0; k < n; k++)
		emu_write_sys(c, rsp - 8 * (n - k), 8, frame[k]);

	/* Commit. */
	if (new_cpl < c->cpl) {
		seg_null(&c->seg[SEG_SS], (uint16_t)new_cpl);
		c->seg[SEG_SS].dpl = (uint8_t)new_cpl;
	}
	c->gpr[4] = rsp - 8 * n;
	c->rflags &= ~(X_TF | X_NT | X_RF | X_VM);
	if (type == 0xe)
		c->rflags &= ~X_IF;
	sys_load_cs(c, sel, cd, new_cpl);
	c->rip = c->next_rip = target;
}

void sys_deliver(struct emu_cpu *c, unsigned vec, uint32_t err, enum sys_event kind,
		 uint64_t ret_rip)
{
	if (!(c->cr0 & X_CR0_PE)) {
		deliver_real(c, vec, ret_rip);
		return;
	}
	if (!(c->efer & X_EFER_LMA)) {
		/* Linux takes no interrupt in legacy protected mode; neither do we. */
		pr_warn_once("emu: vCPU %d: event %u in legacy protected mode: shutdown\n", c->id,
			     vec);
		c->sys.shutdown = true;
		sys_set_pending(c);
		return;
	}
	deliver_long(c, vec, err, kind, ret_rip);
}

void emu_deliver_fault(struct emu_cpu *c)
{
	int vec = c->fault_vec, prev = c->sys.delivering;
	uint32_t err = c->fault_err;

	c->sys.delivering = -1;
	if (prev >= 0) {
		if (prev == EMU_DF) {
			pr_warn("emu: vCPU %d: triple fault at rip %#llx (vector %d)\n", c->id,
				(unsigned long long)c->rip, vec);
			c->sys.shutdown = true;
			sys_set_pending(c);
			return;
		}
		if ((contributory(prev) && contributory(vec)) ||
		    (prev == EMU_PF && (contributory(vec) || vec == EMU_PF))) {
			vec = EMU_DF;
			err = 0;
		}
	}
	/* Faults re-execute their instruction: it has not retired. RF keeps a #DB off it. */
	c->sys.delivering = vec;
	sys_deliver(c, (unsigned)vec, err, EV_EXC, c->rip);
	c->sys.delivering = -1;
}

/* ---- Events ---- */

void emu_kick(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;

	__atomic_store_n(&c->sys.kick, 1, __ATOMIC_RELEASE);
	sys_set_pending(c);
	pthread_mutex_lock(&a->lock);
	pthread_cond_broadcast(&a->wake);
	pthread_mutex_unlock(&a->lock);
}

/* INIT: the AP drops what it did and waits for a STARTUP IPI; the BSP ignores INIT. */
static void do_init(struct emu_cpu *c)
{
	if (c->id == 0)
		return;
	c->sys.wait_sipi = true;
	c->sys.halted = false;
	sys_set_pending(c);
	c->sys.nmi_pending = false;
	c->sys.nmi_blocked = false;
}

/*
 * STARTUP: begin in real mode at vector << 12, as the Linux trampoline
 * expects (it switches to protected and long mode itself).
 */
static void do_sipi(struct emu_cpu *c, uint8_t vector)
{
	if (!c->sys.wait_sipi)
		return;
	c->sys.wait_sipi = false;
	sys_reset_real(c, (uint16_t)(vector << 8), (uint64_t)vector << 12, 0);
}

void sys_reset_real(struct emu_cpu *c, uint16_t cs_sel, uint64_t cs_base, uint64_t rip)
{
	memset(c->gpr, 0, sizeof(c->gpr));
	c->gpr[2] = 0x600; /* RDX: family 6 */
	for (int s = 0; s < 6; s++) {
		struct cpu_seg *g = &c->seg[s];

		memset(g, 0, sizeof(*g));
		g->limit = 0xffff;
		g->type = 3;
		g->s = 1;
		g->present = 1;
	}
	c->seg[SEG_CS].type = 0xb;
	c->seg[SEG_CS].sel = cs_sel;
	c->seg[SEG_CS].base = cs_base;
	memset(&c->ldtr, 0, sizeof(c->ldtr));
	c->ldtr.limit = 0xffff;
	c->ldtr.type = 2;
	c->ldtr.present = 1;
	memset(&c->tr, 0, sizeof(c->tr));
	c->tr.limit = 0xffff;
	c->tr.type = 3;
	c->tr.present = 1;
	c->gdtr.base = c->idtr.base = 0;
	c->gdtr.limit = c->idtr.limit = 0xffff;
	c->cr0 = 0x60000010;
	c->cr2 = c->cr3 = c->cr4 = 0;
	c->efer = 0;
	c->xcr0 = 1;
	c->dr[6] = 0xffff0ff0;
	c->dr[7] = 0x400;
	emu_set_rflags(c, 2);
	c->rip = c->next_rip = rip;
	c->sys.halted = false;
	c->sys.intr_shadow = false;
	emu_fpu_reset(c);
	sys_update_mode(c);
	emu_tlb_flush(c, true);
}

static bool shadow_active(struct emu_cpu *c)
{
	if (!c->sys.intr_shadow)
		return false;
	if (c->rip == c->sys.shadow_rip)
		return true;
	c->sys.intr_shadow = false;
	return false;
}

/* NMI, then a maskable interrupt if RFLAGS.IF allows. True if something was delivered. */
static bool inject(struct emu_cpu *c, bool shadow)
{
	int v;

	if (shadow)
		return false;
	if (c->sys.nmi_pending && !c->sys.nmi_blocked) {
		c->sys.nmi_pending = false;
		c->sys.nmi_blocked = true;
		c->sys.halted = false;
		sys_deliver(c, EMU_NMI, EMU_NO_ERR, EV_NMI, c->rip);
		return true;
	}
	if (!(c->rflags & X_IF))
		return false;
	v = emu_apic_ack(c);
	if (v < 0)
		return false;
	c->sys.halted = false;
	sys_deliver(c, (unsigned)v, EMU_NO_ERR, EV_EXT, c->rip);
	return true;
}

/*
 * Something waits for IF, the end of a shadow or an IRET: check again at
 * the next block boundary. A shadow alone is no reason: it only delays.
 */
static bool blocked_work(struct emu_cpu *c)
{
	return (c->sys.nmi_pending && !c->sys.nmi_blocked) || emu_apic_has_irq(c);
}

static bool all_dead(struct emu_cpu *c)
{
	return __atomic_load_n(&c->vm->sys.dead, __ATOMIC_ACQUIRE) >= (uint32_t)c->vm->ncpus;
}

/* Count the vCPUs nothing but INIT/SIPI/NMI can wake; the last one wakes the others. */
static void set_dead(struct emu_cpu *c, bool dead)
{
	struct emu_vm *ev = c->vm;

	if (c->sys.dead == dead)
		return;
	c->sys.dead = dead;
	if (!dead) {
		__atomic_sub_fetch(&ev->sys.dead, 1, __ATOMIC_ACQ_REL);
		return;
	}
	if (__atomic_add_fetch(&ev->sys.dead, 1, __ATOMIC_ACQ_REL) < (uint32_t)ev->ncpus)
		return;
	for (int n = 0; n < ev->ncpus; n++) {
		struct emu_cpu *t = __atomic_load_n(&ev->cpus[n], __ATOMIC_ACQUIRE);

		if (!t || t == c)
			continue;
		pthread_mutex_lock(&t->sys.apic.lock);
		pthread_cond_broadcast(&t->sys.apic.wake);
		pthread_mutex_unlock(&t->sys.apic.lock);
	}
}

/*
 * Sleep until an interrupt, INIT/SIPI, a kick or the next timer expiry. The
 * wake-up condition is re-checked under apic.lock, where posters set it.
 */
static void idle_wait(struct emu_cpu *c, bool irqs)
{
	struct emu_lapic *a = &c->sys.apic;
	uint64_t due = emu_apic_next_due(c);
	struct timespec ts;

	/* Asleep it writes nothing: a dirty-log sync need not wait for it. */
	mmu_set_active(c, false);
	pthread_mutex_lock(&a->lock);
	for (;;) {
		if (a->nmi || a->init || a->sipi || __atomic_load_n(&c->sys.kick, __ATOMIC_ACQUIRE))
			break;
		if (!irqs && all_dead(c))
			break;
		/* Only what PPR lets through wakes it; a masked vector would spin. */
		if (irqs && emu_apic_has_irq_locked(c))
			break;
		if (!due) {
			pthread_cond_wait(&a->wake, &a->lock);
			continue;
		}
		if (emu_now_ns() >= due)
			break;
		ts.tv_sec = (time_t)(due / 1000000000ull);
		ts.tv_nsec = (long)(due % 1000000000ull);
		pthread_cond_timedwait(&a->wake, &a->lock, &ts);
	}
	pthread_mutex_unlock(&a->lock);
	mmu_set_active(c, true);
}

bool emu_check_events(struct emu_cpu *c, enum vcpu_exit *exit)
{
	uint8_t sipi = 0;

	__atomic_store_n(&c->sys.pending_irq, 0, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	for (;;) {
		if (c->sys.shutdown) {
			sys_set_pending(c);
			*exit = VCPU_EXIT_SHUTDOWN;
			return true;
		}
		if (__atomic_exchange_n(&c->sys.kick, 0, __ATOMIC_ACQ_REL)) {
			if (c->sys.halted || c->sys.wait_sipi)
				sys_set_pending(c);
			*exit = VCPU_EXIT_KICK;
			return true;
		}
		emu_apic_timers(c, emu_now_ns());
		unsigned ev = emu_apic_take_events(c, &sipi);

		if (ev & EMU_EV_INIT)
			do_init(c);
		if (ev & EMU_EV_SIPI)
			do_sipi(c, sipi);
		if (ev & EMU_EV_NMI)
			c->sys.nmi_pending = true;
		if (c->sys.wait_sipi ||
		    (c->sys.halted && !(c->rflags & X_IF) && !c->sys.nmi_pending)) {
			/*
			 * Only INIT, SIPI or NMI can wake it: sleep for them while
			 * another vCPU may still send one; when none can, all
			 * return VCPU_EXIT_HLT and the VMM decides.
			 */
			set_dead(c, true);
			if (all_dead(c)) {
				sys_set_pending(c);
				*exit = VCPU_EXIT_HLT;
				return true;
			}
			idle_wait(c, false);
			continue;
		}
		set_dead(c, false);
		if (inject(c, shadow_active(c))) {
			if (blocked_work(c))
				sys_set_pending(c);
			return false;
		}
		if (!c->sys.halted) {
			if (blocked_work(c))
				sys_set_pending(c);
			return false;
		}
		emu_bc_idle(c, emu_now_ns());
		idle_wait(c, true);
	}
}

/* ---- Setup and state ---- */

/* ev->sys.lock belongs to emu_vm_init()/emu_vm_destroy(). */
int emu_sys_vm_init(struct emu_vm *ev)
{
	struct emu_ioapic *io = &ev->sys.ioapic;

	memset(io, 0, sizeof(*io));
	for (unsigned n = 0; n < IOAPIC_NUM_PINS; n++)
		io->redir[n] = 1ull << 16; /* masked */
	ev->sys.time_base = emu_now_ns();
	ev->sys.tsc_khz = (uint32_t)(EMU_TSC_HZ / 1000);
	ev->sys.apic_tick_ns = (uint32_t)(1000000000ull / EMU_CRYSTAL_HZ);
	ev->sys.dead = 0;
	return 0;
}

void emu_sys_vm_destroy(struct emu_vm *ev)
{
	(void)ev;
}

int emu_sys_cpu_init(struct emu_cpu *c)
{
	struct emu_sys_cpu *s = &c->sys;
	pthread_condattr_t ca;
	int err;

	memset(s, 0, sizeof(*s));
	err = pthread_mutex_init(&s->apic.lock, NULL);
	if (err)
		return -err;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	err = pthread_cond_init(&s->apic.wake, &ca);
	pthread_condattr_destroy(&ca);
	if (err) {
		pthread_mutex_destroy(&s->apic.lock);
		return -err;
	}
	s->delivering = -1;
	s->apic.tick_ns = c->vm->sys.apic_tick_ns;
	s->pat = 0x0007040600070406ull;
	s->misc_enable = 1 | (1ull << 11) | (1ull << 12); /* fast strings; no BTS, no PEBS */
	s->mtrr_def_type = 0xc06;			  /* enabled, fixed enabled, WB */
	/* Reset TSC: zero at VM creation. */
	s->tsc_offset = 0;
	emu_apic_reset(c);
	/* APs wait for INIT/SIPI; the VMM may instead set their state directly. */
	s->wait_sipi = c->id != 0;
	/* The run loop must see wait_sipi before it fetches anything. */
	s->pending_irq = s->wait_sipi;
	return 0;
}

void emu_sys_cpu_destroy(struct emu_cpu *c)
{
	pthread_cond_destroy(&c->sys.apic.wake);
	pthread_mutex_destroy(&c->sys.apic.lock);
}

static bool all_zero(const uint8_t *p, unsigned len)
{
	for (unsigned n = 0; n < len; n++)
		if (p[n])
			return false;
	return true;
}

void emu_get_state(struct emu_cpu *c, struct cpu_state *st)
{
	const struct emu_sys_cpu *s = &c->sys;

	memcpy(st->gpr, c->gpr, sizeof(st->gpr));
	st->rip = c->rip;
	st->rflags = emu_rflags(c);
	st->es = c->seg[SEG_ES];
	st->cs = c->seg[SEG_CS];
	st->ss = c->seg[SEG_SS];
	st->ds = c->seg[SEG_DS];
	st->fs = c->seg[SEG_FS];
	st->gs = c->seg[SEG_GS];
	st->ldt = c->ldtr;
	st->tr = c->tr;
	st->gdt = c->gdtr;
	st->idt = c->idtr;
	st->cr0 = c->cr0;
	st->cr2 = c->cr2;
	st->cr3 = c->cr3;
	st->cr4 = c->cr4;
	st->cr8 = emu_apic_get_cr8(c);
	st->efer = c->efer;
	st->xcr0 = c->xcr0;
	st->apic_base = s->apic_base;
	st->star = s->star;
	st->lstar = s->lstar;
	st->cstar = s->cstar;
	st->sfmask = s->sfmask;
	st->kernel_gs_base = s->kernel_gs_base;
	st->sysenter_cs = s->sysenter_cs;
	st->sysenter_esp = s->sysenter_esp;
	st->sysenter_eip = s->sysenter_eip;
	st->pat = s->pat;
	st->tsc = emu_rdtsc(c);
	st->tsc_deadline = emu_apic_get_deadline(c);
	st->misc_enable = s->misc_enable;
	st->kvm_system_time = st->kvm_wall_clock = 0;
	emu_fpu_to_fxsave(c, st->fxsave);
	emu_apic_save(c, st->lapic);
	st->halted = s->halted;
	st->intr_shadow = s->intr_shadow && c->rip == s->shadow_rip;
	st->pending_exception = -1;
	st->pending_error_code = 0;
}

/*
 * Images that never came from emu_get_state() (a VMM building the boot
 * state from zero) leave out the FPU and the local APIC: an all-zero FXSAVE
 * or APIC page keeps the reset state instead of loading nonsense.
 */
void emu_set_state(struct emu_cpu *c, const struct cpu_state *st)
{
	struct emu_sys_cpu *s = &c->sys;

	memcpy(c->gpr, st->gpr, sizeof(c->gpr));
	c->rip = c->next_rip = st->rip;
	emu_set_rflags(c, st->rflags | 2);
	c->seg[SEG_ES] = st->es;
	c->seg[SEG_CS] = st->cs;
	c->seg[SEG_SS] = st->ss;
	c->seg[SEG_DS] = st->ds;
	c->seg[SEG_FS] = st->fs;
	c->seg[SEG_GS] = st->gs;
	c->ldtr = st->ldt;
	c->tr = st->tr;
	c->gdtr = st->gdt;
	c->idtr = st->idt;
	c->cr0 = st->cr0 | X_CR0_ET;
	c->cr2 = st->cr2;
	c->cr3 = st->cr3;
	c->cr4 = st->cr4;
	c->efer = st->efer;
	c->xcr0 = st->xcr0 ? st->xcr0 : 1;
	if (st->apic_base)
		s->apic_base = st->apic_base;
	s->star = st->star;
	s->lstar = st->lstar;
	s->cstar = st->cstar;
	s->sfmask = st->sfmask;
	s->kernel_gs_base = st->kernel_gs_base;
	s->sysenter_cs = st->sysenter_cs;
	s->sysenter_esp = st->sysenter_esp;
	s->sysenter_eip = st->sysenter_eip;
	s->pat = st->pat ? st->pat : s->pat;
	s->misc_enable = st->misc_enable ? st->misc_enable : s->misc_enable;
	/*
	 * TSC 0 is what a VMM building the boot state from scratch writes: keep
	 * the VM-wide TSC (ticking since VM creation) so all vCPUs agree, as
	 * KVM does when it synchronizes such writes.
	 */
	if (st->tsc)
		s->tsc_offset = (int64_t)(st->tsc - emu_ns_to_tsc(c->vm, emu_now_ns()));
	if (!all_zero(st->fxsave, sizeof(st->fxsave)))
		emu_fpu_from_fxsave(c, st->fxsave);
	if (!all_zero(st->lapic + 0x30, 4)) {
		emu_apic_load(c, st->lapic);
		emu_apic_set_deadline(c, st->tsc_deadline);
	}
	emu_apic_set_cr8(c, st->cr8);
	s->halted = st->halted;
	s->intr_shadow = st->intr_shadow;
	s->shadow_rip = st->rip;
	s->delivering = -1;
	/*
	 * A vCPU given a protected-mode state (the BSP's boot state, a snapshot)
	 * runs it; an AP given a real-mode reset state keeps waiting for SIPI.
	 */
	if (st->cr0 & X_CR0_PE)
		s->wait_sipi = false;
	/* Event injection is not part of the image: faults re-execute after a restore. */
	sys_update_mode(c);
	emu_tlb_flush(c, true);
	sys_set_pending(c);
}
