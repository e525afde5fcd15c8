/*
 * virtio-blk (virtio 1.x, section 5.2) on a struct blockdev.
 *
 * A request is a header (type, sector) in the readable part of the chain,
 * data, and a status byte in the last writable byte. Everything is checked
 * before the block layer sees it: header and status present, data a multiple
 * of 512 bytes, sector*512 without overflow, the range inside the disk,
 * discard/write-zeroes segments bounded in number and size, writes refused
 * on a read-only disk.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/block.h"
#include "util/log.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define VIRTIO_ID_BLOCK 2

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WZ_UNMAP 1
#define VIRTIO_BLK_ID_BYTES 20

#define BLK_QUEUE_SIZE 256
#define BLK_SIZE_MAX (1u << 20)		/* largest single buffer */
#define BLK_MAX_RANGE_SECTORS 0x3fffffu /* per discard/write-zeroes segment */

/* Config layout (struct virtio_blk_config), offsets used here. */
#define CFG_CAPACITY 0
#define CFG_SIZE_MAX 8
#define CFG_SEG_MAX 12
#define CFG_BLK_SIZE 20
#define CFG_NUM_QUEUES 34
#define CFG_MAX_DISCARD_SECTORS 36
#define CFG_MAX_DISCARD_SEG 40
#define CFG_DISCARD_ALIGN 44
#define CFG_MAX_WZ_SECTORS 48
#define CFG_MAX_WZ_SEG 52
#define CFG_SIZE 60

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct blk_range {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

struct vblk {
	struct blockdev *bd;
	bool readonly;
	char serial[VIRTIO_BLK_ID_BYTES];
	struct iovec data[VIRTQ_MAX_SIZE]; /* scratch, used on the I/O thread only */
	unsigned index;			   /* 0 for the first disk added */
	/*
	 * Switching the backend under a running guest (virtio_blk_call): bd
	 * changes only while hold is set and no request is in flight; the I/O
	 * thread waits at the next request, which stays in the queue until then.
	 */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool hold, inflight;
	pthread_mutex_t admin; /* one virtio_blk_call at a time */
};

/* dst = the bytes [skip, skip+len) of src, as iovecs; returns how many. */
static int iov_slice(const struct iovec *src, unsigned n, uint64_t skip, uint64_t len,
		     struct iovec *dst)
{
	int cnt = 0;

	for (unsigned i = 0; i < n && len; i++) {
		uint64_t l = src[i].iov_len, c;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		c = l - skip < len ? l - skip : len;
		dst[cnt].iov_base = (uint8_t *)src[i].iov_base + skip;
		dst[cnt].iov_len = c;
		cnt++;
		len -= c;
		skip = 0;
	}
	return cnt;
}

/* Is [sector*512, +len) inside the disk, without overflow? */
static bool range_ok(const struct vblk *vb, uint64_t sector, uint64_t len)
{
	uint64_t off;

	if (sector > UINT64_MAX / 512)
		return false;
	off = sector * 512;
	return off <= vb->bd->size && len <= vb->bd->size - off;
}

static uint8_t do_rw(struct vblk *vb, const struct virtq_chain *ch, const struct blk_req_hdr *h,
		     uint32_t *written)
{
	bool write = h->type == VIRTIO_BLK_T_OUT;
	uint64_t len = write ? ch->out_len - sizeof(*h) : ch->in_len - 1u;
	int n, r;

	if (write && vb->readonly)
		return VIRTIO_BLK_S_IOERR;
	if (len % 512 || !range_ok(vb, h->sector, len)) {
		pr_warn_once("virtio-blk: request outside the disk or not sector sized");
		return VIRTIO_BLK_S_IOERR;
	}
	if (write) {
		n = iov_slice(ch->iov, ch->nout, sizeof(*h), len, vb->data);
		r = blk_pwritev(vb->bd, vb->data, n, h->sector * 512);
	} else {
		n = iov_slice(ch->iov + ch->nout, ch->nin, 0, len, vb->data);
		r = blk_preadv(vb->bd, vb->data, n, h->sector * 512);
		if (r >= 0)
			*written = (uint32_t)len;
	}
	return r < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

static uint8_t do_ranges(struct vblk *vb, const struct virtq_chain *ch, uint32_t type)
{
	uint64_t payload = ch->out_len - sizeof(struct blk_req_hdr);
	struct blk_range rg;
	uint64_t off, len;
	int r;

	if (vb->readonly)
		return VIRTIO_BLK_S_IOERR;
	/* We advertise one segment per request. */
	if (payload != sizeof(rg))
		return VIRTIO_BLK_S_UNSUPP;
	iov_to_buf(ch->iov, ch->nout, sizeof(struct blk_req_hdr), &rg, sizeof(rg));
	if (type == VIRTIO_BLK_T_DISCARD ? rg.flags : rg.flags & ~VIRTIO_BLK_WZ_UNMAP)
		return VIRTIO_BLK_S_UNSUPP;
	len = (uint64_t)rg.num_sectors * 512;
	if (rg.num_sectors > BLK_MAX_RANGE_SECTORS || !range_ok(vb, rg.sector, len))
		return VIRTIO_BLK_S_IOERR;
	off = rg.sector * 512;
	r = type == VIRTIO_BLK_T_DISCARD ? blk_discard(vb->bd, off, len)
					 : blk_write_zeroes(vb->bd, off, len);
	return r < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

static uint8_t do_get_id(struct vblk *vb, const struct virtq_chain *ch, uint32_t *written)
{
	uint64_t room = ch->in_len - 1u;
	uint64_t n = room < VIRTIO_BLK_ID_BYTES ? room : VIRTIO_BLK_ID_BYTES;

	*written = (uint32_t)iov_from_buf(ch->iov + ch->nout, ch->nin, 0, vb->serial, n);
	return VIRTIO_BLK_S_OK;
}

/* Handle one chain; returns the used length (bytes written, status included). */
static uint32_t blk_request(struct vblk *vb, const struct virtq_chain *ch)
{
	struct blk_req_hdr h;
	uint32_t written = 0;
	uint8_t st;

	if (ch->in_len < 1) {
		pr_warn_once("virtio-blk: request without a status byte dropped");
		return 0;
	}
	if (ch->out_len < sizeof(h)) {
		st = VIRTIO_BLK_S_IOERR;
		goto done;
	}
	iov_to_buf(ch->iov, ch->nout, 0, &h, sizeof(h));
	switch (h.type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		st = do_rw(vb, ch, &h, &written);
		break;
	case VIRTIO_BLK_T_FLUSH:
		st = blk_flush(vb->bd) < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
		break;
	case VIRTIO_BLK_T_GET_ID:
		st = do_get_id(vb, ch, &written);
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		st = do_ranges(vb, ch, h.type);
		break;
	default:
		st = VIRTIO_BLK_S_UNSUPP;
		break;
	}
done:
	/* The status is the chain's very last writable byte. */
	iov_from_buf(ch->iov + ch->nout, ch->nin, ch->in_len - 1u, &st, 1);
	return written + 1;
}

static int blk_handle_queue(struct virtio_dev *vd, unsigned q, struct virtq *vq,
			    struct virtq_chain *ch)
{
	struct vblk *vb = vd->priv;
	int r;

	while ((r = virtq_pop(vq, ch)) > 0) {
		uint32_t used;

		pthread_mutex_lock(&vb->lock);
		while (vb->hold)
			pthread_cond_wait(&vb->cond, &vb->lock);
		vb->inflight = true;
		pthread_mutex_unlock(&vb->lock);
		used = blk_request(vb, ch);
		pthread_mutex_lock(&vb->lock);
		vb->inflight = false;
		pthread_cond_broadcast(&vb->cond);
		pthread_mutex_unlock(&vb->lock);
		virtq_push(vq, ch->head, used);
	}
	return r;
}

static void blk_destroy(struct virtio_dev *vd)
{
	struct vblk *vb = vd->priv;

	blk_close(vb->bd);
	pthread_mutex_destroy(&vb->lock);
	pthread_cond_destroy(&vb->cond);
	pthread_mutex_destroy(&vb->admin);
	free(vb);
}

static const struct virtio_dev_ops blk_ops_rw = {
    .name = "blk",
    .device_type = VIRTIO_ID_BLOCK,
    .class_code = 0x010000,
    .features = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
		1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH |
		1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES,
    .num_queues = 1,
    .queue_size = BLK_QUEUE_SIZE,
    .config_size = CFG_SIZE,
    .handle_queue = blk_handle_queue,
    .destroy = blk_destroy,
};

static const struct virtio_dev_ops blk_ops_ro = {
    .name = "blk",
    .device_type = VIRTIO_ID_BLOCK,
    .class_code = 0x010000,
    .features = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
		1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH |
		1ull << VIRTIO_BLK_F_RO,
    .num_queues = 1,
    .queue_size = BLK_QUEUE_SIZE,
    .config_size = CFG_SIZE,
    .handle_queue = blk_handle_queue,
    .destroy = blk_destroy,
};

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void blk_config(const struct vblk *vb, uint8_t *cfg)
{
	uint64_t sectors = vb->bd->size / 512;
	uint16_t nq = 1;

	memset(cfg, 0, CFG_SIZE);
	memcpy(cfg + CFG_CAPACITY, &sectors, 8);
	put32(cfg + CFG_SIZE_MAX, BLK_SIZE_MAX);
	put32(cfg + CFG_SEG_MAX, BLK_QUEUE_SIZE - 2); /* header and status take two */
	put32(cfg + CFG_BLK_SIZE, 512);
	memcpy(cfg + CFG_NUM_QUEUES, &nq, 2);
	put32(cfg + CFG_MAX_DISCARD_SECTORS, BLK_MAX_RANGE_SECTORS);
	put32(cfg + CFG_MAX_DISCARD_SEG, 1);
	put32(cfg + CFG_DISCARD_ALIGN, 8);
	put32(cfg + CFG_MAX_WZ_SECTORS, BLK_MAX_RANGE_SECTORS);
	put32(cfg + CFG_MAX_WZ_SEG, 1);
}

/* The serial (GET_ID): the image's file name, at most 20 bytes, NUL padded. */
static void blk_serial(struct vblk *vb, const char *spec)
{
	const char *base = strrchr(spec, '/');
	size_t n;

	base = base ? base + 1 : spec;
	n = strlen(base);
	if (n > VIRTIO_BLK_ID_BYTES)
		base += n - VIRTIO_BLK_ID_BYTES;
	memset(vb->serial, 0, sizeof(vb->serial));
	memcpy(vb->serial, base, n < VIRTIO_BLK_ID_BYTES ? n : VIRTIO_BLK_ID_BYTES);
}

/* The disk behind a registered device, or NULL if it is not a virtio-blk device. */
static struct vblk *device_disk(const struct device *d)
{
	const struct virtio_dev *vd;

	if (!d->ops->name || strcmp(d->ops->name, "virtio"))
		return NULL;
	vd = d->dev;
	return vd->ops == &blk_ops_rw || vd->ops == &blk_ops_ro ? vd->priv : NULL;
}

static unsigned count_disks(struct vm *vm)
{
	struct device *d;
	unsigned n = 0;

	pthread_mutex_lock(&vm->lock);
	d = vm->devices;
	pthread_mutex_unlock(&vm->lock);
	/* The registry only grows at its head; entries live until vm_destroy(). */
	for (; d; d = d->next)
		n += device_disk(d) != NULL;
	return n;
}

struct vblk *virtio_blk_find(struct vm *vm, unsigned n)
{
	struct device *d;

	pthread_mutex_lock(&vm->lock);
	d = vm->devices;
	pthread_mutex_unlock(&vm->lock);
	for (; d; d = d->next) {
		struct vblk *vb = device_disk(d);

		if (vb && vb->index == n)
			return vb;
	}
	return NULL;
}

bool virtio_blk_readonly(const struct vblk *vb)
{
	return vb->readonly;
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int virtio_blk_call(struct vblk *vb, bool hold, int (*fn)(struct blockdev **bd, void *arg),
		    void *arg, uint64_t *held_ns)
{
	struct blockdev *bd;
	uint64_t t0 = 0, size;
	int r;

	pthread_mutex_lock(&vb->admin);
	bd = vb->bd;
	size = bd->size; /* fn may free the old device */
	if (hold) {
		pthread_mutex_lock(&vb->lock);
		vb->hold = true;
		while (vb->inflight)
			pthread_cond_wait(&vb->cond, &vb->lock);
		pthread_mutex_unlock(&vb->lock);
		t0 = now_ns();
	}
	r = fn(&bd, arg);
	if (bd != vb->bd && (!hold || bd->size != size)) {
		pr_err("virtio-blk: a disk's backend may only be replaced by one of the same size");
		r = r < 0 ? r : -EINVAL;
	} else {
		vb->bd = bd;
	}
	if (hold) {
		if (held_ns)
			*held_ns = now_ns() - t0;
		pthread_mutex_lock(&vb->lock);
		vb->hold = false;
		pthread_cond_broadcast(&vb->cond);
		pthread_mutex_unlock(&vb->lock);
	}
	pthread_mutex_unlock(&vb->admin);
	return r;
}

int virtio_blk_add(struct vm *vm, const char *spec, bool readonly)
{
	struct virtio_dev *vd;
	uint8_t cfg[CFG_SIZE];
	struct vblk *vb;
	int err;

	vb = calloc(1, sizeof(*vb));
	if (!vb)
		return -ENOMEM;
	err = blk_open(spec, readonly, &vb->bd);
	if (err) {
		pr_err("virtio-blk: cannot open %s: %s", spec, strerror(-err));
		free(vb);
		return err;
	}
	pthread_mutex_init(&vb->lock, NULL);
	pthread_cond_init(&vb->cond, NULL);
	pthread_mutex_init(&vb->admin, NULL);
	vb->index = count_disks(vm);
	vb->readonly = readonly || vb->bd->readonly;
	if (vb->bd->size % 512)
		pr_warn("virtio-blk: %s: size not a multiple of 512; the tail is not visible",
			spec);
	blk_serial(vb, spec);
	blk_config(vb, cfg);
	err = virtio_pci_create(vm, vb->readonly ? &blk_ops_ro : &blk_ops_rw, vb, cfg, &vd);
	if (err) {
		pr_err("virtio-blk: %s: %s", spec, strerror(-err));
		blk_close(vb->bd);
		free(vb);
	}
	return err;
}
