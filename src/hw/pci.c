/*
 * PCI bus 0: configuration mechanism #1, config space with write masks,
 * BAR mapping on the MMIO bus, MSI-X.
 */
#include "hw/pci.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch/x86/layout.h"
#include "util/log.h"
#include "vmm/vm.h"

#define PCI_CFG_ENABLE 0x80000000u
#define PCI_CAP_START 0x40
#define PCI_SAVE_MAGIC 0x54504349u /* "ICPT" */
#define PCI_SAVE_VERSION 1

struct pci_bus {
	struct vm *vm;
	pthread_mutex_t lock; /* devs[] and next_mmio */
	uint32_t cf8;	      /* mechanism #1 address register (atomic) */
	struct pci_dev *devs[PCI_MAX_DEVS];
	uint64_t next_mmio;
	struct pci_dev host;
};

static inline void cfg_put(uint8_t *p, unsigned off, uint32_t val, unsigned size)
{
	for (unsigned i = 0; i < size; i++)
		p[off + i] = (uint8_t)(val >> (8 * i));
}

static inline uint32_t cfg_get(const uint8_t *p, unsigned off, unsigned size)
{
	uint32_t v = 0;

	for (unsigned i = 0; i < size; i++)
		v |= (uint32_t)p[off + i] << (8 * i);
	return v;
}

/* ---- Device setup ---- */

void pci_dev_setup(struct pci_dev *pd, struct vm *vm, const struct pci_dev_ops *ops, void *priv,
		   uint16_t vendor, uint16_t device, uint32_t class_code, uint8_t revision)
{
	memset(pd, 0, sizeof(*pd));
	pd->vm = vm;
	pd->ops = ops;
	pd->priv = priv;
	pthread_mutex_init(&pd->lock, NULL);
	pthread_mutex_init(&pd->irq_lock, NULL);
	pthread_mutex_init(&pd->map_lock, NULL);
	snprintf(pd->name, sizeof(pd->name), "%s", ops && ops->name ? ops->name : "pci");
	cfg_put(pd->cfg, PCI_VENDOR_ID, vendor, 2);
	cfg_put(pd->cfg, PCI_DEVICE_ID, device, 2);
	pd->cfg[PCI_REVISION_ID] = revision;
	cfg_put(pd->cfg, PCI_CLASS_PROG, class_code, 3);
	cfg_put(pd->wmask, PCI_COMMAND,
		PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY |
		    PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE,
		2);
	cfg_put(pd->w1cmask, PCI_STATUS, PCI_STATUS_W1C, 2);
	pd->wmask[0x0c] = 0xff; /* cache line size: firmware scratch */
	pd->wmask[0x0d] = 0xff; /* latency timer */
	pd->wmask[PCI_INTERRUPT_LINE] = 0xff;
	pd->cap_free = PCI_CAP_START;
	pd->cap_tail = PCI_CAPABILITY_LIST;
	for (int i = 0; i < PCI_NUM_BARS; i++) {
		pd->bar[i].pd = pd;
		pd->bar[i].index = i;
	}
}

int pci_dev_add_bar(struct pci_dev *pd, int n, uint32_t size)
{
	uint32_t s = 4096;

	if (n < 0 || n >= PCI_NUM_BARS || size == 0 || size > 0x40000000u)
		return -EINVAL;
	while (s < size)
		s <<= 1;
	pd->bar[n].size = s;
	/* Sizing: the low bits never take a write, so all ones reads back ~(size-1). */
	cfg_put(pd->wmask, PCI_BAR0 + 4 * n, ~(s - 1), 4);
	return 0;
}

int pci_dev_add_cap(struct pci_dev *pd, uint8_t id, const void *body, unsigned len)
{
	unsigned off = (pd->cap_free + 3u) & ~3u;

	if (len < 2 || off + len > PCI_CFG_SIZE)
		return -ENOSPC;
	memcpy(pd->cfg + off, body, len);
	pd->cfg[off] = id;
	pd->cfg[off + 1] = 0;
	pd->cfg[pd->cap_tail] = (uint8_t)off;
	pd->cap_tail = (uint8_t)(off + 1);
	pd->cap_free = (uint8_t)(off + len < PCI_CFG_SIZE ? off + len : 0xff);
	cfg_put(pd->cfg, PCI_STATUS, pci_cfg_get16(pd, PCI_STATUS) | PCI_STATUS_CAP_LIST, 2);
	return (int)off;
}

int pci_dev_add_msix(struct pci_dev *pd, unsigned nvec, int bar, uint32_t table_off,
		     uint32_t pba_off)
{
	uint8_t cap[12] = {0};
	int off;

	if (nvec == 0 || nvec > PCI_MSIX_MAX_VECTORS || bar < 0 || bar >= PCI_NUM_BARS ||
	    !pd->bar[bar].size || (table_off & 7) || (pba_off & 7) ||
	    table_off + nvec * PCI_MSIX_ENTRY_SIZE > pd->bar[bar].size ||
	    pba_off + 8 > pd->bar[bar].size)
		return -EINVAL;
	cfg_put(cap, PCI_MSIX_FLAGS, nvec - 1, 2);
	cfg_put(cap, PCI_MSIX_TABLE, table_off | (uint32_t)bar, 4);
	cfg_put(cap, PCI_MSIX_PBA, pba_off | (uint32_t)bar, 4);
	off = pci_dev_add_cap(pd, PCI_CAP_ID_MSIX, cap, sizeof(cap));
	if (off < 0)
		return off;
	/* Only enable and function mask are the guest's to change. */
	cfg_put(pd->wmask, (unsigned)off + PCI_MSIX_FLAGS,
		PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL, 2);
	pd->msix.nvec = nvec;
	pd->msix.cap = (uint8_t)off;
	pd->msix.bar = bar;
	pd->msix.table_off = table_off;
	pd->msix.pba_off = pba_off;
	for (unsigned v = 0; v < nvec; v++)
		pd->msix.table[v * PCI_MSIX_ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
	return 0;
}

/* ---- Interrupts ---- */

bool pci_msix_enabled(const struct pci_dev *pd)
{
	return __atomic_load_n(&pd->msix.enabled, __ATOMIC_RELAXED);
}

static bool msix_vector_masked(const struct pci_dev *pd, unsigned v)
{
	return pd->msix.maskall ||
	       (pd->msix.table[v * PCI_MSIX_ENTRY_SIZE + 12] & PCI_MSIX_ENTRY_CTRL_MASKBIT);
}

/* Caller holds irq_lock, vector unmasked. */
static int msix_send(struct pci_dev *pd, unsigned v)
{
	const uint8_t *e = pd->msix.table + v * PCI_MSIX_ENTRY_SIZE;
	uint64_t addr = (uint64_t)cfg_get(e, 4, 4) << 32 | cfg_get(e, 0, 4);

	/* An MSI is a memory write by the device: no bus mastering, no interrupt. */
	if (!(__atomic_load_n(&pd->cfg[PCI_COMMAND], __ATOMIC_RELAXED) & PCI_COMMAND_MASTER))
		return -EPERM;
	return vm_msi(pd->vm, addr, cfg_get(e, 8, 4));
}

int pci_msix_notify(struct pci_dev *pd, unsigned vector)
{
	int ret = 0;

	pthread_mutex_lock(&pd->irq_lock);
	if (vector >= pd->msix.nvec)
		ret = -EINVAL;
	else if (!pd->msix.enabled)
		ret = -ENODEV;
	else if (msix_vector_masked(pd, vector))
		pd->msix.pba |= 1ull << vector;
	else
		ret = msix_send(pd, vector);
	pthread_mutex_unlock(&pd->irq_lock);
	return ret;
}

/* Deliver pending vectors that are no longer masked. Caller holds irq_lock. */
static void msix_flush_pending(struct pci_dev *pd)
{
	if (!pd->msix.enabled)
		return;
	for (unsigned v = 0; v < pd->msix.nvec; v++) {
		if ((pd->msix.pba & (1ull << v)) && !msix_vector_masked(pd, v)) {
			pd->msix.pba &= ~(1ull << v);
			msix_send(pd, v);
		}
	}
}

void pci_intx(struct pci_dev *pd, bool level)
{
	uint8_t st;

	pthread_mutex_lock(&pd->irq_lock);
	if (pci_cfg_get16(pd, PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE)
		level = false;
	st = pd->cfg[PCI_STATUS];
	st = level ? st | PCI_STATUS_INTERRUPT : st & ~PCI_STATUS_INTERRUPT;
	__atomic_store_n(&pd->cfg[PCI_STATUS], st, __ATOMIC_RELAXED);
	if (pd->cfg[PCI_INTERRUPT_PIN] && level != pd->intx_level) {
		pd->intx_level = level;
		vm_irq_line(pd->vm, PCI_INTX_GSI(pd->slot, 0), level);
	}
	pthread_mutex_unlock(&pd->irq_lock);
}

/* ---- MSI-X table and PBA in a BAR ---- */

static bool in_range(uint64_t off, unsigned size, uint64_t start, uint64_t len)
{
	return off >= start && off + size <= start + len;
}

static bool msix_access(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size,
			bool write)
{
	struct pci_msix *m = &pd->msix;
	uint64_t tlen = (uint64_t)m->nvec * PCI_MSIX_ENTRY_SIZE;
	uint8_t pba[8];

	if (!m->nvec || bar != m->bar)
		return false;
	if (in_range(off, size, m->table_off, tlen)) {
		unsigned t = (unsigned)(off - m->table_off);

		pthread_mutex_lock(&pd->irq_lock);
		if (!write) {
			memcpy(data, m->table + t, size);
		} else {
			for (unsigned i = 0; i < size; i++) {
				unsigned b = t + i;
				uint8_t v = ((const uint8_t *)data)[i];

				/* Vector control: only the mask bit exists. */
				if (b % PCI_MSIX_ENTRY_SIZE >= 12)
					v = b % PCI_MSIX_ENTRY_SIZE == 12 ? v & 1 : 0;
				m->table[b] = v;
			}
			msix_flush_pending(pd);
		}
		pthread_mutex_unlock(&pd->irq_lock);
		return true;
	}
	if (in_range(off, size, m->pba_off, 8)) {
		if (!write) {
			pthread_mutex_lock(&pd->irq_lock);
			cfg_put(pba, 0, (uint32_t)m->pba, 4);
			cfg_put(pba, 4, (uint32_t)(m->pba >> 32), 4);
			pthread_mutex_unlock(&pd->irq_lock);
			memcpy(data, pba + (off - m->pba_off), size);
		}
		return true; /* the PBA is read-only */
	}
	/* Anything else overlapping the table or PBA is a malformed access. */
	if (off < m->table_off + tlen && off + size > m->table_off)
		goto bad;
	if (off < m->pba_off + 8 && off + size > m->pba_off)
		goto bad;
	return false;
bad:
	if (!write)
		memset(data, 0xff, size);
	return true;
}

static void bar_mmio_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	struct pci_bar *b = opaque;
	struct pci_dev *pd = b->pd;

	if (msix_access(pd, b->index, off, data, size, false))
		return;
	pthread_mutex_lock(&pd->lock);
	if (pd->ops && pd->ops->bar_read)
		pd->ops->bar_read(pd, b->index, off, data, size);
	else
		memset(data, 0xff, size);
	pthread_mutex_unlock(&pd->lock);
}

static void bar_mmio_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct pci_bar *b = opaque;
	struct pci_dev *pd = b->pd;

	if (msix_access(pd, b->index, off, (void *)data, size, true))
		return;
	pthread_mutex_lock(&pd->lock);
	if (pd->ops && pd->ops->bar_write)
		pd->ops->bar_write(pd, b->index, off, data, size);
	pthread_mutex_unlock(&pd->lock);
}

void pci_bar_access_locked(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size,
			   bool write)
{
	if (bar < 0 || bar >= PCI_NUM_BARS || !pd->bar[bar].size ||
	    off + size > pd->bar[bar].size) {
		if (!write)
			memset(data, 0xff, size);
		return;
	}
	if (msix_access(pd, bar, off, data, size, write))
		return;
	if (write && pd->ops && pd->ops->bar_write)
		pd->ops->bar_write(pd, bar, off, data, size);
	else if (!write && pd->ops && pd->ops->bar_read)
		pd->ops->bar_read(pd, bar, off, data, size);
	else if (!write)
		memset(data, 0xff, size);
}

static const struct bus_ops bar_bus_ops = {
    .read = bar_mmio_read,
    .write = bar_mmio_write,
};

/* ---- Policy ---- */

/* True the first time ev is seen on pd: such events are logged once per device. */
static bool policy_first(struct pci_dev *pd, enum pci_policy_event ev)
{
	uint8_t bit = (uint8_t)(1u << ev);

	return !(__atomic_fetch_or(&pd->policy_logged, bit, __ATOMIC_RELAXED) & bit);
}

bool pci_policy_check(struct pci_dev *pd, enum pci_policy_event ev, uint64_t addr, uint64_t len)
{
	switch (ev) {
	case PCI_POLICY_BAR_MAP:
		/* A BAR may only decode inside the PCI window: never over RAM, APICs or ROM. */
		if (addr >= PCI_MMIO_START && addr + len >= addr && addr + len <= PCI_MMIO_END)
			return true;
		if (policy_first(pd, ev))
			pr_warn("pci %s: refused BAR at %#llx (+%#llx) outside the PCI window",
				pd->name, (unsigned long long)addr, (unsigned long long)len);
		return false;
	case PCI_POLICY_BAR_OVERLAP:
		if (policy_first(pd, ev))
			pr_warn("pci %s: refused BAR at %#llx overlapping another device", pd->name,
				(unsigned long long)addr);
		return false;
	case PCI_POLICY_BUS_MASTER_OFF:
		/* Allowed (it is how a driver quiesces a device); worth knowing about. */
		if (policy_first(pd, ev))
			pr_info("pci %s: bus mastering turned off: no DMA, no MSI", pd->name);
		return true;
	}
	return false;
}

/* ---- BAR mapping ---- */

/* Bring vm->mmio in line with the BAR registers and memory decode bit. */
static void pci_update_bars(struct pci_dev *pd)
{
	struct io_bus *mmio = &pd->vm->mmio;

	pthread_mutex_lock(&pd->map_lock);
	for (int i = 0; i < PCI_NUM_BARS; i++) {
		struct pci_bar *b = &pd->bar[i];
		uint32_t want;
		bool mem;

		if (!b->size)
			continue;
		pthread_mutex_lock(&pd->lock);
		mem = pci_cfg_get16(pd, PCI_COMMAND) & PCI_COMMAND_MEMORY;
		want = cfg_get(pd->cfg, PCI_BAR0 + 4 * i, 4) & ~0xfu;
		pthread_mutex_unlock(&pd->lock);
		if (!mem)
			want = 0;
		if (want == b->mapped)
			continue;
		if (b->mapped) {
			bus_unregister(mmio, b->mapped);
			b->mapped = 0;
		}
		if (!want || !pci_policy_check(pd, PCI_POLICY_BAR_MAP, want, b->size))
			continue;
		if (bus_register(mmio, want, b->size, &bar_bus_ops, b, pd->name) == 0)
			b->mapped = want;
		else
			pci_policy_check(pd, PCI_POLICY_BAR_OVERLAP, want, b->size);
	}
	pthread_mutex_unlock(&pd->map_lock);
}

/* ---- Config space access ---- */

static struct pci_dev *pci_find(struct pci_bus *bus, unsigned devfn)
{
	struct pci_dev *pd = NULL;

	/* Single-function devices only: function 1-7 are absent. */
	if (devfn & 7)
		return NULL;
	pthread_mutex_lock(&bus->lock);
	pd = bus->devs[(devfn >> 3) & 31];
	pthread_mutex_unlock(&bus->lock);
	return pd;
}

static bool cfg_access_ok(unsigned off, unsigned size)
{
	return (size == 1 || size == 2 || size == 4) && off < PCI_CFG_SIZE && (off & 3) + size <= 4;
}

uint32_t pci_cfg_read(struct vm *vm, unsigned devfn, unsigned off, unsigned size)
{
	struct pci_dev *pd;
	uint32_t v;

	if (!vm->pci || !cfg_access_ok(off, size))
		return 0xffffffffu;
	pd = pci_find(vm->pci, devfn);
	if (!pd)
		return size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
	pthread_mutex_lock(&pd->lock);
	if (pd->ops && pd->ops->cfg_read)
		pd->ops->cfg_read(pd, off, size);
	v = cfg_get(pd->cfg, off, size);
	pthread_mutex_unlock(&pd->lock);
	return v;
}

static bool overlaps(unsigned off, unsigned size, unsigned start, unsigned len)
{
	return off < start + len && off + size > start;
}

/* Apply one guest byte through the masks. */
static void cfg_write_byte(struct pci_dev *pd, unsigned o, uint8_t b)
{
	uint8_t v;

	/* Read-only bytes may be updated by the device (INTx status) meanwhile. */
	if (!pd->wmask[o] && !pd->w1cmask[o])
		return;
	v = (pd->cfg[o] & ~pd->wmask[o]) | (b & pd->wmask[o]);
	v &= ~(b & pd->w1cmask[o]);
	__atomic_store_n(&pd->cfg[o], v, __ATOMIC_RELAXED);
}

void pci_cfg_write(struct vm *vm, unsigned devfn, unsigned off, unsigned size, uint32_t val)
{
	struct pci_dev *pd;
	uint16_t old_cmd, new_cmd;
	bool msix_ctl, remap;

	if (!vm->pci || !cfg_access_ok(off, size))
		return;
	pd = pci_find(vm->pci, devfn);
	if (!pd)
		return;
	msix_ctl = pd->msix.nvec && overlaps(off, size, pd->msix.cap + PCI_MSIX_FLAGS, 2);
	remap = overlaps(off, size, PCI_COMMAND, 2) || overlaps(off, size, PCI_BAR0, 24);

	pthread_mutex_lock(&pd->lock);
	old_cmd = pci_cfg_get16(pd, PCI_COMMAND);
	if (msix_ctl)
		pthread_mutex_lock(&pd->irq_lock);
	for (unsigned i = 0; i < size; i++)
		cfg_write_byte(pd, off + i, (uint8_t)(val >> (8 * i)));
	if (msix_ctl) {
		uint16_t ctl = pci_cfg_get16(pd, pd->msix.cap + PCI_MSIX_FLAGS);

		pd->msix.enabled = ctl & PCI_MSIX_FLAGS_ENABLE;
		pd->msix.maskall = ctl & PCI_MSIX_FLAGS_MASKALL;
		msix_flush_pending(pd);
		pthread_mutex_unlock(&pd->irq_lock);
	}
	new_cmd = pci_cfg_get16(pd, PCI_COMMAND);
	if ((old_cmd & PCI_COMMAND_MASTER) && !(new_cmd & PCI_COMMAND_MASTER))
		pci_policy_check(pd, PCI_POLICY_BUS_MASTER_OFF, 0, 0);
	if (pd->ops && pd->ops->cfg_write)
		pd->ops->cfg_write(pd, off, size, val);
	pthread_mutex_unlock(&pd->lock);

	if (msix_ctl && pd->ops && pd->ops->msix_changed)
		pd->ops->msix_changed(pd);
	if (remap)
		pci_update_bars(pd);
}

/* ---- Mechanism #1 on ports 0xCF8-0xCFF ---- */

static bool cf8_decode(struct pci_bus *bus, uint64_t port_off, unsigned size, unsigned *devfn,
		       unsigned *reg)
{
	uint32_t a = __atomic_load_n(&bus->cf8, __ATOMIC_RELAXED);
	unsigned byte = (unsigned)port_off - 4;

	if (!(a & PCI_CFG_ENABLE) || ((a >> 16) & 0xff) != 0 || byte + size > 4)
		return false;
	*devfn = (a >> 8) & 0xff;
	*reg = (a & 0xfc) + byte;
	return true;
}

static void pci_pio_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	struct pci_bus *bus = opaque;
	unsigned devfn, reg;
	uint32_t v = 0xffffffffu;

	if (off == 0 && size == 4)
		v = __atomic_load_n(&bus->cf8, __ATOMIC_RELAXED);
	else if (off >= 4 && cf8_decode(bus, off, size, &devfn, &reg))
		v = pci_cfg_read(bus->vm, devfn, reg, size);
	memcpy(data, &v, size <= 4 ? size : 4);
	if (size > 4)
		memset((uint8_t *)data + 4, 0xff, size - 4);
}

static void pci_pio_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct pci_bus *bus = opaque;
	unsigned devfn, reg;
	uint32_t v = 0;

	memcpy(&v, data, size <= 4 ? size : 4);
	if (off == 0 && size == 4)
		__atomic_store_n(&bus->cf8, v & 0x8fffffffu, __ATOMIC_RELAXED);
	else if (off >= 4 && cf8_decode(bus, off, size, &devfn, &reg))
		pci_cfg_write(bus->vm, devfn, reg, size, v);
}

static const struct bus_ops pci_pio_ops = {
    .read = pci_pio_read,
    .write = pci_pio_write,
};

/* ---- Bus ---- */

static void pci_bus_destroy(void *opaque)
{
	struct pci_bus *bus = opaque;

	bus_unregister(&bus->vm->pio, PCI_CONFIG_PORT);
	if (bus->vm->pci == bus)
		bus->vm->pci = NULL;
	pthread_mutex_destroy(&bus->lock);
	free(bus);
}

static const struct device_ops pci_bus_dev_ops = {
    .name = "pci",
    .destroy = pci_bus_destroy,
};

static const struct pci_dev_ops host_bridge_ops = {
    .name = "host-bridge",
};

int pci_init(struct vm *vm)
{
	struct pci_bus *bus = calloc(1, sizeof(*bus));
	int err;

	if (!bus)
		return -ENOMEM;
	bus->vm = vm;
	bus->next_mmio = PCI_MMIO_START;
	pthread_mutex_init(&bus->lock, NULL);
	err = bus_register(&vm->pio, PCI_CONFIG_PORT, 8, &pci_pio_ops, bus, "pci-config");
	if (err)
		goto fail;
	/* Host bridge at 00:00.0: Red Hat's generic PCIe host bridge ID. */
	pci_dev_setup(&bus->host, vm, &host_bridge_ops, NULL, 0x1b36, 0x0008, 0x060000, 0);
	bus->host.bus = bus;
	bus->devs[0] = &bus->host;
	err = vm_add_device(vm, &pci_bus_dev_ops, bus);
	if (err)
		goto fail_pio;
	vm->pci = bus;
	return 0;
fail_pio:
	bus_unregister(&vm->pio, PCI_CONFIG_PORT);
fail:
	pthread_mutex_destroy(&bus->lock);
	free(bus);
	return err;
}

/* Give each BAR a naturally aligned address in the window. Caller holds bus->lock. */
static int pci_alloc_bars(struct pci_bus *bus, struct pci_dev *pd)
{
	uint64_t next = bus->next_mmio;

	for (int i = 0; i < PCI_NUM_BARS; i++) {
		uint64_t s = pd->bar[i].size;

		if (!s)
			continue;
		next = (next + s - 1) & ~(s - 1);
		if (next + s > PCI_MMIO_END)
			return -ENOSPC;
		cfg_put(pd->cfg, PCI_BAR0 + 4 * i, (uint32_t)next, 4);
		next += s;
	}
	bus->next_mmio = next;
	return 0;
}

int pci_dev_add(struct vm *vm, struct pci_dev *pd)
{
	struct pci_bus *bus = vm->pci;
	int err = -ENOSPC;

	if (!bus)
		return -ENODEV;
	pthread_mutex_lock(&bus->lock);
	for (unsigned s = 1; s < PCI_MAX_DEVS; s++) {
		if (bus->devs[s])
			continue;
		err = pci_alloc_bars(bus, pd);
		if (err)
			break;
		pd->bus = bus;
		pd->slot = (uint8_t)s;
		if (pd->cfg[PCI_INTERRUPT_PIN])
			pd->cfg[PCI_INTERRUPT_LINE] = (uint8_t)PCI_INTX_GSI(s, 0);
		bus->devs[s] = pd;
		break;
	}
	pthread_mutex_unlock(&bus->lock);
	if (err)
		pr_err("pci: no room for %s: %s", pd->name, strerror(-err));
	return err;
}

void pci_dev_remove(struct pci_dev *pd)
{
	struct pci_bus *bus = pd->bus;

	if (!bus)
		return;
	pthread_mutex_lock(&bus->lock);
	bus->devs[pd->slot] = NULL;
	pthread_mutex_unlock(&bus->lock);
	pthread_mutex_lock(&pd->map_lock);
	for (int i = 0; i < PCI_NUM_BARS; i++) {
		if (pd->bar[i].mapped)
			bus_unregister(&pd->vm->mmio, pd->bar[i].mapped);
		pd->bar[i].mapped = 0;
	}
	pthread_mutex_unlock(&pd->map_lock);
	if (pd->intx_level)
		vm_irq_line(pd->vm, PCI_INTX_GSI(pd->slot, 0), 0);
	pd->bus = NULL;
}

void pci_dev_reset(struct pci_dev *pd)
{
	pthread_mutex_lock(&pd->lock);
	cfg_put(pd->cfg, PCI_COMMAND, 0, 2);
	cfg_put(pd->cfg, PCI_STATUS, pci_cfg_get16(pd, PCI_STATUS) & PCI_STATUS_CAP_LIST, 2);
	pthread_mutex_lock(&pd->irq_lock);
	if (pd->msix.nvec) {
		cfg_put(pd->cfg, pd->msix.cap + PCI_MSIX_FLAGS, pd->msix.nvec - 1, 2);
		memset(pd->msix.table, 0, sizeof(pd->msix.table));
		for (unsigned v = 0; v < pd->msix.nvec; v++)
			pd->msix.table[v * PCI_MSIX_ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
		pd->msix.pba = 0;
		pd->msix.enabled = pd->msix.maskall = false;
	}
	if (pd->intx_level && pd->bus)
		vm_irq_line(pd->vm, PCI_INTX_GSI(pd->slot, 0), 0);
	pd->intx_level = false;
	pthread_mutex_unlock(&pd->irq_lock);
	pthread_mutex_unlock(&pd->lock);
	pci_update_bars(pd);
}

/* ---- Save / restore ---- */

struct pci_save_hdr {
	uint32_t magic, version;
	uint32_t nvec, intx_level;
	uint64_t pba;
};

int pci_dev_save(struct pci_dev *pd, struct dev_buf *out)
{
	struct pci_save_hdr h = {PCI_SAVE_MAGIC, PCI_SAVE_VERSION, pd->msix.nvec, 0, 0};
	uint8_t cfg[PCI_CFG_SIZE], table[sizeof(pd->msix.table)];
	int err;

	pthread_mutex_lock(&pd->lock);
	pthread_mutex_lock(&pd->irq_lock);
	memcpy(cfg, pd->cfg, sizeof(cfg));
	memcpy(table, pd->msix.table, sizeof(table));
	h.pba = pd->msix.pba;
	h.intx_level = pd->intx_level;
	pthread_mutex_unlock(&pd->irq_lock);
	pthread_mutex_unlock(&pd->lock);
	err = dev_buf_put(out, &h, sizeof(h));
	if (!err)
		err = dev_buf_put(out, cfg, sizeof(cfg));
	if (!err)
		err = dev_buf_put(out, table, (uint64_t)h.nvec * PCI_MSIX_ENTRY_SIZE);
	return err;
}

int pci_dev_restore(struct pci_dev *pd, const void *data, uint64_t len)
{
	const uint8_t *p = data;
	struct pci_save_hdr h;
	uint64_t need;

	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, p, sizeof(h));
	if (h.magic != PCI_SAVE_MAGIC || h.version != PCI_SAVE_VERSION || h.nvec != pd->msix.nvec)
		return -EINVAL;
	need = sizeof(h) + PCI_CFG_SIZE + (uint64_t)h.nvec * PCI_MSIX_ENTRY_SIZE;
	if (len < need)
		return -EINVAL;
	p += sizeof(h);
	pthread_mutex_lock(&pd->lock);
	pthread_mutex_lock(&pd->irq_lock);
	/* Only guest-writable bits come from the file: identity and capabilities stay ours. */
	for (unsigned i = 0; i < PCI_CFG_SIZE; i++) {
		uint8_t m = pd->wmask[i] | pd->w1cmask[i];

		pd->cfg[i] = (pd->cfg[i] & ~m) | (p[i] & m);
	}
	p += PCI_CFG_SIZE;
	for (unsigned i = 0; i < h.nvec * PCI_MSIX_ENTRY_SIZE; i++) {
		uint8_t v = p[i];

		if (i % PCI_MSIX_ENTRY_SIZE >= 12)
			v = i % PCI_MSIX_ENTRY_SIZE == 12 ? v & 1 : 0;
		pd->msix.table[i] = v;
	}
	if (pd->msix.nvec) {
		uint16_t ctl = pci_cfg_get16(pd, pd->msix.cap + PCI_MSIX_FLAGS);

		pd->msix.enabled = ctl & PCI_MSIX_FLAGS_ENABLE;
		pd->msix.maskall = ctl & PCI_MSIX_FLAGS_MASKALL;
		pd->msix.pba = h.pba & (pd->msix.nvec == 64 ? ~0ull : (1ull << pd->msix.nvec) - 1);
	}
	pd->intx_level = false;
	pthread_mutex_unlock(&pd->irq_lock);
	pthread_mutex_unlock(&pd->lock);
	pci_update_bars(pd);
	if (h.intx_level)
		pci_intx(pd, true);
	return (int)need;
}
