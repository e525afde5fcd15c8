/* Creating and tearing down the emulator's per-VM and per-vCPU state. */
#include <errno.h>
#include <stdlib.h>

#include "cpu/emu/core.h"

/* Device (DMA) writes to a page holding decoded code, reported by vmm/mem.c. */
static void code_write_hook(void *opaque, uint64_t page_index)
{
	emu_code_written(opaque, page_index);
}

int emu_vm_init(struct emu_vm *ev, struct guest_mem *gm)
{
	memset(ev, 0, sizeof(*ev));
	ev->gm = gm;
	ev->code_pages = calloc((gm->npages + 63) / 64, sizeof(uint64_t));
	ev->code_gen = calloc(gm->npages ? gm->npages : 1, sizeof(uint32_t));
	if (!ev->code_pages || !ev->code_gen) {
		free(ev->code_pages);
		free(ev->code_gen);
		return -ENOMEM;
	}
	if (pthread_mutex_init(&ev->sys.lock, NULL)) {
		free(ev->code_pages);
		free(ev->code_gen);
		return -ENOMEM;
	}
	gm->code_pages = ev->code_pages;
	gm->code_write = code_write_hook;
	gm->code_opaque = ev;
	return 0;
}

void emu_vm_destroy(struct emu_vm *ev)
{
	if (ev->gm) {
		ev->gm->code_pages = NULL;
		ev->gm->code_write = NULL;
		ev->gm->code_opaque = NULL;
	}
	pthread_mutex_destroy(&ev->sys.lock);
	free(ev->code_pages);
	free(ev->code_gen);
	memset(ev, 0, sizeof(*ev));
}

/* Power-on state (real mode at the reset vector); the VMM then loads its own with set_state. */
static void cpu_reset(struct emu_cpu *c)
{
	for (int s = 0; s < 6; s++) {
		c->seg[s].limit = 0xffff;
		c->seg[s].present = 1;
		c->seg[s].s = 1;
		c->seg[s].type = s == SEG_CS ? 0xb : 0x3;
	}
	c->seg[SEG_CS].sel = 0xf000;
	c->seg[SEG_CS].base = 0xffff0000;
	c->rip = 0xfff0;
	c->gpr[2] = 0x600;
	c->cr0 = 0x60000010;
	c->gdtr.limit = c->idtr.limit = 0xffff;
	c->ldtr.limit = c->tr.limit = 0xffff;
	c->tr.type = 0xb;
	c->ldtr.type = 0x2;
	emu_set_rflags(c, 2);
	emu_fpu_reset(c);
}

int emu_cpu_init(struct emu_cpu *c, struct emu_vm *ev, int id)
{
	int err;

	memset(c, 0, sizeof(*c));
	c->vm = ev;
	c->id = id;
	c->insn_limit = UINT64_MAX;
	c->block_page = UINT64_MAX;
	c->tlb_flush_seen = ev->tlb_flush_gen;
	err = emu_bc_init(c);
	if (err)
		return err;
	cpu_reset(c);
	return 0;
}

void emu_cpu_destroy(struct emu_cpu *c)
{
	emu_bc_destroy(c);
}
