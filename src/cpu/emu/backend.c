/*
 * cpu_backend_emu: tern's x86-64 emulator behind the CPU backend interface.
 *
 * vm->backend is a struct emu_vm, vcpu->backend a struct emu_cpu. Port I/O
 * goes to vm_pio(); MMIO first meets the local APIC and IOAPIC (emulated
 * here, per vCPU) and then vm_mmio(). A vCPU thread sleeps inside
 * emu_check_events() while the guest halts, so an idle guest costs no host
 * CPU; kick() and interrupt injection wake it from any thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "cpu/emu/emu.h"
#include "cpu/emu/emu_snap.h"
#include "util/log.h"
#include "vmm/vm.h"

static void bk_pio(void *opaque, struct emu_cpu *c, uint16_t port, void *data, unsigned size,
		   int is_write)
{
	vm_pio(c->vcpu, port, data, size, is_write);
}

static void bk_mmio(void *opaque, struct emu_cpu *c, uint64_t gpa, void *data, unsigned size,
		    int is_write)
{
	if (emu_apic_mmio(c, gpa, data, size, is_write))
		return;
	vm_mmio(c->vcpu, gpa, data, size, is_write);
}

static int bk_vm_create(struct vm *vm)
{
	struct emu_vm *ev;
	int err;

	if (vm->ncpus < 1 || vm->ncpus > 255)
		return -EINVAL;
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return -ENOMEM;
	err = emu_vm_init(ev, &vm->mem);
	if (err)
		goto fail;
	err = emu_sys_vm_init(ev);
	if (err)
		goto fail_vm;
	/* The emulator can run any TSC and timer rate: a moved guest keeps its own. */
	if (vm->model.tsc_khz)
		ev->sys.tsc_khz = vm->model.tsc_khz;
	if (vm->model.apic_tick_ns)
		ev->sys.apic_tick_ns = vm->model.apic_tick_ns;
	/* The portable model: only what this host's KVM could also give the guest. */
	if (vm->model.baseline)
		ev->sys.has_limit = cpu_kvm_host_limits(ev->sys.limit) == 0;
	ev->cpus = calloc((size_t)vm->ncpus, sizeof(*ev->cpus));
	if (!ev->cpus) {
		err = -ENOMEM;
		goto fail_sys;
	}
	ev->ncpus = vm->ncpus;
	ev->io.pio = bk_pio;
	ev->io.mmio = bk_mmio;
	ev->io.opaque = vm;
	vm->backend = ev;
	return 0;
fail_sys:
	emu_sys_vm_destroy(ev);
fail_vm:
	emu_vm_destroy(ev);
fail:
	free(ev);
	return err;
}

static void bk_vm_destroy(struct vm *vm)
{
	struct emu_vm *ev = vm->backend;

	if (!ev)
		return;
	free(ev->cpus);
	emu_sys_vm_destroy(ev);
	emu_vm_destroy(ev);
	free(ev);
	vm->backend = NULL;
}

static int bk_vcpu_create(struct vcpu *vcpu)
{
	struct emu_vm *ev = vcpu->vm->backend;
	struct emu_cpu *c;
	int err;

	if (vcpu->id < 0 || vcpu->id >= ev->ncpus || ev->cpus[vcpu->id])
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	err = emu_cpu_init(c, ev, vcpu->id);
	if (err)
		goto fail;
	err = emu_sys_cpu_init(c);
	if (err)
		goto fail_cpu;
	c->vcpu = vcpu;
	vcpu->backend = c;
	__atomic_store_n(&ev->cpus[vcpu->id], c, __ATOMIC_RELEASE);
	return 0;
fail_cpu:
	emu_cpu_destroy(c);
fail:
	free(c);
	return err;
}

static void bk_vcpu_destroy(struct vcpu *vcpu)
{
	struct emu_cpu *c = vcpu->backend;
	struct emu_vm *ev = vcpu->vm->backend;

	if (!c)
		return;
	if (ev && vcpu->id >= 0 && vcpu->id < ev->ncpus)
		__atomic_store_n(&ev->cpus[vcpu->id], NULL, __ATOMIC_RELEASE);
	emu_sys_cpu_destroy(c);
	emu_cpu_destroy(c);
	free(c);
	vcpu->backend = NULL;
}

static int bk_get_state(struct vcpu *vcpu, struct cpu_state *st)
{
	emu_get_state(vcpu->backend, st);
	return 0;
}

static int bk_set_state(struct vcpu *vcpu, const struct cpu_state *st)
{
	emu_set_state(vcpu->backend, st);
	return 0;
}

static enum vcpu_exit bk_run(struct vcpu *vcpu)
{
	return emu_exec(vcpu->backend, 0);
}

static void bk_kick(struct vcpu *vcpu)
{
	if (vcpu->backend)
		emu_kick(vcpu->backend);
}

static int bk_irq_line(struct vm *vm, uint32_t gsi, int level)
{
	return emu_ioapic_set_irq(vm->backend, gsi, level);
}

static int bk_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	return emu_msi(vm->backend, addr, data);
}

/*
 * The MMU marks vm->mem.dirty itself when it fills a write TLB entry. For
 * the next interval to be seen, every vCPU must drop those entries: bump
 * the generation and wait until each active vCPU has noticed (at its next
 * block). One that is not active (outside emu_exec(): paused, stopped, not
 * started; or asleep in HLT) writes nothing, and resyncs before it does
 * (mmu_set_active()). A vCPU that has not noticed in SYNC_WAIT_NS is stuck
 * in a device callback: fail rather than return with a write the log may
 * miss.
 */
#define SYNC_WAIT_NS 2000000000ull

static int bk_sync_dirty(struct vm *vm)
{
	struct emu_vm *ev = vm->backend;
	uint64_t gen = __atomic_add_fetch(&ev->tlb_flush_gen, 1, __ATOMIC_SEQ_CST);
	uint64_t t0 = emu_now_ns();

	for (int n = 0; n < ev->ncpus; n++) {
		struct emu_cpu *c = __atomic_load_n(&ev->cpus[n], __ATOMIC_ACQUIRE);

		while (c && __atomic_load_n(&c->active, __ATOMIC_SEQ_CST) &&
		       __atomic_load_n(&c->tlb_flush_seen, __ATOMIC_ACQUIRE) < gen) {
			if (emu_now_ns() - t0 > SYNC_WAIT_NS)
				return -ETIMEDOUT;
			nanosleep(&(struct timespec){.tv_nsec = 10000}, NULL);
		}
	}
	return 0;
}

const struct cpu_backend cpu_backend_emu = {
    .name = "emu",
    .vm_create = bk_vm_create,
    .vm_destroy = bk_vm_destroy,
    .vcpu_create = bk_vcpu_create,
    .vcpu_destroy = bk_vcpu_destroy,
    .get_state = bk_get_state,
    .set_state = bk_set_state,
    .run = bk_run,
    .kick = bk_kick,
    .irq_line = bk_irq_line,
    .msi = bk_msi,
    .sync_dirty = bk_sync_dirty,
    .save_extra = emu_snap_save,
    .restore_extra = emu_snap_restore,
    .cpu_model = emu_snap_cpu_model,
    .cpuid = emu_snap_cpuid,
    .export_neutral = emu_snap_export,
    .import_neutral = emu_snap_import,
};
