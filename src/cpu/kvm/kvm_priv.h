/* Internals of the KVM backend, shared by its files only. */
#ifndef TERN_CPU_KVM_KVM_PRIV_H
#define TERN_CPU_KVM_KVM_PRIV_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cpu/kvm/kvm.h"
#include "vmm/vm.h"

/*
 * Guest addresses KVM needs for itself on Intel VMX hosts (real-mode TSS and
 * the EPT identity map used while the guest runs unpaged). They sit in the
 * top of the 32-bit hole, above the local APIC and below the 4 GiB line, so
 * they can never collide with RAM, PCI BARs or the IOAPIC.
 */
#define KVM_IDENTITY_MAP_ADDR 0xFFFBC000ull /* one page */
#define KVM_TSS_ADDR 0xFFFBD000ull	    /* three pages */

/* Slot numbers of the two RAM regions (vmm/mem.h). */
#define KVM_SLOT_LOW 0
#define KVM_SLOT_HIGH 1
#define KVM_NR_SLOTS 2

/* The real-time signal that kicks a vCPU thread out of KVM_RUN. */
#define KVM_KICK_SIGNAL (SIGRTMIN + 3)

struct kvm_slot {
	bool used;
	uint64_t gpa, size;
	uint64_t hva_off; /* offset of the slot's first byte in vm->mem.hva */
	uint64_t *bitmap; /* scratch for KVM_GET_DIRTY_LOG */
};

struct kvm_vm_priv {
	int kvm_fd, vm_fd;
	int run_size; /* size of the kvm_run mapping */
	bool irqchip;
	bool dirty_logging; /* KVM_MEM_LOG_DIRTY_PAGES is on for every slot */
	pthread_mutex_t dirty_lock;
	struct kvm_slot slots[KVM_NR_SLOTS];
	struct kvm_cpuid2 *cpuid; /* what the host supports, copied per vCPU */
	uint32_t *msr_index;	  /* MSRs this KVM can save and restore, sorted */
	uint32_t nmsr_index;
	int xsave_size;		    /* bytes of KVM_GET_XSAVE(2), 0 when only KVM_GET_FPU works */
	struct cpu_model_cfg model; /* the VM's; tsc_khz and apic_tick_ns filled in */
};

struct kvm_vcpu_priv {
	int fd;
	struct kvm_run *run;

	/*
	 * Kick handshake (see kvm_vcpu.c): lock protects thread/in_run so a
	 * kick never signals a thread that has left run() (or ended).
	 */
	pthread_mutex_t lock;
	pthread_t thread;
	bool in_run;
	bool kick_pending; /* atomic */
};

static inline struct kvm_vm_priv *kvm_vm(struct vm *vm)
{
	return vm->backend;
}

static inline struct kvm_vcpu_priv *kvm_vcpu(struct vcpu *vcpu)
{
	return vcpu->backend;
}

/* kvm_vm.c */
int kvm_ioctl_name(int fd, unsigned long req, void *arg, const char *name);
#define KVM_IOCTL(fd, req, arg) kvm_ioctl_name((fd), (req), (arg), #req)
bool kvm_msr_supported(struct kvm_vm_priv *kv, uint32_t index);

/* kvm_cpuid.c */
/*
 * Load what KVM supports and, for model->baseline, turn it into the
 * emulator's CPU model; set the LAPIC timer rate the model asks for.
 */
int kvm_cpuid_load(struct kvm_vm_priv *kv, const struct cpu_model_cfg *model, int ncpus);
/* The CPUID entry for (fn, idx) in c, or NULL. */
const struct kvm_cpuid_entry2 *kvm_cpuid_find(const struct kvm_cpuid2 *c, uint32_t fn,
					      uint32_t idx);
int kvm_cpuid_set(struct vcpu *vcpu);

/* kvm_vcpu.c */
int kvm_vcpu_create(struct vcpu *vcpu);
void kvm_vcpu_destroy(struct vcpu *vcpu);
enum vcpu_exit kvm_vcpu_run(struct vcpu *vcpu);
void kvm_vcpu_kick(struct vcpu *vcpu);

/* kvm_state.c */
int kvm_get_state(struct vcpu *vcpu, struct cpu_state *st);
int kvm_set_state(struct vcpu *vcpu, const struct cpu_state *st);
int kvm_vcpu_init_msrs(struct vcpu *vcpu);
/* The vCPU's XSAVE area (kv->xsave_size bytes at buf). */
int kvm_xsave_get(struct kvm_vm_priv *kv, int fd, void *buf);

/* kvm_snap.c: the snapshot hooks of cpu_backend (save_extra, restore_extra, cpu_model). */
int kvm_snap_save(struct vm *vm, struct dev_buf *out);
int kvm_snap_restore(struct vm *vm, const void *data, uint64_t len);
int kvm_snap_cpu_model(struct vm *vm, char *buf, unsigned len);
struct cpu_neutral;
void kvm_snap_cpuid(struct vm *vm, uint32_t leaf, uint32_t sub, uint32_t out[4]);
int kvm_snap_export(struct vm *vm, struct cpu_neutral *n);
int kvm_snap_import(struct vm *vm, const struct cpu_neutral *n);

#endif
