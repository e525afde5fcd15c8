/*
 * KVM backend, VM level: the VM file descriptor, RAM slots, the in-kernel
 * irqchip, interrupts and dirty logging.
 */
#include "cpu/kvm/kvm_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "arch/x86/layout.h"
#include "util/log.h"

int kvm_ioctl_name(int fd, unsigned long req, void *arg, const char *name)
{
	int rc = ioctl(fd, req, arg);

	if (rc < 0) {
		int err = errno;

		pr_err("kvm: %s failed: %s", name, strerror(err));
		return -err;
	}
	return rc;
}

static int kvm_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

bool kvm_msr_supported(struct kvm_vm_priv *kv, uint32_t index)
{
	return bsearch(&index, kv->msr_index, kv->nmsr_index, sizeof(index), kvm_cmp_u32);
}

/* The MSRs this KVM saves and restores; only those go into cpu_state. */
static int kvm_load_msr_index(struct kvm_vm_priv *kv)
{
	struct kvm_msr_list probe = {.nmsrs = 0};
	struct kvm_msr_list *list;
	int rc;

	/* The first call fails with E2BIG and tells how many there are. */
	if (ioctl(kv->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return KVM_IOCTL(kv->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (probe.nmsrs > 4096)
		return -E2BIG;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	if (!list)
		return -ENOMEM;
	list->nmsrs = probe.nmsrs;
	rc = KVM_IOCTL(kv->kvm_fd, KVM_GET_MSR_INDEX_LIST, list);
	if (rc < 0)
		goto out;
	kv->msr_index = calloc(list->nmsrs ? list->nmsrs : 1, sizeof(uint32_t));
	if (!kv->msr_index) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(kv->msr_index, list->indices, list->nmsrs * sizeof(uint32_t));
	kv->nmsr_index = list->nmsrs;
	qsort(kv->msr_index, kv->nmsr_index, sizeof(uint32_t), kvm_cmp_u32);
	rc = 0;
out:
	free(list);
	return rc;
}

static int kvm_set_slot(struct kvm_vm_priv *kv, struct vm *vm, int idx)
{
	struct kvm_slot *s = &kv->slots[idx];
	struct kvm_userspace_memory_region r = {
	    .slot = (uint32_t)idx,
	    .flags = kv->dirty_logging ? KVM_MEM_LOG_DIRTY_PAGES : 0,
	    .guest_phys_addr = s->gpa,
	    .memory_size = s->size,
	    .userspace_addr = (uint64_t)(uintptr_t)(vm->mem.hva + s->hva_off),
	};

	return KVM_IOCTL(kv->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
}

static int kvm_add_slot(struct kvm_vm_priv *kv, struct vm *vm, int idx, uint64_t gpa, uint64_t size,
			uint64_t hva_off)
{
	struct kvm_slot *s = &kv->slots[idx];
	uint64_t words = (size / GM_PAGE_SIZE + 63) / 64;

	if (size == 0)
		return 0;
	s->bitmap = calloc(words, sizeof(uint64_t));
	if (!s->bitmap)
		return -ENOMEM;
	s->used = true;
	s->gpa = gpa;
	s->size = size;
	s->hva_off = hva_off;
	return kvm_set_slot(kv, vm, idx);
}

/*
 * Kicks interrupt KVM_RUN with a signal (kvm_vcpu.c). Its handler must exist
 * (the default action would end the process) and do nothing: the signal is
 * only there to make the ioctl return -EINTR. SA_RESTART keeps it from
 * interrupting the blocking calls device code makes on vCPU threads; KVM_RUN
 * itself is never restarted.
 */
static void kvm_kick_handler(int sig)
{
	(void)sig;
}

static int kvm_install_kick_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kvm_kick_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(KVM_KICK_SIGNAL, &sa, NULL) < 0)
		return -errno;
	return 0;
}

static int kvm_open_vm(struct kvm_vm_priv *kv)
{
	int rc;

	kv->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kv->kvm_fd < 0) {
		rc = -errno;
		pr_err("kvm: cannot open /dev/kvm: %s", strerror(-rc));
		return rc;
	}
	rc = KVM_IOCTL(kv->kvm_fd, KVM_GET_API_VERSION, NULL);
	if (rc < 0)
		return rc;
	if (rc != KVM_API_VERSION) {
		pr_err("kvm: API version %d, tern needs %d", rc, KVM_API_VERSION);
		return -ENOTSUP;
	}
	kv->run_size = KVM_IOCTL(kv->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, NULL);
	if (kv->run_size < (int)sizeof(struct kvm_run))
		return kv->run_size < 0 ? kv->run_size : -EINVAL;
	/* Type 0: the default VM type, the only one that runs ordinary guests. */
	kv->vm_fd = KVM_IOCTL(kv->kvm_fd, KVM_CREATE_VM, (void *)0);
	if (kv->vm_fd < 0)
		return kv->vm_fd;
	return 0;
}

/* On Intel VMX hosts KVM needs these before the first vCPU exists; elsewhere they are no-ops. */
static int kvm_set_vmx_areas(struct kvm_vm_priv *kv)
{
	uint64_t idmap = KVM_IDENTITY_MAP_ADDR;
	int rc;

	if (ioctl(kv->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
		rc = KVM_IOCTL(kv->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap);
		if (rc < 0)
			return rc;
	}
	rc = KVM_IOCTL(kv->vm_fd, KVM_SET_TSS_ADDR, (void *)(uintptr_t)KVM_TSS_ADDR);
	return rc < 0 ? rc : 0;
}

static int kvm_query_xsave(struct kvm_vm_priv *kv)
{
	int size;

	if (ioctl(kv->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) <= 0)
		return 0;
	size = ioctl(kv->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	/* Without KVM_CAP_XSAVE2 the buffer is the 4 KiB struct kvm_xsave. */
	if (size < (int)sizeof(struct kvm_xsave))
		size = (int)sizeof(struct kvm_xsave);
	if (size > (1 << 20))
		return -E2BIG;
	return size;
}

static void kvm_vm_free(struct kvm_vm_priv *kv)
{
	for (int i = 0; i < KVM_NR_SLOTS; i++)
		free(kv->slots[i].bitmap);
	if (kv->vm_fd >= 0)
		close(kv->vm_fd);
	if (kv->kvm_fd >= 0)
		close(kv->kvm_fd);
	pthread_mutex_destroy(&kv->dirty_lock);
	free(kv->cpuid);
	free(kv->msr_index);
	free(kv);
}

static int kvm_vm_create_common(struct vm *vm, bool irqchip)
{
	struct kvm_vm_priv *kv = calloc(1, sizeof(*kv));
	int rc;

	if (!kv)
		return -ENOMEM;
	kv->kvm_fd = kv->vm_fd = -1;
	pthread_mutex_init(&kv->dirty_lock, NULL);
	rc = kvm_install_kick_handler();
	if (!rc)
		rc = kvm_open_vm(kv);
	if (!rc)
		rc = kvm_set_vmx_areas(kv);
	if (!rc && irqchip) {
		/* PIC + IOAPIC (at IOAPIC_BASE, KVM's fixed address) + one LAPIC per vCPU. */
		rc = KVM_IOCTL(kv->vm_fd, KVM_CREATE_IRQCHIP, NULL);
		kv->irqchip = rc == 0;
	}
	if (!rc)
		rc = kvm_add_slot(kv, vm, KVM_SLOT_LOW, 0, vm->mem.low_size, 0);
	if (!rc)
		rc = kvm_add_slot(kv, vm, KVM_SLOT_HIGH, MEM_HIGH_START, vm->mem.high_size,
				  vm->mem.low_size);
	if (!rc)
		rc = kvm_cpuid_load(kv, &vm->model, vm->ncpus);
	if (!rc)
		rc = kvm_load_msr_index(kv);
	if (!rc) {
		kv->xsave_size = kvm_query_xsave(kv);
		rc = kv->xsave_size < 0 ? kv->xsave_size : 0;
	}
	if (rc) {
		kvm_vm_free(kv);
		return rc;
	}
	vm->backend = kv;
	return 0;
}

static int kvm_vm_create(struct vm *vm)
{
	return kvm_vm_create_common(vm, true);
}

static int kvm_vm_create_noirqchip(struct vm *vm)
{
	return kvm_vm_create_common(vm, false);
}

static void kvm_vm_destroy(struct vm *vm)
{
	if (!vm->backend)
		return;
	kvm_vm_free(vm->backend);
	vm->backend = NULL;
}

int cpu_kvm_vm_fd(struct vm *vm)
{
	return vm->backend ? kvm_vm(vm)->vm_fd : -1;
}

static int kvm_irq_line(struct vm *vm, uint32_t gsi, int level)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	struct kvm_irq_level il = {.irq = gsi, .level = level ? 1 : 0};

	if (!kv->irqchip)
		return -ENODEV;
	if (gsi >= IOAPIC_NUM_PINS)
		return -EINVAL;
	return KVM_IOCTL(kv->vm_fd, KVM_IRQ_LINE, &il) < 0 ? -EIO : 0;
}

static int kvm_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	struct kvm_msi msi = {
	    .address_lo = (uint32_t)addr,
	    .address_hi = (uint32_t)(addr >> 32),
	    .data = data,
	};
	int rc;

	if (!kv->irqchip)
		return -ENODEV;
	/* > 0: delivered, 0: the guest masked or misprogrammed it; both are fine for a device. */
	rc = KVM_IOCTL(kv->vm_fd, KVM_SIGNAL_MSI, &msi);
	return rc < 0 ? rc : 0;
}

/* OR a slot's KVM bitmap (bit i = page i of the slot) into the VM's bitmap. */
static void kvm_merge_dirty(struct vm *vm, const struct kvm_slot *s)
{
	uint64_t npages = s->size / GM_PAGE_SIZE;
	uint64_t first = s->hva_off / GM_PAGE_SIZE;

	for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
		uint64_t bits = s->bitmap[w];

		while (bits) {
			uint64_t page = first + w * 64 + (uint64_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (page < vm->mem.npages)
				__atomic_fetch_or(&vm->mem.dirty[page / 64], 1ull << (page % 64),
						  __ATOMIC_RELAXED);
		}
	}
}

/*
 * Dirty logging costs on hardware hosts (KVM maps the slots with 4 KiB pages
 * and write-protects them after every sync), so it is switched on by the
 * first sync, not at boot. Writes before that were not tracked: that first
 * sync reports every page dirty, which is what a first migration or snapshot
 * pass copies anyway.
 */
static int kvm_enable_dirty_logging(struct vm *vm, struct kvm_vm_priv *kv)
{
	int rc = 0;

	kv->dirty_logging = true;
	for (int i = 0; i < KVM_NR_SLOTS && !rc; i++) {
		if (kv->slots[i].used)
			rc = kvm_set_slot(kv, vm, i);
	}
	if (rc) {
		kv->dirty_logging = false;
		for (int i = 0; i < KVM_NR_SLOTS; i++) {
			if (kv->slots[i].used)
				kvm_set_slot(kv, vm, i);
		}
		return rc;
	}
	gm_mark_dirty(&vm->mem, 0, vm->mem.size);
	return 0;
}

static int kvm_sync_dirty(struct vm *vm)
{
	struct kvm_vm_priv *kv = kvm_vm(vm);
	int rc = 0;

	pthread_mutex_lock(&kv->dirty_lock);
	if (!kv->dirty_logging) {
		rc = kvm_enable_dirty_logging(vm, kv);
		goto out;
	}
	for (int i = 0; i < KVM_NR_SLOTS && !rc; i++) {
		struct kvm_slot *s = &kv->slots[i];
		struct kvm_dirty_log log = {.slot = (uint32_t)i, .dirty_bitmap = s->bitmap};

		if (!s->used)
			continue;
		/* Without manual-protect, this returns the log and clears it in one go. */
		rc = KVM_IOCTL(kv->vm_fd, KVM_GET_DIRTY_LOG, &log);
		if (rc >= 0) {
			kvm_merge_dirty(vm, s);
			rc = 0;
		}
	}
out:
	pthread_mutex_unlock(&kv->dirty_lock);
	return rc;
}

static bool cpuinfo_has_hw_virt(void)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[8192];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5))
			continue;
		/* Whole words only: "svm" must not match e.g. "svm_lock". */
		for (char *tok = strtok(line, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
			if (!strcmp(tok, "vmx") || !strcmp(tok, "svm")) {
				found = true;
				break;
			}
		}
		break;
	}
	fclose(f);
	return found;
}

bool cpu_kvm_has_hw_virt(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return false;
	close(fd);
	return cpuinfo_has_hw_virt();
}

const struct cpu_backend cpu_backend_kvm = {
    .name = "kvm",
    .vm_create = kvm_vm_create,
    .vm_destroy = kvm_vm_destroy,
    .vcpu_create = kvm_vcpu_create,
    .vcpu_destroy = kvm_vcpu_destroy,
    .get_state = kvm_get_state,
    .set_state = kvm_set_state,
    .run = kvm_vcpu_run,
    .kick = kvm_vcpu_kick,
    .irq_line = kvm_irq_line,
    .msi = kvm_msi,
    .sync_dirty = kvm_sync_dirty,
    .save_extra = kvm_snap_save,
    .restore_extra = kvm_snap_restore,
    .cpu_model = kvm_snap_cpu_model,
    .cpuid = kvm_snap_cpuid,
    .export_neutral = kvm_snap_export,
    .import_neutral = kvm_snap_import,
};

const struct cpu_backend cpu_backend_kvm_noirqchip = {
    .name = "kvm-noirqchip",
    .vm_create = kvm_vm_create_noirqchip,
    .vm_destroy = kvm_vm_destroy,
    .vcpu_create = kvm_vcpu_create,
    .vcpu_destroy = kvm_vcpu_destroy,
    .get_state = kvm_get_state,
    .set_state = kvm_set_state,
    .run = kvm_vcpu_run,
    .kick = kvm_vcpu_kick,
    .irq_line = kvm_irq_line,
    .msi = kvm_msi,
    .sync_dirty = kvm_sync_dirty,
    .save_extra = kvm_snap_save,
    .restore_extra = kvm_snap_restore,
    .cpu_model = kvm_snap_cpu_model,
};
