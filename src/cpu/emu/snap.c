/*
 * The emulator's snapshot extras. Layout (little-endian), version 1:
 *   u32 version, u32 ncpus
 *   IOAPIC: u32 id, u32 sel, u32 line levels, 24 x u64 redirection entries
 *   per vCPU: u64 tsc_aux, spec_ctrl, tsc_adjust, mtrr_def_type,
 *             11 x u64 fixed MTRRs, 16 x u64 variable MTRRs,
 *             6 x u64 dr0-3, dr6, dr7,
 *             u8 nmi_pending, nmi_blocked, wait_sipi, apic NMI, INIT, SIPI,
 *             SIPI vector, pad
 * Everything here is read back from an untrusted file: bits the emulator
 * cannot hold are masked, counts must match the VM.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "cpu/emu/emu.h"
#include "cpu/emu/emu_snap.h"
#include "state/cpu_neutral.h"
#include "state/snapfile.h"
#include "vmm/vm.h"

#define EMU_SNAP_VERSION 1u
#define EMU_SNAP_PINS 24
#define MTRR_FIXED 11
#define MTRR_VAR 16

static const unsigned dr_index[6] = {0, 1, 2, 3, 6, 7};

static int save_ioapic(struct emu_vm *ev, struct dev_buf *b)
{
	struct emu_ioapic io;
	int err;

	pthread_mutex_lock(&ev->sys.lock);
	io = ev->sys.ioapic;
	pthread_mutex_unlock(&ev->sys.lock);
	err = snap_put_u32(b, io.id);
	if (!err)
		err = snap_put_u32(b, io.sel);
	if (!err)
		err = snap_put_u32(b, io.level);
	for (int i = 0; !err && i < EMU_SNAP_PINS; i++)
		err = snap_put_u64(b, io.redir[i]);
	return err;
}

static int save_cpu(struct emu_cpu *c, struct dev_buf *b)
{
	struct emu_sys_cpu *s = &c->sys;
	uint64_t v[4] = {s->tsc_aux, s->spec_ctrl, s->tsc_adjust, s->mtrr_def_type};
	uint8_t flags[8] = {s->nmi_pending, s->nmi_blocked, s->wait_sipi};
	int err = 0;

	pthread_mutex_lock(&s->apic.lock);
	flags[3] = s->apic.nmi;
	flags[4] = s->apic.init;
	flags[5] = s->apic.sipi;
	flags[6] = s->apic.sipi_vector;
	pthread_mutex_unlock(&s->apic.lock);
	for (int i = 0; !err && i < 4; i++)
		err = snap_put_u64(b, v[i]);
	for (int i = 0; !err && i < MTRR_FIXED; i++)
		err = snap_put_u64(b, s->mtrr_fixed[i]);
	for (int i = 0; !err && i < MTRR_VAR; i++)
		err = snap_put_u64(b, s->mtrr_var[i]);
	for (int i = 0; !err && i < 6; i++)
		err = snap_put_u64(b, c->dr[dr_index[i]]);
	if (!err)
		err = dev_buf_put(b, flags, sizeof(flags));
	return err;
}

int emu_snap_save(struct vm *vm, struct dev_buf *out)
{
	struct emu_vm *ev = vm->backend;
	int err = snap_put_u32(out, EMU_SNAP_VERSION);

	if (!err)
		err = snap_put_u32(out, (uint32_t)ev->ncpus);
	if (!err)
		err = save_ioapic(ev, out);
	for (int i = 0; !err && i < ev->ncpus; i++)
		err = ev->cpus[i] ? save_cpu(ev->cpus[i], out) : -EINVAL;
	return err;
}

static void restore_ioapic(struct emu_vm *ev, struct snap_rd *r)
{
	struct emu_ioapic io;

	io.id = snap_rd_u32(r) & 0xf;
	io.sel = snap_rd_u32(r) & 0xff;
	io.level = snap_rd_u32(r) & ((1u << EMU_SNAP_PINS) - 1);
	for (int i = 0; i < EMU_SNAP_PINS; i++)
		io.redir[i] = snap_rd_u64(r);
	if (r->err)
		return;
	pthread_mutex_lock(&ev->sys.lock);
	ev->sys.ioapic = io;
	pthread_mutex_unlock(&ev->sys.lock);
}

static void restore_cpu(struct emu_cpu *c, struct snap_rd *r)
{
	struct emu_sys_cpu *s = &c->sys;
	uint64_t v[4], fixed[MTRR_FIXED], var[MTRR_VAR], dr[6];
	uint8_t f[8];

	for (int i = 0; i < 4; i++)
		v[i] = snap_rd_u64(r);
	for (int i = 0; i < MTRR_FIXED; i++)
		fixed[i] = snap_rd_u64(r);
	for (int i = 0; i < MTRR_VAR; i++)
		var[i] = snap_rd_u64(r);
	for (int i = 0; i < 6; i++)
		dr[i] = snap_rd_u64(r);
	snap_rd_bytes(r, f, sizeof(f));
	if (r->err)
		return;
	s->tsc_aux = v[0] & 0xffffffffull;
	s->spec_ctrl = v[1];
	s->tsc_adjust = v[2];
	s->mtrr_def_type = v[3];
	memcpy(s->mtrr_fixed, fixed, sizeof(fixed));
	memcpy(s->mtrr_var, var, sizeof(var));
	for (int i = 0; i < 6; i++)
		c->dr[dr_index[i]] = dr[i];
	s->nmi_pending = f[0] & 1;
	s->nmi_blocked = f[1] & 1;
	s->wait_sipi = f[2] & 1;
	pthread_mutex_lock(&s->apic.lock);
	s->apic.nmi = f[3] & 1;
	s->apic.init = f[4] & 1;
	s->apic.sipi = f[5] & 1;
	s->apic.sipi_vector = f[6];
	pthread_mutex_unlock(&s->apic.lock);
	__atomic_store_n(&s->pending_irq, 1, __ATOMIC_RELEASE);
}

int emu_snap_restore(struct vm *vm, const void *data, uint64_t len)
{
	struct emu_vm *ev = vm->backend;
	struct snap_rd r = {.p = data, .len = len};

	if (snap_rd_u32(&r) != EMU_SNAP_VERSION)
		return -EPROTONOSUPPORT;
	if (snap_rd_u32(&r) != (uint32_t)ev->ncpus)
		return -EINVAL;
	/* Check the whole record's length before changing anything. */
	if (len != 4 + 4 + 12 + 8 * EMU_SNAP_PINS +
		       (uint64_t)ev->ncpus * (8 * (4 + MTRR_FIXED + MTRR_VAR + 6) + 8))
		return -EINVAL;
	restore_ioapic(ev, &r);
	for (int i = 0; i < ev->ncpus && !r.err; i++) {
		if (!ev->cpus[i])
			return -EINVAL;
		restore_cpu(ev->cpus[i], &r);
	}
	return r.err ? -EINVAL : 0;
}

/* Vendor, signature and a CRC of the feature leaves the guest sees on vCPU 0. */
int emu_snap_cpu_model(struct vm *vm, char *buf, unsigned len)
{
	static const uint32_t leaves[][2] = {
	    {1, 0}, {7, 0}, {0xd, 1}, {0x80000001, 0}, {0x80000008, 0}};
	struct emu_vm *ev = vm->backend;
	uint32_t r[4], vendor[3], sig, crc = 0;
	int n;

	if (!ev->cpus[0])
		return -EINVAL;
	emu_cpuid(ev->cpus[0], 0, 0, r);
	vendor[0] = r[1];
	vendor[1] = r[3];
	vendor[2] = r[2];
	emu_cpuid(ev->cpus[0], 1, 0, r);
	sig = r[0];
	for (unsigned i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
		emu_cpuid(ev->cpus[0], leaves[i][0], leaves[i][1], r);
		if (leaves[i][0] == 1)
			r[1] = 0; /* EBX: APIC id and CPU count, not the model */
		crc = (uint32_t)crc32(crc, (const uint8_t *)r, sizeof(r));
	}
	n = snprintf(buf, len, "emu %.12s %08x %08x", (const char *)vendor, sig, crc);
	return n < 0 || (unsigned)n >= len ? -ENOSPC : 0;
}

/* ------------------------------------------- the backend-neutral record */

void emu_snap_cpuid(struct vm *vm, uint32_t leaf, uint32_t sub, uint32_t out[4])
{
	struct emu_vm *ev = vm->backend;

	if (!ev->cpus[0]) {
		memset(out, 0, 16);
		return;
	}
	emu_cpuid(ev->cpus[0], leaf, sub, out);
}

static void export_cpu(struct emu_cpu *c, struct cpu_neutral_vcpu *o)
{
	struct emu_sys_cpu *s = &c->sys;

	o->mp_state = s->wait_sipi ? CPU_MP_WAIT_SIPI : s->halted ? CPU_MP_HALTED : CPU_MP_RUNNABLE;
	/* An NMI latched in the APIC but not yet taken is as pending as one in the core. */
	pthread_mutex_lock(&s->apic.lock);
	o->nmi_pending = s->nmi_pending || s->apic.nmi;
	o->sipi_pending = s->apic.sipi;
	o->sipi_vector = s->apic.sipi_vector;
	pthread_mutex_unlock(&s->apic.lock);
	o->nmi_blocked = s->nmi_blocked;
	for (int i = 0; i < 6; i++)
		o->dr[i] = c->dr[dr_index[i]];
	o->tsc_aux = s->tsc_aux & 0xffffffffull;
}

int emu_snap_export(struct vm *vm, struct cpu_neutral *n)
{
	struct emu_vm *ev = vm->backend;

	n->flags = vm->model.baseline ? CPU_NEUTRAL_BASELINE : 0;
	n->tsc_khz = ev->sys.tsc_khz;
	n->apic_tick_ns = ev->sys.apic_tick_ns;
	pthread_mutex_lock(&ev->sys.lock);
	n->ioapic_id = ev->sys.ioapic.id & 0xf;
	n->ioapic_sel = ev->sys.ioapic.sel & 0xff;
	n->ioapic_levels = ev->sys.ioapic.level & ((1u << EMU_SNAP_PINS) - 1);
	memcpy(n->redir, ev->sys.ioapic.redir, sizeof(n->redir));
	pthread_mutex_unlock(&ev->sys.lock);
	n->ncpus = (uint32_t)ev->ncpus;
	for (int i = 0; i < ev->ncpus; i++) {
		if (!ev->cpus[i])
			return -EINVAL;
		export_cpu(ev->cpus[i], &n->cpu[i]);
	}
	return 0;
}

/* After set_state(): the parts of the record cpu_state has no room for. */
static void import_cpu(struct emu_cpu *c, const struct cpu_neutral_vcpu *o)
{
	struct emu_sys_cpu *s = &c->sys;

	s->wait_sipi = o->mp_state == CPU_MP_WAIT_SIPI;
	if (o->mp_state == CPU_MP_HALTED)
		s->halted = true;
	s->nmi_pending = o->nmi_pending;
	s->nmi_blocked = o->nmi_blocked;
	s->tsc_aux = o->tsc_aux;
	for (int i = 0; i < 6; i++)
		c->dr[dr_index[i]] = o->dr[i];
	pthread_mutex_lock(&s->apic.lock);
	s->apic.sipi = o->sipi_pending;
	s->apic.sipi_vector = o->sipi_vector;
	pthread_mutex_unlock(&s->apic.lock);
	__atomic_store_n(&s->pending_irq, 1, __ATOMIC_RELEASE);
}

int emu_snap_import(struct vm *vm, const struct cpu_neutral *n)
{
	struct emu_vm *ev = vm->backend;

	if (n->ncpus != (uint32_t)ev->ncpus || (n->flags & CPU_NEUTRAL_LEGACY))
		return -EINVAL;
	for (int i = 0; i < ev->ncpus; i++) {
		if (!ev->cpus[i])
			return -EINVAL;
	}
	pthread_mutex_lock(&ev->sys.lock);
	ev->sys.ioapic.id = n->ioapic_id & 0xf;
	ev->sys.ioapic.sel = n->ioapic_sel & 0xff;
	ev->sys.ioapic.level = n->ioapic_levels & ((1u << EMU_SNAP_PINS) - 1);
	memcpy(ev->sys.ioapic.redir, n->redir, sizeof(ev->sys.ioapic.redir));
	pthread_mutex_unlock(&ev->sys.lock);
	for (int i = 0; i < ev->ncpus; i++)
		import_cpu(ev->cpus[i], &n->cpu[i]);
	return 0;
}
