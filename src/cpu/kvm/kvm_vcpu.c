/*
 * KVM backend, vCPU level: creation, the KVM_RUN loop and kicks.
 *
 * Kicking a vCPU out of KVM_RUN from another thread is done the way KVM
 * intends it: set kvm_run->immediate_exit, then send the vCPU thread a
 * dedicated real-time signal whose handler does nothing.
 *  - The signal interrupts a KVM_RUN that is already executing guest code
 *    (the ioctl returns -EINTR as soon as a signal is pending).
 *  - immediate_exit covers the window where the thread is between two
 *    KVM_RUN calls (handling an exit in user space): the next KVM_RUN
 *    completes the pending I/O and returns -EINTR before entering the guest,
 *    so no kick is lost and the guest state is consistent afterwards.
 * A flag distinguishes our kicks from other signals, and a mutex makes sure
 * the signal only goes to a thread that is inside run(), never to one that
 * has left it or ended.
 */
#include "cpu/kvm/kvm_priv.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/log.h"

int kvm_vcpu_create(struct vcpu *vcpu)
{
	struct kvm_vm_priv *kv = kvm_vm(vcpu->vm);
	struct kvm_vcpu_priv *kc = calloc(1, sizeof(*kc));
	int rc;

	if (!kc)
		return -ENOMEM;
	pthread_mutex_init(&kc->lock, NULL);
	kc->fd = KVM_IOCTL(kv->vm_fd, KVM_CREATE_VCPU, (void *)(uintptr_t)vcpu->id);
	if (kc->fd < 0) {
		rc = kc->fd;
		goto fail;
	}
	kc->run = mmap(NULL, (size_t)kv->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, kc->fd, 0);
	if (kc->run == MAP_FAILED) {
		rc = -errno;
		kc->run = NULL;
		pr_err("kvm: cannot map kvm_run of vCPU %d: %s", vcpu->id, strerror(-rc));
		goto fail;
	}
	vcpu->backend = kc;
	rc = kvm_cpuid_set(vcpu);
	if (!rc)
		rc = kvm_vcpu_init_msrs(vcpu);
	if (rc)
		goto fail;
	return 0;
fail:
	vcpu->backend = kc;
	kvm_vcpu_destroy(vcpu);
	return rc;
}

void kvm_vcpu_destroy(struct vcpu *vcpu)
{
	struct kvm_vcpu_priv *kc = kvm_vcpu(vcpu);

	if (!kc)
		return;
	if (kc->run)
		munmap(kc->run, (size_t)kvm_vm(vcpu->vm)->run_size);
	if (kc->fd >= 0)
		close(kc->fd);
	pthread_mutex_destroy(&kc->lock);
	free(kc);
	vcpu->backend = NULL;
}

void kvm_vcpu_kick(struct vcpu *vcpu)
{
	struct kvm_vcpu_priv *kc = kvm_vcpu(vcpu);

	if (!kc)
		return;
	pthread_mutex_lock(&kc->lock);
	__atomic_store_n(&kc->kick_pending, true, __ATOMIC_SEQ_CST);
	__atomic_store_n(&kc->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (kc->in_run)
		pthread_kill(kc->thread, KVM_KICK_SIGNAL);
	pthread_mutex_unlock(&kc->lock);
}

static void kvm_enter_run(struct kvm_vcpu_priv *kc)
{
	sigset_t set;

	/* The kick signal must reach this thread whatever mask it inherited. */
	sigemptyset(&set);
	sigaddset(&set, KVM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	pthread_mutex_lock(&kc->lock);
	kc->thread = pthread_self();
	kc->in_run = true;
	pthread_mutex_unlock(&kc->lock);
}

static enum vcpu_exit kvm_leave_run(struct kvm_vcpu_priv *kc, enum vcpu_exit ex)
{
	pthread_mutex_lock(&kc->lock);
	kc->in_run = false;
	pthread_mutex_unlock(&kc->lock);
	return ex;
}

static int kvm_handle_io(struct vcpu *vcpu, struct kvm_run *run, uint32_t run_size)
{
	uint32_t size = run->io.size, count = run->io.count;
	uint64_t off = run->io.data_offset;
	uint8_t *data = (uint8_t *)run + off;

	/* KVM fills these, but a bad value would make us write outside the mapping. */
	if ((size != 1 && size != 2 && size != 4) || count == 0 ||
	    off + (uint64_t)size * count > run_size) {
		pr_err("kvm: vCPU %d: malformed I/O exit (port %#x size %u count %u)", vcpu->id,
		       run->io.port, size, count);
		return -EINVAL;
	}
	/* count > 1: a rep ins/outs string; KVM buffered all elements. */
	for (uint32_t i = 0; i < count; i++)
		vm_pio(vcpu, run->io.port, data + i * size, size,
		       run->io.direction == KVM_EXIT_IO_OUT);
	return 0;
}

static int kvm_handle_mmio(struct vcpu *vcpu, struct kvm_run *run)
{
	uint32_t len = run->mmio.len;

	if (len == 0 || len > sizeof(run->mmio.data)) {
		pr_err("kvm: vCPU %d: malformed MMIO exit (gpa %#llx len %u)", vcpu->id,
		       (unsigned long long)run->mmio.phys_addr, len);
		return -EINVAL;
	}
	vm_mmio(vcpu, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write);
	return 0;
}

static void kvm_log_internal_error(struct vcpu *vcpu, struct kvm_run *run)
{
	static const char *const why[] = {
	    [KVM_INTERNAL_ERROR_EMULATION] = "instruction emulation failed",
	    [KVM_INTERNAL_ERROR_SIMUL_EX] = "exception while delivering an exception",
	    [KVM_INTERNAL_ERROR_DELIVERY_EV] = "event delivery failed",
	    [KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON] = "unexpected hardware exit",
	};
	uint32_t sub = run->internal.suberror;
	struct kvm_regs regs;

	pr_err("kvm: vCPU %d: internal error %u (%s)", vcpu->id, sub,
	       sub < sizeof(why) / sizeof(why[0]) && why[sub] ? why[sub] : "unknown");
	for (uint32_t i = 0; i < run->internal.ndata && i < 16; i++)
		pr_err("kvm:   data[%u] = %#llx", i, (unsigned long long)run->internal.data[i]);
	if (ioctl(kvm_vcpu(vcpu)->fd, KVM_GET_REGS, &regs) == 0)
		pr_err("kvm:   rip %#llx rsp %#llx rflags %#llx", (unsigned long long)regs.rip,
		       (unsigned long long)regs.rsp, (unsigned long long)regs.rflags);
}

/* Returns -1 to keep running, or the exit to return. */
static int kvm_handle_exit(struct vcpu *vcpu, struct kvm_run *run, uint32_t run_size)
{
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		return kvm_handle_io(vcpu, run, run_size) ? VCPU_EXIT_ERROR : -1;
	case KVM_EXIT_MMIO:
		return kvm_handle_mmio(vcpu, run) ? VCPU_EXIT_ERROR : -1;
	case KVM_EXIT_HLT:
		return VCPU_EXIT_HLT;
	case KVM_EXIT_SHUTDOWN:
		return VCPU_EXIT_SHUTDOWN;
	case KVM_EXIT_INTR:
		return -1; /* the caller checks for a kick */
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ||
		    run->system_event.type == KVM_SYSTEM_EVENT_RESET)
			return VCPU_EXIT_SHUTDOWN;
		pr_err("kvm: vCPU %d: system event %u", vcpu->id, run->system_event.type);
		return VCPU_EXIT_ERROR;
	case KVM_EXIT_INTERNAL_ERROR:
		kvm_log_internal_error(vcpu, run);
		return VCPU_EXIT_ERROR;
	case KVM_EXIT_FAIL_ENTRY:
		pr_err("kvm: vCPU %d: VM entry failed, hardware reason %#llx", vcpu->id,
		       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return VCPU_EXIT_ERROR;
	default:
		pr_err("kvm: vCPU %d: unhandled exit reason %u", vcpu->id, run->exit_reason);
		return VCPU_EXIT_ERROR;
	}
}

enum vcpu_exit kvm_vcpu_run(struct vcpu *vcpu)
{
	struct kvm_vcpu_priv *kc = kvm_vcpu(vcpu);
	uint32_t run_size = (uint32_t)kvm_vm(vcpu->vm)->run_size;

	kvm_enter_run(kc);
	for (;;) {
		int rc = ioctl(kc->fd, KVM_RUN, NULL);

		if (rc < 0 && errno != EINTR && errno != EAGAIN) {
			pr_err("kvm: vCPU %d: KVM_RUN failed: %s", vcpu->id, strerror(errno));
			return kvm_leave_run(kc, VCPU_EXIT_ERROR);
		}
		if (rc == 0) {
			int ex = kvm_handle_exit(vcpu, kc->run, run_size);

			if (ex >= 0)
				return kvm_leave_run(kc, (enum vcpu_exit)ex);
			if (kc->run->exit_reason != KVM_EXIT_INTR)
				continue;
		}
		/* Interrupted: ours if a kick is pending, else some other signal. */
		__atomic_store_n(&kc->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
		if (__atomic_exchange_n(&kc->kick_pending, false, __ATOMIC_SEQ_CST))
			return kvm_leave_run(kc, VCPU_EXIT_KICK);
	}
}
