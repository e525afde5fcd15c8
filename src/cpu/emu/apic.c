/*
 * Local APIC (xAPIC, one per vCPU, MMIO at IA32_APIC_BASE) and the IOAPIC,
 * plus MSI delivery.
 *
 * Interrupt posting happens from any thread: a poster takes the target's
 * apic.lock, sets IRR/TMR or the NMI/INIT/SIPI flags, raises
 * sys.pending_irq and signals apic.wake so a halted vCPU wakes up. The rest
 * of the APIC (ISR, TPR, LVTs, timer) is touched only by the owning vCPU
 * thread; the timer is evaluated lazily by emu_apic_timers() at event
 * checks, so no host timer threads exist.
 *
 * Lock order: sys_vm.lock (IOAPIC) before any apic.lock.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "arch/x86/layout.h"
#include "cpu/emu/emu.h"
#include "util/log.h"

enum { LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR, LVT_CMCI, LVT_N };

#define LVT_MASKED (1u << 16)
#define LVT_TIMER_MODE(v) (((v) >> 17) & 3)
#define TIMER_ONESHOT 0
#define TIMER_PERIODIC 1
#define TIMER_TSC_DEADLINE 2
#define SVR_ENABLE (1u << 8)
#define APIC_BASE_ENABLE (1ull << 11)
#define APIC_VERSION 0x00050014u   /* xAPIC version 0x14, six LVT entries */
#define IOAPIC_VERSION 0x00170020u /* 24 pins; 0x20 has the EOI register */

/* Delivery modes (ICR, LVT, redirection entries, MSI data). */
enum {
	DM_FIXED = 0,
	DM_LOWEST = 1,
	DM_SMI = 2,
	DM_NMI = 4,
	DM_INIT = 5,
	DM_SIPI = 6,
	DM_EXTINT = 7
};

/* Redirection entry bits. */
#define RTE_DEST_LOGICAL (1ull << 11)
#define RTE_REMOTE_IRR (1ull << 14)
#define RTE_LEVEL (1ull << 15)
#define RTE_MASKED (1ull << 16)
#define RTE_RO_BITS ((1ull << 12) | RTE_REMOTE_IRR)

/* Valid bits per LVT entry: vector, delivery mode, status, polarity, remote IRR, trigger, mask. */
static const uint32_t lvt_mask[LVT_N] = {
    [LVT_TIMER] = 0x000710ff, [LVT_THERMAL] = 0x000107ff, [LVT_PERF] = 0x000107ff,
    [LVT_LINT0] = 0x0001a7ff, [LVT_LINT1] = 0x0001a7ff,	  [LVT_ERROR] = 0x000100ff,
    [LVT_CMCI] = 0x000107ff,
};

static bool vec_test(const uint32_t *r, unsigned v)
{
	return r[v >> 5] >> (v & 31) & 1;
}

static void vec_set(uint32_t *r, unsigned v)
{
	r[v >> 5] |= 1u << (v & 31);
}

static void vec_clear(uint32_t *r, unsigned v)
{
	r[v >> 5] &= ~(1u << (v & 31));
}

static int vec_highest(const uint32_t *r)
{
	for (int w = 7; w >= 0; w--)
		if (r[w])
			return w * 32 + 31 - __builtin_clz(r[w]);
	return -1;
}

static void set_pending(struct emu_cpu *c)
{
	__atomic_store_n(&c->sys.pending_irq, 1, __ATOMIC_RELEASE);
}

static uint32_t ppr(const struct emu_lapic *a)
{
	int isrv = vec_highest(a->isr);
	uint32_t isr_class = isrv < 0 ? 0 : (uint32_t)isrv & 0xf0;

	return (a->tpr & 0xf0) >= isr_class ? a->tpr & 0xff : isr_class;
}

/* ---- Posting (any thread) ---- */

static void apic_accept(struct emu_cpu *t, int mode, unsigned vector, bool level)
{
	struct emu_lapic *a = &t->sys.apic;

	pthread_mutex_lock(&a->lock);
	switch (mode) {
	case DM_FIXED:
	case DM_LOWEST:
		if (vector < 16) {
			a->esr_pending |= 1u << 6; /* received illegal vector */
			break;
		}
		if (!(a->svr & SVR_ENABLE))
			break;
		vec_set(a->irr, vector);
		if (level)
			vec_set(a->tmr, vector);
		else
			vec_clear(a->tmr, vector);
		break;
	case DM_NMI:
		a->nmi = true;
		break;
	case DM_INIT:
		a->init = true;
		break;
	case DM_SIPI:
		a->sipi = true;
		a->sipi_vector = (uint8_t)vector;
		break;
	default:
		pr_warn_once("emu: APIC delivery mode %d not supported\n", mode);
		break;
	}
	set_pending(t);
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->lock);
}

static bool apic_match(struct emu_cpu *t, uint32_t dest, bool logical)
{
	const struct emu_lapic *a = &t->sys.apic;

	if (!logical)
		return dest == 0xff || __atomic_load_n(&a->id, __ATOMIC_RELAXED) == dest;
	uint32_t ldr = __atomic_load_n(&a->ldr, __ATOMIC_RELAXED) >> 24;
	uint32_t dfr = __atomic_load_n(&a->dfr, __ATOMIC_RELAXED);

	if (dest == 0xff)
		return true;
	if ((dfr >> 28) == 0xf) /* flat */
		return (ldr & dest) != 0;
	return (ldr >> 4) == (dest >> 4) && (ldr & dest & 0xf) != 0; /* cluster */
}

enum { SH_NONE, SH_SELF, SH_ALL, SH_OTHERS };

/* Deliver to the APICs selected by dest/shorthand; self is the sender (NULL for devices). */
static void apic_route(struct emu_vm *ev, struct emu_cpu *self, int shorthand, uint32_t dest,
		       bool logical, int mode, unsigned vector, bool level)
{
	for (int n = 0; n < ev->ncpus; n++) {
		struct emu_cpu *t = ev->cpus[n];
		bool hit;

		if (!t)
			continue;
		switch (shorthand) {
		case SH_SELF:
			hit = t == self;
			break;
		case SH_ALL:
			hit = true;
			break;
		case SH_OTHERS:
			hit = t != self;
			break;
		default:
			hit = apic_match(t, dest, logical);
			break;
		}
		if (!hit)
			continue;
		apic_accept(t, mode, vector, level);
		/* Lowest priority: the first match is as good as any for an idle guest. */
		if (mode == DM_LOWEST && shorthand == SH_NONE)
			return;
	}
}

/* ---- IOAPIC ---- */

static void ioapic_fire(struct emu_vm *ev, unsigned pin)
{
	struct emu_ioapic *io = &ev->sys.ioapic;
	uint64_t e = io->redir[pin];

	if (e & RTE_MASKED)
		return;
	if (e & RTE_LEVEL) {
		if (!(io->level >> pin & 1) || (e & RTE_REMOTE_IRR))
			return;
		io->redir[pin] |= RTE_REMOTE_IRR;
	}
	apic_route(ev, NULL, SH_NONE, (uint32_t)(e >> 56), e & RTE_DEST_LOGICAL, (e >> 8) & 7,
		   e & 0xff, e & RTE_LEVEL);
}

int emu_ioapic_set_irq(struct emu_vm *ev, uint32_t gsi, int level)
{
	struct emu_ioapic *io = &ev->sys.ioapic;

	if (gsi >= IOAPIC_NUM_PINS)
		return -EINVAL;
	pthread_mutex_lock(&ev->sys.lock);
	uint32_t old = io->level >> gsi & 1;

	if (level)
		io->level |= 1u << gsi;
	else
		io->level &= ~(1u << gsi);
	if (level && (!old || (io->redir[gsi] & RTE_LEVEL)))
		ioapic_fire(ev, gsi);
	pthread_mutex_unlock(&ev->sys.lock);
	return 0;
}

/* A level-triggered vector was EOIed: clear remote IRR, re-fire lines still asserted. */
static void ioapic_eoi(struct emu_vm *ev, unsigned vector)
{
	struct emu_ioapic *io = &ev->sys.ioapic;

	pthread_mutex_lock(&ev->sys.lock);
	for (unsigned pin = 0; pin < IOAPIC_NUM_PINS; pin++) {
		uint64_t e = io->redir[pin];

		if ((e & 0xff) != vector || !(e & RTE_REMOTE_IRR))
			continue;
		io->redir[pin] &= ~RTE_REMOTE_IRR;
		ioapic_fire(ev, pin);
	}
	pthread_mutex_unlock(&ev->sys.lock);
}

static uint32_t ioapic_read_reg(struct emu_ioapic *io)
{
	unsigned r = io->sel & 0xff;

	if (r == 0)
		return io->id << 24;
	if (r == 1)
		return IOAPIC_VERSION;
	if (r == 2)
		return io->id << 24;
	if (r >= 0x10 && r < 0x10 + 2 * IOAPIC_NUM_PINS) {
		uint64_t e = io->redir[(r - 0x10) / 2];

		return (r & 1) ? (uint32_t)(e >> 32) : (uint32_t)e;
	}
	return 0xffffffff;
}

static void ioapic_write_reg(struct emu_vm *ev, uint32_t v)
{
	struct emu_ioapic *io = &ev->sys.ioapic;
	unsigned r = io->sel & 0xff;

	if (r == 0) {
		io->id = v >> 24 & 0xf;
		return;
	}
	if (r < 0x10 || r >= 0x10 + 2 * IOAPIC_NUM_PINS)
		return;
	unsigned pin = (r - 0x10) / 2;
	uint64_t e = io->redir[pin];

	if (r & 1) {
		e = (e & 0xffffffffull) | ((uint64_t)v << 32);
	} else {
		uint64_t lo = (e & RTE_RO_BITS) | (v & ~RTE_RO_BITS & 0xffffffffull);

		e = (e & 0xffffffff00000000ull) | lo;
		if (!(e & RTE_LEVEL))
			e &= ~RTE_REMOTE_IRR;
	}
	io->redir[pin] = e;
	/* Unmasking a level line that is still asserted delivers it now. */
	if ((e & RTE_LEVEL) && (io->level >> pin & 1))
		ioapic_fire(ev, pin);
}

static void ioapic_mmio(struct emu_vm *ev, uint64_t off, uint32_t *v, int is_write)
{
	struct emu_ioapic *io = &ev->sys.ioapic;

	pthread_mutex_lock(&ev->sys.lock);
	if (off == 0x00) {
		if (is_write)
			io->sel = *v & 0xff;
		else
			*v = io->sel;
	} else if (off == 0x10) {
		if (is_write)
			ioapic_write_reg(ev, *v);
		else
			*v = ioapic_read_reg(io);
	} else if (off == 0x40 && is_write) {
		pthread_mutex_unlock(&ev->sys.lock);
		ioapic_eoi(ev, *v & 0xff);
		return;
	} else if (!is_write) {
		*v = 0;
	}
	pthread_mutex_unlock(&ev->sys.lock);
}

int emu_msi(struct emu_vm *ev, uint64_t addr, uint32_t data)
{
	if ((addr & 0xfff00000ull) != LAPIC_BASE)
		return -EINVAL;
	int mode = (data >> 8) & 7;

	if (mode == DM_SMI || mode == 3 || mode == DM_EXTINT)
		return -EINVAL;
	apic_route(ev, NULL, SH_NONE, (addr >> 12) & 0xff, addr & 4, mode, data & 0xff,
		   data >> 15 & 1);
	return 0;
}

/* ---- Local APIC timer ---- */

static uint64_t timer_div(const struct emu_lapic *a)
{
	unsigned v = (a->tdcr & 3) | ((a->tdcr >> 1) & 4);

	return 1ull << ((v + 1) & 7);
}

/* Host ns per timer count; at least 1 us per period to keep a hostile guest from storming. */
static uint64_t timer_period_ns(const struct emu_lapic *a)
{
	uint64_t ns = (uint64_t)a->tmict * timer_div(a) * a->tick_ns;

	return ns < 1000 ? 1000 : ns;
}

static uint64_t tsc_to_ns(struct emu_cpu *c, uint64_t tsc)
{
	return emu_tsc_to_ns(c->vm, (int64_t)(tsc - (uint64_t)c->sys.tsc_offset));
}

static void post_self(struct emu_cpu *c, uint32_t lvt)
{
	if (lvt & LVT_MASKED)
		return;
	apic_accept(c, DM_FIXED, lvt & 0xff, false);
}

void emu_apic_timers(struct emu_cpu *c, uint64_t now)
{
	struct emu_lapic *a = &c->sys.apic;
	uint32_t lvt = a->lvt[LVT_TIMER];

	if (!a->timer_due || now < a->timer_due)
		return;
	if (LVT_TIMER_MODE(lvt) == TIMER_PERIODIC && a->tmict) {
		uint64_t p = timer_period_ns(a);

		a->timer_due += p * ((now - a->timer_due) / p + 1);
	} else {
		a->timer_due = 0;
		if (LVT_TIMER_MODE(lvt) == TIMER_TSC_DEADLINE)
			a->tsc_deadline = 0;
	}
	post_self(c, lvt);
}

uint64_t emu_apic_next_due(struct emu_cpu *c)
{
	return c->sys.apic.timer_due;
}

static uint32_t timer_current(const struct emu_lapic *a, uint64_t now)
{
	if (!a->tmict || LVT_TIMER_MODE(a->lvt[LVT_TIMER]) == TIMER_TSC_DEADLINE)
		return 0;
	uint64_t ticks = (now - a->timer_start) / (timer_div(a) * a->tick_ns);

	if (LVT_TIMER_MODE(a->lvt[LVT_TIMER]) == TIMER_PERIODIC)
		return a->tmict - (uint32_t)(ticks % a->tmict);
	return ticks >= a->tmict ? 0 : a->tmict - (uint32_t)ticks;
}

void emu_apic_set_deadline(struct emu_cpu *c, uint64_t tsc)
{
	struct emu_lapic *a = &c->sys.apic;

	if (LVT_TIMER_MODE(a->lvt[LVT_TIMER]) != TIMER_TSC_DEADLINE)
		return;
	a->tsc_deadline = tsc;
	a->timer_due = tsc ? tsc_to_ns(c, tsc) : 0;
	/* A deadline in the past must still fire: due must be nonzero. */
	if (tsc && !a->timer_due)
		a->timer_due = 1;
	set_pending(c);
}

uint64_t emu_apic_get_deadline(struct emu_cpu *c)
{
	return c->sys.apic.tsc_deadline;
}

/* ---- Local APIC registers (vCPU thread) ---- */

static void apic_eoi(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;
	int v = vec_highest(a->isr);
	bool level;

	if (v < 0)
		return;
	vec_clear(a->isr, v);
	pthread_mutex_lock(&a->lock);
	level = vec_test(a->tmr, v);
	pthread_mutex_unlock(&a->lock);
	set_pending(c);
	if (level)
		ioapic_eoi(c->vm, v);
}

static void apic_send_ipi(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;
	uint32_t lo = a->icr_lo;
	int mode = (lo >> 8) & 7;

	/* INIT level de-assert is a no-op on xAPICs since the P4. */
	if (mode == DM_INIT && !(lo & (1u << 14)) && (lo & (1u << 15)))
		return;
	apic_route(c->vm, c, (lo >> 18) & 3, a->icr_hi >> 24, lo & (1u << 11), mode, lo & 0xff,
		   false);
}

uint32_t emu_apic_read_reg(struct emu_cpu *c, uint32_t off)
{
	struct emu_lapic *a = &c->sys.apic;
	uint32_t v = 0;

	switch (off) {
	case 0x20:
		return a->id << 24;
	case 0x30:
		return APIC_VERSION;
	case 0x80:
		return a->tpr;
	case 0x90:
		return 0;
	case 0xa0:
		return ppr(a);
	case 0xd0:
		return a->ldr;
	case 0xe0:
		return a->dfr;
	case 0xf0:
		return a->svr;
	case 0x280:
		return a->esr;
	case 0x2f0:
		return a->lvt[LVT_CMCI];
	case 0x300:
		return a->icr_lo;
	case 0x310:
		return a->icr_hi;
	case 0x380:
		return a->tmict;
	case 0x390:
		return timer_current(a, emu_now_ns());
	case 0x3e0:
		return a->tdcr;
	}
	if (off >= 0x320 && off <= 0x370)
		return a->lvt[(off - 0x320) >> 4];
	if (off >= 0x100 && off < 0x180)
		return a->isr[(off - 0x100) >> 4];
	if (off >= 0x180 && off < 0x280) {
		pthread_mutex_lock(&a->lock);
		v = off < 0x200 ? a->tmr[(off - 0x180) >> 4] : a->irr[(off - 0x200) >> 4];
		pthread_mutex_unlock(&a->lock);
	}
	return v;
}

static void apic_write_lvt(struct emu_cpu *c, unsigned n, uint32_t v)
{
	struct emu_lapic *a = &c->sys.apic;

	v &= lvt_mask[n];
	if (!(a->svr & SVR_ENABLE))
		v |= LVT_MASKED;
	if (n == LVT_TIMER && LVT_TIMER_MODE(v) != LVT_TIMER_MODE(a->lvt[n])) {
		/* A mode switch disarms the timer. */
		a->tmict = 0;
		a->tsc_deadline = 0;
		a->timer_due = 0;
	}
	a->lvt[n] = v;
}

void emu_apic_write_reg(struct emu_cpu *c, uint32_t off, uint32_t v)
{
	struct emu_lapic *a = &c->sys.apic;

	switch (off) {
	case 0x20:
		__atomic_store_n(&a->id, v >> 24, __ATOMIC_RELAXED);
		break;
	case 0x80:
		a->tpr = v & 0xff;
		set_pending(c);
		break;
	case 0xb0:
		apic_eoi(c);
		break;
	case 0xd0:
		__atomic_store_n(&a->ldr, v & 0xff000000u, __ATOMIC_RELAXED);
		break;
	case 0xe0:
		__atomic_store_n(&a->dfr, v | 0x0fffffffu, __ATOMIC_RELAXED);
		break;
	case 0xf0:
		a->svr = v & 0x3ff;
		if (!(a->svr & SVR_ENABLE))
			for (unsigned n = 0; n < LVT_N; n++)
				a->lvt[n] |= LVT_MASKED;
		set_pending(c);
		break;
	case 0x280:
		pthread_mutex_lock(&a->lock);
		a->esr = a->esr_pending;
		a->esr_pending = 0;
		pthread_mutex_unlock(&a->lock);
		break;
	case 0x2f0:
		apic_write_lvt(c, LVT_CMCI, v);
		break;
	case 0x300:
		a->icr_lo = v & ~(1u << 12);
		apic_send_ipi(c);
		break;
	case 0x310:
		a->icr_hi = v & 0xff000000u;
		break;
	case 0x380:
		if (LVT_TIMER_MODE(a->lvt[LVT_TIMER]) == TIMER_TSC_DEADLINE)
			break;
		a->tmict = v;
		a->timer_start = emu_now_ns();
		a->timer_due = v ? a->timer_start + timer_period_ns(a) : 0;
		set_pending(c);
		break;
	case 0x3e0:
		a->tdcr = v & 0xb;
		break;
	default:
		if (off >= 0x320 && off <= 0x370)
			apic_write_lvt(c, (off - 0x320) >> 4, v);
		break;
	}
}

uint64_t emu_apic_get_cr8(struct emu_cpu *c)
{
	return c->sys.apic.tpr >> 4;
}

void emu_apic_set_cr8(struct emu_cpu *c, uint64_t v)
{
	c->sys.apic.tpr = (uint32_t)(v & 0xf) << 4;
	set_pending(c);
}

int emu_apic_ack(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;
	int v;

	pthread_mutex_lock(&a->lock);
	v = vec_highest(a->irr);
	if (v >= 0 && ((uint32_t)v & 0xf0) > (ppr(a) & 0xf0)) {
		vec_clear(a->irr, v);
		vec_set(a->isr, v);
	} else {
		v = -1;
	}
	pthread_mutex_unlock(&a->lock);
	return v;
}

bool emu_apic_has_irq_locked(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;
	int v = vec_highest(a->irr);

	return v >= 0 && ((uint32_t)v & 0xf0) > (ppr(a) & 0xf0);
}

bool emu_apic_has_irq(struct emu_cpu *c)
{
	bool r;

	pthread_mutex_lock(&c->sys.apic.lock);
	r = emu_apic_has_irq_locked(c);
	pthread_mutex_unlock(&c->sys.apic.lock);
	return r;
}

unsigned emu_apic_take_events(struct emu_cpu *c, uint8_t *sipi_vector)
{
	struct emu_lapic *a = &c->sys.apic;
	unsigned ev = 0;

	pthread_mutex_lock(&a->lock);
	if (a->nmi)
		ev |= EMU_EV_NMI;
	if (a->init)
		ev |= EMU_EV_INIT;
	if (a->sipi) {
		ev |= EMU_EV_SIPI;
		*sipi_vector = a->sipi_vector;
	}
	a->nmi = a->init = a->sipi = false;
	pthread_mutex_unlock(&a->lock);
	return ev;
}

/* ---- MMIO ---- */

static bool apic_mmio_dword(struct emu_cpu *c, uint32_t off, uint32_t *v, int is_write)
{
	if (is_write)
		emu_apic_write_reg(c, off, *v);
	else
		*v = emu_apic_read_reg(c, off);
	return true;
}

bool emu_apic_mmio(struct emu_cpu *c, uint64_t gpa, void *data, unsigned size, int is_write)
{
	uint64_t base = c->sys.apic_base & 0xffffff000ull;
	uint32_t v = 0;

	if ((c->sys.apic_base & APIC_BASE_ENABLE) && gpa >= base && gpa - base < 0x1000) {
		uint32_t off = (uint32_t)(gpa - base);
		unsigned sh = (off & 3) * 8;

		/* Registers are 32 bits wide on 16-byte strides; narrower accesses see part of one.
		 */
		if (size > 4 || (off & 3) + size > 4) {
			if (!is_write)
				memset(data, 0, size);
			return true;
		}
		if (is_write) {
			memcpy(&v, data, size);
			v <<= sh;
		}
		apic_mmio_dword(c, off & 0xff0, &v, is_write);
		if (!is_write) {
			v >>= sh;
			memcpy(data, &v, size);
		}
		return true;
	}
	if (gpa >= IOAPIC_BASE && gpa - IOAPIC_BASE < 0x1000) {
		uint64_t off = gpa - IOAPIC_BASE;

		if (size != 4 || (off & 3)) {
			if (!is_write)
				memset(data, 0xff, size);
			return true;
		}
		if (is_write)
			memcpy(&v, data, 4);
		ioapic_mmio(c->vm, off, &v, is_write);
		if (!is_write)
			memcpy(data, &v, 4);
		return true;
	}
	return false;
}

/* ---- Setup, snapshot ---- */

void emu_apic_reset(struct emu_cpu *c)
{
	struct emu_lapic *a = &c->sys.apic;

	pthread_mutex_lock(&a->lock);
	memset(a->irr, 0, sizeof(a->irr));
	memset(a->tmr, 0, sizeof(a->tmr));
	a->nmi = a->init = a->sipi = false;
	a->esr_pending = 0;
	pthread_mutex_unlock(&a->lock);
	memset(a->isr, 0, sizeof(a->isr));
	a->id = (uint32_t)c->id;
	a->tpr = a->ldr = a->esr = a->icr_lo = a->icr_hi = 0;
	a->dfr = 0xffffffffu;
	a->svr = 0xff;
	for (unsigned n = 0; n < LVT_N; n++)
		a->lvt[n] = LVT_MASKED;
	a->tmict = a->tdcr = 0;
	a->timer_start = a->timer_due = a->tsc_deadline = 0;
	c->sys.apic_base = LAPIC_BASE | APIC_BASE_ENABLE | (c->id == 0 ? 1ull << 8 : 0);
}

static void put32(uint8_t *regs, uint32_t off, uint32_t v)
{
	memcpy(regs + off, &v, 4);
}

static uint32_t get32(const uint8_t *regs, uint32_t off)
{
	uint32_t v;

	memcpy(&v, regs + off, 4);
	return v;
}

void emu_apic_save(struct emu_cpu *c, uint8_t regs[1024])
{
	static const uint16_t offs[] = {0x20,  0x30,  0x80,  0xd0,  0xe0,  0xf0,  0x280,
					0x2f0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350,
					0x360, 0x370, 0x380, 0x390, 0x3e0};

	memset(regs, 0, 1024);
	for (unsigned n = 0; n < sizeof(offs) / sizeof(offs[0]); n++)
		put32(regs, offs[n], emu_apic_read_reg(c, offs[n]));
	for (uint32_t off = 0x100; off < 0x280; off += 0x10)
		put32(regs, off, emu_apic_read_reg(c, off));
}

void emu_apic_load(struct emu_cpu *c, const uint8_t regs[1024])
{
	struct emu_lapic *a = &c->sys.apic;

	a->id = get32(regs, 0x20) >> 24;
	a->tpr = get32(regs, 0x80) & 0xff;
	a->ldr = get32(regs, 0xd0) & 0xff000000u;
	a->dfr = get32(regs, 0xe0) | 0x0fffffffu;
	a->svr = get32(regs, 0xf0) & 0x3ff;
	a->esr = get32(regs, 0x280);
	a->icr_lo = get32(regs, 0x300);
	a->icr_hi = get32(regs, 0x310) & 0xff000000u;
	for (unsigned n = 0; n < LVT_N; n++) {
		uint32_t off = n == LVT_CMCI ? 0x2f0 : 0x320 + n * 0x10;

		a->lvt[n] = get32(regs, off) & lvt_mask[n];
	}
	a->tdcr = get32(regs, 0x3e0) & 0xb;
	a->tmict = get32(regs, 0x380);
	a->timer_start = emu_now_ns();
	a->timer_due = 0;
	if (a->tmict && LVT_TIMER_MODE(a->lvt[LVT_TIMER]) != TIMER_TSC_DEADLINE) {
		/* Resume with the saved current count, not a full period. */
		uint32_t cur = get32(regs, 0x390);
		uint64_t tick = timer_div(a) * a->tick_ns;

		if (cur > a->tmict)
			cur = a->tmict;
		a->timer_start -= (uint64_t)(a->tmict - cur) * tick;
		a->timer_due = a->timer_start + (uint64_t)a->tmict * tick;
		if (cur == 0)
			a->timer_due = LVT_TIMER_MODE(a->lvt[LVT_TIMER]) == TIMER_PERIODIC
					   ? a->timer_start + timer_period_ns(a)
					   : 0;
	}
	for (unsigned w = 0; w < 8; w++)
		a->isr[w] = get32(regs, 0x100 + w * 0x10);
	pthread_mutex_lock(&a->lock);
	for (unsigned w = 0; w < 8; w++) {
		a->tmr[w] = get32(regs, 0x180 + w * 0x10);
		a->irr[w] = get32(regs, 0x200 + w * 0x10);
	}
	pthread_mutex_unlock(&a->lock);
	set_pending(c);
}
