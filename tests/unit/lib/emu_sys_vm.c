/* The test machine of emu_sys_vm.h. */
#include "emu_sys_vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PTE_P 1ull
#define PTE_W 2ull
#define PTE_U 4ull
#define PTE_PCD 0x10ull
#define PTE_PS 0x80ull

static void esv_pio(void *opaque, struct emu_cpu *c, uint16_t port, void *data, unsigned size,
		    int is_write)
{
	struct esv *v = opaque;

	pthread_mutex_lock(&v->lock);
	v->pio_count++;
	if (is_write && port == ESV_LOG_PORT && v->nlog + 1 < sizeof(v->log))
		v->log[v->nlog++] = *(char *)data;
	else if (!is_write)
		memset(data, 0xff, size);
	pthread_mutex_unlock(&v->lock);
}

static void esv_mmio(void *opaque, struct emu_cpu *c, uint64_t gpa, void *data, unsigned size,
		     int is_write)
{
	if (emu_apic_mmio(c, gpa, data, size, is_write))
		return;
	if (!is_write)
		memset(data, 0xff, size);
}

uint64_t esv_rd(struct esv *v, uint64_t gpa)
{
	uint64_t x = 0;

	gm_read(&v->gm, gpa, &x, 8);
	return x;
}

void esv_wr(struct esv *v, uint64_t gpa, uint64_t val)
{
	gm_write(&v->gm, gpa, &val, 8);
}

static void build_tables(struct esv *v)
{
	/* Paging: PML4[0] -> PDPT; PDPT[0] -> PD (0-1 GiB), PDPT[3] -> PD (3-4 GiB). */
	esv_wr(v, 0x1000, 0x2000 | PTE_P | PTE_W | PTE_U);
	esv_wr(v, 0x2000, 0x3000 | PTE_P | PTE_W | PTE_U);
	esv_wr(v, 0x2000 + 3 * 8, 0x5000 | PTE_P | PTE_W | PTE_U);
	esv_wr(v, 0x3000, 0x4000 | PTE_P | PTE_W | PTE_U);
	for (uint64_t n = 1; n < ESV_MEM >> 21; n++)
		esv_wr(v, 0x3000 + n * 8, (n << 21) | PTE_P | PTE_W | PTE_U | PTE_PS);
	for (uint64_t n = 0; n < 512; n++) {
		uint64_t pa = n << 12, pte = pa | PTE_P | PTE_W | PTE_U;

		if (pa == ESV_SUPER_PAGE)
			pte &= ~PTE_U;
		if (pa == ESV_ABSENT_PAGE)
			pte = 0;
		esv_wr(v, 0x4000 + n * 8, pte);
	}
	/* 0xFEC00000 and 0xFEE00000: 2 MiB pages, uncached. */
	esv_wr(v, 0x5000 + 0x1f6 * 8, 0xfec00000ull | PTE_P | PTE_W | PTE_PS | PTE_PCD);
	esv_wr(v, 0x5000 + 0x1f7 * 8, 0xfee00000ull | PTE_P | PTE_W | PTE_PS | PTE_PCD);

	/* GDT in Linux's layout. */
	esv_wr(v, ESV_GDT + 0x10, 0x00af9b000000ffffull);
	esv_wr(v, ESV_GDT + 0x18, 0x00cf93000000ffffull);
	esv_wr(v, ESV_GDT + 0x20, 0x00cffb000000ffffull);
	esv_wr(v, ESV_GDT + 0x28, 0x00cff3000000ffffull);
	esv_wr(v, ESV_GDT + 0x30, 0x00affb000000ffffull);
	esv_wr(v, ESV_GDT + 0x40,
	       0x67 | (ESV_TSS & 0xffffff) << 16 | 0x8bull << 40 | (ESV_TSS >> 24 & 0xff) << 56);
	esv_wr(v, ESV_GDT + 0x48, ESV_TSS >> 32);
	/* TSS: RSP0 and IST1. */
	esv_wr(v, ESV_TSS + 4, ESV_RSP0);
	esv_wr(v, ESV_TSS + 0x24, ESV_IST1);
}

int esv_create(struct esv *v, int ncpus)
{
	int err;

	memset(v, 0, sizeof(*v));
	if (ncpus < 1 || ncpus > ESV_MAX_CPUS)
		return -EINVAL;
	pthread_mutex_init(&v->lock, NULL);
	err = gm_init(&v->gm, ESV_MEM);
	if (err)
		return err;
	err = emu_vm_init(&v->ev, &v->gm);
	if (err)
		return err;
	err = emu_sys_vm_init(&v->ev);
	if (err)
		return err;
	v->ev.io.pio = esv_pio;
	v->ev.io.mmio = esv_mmio;
	v->ev.io.opaque = v;
	v->ev.ncpus = ncpus;
	v->ev.cpus = v->cpu;
	v->ncpus = ncpus;
	for (int n = 0; n < ncpus; n++) {
		v->cpu[n] = calloc(1, sizeof(struct emu_cpu));
		if (!v->cpu[n])
			return -ENOMEM;
		err = emu_cpu_init(v->cpu[n], &v->ev, n);
		if (!err)
			err = emu_sys_cpu_init(v->cpu[n]);
		if (err)
			return err;
	}
	build_tables(v);
	return 0;
}

void esv_destroy(struct esv *v)
{
	for (int n = 0; n < v->ncpus; n++) {
		if (!v->cpu[n])
			continue;
		emu_sys_cpu_destroy(v->cpu[n]);
		emu_cpu_destroy(v->cpu[n]);
		free(v->cpu[n]);
	}
	emu_sys_vm_destroy(&v->ev);
	emu_vm_destroy(&v->ev);
	gm_destroy(&v->gm);
	pthread_mutex_destroy(&v->lock);
}

void esv_load(struct esv *v, const void *code, size_t len)
{
	gm_write(&v->gm, ESV_CODE, code, len);
}

void esv_gate(struct esv *v, unsigned vec, uint64_t target, unsigned ist, unsigned dpl,
	      unsigned type, int present)
{
	uint64_t lo = (target & 0xffff) | (uint64_t)ESV_KCODE << 16 | (uint64_t)(ist & 7) << 32 |
		      (uint64_t)(type & 0xf) << 40 | (uint64_t)(dpl & 3) << 45 |
		      (uint64_t)(present ? 1 : 0) << 47 | ((target >> 16) & 0xffff) << 48;

	esv_wr(v, ESV_IDT + vec * 16, lo);
	esv_wr(v, ESV_IDT + vec * 16 + 8, target >> 32);
}

static struct cpu_seg seg(uint16_t sel, uint8_t type, uint8_t s, uint8_t l, uint8_t db, uint8_t dpl)
{
	struct cpu_seg g = {.base = 0,
			    .limit = 0xffffffff,
			    .sel = sel,
			    .type = type,
			    .present = 1,
			    .dpl = dpl,
			    .db = db,
			    .s = s,
			    .l = l,
			    .g = 1};
	return g;
}

void esv_enter(struct esv *v, int cpu, uint64_t rip, uint64_t rsp)
{
	struct cpu_state *st = calloc(1, sizeof(*st));

	st->rip = rip;
	st->gpr[4] = rsp;
	st->rflags = 2;
	st->pending_exception = -1;
	st->cs = seg(ESV_KCODE, 0xb, 1, 1, 0, 0);
	st->ss = seg(ESV_KDATA, 0x3, 1, 0, 1, 0);
	st->ds = st->es = st->ss;
	st->fs = st->gs = st->ss;
	st->ldt.unusable = 1;
	st->tr.sel = ESV_TSS_SEL;
	st->tr.base = ESV_TSS;
	st->tr.limit = 0x67;
	st->tr.type = 0xb;
	st->tr.present = 1;
	st->gdt.base = ESV_GDT;
	st->gdt.limit = 0x4f;
	st->idt.base = ESV_IDT;
	st->idt.limit = 0xfff;
	st->cr0 = 0x80050033; /* PG WP NE ET MP PE */
	st->cr3 = 0x1000;
	st->cr4 = 0x6a0;  /* OSXMMEXCPT OSFXSR PGE PAE */
	st->efer = 0xd00; /* NXE LMA LME */
	emu_set_state(v->cpu[cpu], st);
	free(st);
}

enum vcpu_exit esv_run(struct esv *v, int cpu, uint64_t max_insns)
{
	enum vcpu_exit ex;
	uint64_t start = v->cpu[cpu]->icount;

	do {
		uint64_t left = 0;

		if (max_insns) {
			uint64_t done = v->cpu[cpu]->icount - start;

			if (done >= max_insns)
				return VCPU_EXIT_KICK;
			left = max_insns - done;
		}
		ex = emu_exec(v->cpu[cpu], left);
	} while (ex == VCPU_EXIT_KICK);
	return ex;
}
