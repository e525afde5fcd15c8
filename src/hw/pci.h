/*
 * The PCI bus: host bridge, configuration space, BARs and MSI-X.
 *
 * One bus (bus 0) of up to 32 single-function devices, reached through
 * configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data).
 * Accesses to absent devices or functions read all ones.
 *
 * The PCI layer owns each device's 256-byte configuration space. Guest
 * writes go through a per-byte write mask (read-only bits never change) and a
 * per-byte write-1-to-clear mask (status bits). BARs are 32-bit memory BARs
 * allocated from the PCI MMIO window; sizing (all ones) works through the
 * write mask, and a BAR is mapped on vm->mmio only while memory decoding is
 * enabled and its address passes the policy (inside the window, not
 * overlapping another mapping). Writes with system-wide effect (BAR moves,
 * bus mastering off) go through pci_policy_check() and are logged once.
 *
 * MSI-X lives here too: the table and PBA are placed in a BAR of the
 * device's choice, accesses to them never reach the device, and
 * pci_msix_notify() delivers, masks or marks pending as the guest set it up.
 *
 * Devices fill a struct pci_dev_ops and call pci_dev_add(); all callbacks
 * run with the device's lock held (pd->lock), on vCPU threads. Interrupt
 * state (MSI-X table, PBA, INTx) has its own lock (pd->irq_lock) so a
 * device's I/O thread can raise interrupts without pd->lock: a vCPU holding
 * pd->lock may then wait for that thread (device reset) without deadlock.
 * Lock order: pd->lock, then pd->irq_lock.
 *
 * Teardown: pci_init() registers the bus with vm_add_device() before any
 * device is added, so devices (destroyed newest first) go before the bus.
 */
#ifndef TERN_HW_PCI_H
#define TERN_HW_PCI_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "arch/x86/layout.h"

struct vm;
struct pci_dev;

#define PCI_CFG_SIZE 256
#define PCI_NUM_BARS 6
#define PCI_MAX_DEVS 32

/* Standard header offsets. */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION_ID 0x08
#define PCI_CLASS_PROG 0x09
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_CAPABILITY_LIST 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d

#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_COMMAND_PARITY 0x40
#define PCI_COMMAND_SERR 0x100
#define PCI_COMMAND_INTX_DISABLE 0x400

#define PCI_STATUS_INTERRUPT 0x08
#define PCI_STATUS_CAP_LIST 0x10
/* Error bits the guest clears by writing 1. */
#define PCI_STATUS_W1C 0xf900

#define PCI_CAP_ID_MSIX 0x11
#define PCI_CAP_ID_VNDR 0x09

/* MSI-X capability: message control bits, table entry layout. */
#define PCI_MSIX_FLAGS 2
#define PCI_MSIX_FLAGS_QSIZE 0x07ff
#define PCI_MSIX_FLAGS_MASKALL 0x4000
#define PCI_MSIX_FLAGS_ENABLE 0x8000
#define PCI_MSIX_TABLE 4
#define PCI_MSIX_PBA 8
#define PCI_MSIX_ENTRY_SIZE 16
#define PCI_MSIX_ENTRY_CTRL_MASKBIT 1
#define PCI_MSIX_MAX_VECTORS 64

/* INTx: every device uses pin A, wired as PCI_INTX_GSI(slot, 0) (arch/x86/layout.h, ACPI _PRT). */

struct pci_dev_ops {
	const char *name;
	/* Optional: after the generic layer applied a guest config write. */
	void (*cfg_write)(struct pci_dev *pd, unsigned off, unsigned size, uint32_t val);
	/* Optional: before a guest config read, to refresh the bytes it will see. */
	void (*cfg_read)(struct pci_dev *pd, unsigned off, unsigned size);
	/* Access to a device-owned part of BAR bar; off relative to the BAR. */
	void (*bar_read)(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size);
	void (*bar_write)(struct pci_dev *pd, int bar, uint64_t off, const void *data,
			  unsigned size);
	/* Optional: the guest unmasked or enabled MSI-X (pending vectors were sent). */
	void (*msix_changed)(struct pci_dev *pd);
};

struct pci_bar {
	uint32_t size;	    /* power of two >= 4 KiB, 0 if unused */
	uint32_t mapped;    /* address mapped on vm->mmio, 0 if none */
	struct pci_dev *pd; /* back pointer for the bus handler */
	int index;
};

struct pci_msix {
	unsigned nvec; /* 0: no MSI-X */
	uint8_t cap;   /* config offset of the capability */
	int bar;
	uint32_t table_off, pba_off;
	uint8_t table[PCI_MSIX_MAX_VECTORS * PCI_MSIX_ENTRY_SIZE];
	uint64_t pba;	       /* pending bits */
	bool enabled, maskall; /* shadows of the control word */
};

struct pci_dev {
	struct pci_bus *bus;
	struct vm *vm;
	const struct pci_dev_ops *ops;
	void *priv;
	uint8_t slot;
	char name[32];

	/* Guards config space and the device's registers. */
	pthread_mutex_t lock;
	/* Guards msix and intx_level; also taken for writes to the MSI-X control word. */
	pthread_mutex_t irq_lock;
	/* Serialises BAR (un)mapping, which is done without lock held. */
	pthread_mutex_t map_lock;

	uint8_t cfg[PCI_CFG_SIZE];
	uint8_t wmask[PCI_CFG_SIZE];   /* bits the guest may write */
	uint8_t w1cmask[PCI_CFG_SIZE]; /* bits the guest clears by writing 1 */
	uint8_t cap_tail;	       /* offset of the "next" byte of the last capability */
	uint8_t cap_free;	       /* first free config byte for capabilities */
	struct pci_bar bar[PCI_NUM_BARS];
	struct pci_msix msix;
	bool intx_level;
	uint8_t policy_logged; /* one bit per enum pci_policy_event: log each once */
};

/* Create the bus with its host bridge and claim ports 0xCF8-0xCFF. Sets vm->pci. */
int pci_init(struct vm *vm);

/*
 * Initialise pd (identity from the arguments, everything else zero) so the
 * caller can add BARs and capabilities before pci_dev_add() makes it visible.
 */
void pci_dev_setup(struct pci_dev *pd, struct vm *vm, const struct pci_dev_ops *ops, void *priv,
		   uint16_t vendor, uint16_t device, uint32_t class_code, uint8_t revision);
/* Declare BAR n as a 32-bit memory BAR of size bytes (rounded to a power of two). */
int pci_dev_add_bar(struct pci_dev *pd, int n, uint32_t size);
/* Append a capability of len bytes (id, next filled in); returns its offset or -ENOSPC. */
int pci_dev_add_cap(struct pci_dev *pd, uint8_t id, const void *body, unsigned len);
/* MSI-X with nvec vectors, table and PBA in BAR bar at the given offsets. */
int pci_dev_add_msix(struct pci_dev *pd, unsigned nvec, int bar, uint32_t table_off,
		     uint32_t pba_off);
/* Put pd on the bus at a free slot and allocate its BAR addresses. */
int pci_dev_add(struct vm *vm, struct pci_dev *pd);
/* Unmap BARs and take pd off the bus. */
void pci_dev_remove(struct pci_dev *pd);

/* Configuration access as the guest does it (also used by tests, ECAM). */
uint32_t pci_cfg_read(struct vm *vm, unsigned devfn, unsigned off, unsigned size);
void pci_cfg_write(struct vm *vm, unsigned devfn, unsigned off, unsigned size, uint32_t val);

/* Convenience accessors for the device's own view; caller holds pd->lock. */
static inline uint16_t pci_cfg_get16(const struct pci_dev *pd, unsigned off)
{
	return (uint16_t)(pd->cfg[off] | pd->cfg[off + 1] << 8);
}
static inline bool pci_bus_master(const struct pci_dev *pd)
{
	return pci_cfg_get16(pd, PCI_COMMAND) & PCI_COMMAND_MASTER;
}

/*
 * Access BAR bar at off as the guest would (MSI-X table/PBA included), for
 * config-space windows onto BARs. Caller holds pd->lock.
 */
void pci_bar_access_locked(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size,
			   bool write);

/* Interrupts from a device: any thread, pd->lock not needed. */
bool pci_msix_enabled(const struct pci_dev *pd);
/* Send vector, or set its pending bit while masked. 0, or -errno. */
int pci_msix_notify(struct pci_dev *pd, unsigned vector);
/* Drive INTx pin A (level), unless the guest disabled INTx. */
void pci_intx(struct pci_dev *pd, bool level);

/* Restore the power-on state of the generic part (command, BARs, MSI-X). */
void pci_dev_reset(struct pci_dev *pd);

/* Save/restore of the generic part: config space, MSI-X table and pending bits. */
struct dev_buf;
int pci_dev_save(struct pci_dev *pd, struct dev_buf *out);
/* Consumes bytes from *data; returns bytes used or -EINVAL. Re-maps BARs. */
int pci_dev_restore(struct pci_dev *pd, const void *data, uint64_t len);

/*
 * Policy for config writes with system-wide effect. Returns true if the
 * change may take effect; refusals and notable changes are logged once per
 * device and event. BAR_MAP: may a BAR decode at addr? BAR_OVERLAP: the bus
 * refused it (another device is there). BUS_MASTER_OFF: the guest stops the
 * device's DMA.
 */
enum pci_policy_event { PCI_POLICY_BAR_MAP, PCI_POLICY_BAR_OVERLAP, PCI_POLICY_BUS_MASTER_OFF };
bool pci_policy_check(struct pci_dev *pd, enum pci_policy_event ev, uint64_t addr, uint64_t len);

#endif
