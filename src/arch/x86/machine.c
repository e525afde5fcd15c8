/* Assembling the x86 machine: devices, ACPI, kernel, boot vCPU state. */
#include "arch/x86/machine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch/x86/acpi.h"
#include "arch/x86/layout.h"
#include "hw/platform.h"
#include "hw/rtc.h"
#include "hw/serial.h"
#include "util/log.h"
#include "vmm/vm.h"

/* A whole file, mapped read-only. Images are bounded by guest memory later; cap them here too. */
struct mapped_file {
	void *data;
	size_t size;
};

#define MAX_IMAGE_SIZE (4ull << 30)

static int map_file(const char *path, struct mapped_file *m)
{
	struct stat st;
	int fd, err = 0;

	m->data = NULL;
	m->size = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
	} else if (!S_ISREG(st.st_mode) || st.st_size == 0) {
		err = -EINVAL;
	} else if ((uint64_t)st.st_size > MAX_IMAGE_SIZE) {
		err = -EFBIG;
	} else {
		m->data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m->data == MAP_FAILED) {
			m->data = NULL;
			err = -errno;
		} else {
			m->size = (size_t)st.st_size;
		}
	}
	close(fd);
	return err;
}

static void unmap_file(struct mapped_file *m)
{
	if (m->data)
		munmap(m->data, m->size);
	m->data = NULL;
}

static void machine_destroy(void *opaque)
{
	free(opaque);
}

static const struct device_ops machine_ops = {.name = "x86-machine", .destroy = machine_destroy};

static int load_images(struct vm *vm, struct x86_machine *m, const struct machine_config *cfg)
{
	struct mapped_file k = {0}, i = {0};
	int err;

	err = map_file(cfg->kernel_path, &k);
	if (err) {
		pr_err("kernel %s: %s", cfg->kernel_path, strerror(-err));
		return err;
	}
	if (cfg->initrd_path) {
		err = map_file(cfg->initrd_path, &i);
		if (err) {
			pr_err("initrd %s: %s", cfg->initrd_path, strerror(-err));
			goto out;
		}
	}
	err = boot_load_linux(&vm->mem, k.data, k.size, i.data, i.size, cfg->cmdline, m->rsdp,
			      &m->boot);
out:
	unmap_file(&i);
	unmap_file(&k);
	return err;
}

int x86_machine_setup(struct vm *vm, const struct machine_config *cfg)
{
	struct x86_machine *m = calloc(1, sizeof(*m));
	struct cpu_state st;
	int err;

	if (!m)
		return -ENOMEM;
	err = vm_add_device(vm, &machine_ops, m);
	if (err) {
		free(m);
		return err;
	}
	vm->machine = m;
	err = serial_create(vm, COM1_PORT, COM1_GSI, cfg->console_fd, &m->com1);
	if (!err)
		err = platform_devices_create(vm);
	if (!err)
		err = rtc_create(vm);
	if (!err && cfg->devices_only)
		return 0;
	if (!err)
		err = acpi_build(&vm->mem, vm->ncpus, &m->rsdp);
	if (!err)
		err = load_images(vm, m, cfg);
	if (err)
		return err;
	boot_cpu_state(&m->boot, &st);
	err = vm->cpu->set_state(&vm->vcpus[0], &st);
	if (err) {
		pr_err("cannot set the boot vCPU's registers: %s", strerror(-err));
		return err;
	}
	pr_info("kernel at 0x%llx (protocol %u.%02u), entry 0x%llx (%s, text offset 0x%llx), "
		"initrd %llu bytes at 0x%llx",
		(unsigned long long)m->boot.kernel_addr, m->boot.protocol >> 8,
		m->boot.protocol & 0xff, (unsigned long long)m->boot.entry,
		m->boot.direct ? "startup_64" : "decompressor",
		(unsigned long long)m->boot.kaslr_delta, (unsigned long long)m->boot.initrd_size,
		(unsigned long long)m->boot.initrd_addr);
	return 0;
}
