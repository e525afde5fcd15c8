/*
 * PCI configuration space: mechanism #1, absent devices, write masks, W1C
 * status bits, BAR sizing and mapping (with the policy), capability list,
 * MSI-X table/PBA/masking, INTx and save/restore.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "arch/x86/layout.h"
#include "hw/pci.h"
#include "test_pci_vm.h"

#define DEVFN(slot) ((slot) << 3)

struct tdev {
	struct pci_dev pd;
	int nreads, nwrites;
	uint64_t last_off;
	uint32_t last_val;
	int ncfg;
};

struct fix {
	struct vm vm;
	struct tdev dev;
	unsigned slot;
};

static void tdev_bar_read(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size)
{
	struct tdev *t = pd->priv;
	uint32_t v = 0xab000000u | (uint32_t)bar << 16 | (uint32_t)off;

	t->nreads++;
	memcpy(data, &v, size < 4 ? size : 4);
}

static void tdev_bar_write(struct pci_dev *pd, int bar, uint64_t off, const void *data,
			   unsigned size)
{
	struct tdev *t = pd->priv;

	t->nwrites++;
	t->last_off = off;
	t->last_val = 0;
	memcpy(&t->last_val, data, size < 4 ? size : 4);
}

static void tdev_cfg_write(struct pci_dev *pd, unsigned off, unsigned size, uint32_t val)
{
	struct tdev *t = pd->priv;

	t->ncfg++;
}

static const struct pci_dev_ops tdev_ops = {
    .name = "tdev",
    .bar_read = tdev_bar_read,
    .bar_write = tdev_bar_write,
    .cfg_write = tdev_cfg_write,
};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	uint8_t vcap[8] = {0, 0, 8, 0xaa, 0xbb, 0xcc, 0xdd, 0xee};

	if (!f || test_vm_create(&f->vm, 4 << 20) || pci_init(&f->vm))
		return -1;
	pci_dev_setup(&f->dev.pd, &f->vm, &tdev_ops, &f->dev, 0x1234, 0x5678, 0x018000, 3);
	f->dev.pd.cfg[PCI_INTERRUPT_PIN] = 1;
	if (pci_dev_add_bar(&f->dev.pd, 0, 0x1000) || pci_dev_add_bar(&f->dev.pd, 2, 0x3000))
		return -1;
	if (pci_dev_add_cap(&f->dev.pd, PCI_CAP_ID_VNDR, vcap, sizeof(vcap)) < 0)
		return -1;
	if (pci_dev_add_msix(&f->dev.pd, 4, 2, 0x2000, 0x3000))
		return -1;
	if (pci_dev_add(&f->vm, &f->dev.pd))
		return -1;
	f->slot = f->dev.pd.slot;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	pci_dev_remove(&f->dev.pd);
	vm_destroy(&f->vm);
	free(f);
	return 0;
}

static uint32_t rd(struct fix *f, unsigned off, unsigned size)
{
	return pci_cfg_read(&f->vm, DEVFN(f->slot), off, size);
}

static void wr(struct fix *f, unsigned off, unsigned size, uint32_t v)
{
	pci_cfg_write(&f->vm, DEVFN(f->slot), off, size, v);
}

static uint32_t mmio_rd(struct fix *f, uint64_t gpa)
{
	uint32_t v = 0;

	bus_read(&f->vm.mmio, gpa, &v, 4);
	return v;
}

static void mmio_wr(struct fix *f, uint64_t gpa, uint32_t v)
{
	bus_write(&f->vm.mmio, gpa, &v, 4);
}

static void test_mechanism1(void **state)
{
	struct fix *f = *state;
	uint32_t a, v = 0;
	uint16_t w = 0;

	/* Host bridge at 00:00.0 through the ports. */
	a = 0x80000000u;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT, &v, 4);
	assert_int_equal(v, a);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 4, &v, 4);
	assert_int_equal(v, 0x00081b36u);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 6, &w, 2);
	assert_int_equal(w, 0x0008);
	/* Class code at 0x08: the data port's byte lanes select the register byte. */
	a = 0x80000008u;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 7, &v, 1);
	assert_int_equal(v & 0xff, 0x06);
	/* Our device. */
	a = 0x80000000u | f->slot << 11;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 4, &v, 4);
	assert_int_equal(v, 0x56781234u);
	/* Enable bit clear, other bus, other function: all ones. */
	a = f->slot << 11;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 4, &v, 4);
	assert_int_equal(v, 0xffffffffu);
	a = 0x80010000u;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 4, &v, 4);
	assert_int_equal(v, 0xffffffffu);
	a = 0x80000000u | f->slot << 11 | 1 << 8;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 4, &v, 4);
	assert_int_equal(v, 0xffffffffu);
	/* A 4-byte access at 0xCFE would cross the dword: all ones. */
	a = 0x80000000u;
	bus_write(&f->vm.pio, PCI_CONFIG_PORT, &a, 4);
	v = 0;
	bus_read(&f->vm.pio, PCI_CONFIG_PORT + 6, &v, 4);
	assert_int_equal(v, 0xffffffffu);
}

static void test_absent(void **state)
{
	struct fix *f = *state;

	assert_int_equal(pci_cfg_read(&f->vm, DEVFN(17), 0, 4), 0xffffffffu);
	assert_int_equal(pci_cfg_read(&f->vm, DEVFN(17), 2, 2), 0xffff);
	assert_int_equal(pci_cfg_read(&f->vm, DEVFN(17), 8, 1), 0xff);
	assert_int_equal(pci_cfg_read(&f->vm, DEVFN(0) | 3, 0, 4), 0xffffffffu);
	/* Writes to absent devices go nowhere and do not crash. */
	pci_cfg_write(&f->vm, DEVFN(17), 4, 2, 0xffff);
	assert_int_equal(pci_cfg_read(&f->vm, DEVFN(17), 4, 2), 0xffff);
	/* Out-of-range offsets and sizes. */
	assert_int_equal(rd(f, 0xfe, 4), 0xffffffffu);
	assert_int_equal(rd(f, 0, 3), 0xffffffffu);
}

static void test_readonly_fields(void **state)
{
	struct fix *f = *state;

	wr(f, PCI_VENDOR_ID, 4, 0);
	assert_int_equal(rd(f, PCI_VENDOR_ID, 4), 0x56781234u);
	wr(f, PCI_REVISION_ID, 4, 0xffffffffu);
	assert_int_equal(rd(f, PCI_REVISION_ID, 4), 0x01800003u);
	wr(f, PCI_CAPABILITY_LIST, 1, 0x80);
	assert_int_equal(rd(f, PCI_CAPABILITY_LIST, 1), 0x40);
	wr(f, PCI_INTERRUPT_PIN, 1, 4);
	assert_int_equal(rd(f, PCI_INTERRUPT_PIN, 1), 1);
	/* Interrupt line is the firmware's scratch register. */
	wr(f, PCI_INTERRUPT_LINE, 1, 0x5a);
	assert_int_equal(rd(f, PCI_INTERRUPT_LINE, 1), 0x5a);
	/* Command: only the implemented bits stick. */
	wr(f, PCI_COMMAND, 2, 0xffff);
	assert_int_equal(rd(f, PCI_COMMAND, 2), 0x0547);
	wr(f, PCI_COMMAND, 2, 0);
	assert_int_equal(rd(f, PCI_COMMAND, 2), 0);
	/* The device's hook saw the writes that reached it. */
	assert_true(f->dev.ncfg >= 6);
}

static void test_status_w1c(void **state)
{
	struct fix *f = *state;

	assert_int_equal(rd(f, PCI_STATUS, 2), PCI_STATUS_CAP_LIST);
	/* The device latches errors; the guest clears them one by one. */
	f->dev.pd.cfg[PCI_STATUS + 1] = 0xf9;
	assert_int_equal(rd(f, PCI_STATUS, 2), 0xf900 | PCI_STATUS_CAP_LIST);
	wr(f, PCI_STATUS, 2, 0);
	assert_int_equal(rd(f, PCI_STATUS, 2), 0xf900 | PCI_STATUS_CAP_LIST);
	wr(f, PCI_STATUS, 2, 0x0100);
	assert_int_equal(rd(f, PCI_STATUS, 2), 0xf800 | PCI_STATUS_CAP_LIST);
	/* Writing the command word as a dword with ones in the status half. */
	wr(f, PCI_COMMAND, 4, 0x80000002u);
	assert_int_equal(rd(f, PCI_STATUS, 2), 0x7800 | PCI_STATUS_CAP_LIST);
	assert_int_equal(rd(f, PCI_COMMAND, 2), PCI_COMMAND_MEMORY);
	wr(f, PCI_STATUS, 2, 0xffff);
	assert_int_equal(rd(f, PCI_STATUS, 2), PCI_STATUS_CAP_LIST);
}

static void test_cap_walk(void **state)
{
	struct fix *f = *state;
	unsigned off = rd(f, PCI_CAPABILITY_LIST, 1), hops = 0;
	bool msix = false, vndr = false;

	while (off) {
		uint8_t id = (uint8_t)rd(f, off, 1);

		assert_true(off >= 0x40 && off < 0x100 && !(off & 3));
		if (id == PCI_CAP_ID_MSIX) {
			msix = true;
			assert_int_equal(rd(f, off + 2, 2), 3); /* 4 vectors */
			assert_int_equal(rd(f, off + 4, 4), 0x2002u);
			assert_int_equal(rd(f, off + 8, 4), 0x3002u);
		} else if (id == PCI_CAP_ID_VNDR) {
			vndr = true;
			assert_int_equal(rd(f, off + 2, 1), 8);
			assert_int_equal(rd(f, off + 3, 1), 0xaa);
			assert_int_equal(rd(f, off + 4, 4), 0xeeddccbbu);
		}
		off = rd(f, off + 1, 1);
		assert_true(++hops < 48);
	}
	assert_true(msix && vndr);
	assert_int_equal(hops, 2);
	/* Capability bodies are read-only to the guest. */
	wr(f, 0x40, 4, 0);
	assert_int_equal(rd(f, 0x40, 1), PCI_CAP_ID_VNDR);
	assert_int_equal(rd(f, 0x43, 1), 0xaa);
}

static void test_bar_sizing(void **state)
{
	struct fix *f = *state;
	uint32_t bar0 = rd(f, PCI_BAR0, 4), bar2 = rd(f, PCI_BAR0 + 8, 4);

	assert_true(bar0 >= PCI_MMIO_START && bar0 < PCI_MMIO_END && !(bar0 & 0xfff));
	assert_true(bar2 >= PCI_MMIO_START && !(bar2 & 0x3fff)); /* 0x3000 -> 16 KiB, aligned */
	wr(f, PCI_BAR0, 4, 0xffffffffu);
	assert_int_equal(rd(f, PCI_BAR0, 4), 0xfffff000u);
	wr(f, PCI_BAR0 + 8, 4, 0xffffffffu);
	assert_int_equal(rd(f, PCI_BAR0 + 8, 4), 0xffffc000u);
	/* Unimplemented BARs read zero even after all ones. */
	wr(f, PCI_BAR0 + 4, 4, 0xffffffffu);
	assert_int_equal(rd(f, PCI_BAR0 + 4, 4), 0);
	wr(f, PCI_BAR0 + 20, 4, 0xffffffffu);
	assert_int_equal(rd(f, PCI_BAR0 + 20, 4), 0);
	/* Low (type) bits never take a write. */
	wr(f, PCI_BAR0, 4, bar0 | 0xfff);
	assert_int_equal(rd(f, PCI_BAR0, 4), bar0);
	wr(f, PCI_BAR0 + 8, 4, bar2);
	assert_int_equal(rd(f, PCI_BAR0 + 8, 4), bar2);
}

static void test_bar_mapping(void **state)
{
	struct fix *f = *state;
	uint32_t bar0 = rd(f, PCI_BAR0, 4), bar2 = rd(f, PCI_BAR0 + 8, 4);
	uint32_t moved = 0xd0000000u;

	/* Memory decode off: nothing there. */
	assert_int_equal(mmio_rd(f, bar0 + 0x10), 0xffffffffu);
	assert_int_equal(f->dev.nreads, 0);
	wr(f, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
	assert_int_equal(mmio_rd(f, bar0 + 0x10), 0xab000010u);
	assert_int_equal(mmio_rd(f, bar2 + 0x40), 0xab020040u);
	mmio_wr(f, bar0 + 0x24, 0x11223344u);
	assert_int_equal(f->dev.last_off, 0x24);
	assert_int_equal(f->dev.last_val, 0x11223344u);
	/* The guest moves BAR 0: the old range is gone, the new one decodes. */
	wr(f, PCI_BAR0, 4, moved);
	assert_int_equal(mmio_rd(f, bar0 + 0x10), 0xffffffffu);
	assert_int_equal(mmio_rd(f, moved + 0x10), 0xab000010u);
	/* Policy: a BAR over RAM (outside the window) is not mapped. */
	wr(f, PCI_BAR0, 4, 0x00100000u);
	assert_int_equal(rd(f, PCI_BAR0, 4), 0x00100000u);
	assert_int_equal(mmio_rd(f, 0x00100010u), 0xffffffffu);
	assert_int_equal(mmio_rd(f, moved + 0x10), 0xffffffffu);
	/* Policy: a BAR on top of another device's BAR is not mapped. */
	wr(f, PCI_BAR0, 4, bar2);
	assert_int_equal(mmio_rd(f, bar2 + 0x40), 0xab020040u);
	/* Each kind of refusal was logged once for this device. */
	assert_int_equal(f->dev.pd.policy_logged,
			 1 << PCI_POLICY_BAR_MAP | 1 << PCI_POLICY_BAR_OVERLAP);
	/* Back home; then decode off unmaps everything. */
	wr(f, PCI_BAR0, 4, bar0);
	assert_int_equal(mmio_rd(f, bar0 + 0x10), 0xab000010u);
	wr(f, PCI_COMMAND, 2, 0);
	assert_int_equal(mmio_rd(f, bar0 + 0x10), 0xffffffffu);
	assert_int_equal(mmio_rd(f, bar2 + 0x40), 0xffffffffu);
}

/* Address of MSI-X table entry v (in BAR 2). */
static uint64_t msix_entry(struct fix *f, unsigned v)
{
	return rd(f, PCI_BAR0 + 8, 4) + 0x2000 + 16ull * v;
}

static uint32_t pba(struct fix *f)
{
	return mmio_rd(f, rd(f, PCI_BAR0 + 8, 4) + 0x3000);
}

static void msix_enable(struct fix *f, bool maskall)
{
	unsigned cap = f->dev.pd.msix.cap;

	wr(f, cap + PCI_MSIX_FLAGS, 2,
	   PCI_MSIX_FLAGS_ENABLE | (maskall ? PCI_MSIX_FLAGS_MASKALL : 0));
}

static void test_msix(void **state)
{
	struct fix *f = *state;
	struct vm *vm = &f->vm;
	unsigned cap = f->dev.pd.msix.cap;

	wr(f, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	/* Not enabled: the device must fall back to INTx. */
	assert_int_equal(pci_msix_notify(&f->dev.pd, 0), -ENODEV);
	/* The table size field is read-only. */
	wr(f, cap + PCI_MSIX_FLAGS, 2, 0xffff);
	assert_int_equal(rd(f, cap + PCI_MSIX_FLAGS, 2), 0xc003);
	wr(f, cap + PCI_MSIX_FLAGS, 2, 0);
	msix_enable(f, false);
	assert_true(pci_msix_enabled(&f->dev.pd));
	/* Vectors start masked: the interrupt becomes pending. */
	assert_int_equal(mmio_rd(f, msix_entry(f, 1) + 12), 1);
	assert_int_equal(pci_msix_notify(&f->dev.pd, 1), 0);
	assert_int_equal(fake_nmsi(vm), 0);
	assert_int_equal(pba(f), 0x2);
	/* The PBA is read-only. */
	mmio_wr(f, rd(f, PCI_BAR0 + 8, 4) + 0x3000, 0);
	assert_int_equal(pba(f), 0x2);
	/* Program and unmask: the pending message goes out, with its address/data. */
	mmio_wr(f, msix_entry(f, 1), 0xfee01000u);
	mmio_wr(f, msix_entry(f, 1) + 4, 0);
	mmio_wr(f, msix_entry(f, 1) + 8, 0x4041);
	assert_int_equal(mmio_rd(f, msix_entry(f, 1) + 8), 0x4041);
	mmio_wr(f, msix_entry(f, 1) + 12, 0xfffffffeu); /* reserved bits do not stick */
	assert_int_equal(mmio_rd(f, msix_entry(f, 1) + 12), 0);
	assert_int_equal(fake_nmsi(vm), 1);
	assert_int_equal(fake_irqs(vm)->msi_addr, 0xfee01000u);
	assert_int_equal(fake_irqs(vm)->msi_data, 0x4041);
	assert_int_equal(pba(f), 0);
	/* Unmasked: immediate delivery. */
	assert_int_equal(pci_msix_notify(&f->dev.pd, 1), 0);
	assert_int_equal(fake_nmsi(vm), 2);
	/* Function mask holds everything back until cleared. */
	msix_enable(f, true);
	assert_int_equal(pci_msix_notify(&f->dev.pd, 1), 0);
	assert_int_equal(fake_nmsi(vm), 2);
	assert_int_equal(pba(f), 0x2);
	msix_enable(f, false);
	assert_int_equal(fake_nmsi(vm), 3);
	assert_int_equal(pba(f), 0);
	/* Out-of-range vector. */
	assert_int_equal(pci_msix_notify(&f->dev.pd, 4), -EINVAL);
	/* Without bus mastering the device cannot write the message. */
	wr(f, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
	assert_int_not_equal(pci_msix_notify(&f->dev.pd, 1), 0);
	assert_int_equal(fake_nmsi(vm), 3);
	/* Table and PBA accesses never reach the device. */
	assert_int_equal(f->dev.nreads, 0);
	assert_int_equal(f->dev.nwrites, 0);
}

static void test_intx(void **state)
{
	struct fix *f = *state;
	unsigned gsi = PCI_INTX_GSI(f->slot, 0);

	assert_int_equal(rd(f, PCI_INTERRUPT_LINE, 1), gsi);
	pci_intx(&f->dev.pd, true);
	assert_int_equal(fake_irqs(&f->vm)->level[gsi], 1);
	assert_true(rd(f, PCI_STATUS, 2) & PCI_STATUS_INTERRUPT);
	pci_intx(&f->dev.pd, false);
	assert_int_equal(fake_irqs(&f->vm)->level[gsi], 0);
	assert_false(rd(f, PCI_STATUS, 2) & PCI_STATUS_INTERRUPT);
	wr(f, PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);
	pci_intx(&f->dev.pd, true);
	assert_int_equal(fake_irqs(&f->vm)->level[gsi], 0);
}

static void test_save_restore(void **state)
{
	struct fix *f = *state;
	struct dev_buf b = {0};
	uint32_t bar0 = rd(f, PCI_BAR0, 4);
	uint8_t *bad;

	wr(f, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	wr(f, PCI_BAR0, 4, 0xd0000000u);
	msix_enable(f, false);
	mmio_wr(f, msix_entry(f, 2) + 8, 0x77);
	pci_msix_notify(&f->dev.pd, 2); /* masked: pending */
	assert_int_equal(pci_dev_save(&f->dev.pd, &b), 0);

	pci_dev_reset(&f->dev.pd);
	assert_int_equal(rd(f, PCI_COMMAND, 2), 0);
	assert_false(pci_msix_enabled(&f->dev.pd));
	wr(f, PCI_BAR0, 4, bar0);
	assert_int_equal(mmio_rd(f, 0xd0000010u), 0xffffffffu);

	assert_int_equal(pci_dev_restore(&f->dev.pd, b.data, b.len), (int)b.len);
	assert_int_equal(rd(f, PCI_BAR0, 4), 0xd0000000u);
	assert_int_equal(mmio_rd(f, 0xd0000010u), 0xab000010u);
	assert_true(pci_msix_enabled(&f->dev.pd));
	assert_int_equal(mmio_rd(f, msix_entry(f, 2) + 8), 0x77);
	assert_int_equal(pba(f), 0x4);
	/* Truncated or foreign state is refused; identity never comes from the file. */
	assert_int_equal(pci_dev_restore(&f->dev.pd, b.data, b.len - 1), -EINVAL);
	bad = malloc(b.len);
	assert_non_null(bad);
	memcpy(bad, b.data, b.len);
	bad[0] ^= 1;
	assert_int_equal(pci_dev_restore(&f->dev.pd, bad, b.len), -EINVAL);
	memcpy(bad, b.data, b.len);
	memset(bad + 24, 0, 4); /* vendor/device in the saved config space */
	assert_int_equal(pci_dev_restore(&f->dev.pd, bad, b.len), (int)b.len);
	assert_int_equal(rd(f, PCI_VENDOR_ID, 4), 0x56781234u);
	free(bad);
	free(b.data);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_mechanism1), T(test_absent),	      T(test_readonly_fields), T(test_status_w1c),
	    T(test_cap_walk),	T(test_bar_sizing),   T(test_bar_mapping),     T(test_msix),
	    T(test_intx),	T(test_save_restore),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
