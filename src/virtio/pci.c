/*
 * virtio-pci modern transport: registers, negotiation, doorbells,
 * interrupts and the per-device I/O thread.
 *
 * Locks: pci.lock (held by the PCI layer around every register access)
 * then wlock. The I/O thread takes wlock only to pick up work and never
 * takes pci.lock, so a vCPU holding pci.lock can wait for it to go idle.
 * Any change to queue or negotiation state happens with the thread idle
 * (quiesce()), so the thread reads that state without a lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "virtio/transport.h"
#include "vmm/vm.h"

#define VIRTIO_PCI_VENDOR 0x1af4
#define VIRTIO_PCI_DEVICE_BASE 0x1040
#define VIRTIO_SAVE_MAGIC 0x56495254u /* "TRIV" */
#define VIRTIO_SAVE_VERSION 1

static void put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint32_t get_le(const void *data, unsigned size)
{
	uint32_t v = 0;

	memcpy(&v, data, size < 4 ? size : 4);
	return v;
}

/* ---- I/O thread ---- */

/* Wait for the I/O thread to finish its round and hold it off. Caller holds pci.lock. */
static void quiesce(struct virtio_dev *vd)
{
	pthread_mutex_lock(&vd->wlock);
	while (vd->busy)
		pthread_cond_wait(&vd->idle, &vd->wlock);
}

static void unquiesce(struct virtio_dev *vd)
{
	pthread_cond_signal(&vd->wcond);
	pthread_mutex_unlock(&vd->wlock);
}

static bool device_live(struct virtio_dev *vd)
{
	uint8_t s = vd->status;

	return (s & VIRTIO_CONFIG_S_DRIVER_OK) && !(s & VIRTIO_CONFIG_S_FAILED) &&
	       !__atomic_load_n(&vd->broken, __ATOMIC_RELAXED);
}

static void process_queue(struct virtio_dev *vd, unsigned q)
{
	struct virtq *vq = &vd->queues[q].vq;

	/* The guest may have turned bus mastering off: no DMA, keep it pending. */
	if (!device_live(vd) || !vq->enabled || !pci_bus_master(&vd->pci))
		return;
	for (;;) {
		virtq_set_notify(vq, false);
		if (vd->ops->handle_queue(vd, q, vq, vd->chain) < 0 || vq->broken) {
			virtio_set_broken(vd);
			return;
		}
		/* Buffers that came while doorbells were off: go round again. */
		if (!virtq_set_notify(vq, true))
			break;
	}
	if (virtq_should_notify(vq))
		virtio_notify_queue(vd, q);
}

static void *virtio_thread(void *arg)
{
	struct virtio_dev *vd = arg;

	pthread_mutex_lock(&vd->wlock);
	for (;;) {
		uint32_t work;

		while (!vd->stop && (vd->paused || !vd->pending))
			pthread_cond_wait(&vd->wcond, &vd->wlock);
		if (vd->stop)
			break;
		work = vd->pending;
		vd->pending = 0;
		vd->busy = true;
		pthread_mutex_unlock(&vd->wlock);
		for (unsigned q = 0; q < vd->ops->num_queues; q++)
			if (work & (1u << q))
				process_queue(vd, q);
		pthread_mutex_lock(&vd->wlock);
		vd->busy = false;
		pthread_cond_broadcast(&vd->idle);
	}
	pthread_mutex_unlock(&vd->wlock);
	return NULL;
}

void virtio_kick(struct virtio_dev *vd, unsigned q)
{
	if (q >= vd->ops->num_queues)
		return;
	pthread_mutex_lock(&vd->wlock);
	vd->pending |= 1u << q;
	pthread_cond_signal(&vd->wcond);
	pthread_mutex_unlock(&vd->wlock);
}

static void kick_all(struct virtio_dev *vd)
{
	for (unsigned q = 0; q < vd->ops->num_queues; q++)
		virtio_kick(vd, q);
}

void virtio_drain(struct virtio_dev *vd)
{
	pthread_mutex_lock(&vd->wlock);
	while (vd->busy || (vd->pending && !vd->paused && !vd->stop))
		pthread_cond_wait(&vd->idle, &vd->wlock);
	pthread_mutex_unlock(&vd->wlock);
}

/* ---- Interrupts ---- */

static void raise_irq(struct virtio_dev *vd, uint16_t vector, uint8_t isr_bit)
{
	if (pci_msix_enabled(&vd->pci)) {
		if (vector != VIRTIO_MSI_NO_VECTOR)
			pci_msix_notify(&vd->pci, vector);
		return;
	}
	__atomic_fetch_or(&vd->isr, isr_bit, __ATOMIC_SEQ_CST);
	pci_intx(&vd->pci, true);
}

void virtio_notify_queue(struct virtio_dev *vd, unsigned q)
{
	raise_irq(vd, __atomic_load_n(&vd->queues[q].vector, __ATOMIC_RELAXED), 1);
}

void virtio_notify_config(struct virtio_dev *vd)
{
	raise_irq(vd, __atomic_load_n(&vd->config_vector, __ATOMIC_RELAXED), 2);
}

void virtio_set_broken(struct virtio_dev *vd)
{
	if (__atomic_exchange_n(&vd->broken, true, __ATOMIC_SEQ_CST))
		return;
	pr_warn("virtio %s: the driver broke a queue; device needs reset", vd->ops->name);
	/* Only once the driver has finished setting up does it expect interrupts. */
	if (vd->status & VIRTIO_CONFIG_S_DRIVER_OK)
		virtio_notify_config(vd);
}

/* ---- Reset and negotiation ---- */

/* Caller holds pci.lock and has quiesced the thread. */
static void virtio_reset_locked(struct virtio_dev *vd)
{
	vd->status = 0;
	vd->driver_features = 0;
	vd->dfselect = vd->gfselect = 0;
	vd->queue_sel = 0;
	vd->config_vector = VIRTIO_MSI_NO_VECTOR;
	for (unsigned q = 0; q < vd->ops->num_queues; q++) {
		struct virtio_queue *vq = &vd->queues[q];

		virtq_release_all(&vq->vq); /* chains the device still held */
		virtq_reset(&vq->vq, &vd->vm->mem);
		vq->vq.size = vq->max_size;
		vq->vector = VIRTIO_MSI_NO_VECTOR;
	}
	vd->pending = 0;
	__atomic_store_n(&vd->broken, false, __ATOMIC_SEQ_CST);
	if (__atomic_exchange_n(&vd->isr, 0, __ATOMIC_SEQ_CST))
		pci_intx(&vd->pci, false);
	if (vd->ops->reset)
		vd->ops->reset(vd);
}

static bool features_ok(struct virtio_dev *vd)
{
	uint64_t f = vd->driver_features;

	if (f & ~vd->host_features) {
		pr_warn_once("virtio %s: driver accepted features %#llx we did not offer",
			     vd->ops->name, (unsigned long long)(f & ~vd->host_features));
		return false;
	}
	if (!(f & (1ull << VIRTIO_F_VERSION_1))) {
		pr_warn_once("virtio %s: driver without VIRTIO_F_VERSION_1 (legacy) refused",
			     vd->ops->name);
		return false;
	}
	return true;
}

static void write_status(struct virtio_dev *vd, uint8_t val)
{
	uint8_t old = vd->status;

	quiesce(vd);
	if (val == 0) {
		virtio_reset_locked(vd);
		unquiesce(vd);
		return;
	}
	if ((val & VIRTIO_CONFIG_S_FEATURES_OK) && !(old & VIRTIO_CONFIG_S_FEATURES_OK)) {
		if (features_ok(vd)) {
			for (unsigned q = 0; q < vd->ops->num_queues; q++) {
				struct virtq *v = &vd->queues[q].vq;

				v->event_idx = virtio_has_feature(vd, VIRTIO_RING_F_EVENT_IDX);
				v->indirect = virtio_has_feature(vd, VIRTIO_RING_F_INDIRECT_DESC);
			}
		} else {
			val &= ~VIRTIO_CONFIG_S_FEATURES_OK;
		}
	}
	/* DRIVER_OK without accepted features is a driver bug: do not run. */
	if ((val & VIRTIO_CONFIG_S_DRIVER_OK) && !(val & VIRTIO_CONFIG_S_FEATURES_OK))
		val &= ~VIRTIO_CONFIG_S_DRIVER_OK;
	vd->status = val & ~VIRTIO_CONFIG_S_NEEDS_RESET;
	unquiesce(vd);
	if ((val & VIRTIO_CONFIG_S_DRIVER_OK) && !(old & VIRTIO_CONFIG_S_DRIVER_OK))
		kick_all(vd);
}

/* ---- Common config ---- */

static struct virtio_queue *selected(struct virtio_dev *vd)
{
	return vd->queue_sel < vd->ops->num_queues ? &vd->queues[vd->queue_sel] : NULL;
}

static void common_read(struct virtio_dev *vd, uint64_t off, void *data, unsigned size)
{
	uint8_t b[VIRTIO_PCI_COMMON_LEN] = {0};
	struct virtio_queue *q = selected(vd);
	uint8_t status = vd->status;

	if (__atomic_load_n(&vd->broken, __ATOMIC_RELAXED))
		status |= VIRTIO_CONFIG_S_NEEDS_RESET;
	put32(b + VIRTIO_PCI_COMMON_DFSELECT, vd->dfselect);
	if (vd->dfselect < 2)
		put32(b + VIRTIO_PCI_COMMON_DF,
		      (uint32_t)(vd->host_features >> (32 * vd->dfselect)));
	put32(b + VIRTIO_PCI_COMMON_GFSELECT, vd->gfselect);
	if (vd->gfselect < 2)
		put32(b + VIRTIO_PCI_COMMON_GF,
		      (uint32_t)(vd->driver_features >> (32 * vd->gfselect)));
	put16(b + VIRTIO_PCI_COMMON_MSIX, vd->config_vector);
	put16(b + VIRTIO_PCI_COMMON_NUMQ, (uint16_t)vd->ops->num_queues);
	b[VIRTIO_PCI_COMMON_STATUS] = status;
	b[VIRTIO_PCI_COMMON_CFGGENERATION] = vd->config_gen;
	put16(b + VIRTIO_PCI_COMMON_Q_SELECT, vd->queue_sel);
	if (q) {
		put16(b + VIRTIO_PCI_COMMON_Q_SIZE, q->vq.size);
		put16(b + VIRTIO_PCI_COMMON_Q_MSIX, q->vector);
		put16(b + VIRTIO_PCI_COMMON_Q_ENABLE, q->vq.enabled);
		put16(b + VIRTIO_PCI_COMMON_Q_NOFF, vd->queue_sel);
		put64(b + VIRTIO_PCI_COMMON_Q_DESCLO, q->vq.desc_gpa);
		put64(b + VIRTIO_PCI_COMMON_Q_AVAILLO, q->vq.avail_gpa);
		put64(b + VIRTIO_PCI_COMMON_Q_USEDLO, q->vq.used_gpa);
	}
	if (off + size <= sizeof(b))
		memcpy(data, b + off, size);
	else
		memset(data, 0xff, size);
}

static uint16_t checked_vector(struct virtio_dev *vd, uint32_t v)
{
	/* A vector the device does not have reads back as NO_VECTOR (4.1.5.1.2). */
	return v < vd->pci.msix.nvec ? (uint16_t)v : VIRTIO_MSI_NO_VECTOR;
}

/* Set half (or all) of a 64-bit queue address; only while the queue is off. */
static void write_addr(struct virtio_dev *vd, uint64_t *field, unsigned half_off, uint32_t v,
		       const void *data, unsigned size)
{
	uint64_t val;

	if (size == 8) {
		memcpy(&val, data, 8);
		*field = val;
	} else if (half_off == 0) {
		*field = (*field & ~0xffffffffull) | v;
	} else {
		*field = (*field & 0xffffffffull) | (uint64_t)v << 32;
	}
}

static void queue_write(struct virtio_dev *vd, struct virtio_queue *q, uint64_t off, uint32_t v,
			const void *data, unsigned size)
{
	/* Queue parameters are frozen while the queue runs. */
	if (q->vq.enabled && off != VIRTIO_PCI_COMMON_Q_MSIX)
		return;
	switch (off) {
	case VIRTIO_PCI_COMMON_Q_SIZE:
		q->vq.size = (uint16_t)v;
		break;
	case VIRTIO_PCI_COMMON_Q_MSIX:
		__atomic_store_n(&q->vector, checked_vector(vd, v), __ATOMIC_RELAXED);
		break;
	case VIRTIO_PCI_COMMON_Q_ENABLE:
		if (v != 1)
			break;
		if (q->vq.size > q->max_size) {
			pr_warn_once("virtio %s: queue size %u above the maximum", vd->ops->name,
				     q->vq.size);
			virtio_set_broken(vd);
			break;
		}
		quiesce(vd);
		if (virtq_enable(&q->vq)) {
			pr_warn_once("virtio %s: driver gave an invalid queue layout",
				     vd->ops->name);
			virtio_set_broken(vd);
		}
		unquiesce(vd);
		break;
	case VIRTIO_PCI_COMMON_Q_DESCLO:
	case VIRTIO_PCI_COMMON_Q_DESCHI:
		write_addr(vd, &q->vq.desc_gpa, off & 4, v, data, size);
		break;
	case VIRTIO_PCI_COMMON_Q_AVAILLO:
	case VIRTIO_PCI_COMMON_Q_AVAILHI:
		write_addr(vd, &q->vq.avail_gpa, off & 4, v, data, size);
		break;
	case VIRTIO_PCI_COMMON_Q_USEDLO:
	case VIRTIO_PCI_COMMON_Q_USEDHI:
		write_addr(vd, &q->vq.used_gpa, off & 4, v, data, size);
		break;
	}
}

/* Natural size of the register at off, 0 if none starts there. */
static unsigned common_reg_size(uint64_t off)
{
	switch (off) {
	case VIRTIO_PCI_COMMON_DFSELECT:
	case VIRTIO_PCI_COMMON_GFSELECT:
	case VIRTIO_PCI_COMMON_GF:
		return 4;
	case VIRTIO_PCI_COMMON_MSIX:
	case VIRTIO_PCI_COMMON_Q_SELECT:
	case VIRTIO_PCI_COMMON_Q_SIZE:
	case VIRTIO_PCI_COMMON_Q_MSIX:
	case VIRTIO_PCI_COMMON_Q_ENABLE:
		return 2;
	case VIRTIO_PCI_COMMON_STATUS:
		return 1;
	case VIRTIO_PCI_COMMON_Q_DESCLO:
	case VIRTIO_PCI_COMMON_Q_AVAILLO:
	case VIRTIO_PCI_COMMON_Q_USEDLO:
		return 8; /* or 4, as two halves */
	case VIRTIO_PCI_COMMON_Q_DESCHI:
	case VIRTIO_PCI_COMMON_Q_AVAILHI:
	case VIRTIO_PCI_COMMON_Q_USEDHI:
		return 4;
	}
	return 0;
}

static void common_write(struct virtio_dev *vd, uint64_t off, const void *data, unsigned size)
{
	unsigned want = common_reg_size(off);
	struct virtio_queue *q = selected(vd);
	uint32_t v = get_le(data, size);

	if (!want || (size != want && !(want == 8 && size == 4))) {
		pr_warn_once("virtio %s: bad common config write at %#llx size %u", vd->ops->name,
			     (unsigned long long)off, size);
		return;
	}
	switch (off) {
	case VIRTIO_PCI_COMMON_DFSELECT:
		vd->dfselect = v;
		break;
	case VIRTIO_PCI_COMMON_GFSELECT:
		vd->gfselect = v;
		break;
	case VIRTIO_PCI_COMMON_GF:
		/* Features are fixed once FEATURES_OK was accepted. */
		if (vd->gfselect < 2 && !(vd->status & VIRTIO_CONFIG_S_FEATURES_OK)) {
			unsigned sh = 32 * vd->gfselect;

			vd->driver_features &= ~(0xffffffffull << sh);
			vd->driver_features |= (uint64_t)v << sh;
		}
		break;
	case VIRTIO_PCI_COMMON_MSIX:
		__atomic_store_n(&vd->config_vector, checked_vector(vd, v), __ATOMIC_RELAXED);
		break;
	case VIRTIO_PCI_COMMON_STATUS:
		write_status(vd, (uint8_t)v);
		break;
	case VIRTIO_PCI_COMMON_Q_SELECT:
		vd->queue_sel = (uint16_t)v;
		break;
	default:
		if (q)
			queue_write(vd, q, off, v, data, size);
		break;
	}
}

/* ---- BAR 0 ---- */

static void vp_bar_read(struct pci_dev *pd, int bar, uint64_t off, void *data, unsigned size)
{
	struct virtio_dev *vd = pd->priv;
	uint8_t isr;

	memset(data, 0, size);
	if (off < VIRTIO_PCI_COMMON_LEN) {
		common_read(vd, off, data, size);
	} else if (off == VIRTIO_PCI_ISR_OFF) {
		/* Reading the ISR acknowledges it and lowers INTx. */
		isr = __atomic_exchange_n(&vd->isr, 0, __ATOMIC_SEQ_CST);
		memcpy(data, &isr, 1);
		if (isr)
			pci_intx(pd, false);
	} else if (off >= VIRTIO_PCI_DEVCFG_OFF &&
		   off - VIRTIO_PCI_DEVCFG_OFF + size <= vd->ops->config_size) {
		memcpy(data, vd->config + (off - VIRTIO_PCI_DEVCFG_OFF), size);
	}
}

static void vp_bar_write(struct pci_dev *pd, int bar, uint64_t off, const void *data, unsigned size)
{
	struct virtio_dev *vd = pd->priv;
	uint64_t n;

	if (off < VIRTIO_PCI_COMMON_LEN) {
		common_write(vd, off, data, size);
	} else if (off >= VIRTIO_PCI_NOTIFY_OFF) {
		n = (off - VIRTIO_PCI_NOTIFY_OFF) / VIRTIO_PCI_NOTIFY_MULT;
		if (n < vd->ops->num_queues)
			virtio_kick(vd, (unsigned)n);
	} else if (off >= VIRTIO_PCI_DEVCFG_OFF &&
		   off - VIRTIO_PCI_DEVCFG_OFF + size <= vd->ops->config_size) {
		if (vd->ops->config_write)
			vd->ops->config_write(vd, (unsigned)(off - VIRTIO_PCI_DEVCFG_OFF), data,
					      size);
	}
}

/*
 * The VIRTIO_PCI_CAP_PCI_CFG window (4.1.4.9): the driver puts bar, offset
 * and length (1, 2 or 4) in the capability; pci_cfg_data then reads or
 * writes that BAR location.
 */
#define PCI_CFG_CAP_LEN 20
#define PCI_CFG_CAP_DATA 16

static bool window_target(struct virtio_dev *vd, int *bar, uint32_t *off, uint32_t *len)
{
	const uint8_t *c = vd->pci.cfg + vd->pci_cfg_cap;

	*bar = c[4];
	memcpy(off, c + 8, 4);
	memcpy(len, c + 12, 4);
	return (*len == 1 || *len == 2 || *len == 4) && !(*off & (*len - 1)) && *bar < PCI_NUM_BARS;
}

static bool hits_window_data(struct virtio_dev *vd, unsigned off, unsigned size)
{
	unsigned d = vd->pci_cfg_cap + PCI_CFG_CAP_DATA;

	return vd->pci_cfg_cap && off < d + 4 && off + size > d;
}

static void vp_cfg_read(struct pci_dev *pd, unsigned off, unsigned size)
{
	struct virtio_dev *vd = pd->priv;
	uint8_t *data = pd->cfg + vd->pci_cfg_cap + PCI_CFG_CAP_DATA;
	uint32_t boff, len;
	int bar;

	if (!hits_window_data(vd, off, size))
		return;
	memset(data, 0, 4);
	if (window_target(vd, &bar, &boff, &len))
		pci_bar_access_locked(pd, bar, boff, data, len, false);
}

static void window_write(struct virtio_dev *vd)
{
	uint8_t data[4];
	uint32_t boff, len;
	int bar;

	if (!window_target(vd, &bar, &boff, &len))
		return;
	memcpy(data, vd->pci.cfg + vd->pci_cfg_cap + PCI_CFG_CAP_DATA, 4);
	pci_bar_access_locked(&vd->pci, bar, boff, data, len, true);
}

static void vp_cfg_write(struct pci_dev *pd, unsigned off, unsigned size, uint32_t val)
{
	struct virtio_dev *vd = pd->priv;

	if (hits_window_data(vd, off, size))
		window_write(vd);
	/* Bus mastering back on: doorbells held meanwhile can run now. */
	if (off <= PCI_COMMAND && off + size > PCI_COMMAND && pci_bus_master(pd) && device_live(vd))
		kick_all(vd);
}

static const struct pci_dev_ops virtio_pci_ops = {
    .name = "virtio-pci",
    .cfg_write = vp_cfg_write,
    .cfg_read = vp_cfg_read,
    .bar_read = vp_bar_read,
    .bar_write = vp_bar_write,
};

/* ---- VM device ops: pause, resume, save, restore, reset, destroy ---- */

static void vd_pause(void *opaque)
{
	struct virtio_dev *vd = opaque;

	pthread_mutex_lock(&vd->wlock);
	vd->paused = true;
	while (vd->busy)
		pthread_cond_wait(&vd->idle, &vd->wlock);
	pthread_mutex_unlock(&vd->wlock);
}

static void vd_resume(void *opaque)
{
	struct virtio_dev *vd = opaque;

	pthread_mutex_lock(&vd->wlock);
	vd->paused = false;
	pthread_cond_signal(&vd->wcond);
	pthread_mutex_unlock(&vd->wlock);
}

static void vd_reset(void *opaque)
{
	struct virtio_dev *vd = opaque;

	pthread_mutex_lock(&vd->pci.lock);
	quiesce(vd);
	virtio_reset_locked(vd);
	unquiesce(vd);
	pthread_mutex_unlock(&vd->pci.lock);
	pci_dev_reset(&vd->pci);
}

struct virtio_save_hdr {
	uint32_t magic, version;
	uint64_t driver_features;
	uint32_t dfselect, gfselect;
	uint16_t queue_sel, config_vector, nqueues;
	uint8_t status, config_gen, isr, broken, pad[4];
};

struct virtio_save_queue {
	uint64_t desc, avail, used;
	uint16_t size, vector, last_avail, used_idx, signalled_used;
	uint8_t enabled, signalled_valid;
};

/* The VM is paused: the I/O thread is idle and vCPUs are out. */
static int vd_save(void *opaque, struct dev_buf *out)
{
	struct virtio_dev *vd = opaque;
	struct virtio_save_hdr h = {
	    .magic = VIRTIO_SAVE_MAGIC,
	    .version = VIRTIO_SAVE_VERSION,
	    .driver_features = vd->driver_features,
	    .dfselect = vd->dfselect,
	    .gfselect = vd->gfselect,
	    .queue_sel = vd->queue_sel,
	    .config_vector = vd->config_vector,
	    .nqueues = (uint16_t)vd->ops->num_queues,
	    .status = vd->status,
	    .config_gen = vd->config_gen,
	    .isr = vd->isr,
	    .broken = vd->broken,
	};
	int err = pci_dev_save(&vd->pci, out);

	if (!err)
		err = dev_buf_put(out, &h, sizeof(h));
	for (unsigned q = 0; !err && q < vd->ops->num_queues; q++) {
		const struct virtio_queue *vq = &vd->queues[q];
		struct virtio_save_queue s = {
		    .desc = vq->vq.desc_gpa,
		    .avail = vq->vq.avail_gpa,
		    .used = vq->vq.used_gpa,
		    .size = vq->vq.size,
		    .vector = vq->vector,
		    .last_avail = vq->vq.last_avail,
		    .used_idx = vq->vq.used_idx,
		    .signalled_used = vq->vq.signalled_used,
		    .enabled = vq->vq.enabled,
		    .signalled_valid = vq->vq.signalled_used_valid,
		};

		err = dev_buf_put(out, &s, sizeof(s));
	}
	return err;
}

static int restore_queue(struct virtio_dev *vd, unsigned q, const struct virtio_save_queue *s)
{
	struct virtio_queue *vq = &vd->queues[q];

	if (s->size > vq->max_size)
		return -EINVAL;
	vq->vq.desc_gpa = s->desc;
	vq->vq.avail_gpa = s->avail;
	vq->vq.used_gpa = s->used;
	vq->vq.size = s->size;
	vq->vector = checked_vector(vd, s->vector);
	vq->vq.event_idx = virtio_has_feature(vd, VIRTIO_RING_F_EVENT_IDX);
	vq->vq.indirect = virtio_has_feature(vd, VIRTIO_RING_F_INDIRECT_DESC);
	if (s->enabled) {
		if (virtq_enable(&vq->vq))
			return -EINVAL;
		vq->vq.last_avail = s->last_avail;
		vq->vq.used_idx = s->used_idx;
		vq->vq.signalled_used = s->signalled_used;
		vq->vq.signalled_used_valid = s->signalled_valid;
	}
	return 0;
}

static int vd_restore(void *opaque, const void *data, uint64_t len)
{
	struct virtio_dev *vd = opaque;
	const uint8_t *p = data;
	struct virtio_save_hdr h;
	int used, err = 0;

	used = pci_dev_restore(&vd->pci, data, len);
	if (used < 0)
		return used;
	p += used;
	len -= (uint64_t)used;
	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, p, sizeof(h));
	if (h.magic != VIRTIO_SAVE_MAGIC || h.version != VIRTIO_SAVE_VERSION ||
	    h.nqueues != vd->ops->num_queues ||
	    len < sizeof(h) + (uint64_t)h.nqueues * sizeof(struct virtio_save_queue))
		return -EINVAL;
	p += sizeof(h);
	pthread_mutex_lock(&vd->pci.lock);
	quiesce(vd);
	virtio_reset_locked(vd);
	vd->driver_features = h.driver_features & vd->host_features;
	vd->dfselect = h.dfselect;
	vd->gfselect = h.gfselect;
	vd->queue_sel = h.queue_sel;
	vd->config_vector = checked_vector(vd, h.config_vector);
	vd->config_gen = h.config_gen;
	vd->isr = h.isr & 3;
	for (unsigned q = 0; !err && q < h.nqueues; q++) {
		struct virtio_save_queue s;

		memcpy(&s, p + q * sizeof(s), sizeof(s));
		err = restore_queue(vd, q, &s);
	}
	vd->status = err ? 0 : h.status & ~VIRTIO_CONFIG_S_NEEDS_RESET;
	vd->broken = err ? false : h.broken;
	if (err)
		virtio_reset_locked(vd);
	unquiesce(vd);
	pthread_mutex_unlock(&vd->pci.lock);
	if (!err && device_live(vd))
		kick_all(vd); /* doorbells rung just before the save */
	return err;
}

static void vd_free(struct virtio_dev *vd)
{
	pthread_mutex_destroy(&vd->wlock);
	pthread_cond_destroy(&vd->wcond);
	pthread_cond_destroy(&vd->idle);
	free(vd->chain);
	free(vd);
}

static void vd_destroy(void *opaque)
{
	struct virtio_dev *vd = opaque;

	if (vd->thread_started) {
		pthread_mutex_lock(&vd->wlock);
		vd->stop = true;
		pthread_cond_signal(&vd->wcond);
		pthread_mutex_unlock(&vd->wlock);
		pthread_join(vd->thread, NULL);
	}
	pci_dev_remove(&vd->pci);
	if (vd->ops->destroy)
		vd->ops->destroy(vd);
	vd_free(vd);
}

static const struct device_ops virtio_device_ops = {
    .name = "virtio",
    .pause = vd_pause,
    .resume = vd_resume,
    .save = vd_save,
    .restore = vd_restore,
    .reset = vd_reset,
    .destroy = vd_destroy,
};

/* ---- Creation ---- */

static int add_vcap(struct pci_dev *pd, uint8_t type, uint32_t off, uint32_t len, bool notify)
{
	uint8_t cap[20] = {0};

	cap[2] = notify ? 20 : 16;
	cap[3] = type;
	cap[4] = 0; /* BAR 0 */
	put32(cap + 8, off);
	put32(cap + 12, len);
	if (notify)
		put32(cap + 16, VIRTIO_PCI_NOTIFY_MULT);
	return pci_dev_add_cap(pd, PCI_CAP_ID_VNDR, cap, cap[2]);
}

static int add_cfg_window(struct virtio_dev *vd)
{
	uint8_t cap[PCI_CFG_CAP_LEN] = {0};
	int off;

	cap[2] = PCI_CFG_CAP_LEN;
	cap[3] = VIRTIO_PCI_CAP_PCI_CFG;
	off = pci_dev_add_cap(&vd->pci, PCI_CAP_ID_VNDR, cap, sizeof(cap));
	if (off < 0)
		return off;
	vd->pci_cfg_cap = (uint8_t)off;
	/* bar, offset, length and data are the driver's to write. */
	vd->pci.wmask[off + 4] = 0xff;
	memset(vd->pci.wmask + off + 8, 0xff, 12);
	return 0;
}

static int setup_pci(struct virtio_dev *vd)
{
	const struct virtio_dev_ops *ops = vd->ops;
	struct pci_dev *pd = &vd->pci;
	unsigned nq = ops->num_queues;
	int err;

	pci_dev_setup(pd, vd->vm, &virtio_pci_ops, vd, VIRTIO_PCI_VENDOR,
		      (uint16_t)(VIRTIO_PCI_DEVICE_BASE + ops->device_type), ops->class_code, 1);
	snprintf(pd->name, sizeof(pd->name), "virtio-%s", ops->name);
	put16(pd->cfg + PCI_SUBSYSTEM_VENDOR_ID, VIRTIO_PCI_VENDOR);
	put16(pd->cfg + PCI_SUBSYSTEM_ID, 0x1100);
	pd->cfg[PCI_INTERRUPT_PIN] = 1;
	err = pci_dev_add_bar(pd, 0, VIRTIO_PCI_BAR_SIZE);
	if (!err)
		err = pci_dev_add_bar(pd, VIRTIO_PCI_MSIX_BAR, 0x1000);
	if (!err)
		err = pci_dev_add_msix(pd, nq + 1, VIRTIO_PCI_MSIX_BAR, 0, 0x800);
	if (!err)
		err = add_vcap(pd, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_COMMON_OFF,
			       VIRTIO_PCI_COMMON_LEN, false);
	if (err >= 0)
		err = add_vcap(pd, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_NOTIFY_OFF,
			       VIRTIO_PCI_NOTIFY_MULT * nq, true);
	if (err >= 0)
		err = add_vcap(pd, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_ISR_OFF, 1, false);
	if (err >= 0 && ops->config_size)
		err = add_vcap(pd, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_DEVCFG_OFF,
			       ops->config_size, false);
	if (err >= 0)
		err = add_cfg_window(vd);
	return err < 0 ? err : 0;
}

int virtio_pci_create(struct vm *vm, const struct virtio_dev_ops *ops, void *priv,
		      const void *config, struct virtio_dev **out)
{
	struct virtio_dev *vd;
	int err;

	if (!ops->num_queues || ops->num_queues > VIRTIO_MAX_QUEUES ||
	    ops->config_size > sizeof(vd->config) || ops->queue_size > VIRTQ_MAX_SIZE ||
	    !ops->queue_size || (ops->queue_size & (ops->queue_size - 1)))
		return -EINVAL;
	vd = calloc(1, sizeof(*vd));
	if (!vd)
		return -ENOMEM;
	vd->chain = malloc(sizeof(*vd->chain));
	vd->vm = vm;
	vd->ops = ops;
	vd->priv = priv;
	pthread_mutex_init(&vd->wlock, NULL);
	pthread_cond_init(&vd->wcond, NULL);
	pthread_cond_init(&vd->idle, NULL);
	if (!vd->chain) {
		err = -ENOMEM;
		goto fail;
	}
	if (config)
		memcpy(vd->config, config, ops->config_size);
	vd->host_features = ops->features | 1ull << VIRTIO_F_VERSION_1 |
			    1ull << VIRTIO_RING_F_INDIRECT_DESC | 1ull << VIRTIO_RING_F_EVENT_IDX;
	for (unsigned q = 0; q < ops->num_queues; q++)
		vd->queues[q].max_size = ops->queue_size;
	virtio_reset_locked(vd);
	err = setup_pci(vd);
	if (err)
		goto fail;
	err = pci_dev_add(vm, &vd->pci);
	if (err)
		goto fail;
	err = -pthread_create(&vd->thread, NULL, virtio_thread, vd);
	if (err)
		goto fail_remove;
	vd->thread_started = true;
	err = vm_add_device(vm, &virtio_device_ops, vd);
	if (err)
		goto fail_thread;
	*out = vd;
	return 0;

fail_thread:
	pthread_mutex_lock(&vd->wlock);
	vd->stop = true;
	pthread_cond_signal(&vd->wcond);
	pthread_mutex_unlock(&vd->wlock);
	pthread_join(vd->thread, NULL);
fail_remove:
	pci_dev_remove(&vd->pci);
fail:
	vd_free(vd);
	return err;
}
