/*
 * The virtio-pci modern transport (virtio 1.x, section 4.1), as seen by a
 * device: a device fills a constant struct virtio_dev_ops (type, features,
 * queues, config size, request handler) and calls virtio_pci_create(); the
 * transport does the rest: PCI identity and capabilities, common config,
 * feature negotiation (FEATURES_OK only for a subset of what was offered,
 * with VERSION_1), queue setup, notifications, MSI-X/INTx interrupts, the
 * ISR, device reset, NEEDS_RESET when the driver broke a queue, and
 * pause/resume/save/restore through vm_add_device().
 *
 * Requests are processed on one I/O thread per device, never on a vCPU
 * thread: a doorbell write only marks the queue pending and wakes it.
 * Pausing waits until the thread is idle, so nothing is in flight while the
 * VM is paused or saved.
 *
 * BAR 0 (16 KiB): common config at 0x0000, ISR at 0x1000, device config at
 * 0x2000, notify doorbells at 0x3000 (4 bytes per queue). BAR 2: MSI-X
 * table at 0, PBA at 0x800; one vector per queue plus one for config.
 * A VIRTIO_PCI_CAP_PCI_CFG capability gives config-space access to the BARs.
 */
#ifndef TERN_VIRTIO_TRANSPORT_H
#define TERN_VIRTIO_TRANSPORT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "hw/pci.h"
#include "virtio/queue.h"

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29

#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER 2
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VIRTIO_CONFIG_S_FEATURES_OK 8
#define VIRTIO_CONFIG_S_NEEDS_RESET 0x40
#define VIRTIO_CONFIG_S_FAILED 0x80

#define VIRTIO_MSI_NO_VECTOR 0xffff
#define VIRTIO_MAX_QUEUES 16

/* BAR 0 layout. */
#define VIRTIO_PCI_COMMON_OFF 0x0000
#define VIRTIO_PCI_COMMON_LEN 0x40
#define VIRTIO_PCI_ISR_OFF 0x1000
#define VIRTIO_PCI_DEVCFG_OFF 0x2000
#define VIRTIO_PCI_NOTIFY_OFF 0x3000
#define VIRTIO_PCI_NOTIFY_MULT 4
#define VIRTIO_PCI_BAR_SIZE 0x4000
#define VIRTIO_PCI_MSIX_BAR 2

/* Common config register offsets (struct virtio_pci_common_cfg). */
#define VIRTIO_PCI_COMMON_DFSELECT 0x00
#define VIRTIO_PCI_COMMON_DF 0x04
#define VIRTIO_PCI_COMMON_GFSELECT 0x08
#define VIRTIO_PCI_COMMON_GF 0x0c
#define VIRTIO_PCI_COMMON_MSIX 0x10
#define VIRTIO_PCI_COMMON_NUMQ 0x12
#define VIRTIO_PCI_COMMON_STATUS 0x14
#define VIRTIO_PCI_COMMON_CFGGENERATION 0x15
#define VIRTIO_PCI_COMMON_Q_SELECT 0x16
#define VIRTIO_PCI_COMMON_Q_SIZE 0x18
#define VIRTIO_PCI_COMMON_Q_MSIX 0x1a
#define VIRTIO_PCI_COMMON_Q_ENABLE 0x1c
#define VIRTIO_PCI_COMMON_Q_NOFF 0x1e
#define VIRTIO_PCI_COMMON_Q_DESCLO 0x20
#define VIRTIO_PCI_COMMON_Q_DESCHI 0x24
#define VIRTIO_PCI_COMMON_Q_AVAILLO 0x28
#define VIRTIO_PCI_COMMON_Q_AVAILHI 0x2c
#define VIRTIO_PCI_COMMON_Q_USEDLO 0x30
#define VIRTIO_PCI_COMMON_Q_USEDHI 0x34

/* Vendor capability types. */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG 5

struct virtio_dev;

struct virtio_dev_ops {
	const char *name;
	uint16_t device_type; /* virtio device ID: 2 block, 4 entropy, ... */
	uint32_t class_code;  /* PCI class, e.g. 0x010000 */
	uint64_t features;    /* device-specific and ring features offered */
	unsigned num_queues;  /* <= VIRTIO_MAX_QUEUES */
	uint16_t queue_size;  /* largest size offered, power of two */
	unsigned config_size; /* bytes of device config, <= 0x1000 */
	/*
	 * Process queue q on the I/O thread: pop, handle and push until the ring
	 * is empty. Return 0, or -EIO if the queue broke (virtq_pop's -EIO).
	 */
	int (*handle_queue)(struct virtio_dev *vd, unsigned q, struct virtq *vq,
			    struct virtq_chain *ch);
	/* Optional: a guest write to device config (already bounds-checked). */
	void (*config_write)(struct virtio_dev *vd, unsigned off, const void *data, unsigned size);
	/* Optional: device-specific reset (I/O thread idle). */
	void (*reset)(struct virtio_dev *vd);
	/* Optional: release the device's backend (the I/O thread has stopped). */
	void (*destroy)(struct virtio_dev *vd);
};

struct virtio_queue {
	struct virtq vq;
	uint16_t max_size;
	uint16_t vector;
};

struct virtio_dev {
	struct pci_dev pci;
	struct vm *vm;
	const struct virtio_dev_ops *ops;
	void *priv;

	/* Transport registers, under pci.lock; state changes also under wlock. */
	uint8_t config[0x100]; /* device config bytes; the device updates them under pci.lock */
	uint64_t host_features, driver_features;
	uint32_t dfselect, gfselect;
	uint8_t status;
	uint8_t config_gen;
	uint16_t queue_sel;
	uint16_t config_vector;
	struct virtio_queue queues[VIRTIO_MAX_QUEUES];
	uint8_t isr;	     /* atomic: bit 0 queue, bit 1 config */
	bool broken;	     /* atomic: a queue broke; NEEDS_RESET shows in status */
	uint8_t pci_cfg_cap; /* config offset of the VIRTIO_PCI_CAP_PCI_CFG window */

	/* The I/O thread. */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t wlock;
	pthread_cond_t wcond, idle;
	uint32_t pending; /* queues with doorbells not yet processed */
	bool busy, paused, stop;
	struct virtq_chain *chain;
};

/*
 * Create a virtio-pci device: PCI function, BARs, capabilities, I/O thread,
 * VM registration. config (config_size bytes) is the initial device config.
 * On success *out is owned by the VM (freed by vm_destroy).
 */
int virtio_pci_create(struct vm *vm, const struct virtio_dev_ops *ops, void *priv,
		      const void *config, struct virtio_dev **out);

/* True if feature bit f was negotiated. */
static inline bool virtio_has_feature(const struct virtio_dev *vd, unsigned f)
{
	return (vd->driver_features >> f) & 1;
}

/* Interrupt the driver for queue q / for a config change. Any thread. */
void virtio_notify_queue(struct virtio_dev *vd, unsigned q);
void virtio_notify_config(struct virtio_dev *vd);

/* Doorbell for queue q, as a write to the notify region does. */
void virtio_kick(struct virtio_dev *vd, unsigned q);

/* Mark the device broken (NEEDS_RESET) and tell the driver. Any thread. */
void virtio_set_broken(struct virtio_dev *vd);

/* Wait until the I/O thread has processed every doorbell rung so far (tests, pause). */
void virtio_drain(struct virtio_dev *vd);

#endif
