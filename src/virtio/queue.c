/*
 * Split virtqueue, device side. tern runs x86 guests on x86 hosts, so the
 * rings' little-endian fields are used as they are.
 */
#include "virtio/queue.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "util/log.h"

/* Offsets (in u16 units) inside the avail ring: flags, idx, ring[], used_event. */
#define AVAIL_FLAGS 0
#define AVAIL_IDX 1
#define AVAIL_RING 2

void virtq_reset(struct virtq *vq, struct guest_mem *mem)
{
	/* Everything but the pin records, which only npins makes meaningful. */
	memset(vq, 0, offsetof(struct virtq, pins));
	vq->mem = mem;
}

/* Drop pin record i: unpin its range and move the last record into its slot. */
static void pin_drop(struct virtq *vq, unsigned i)
{
	gm_unpin_off(vq->mem, vq->pins[i].off, vq->pins[i].len);
	vq->pins[i] = vq->pins[--vq->npins];
}

void virtq_release_all(struct virtq *vq)
{
	while (vq->npins)
		pin_drop(vq, vq->npins - 1);
}

void virtq_unpin(struct virtq *vq, uint16_t head)
{
	for (unsigned i = 0; i < vq->npins;) {
		if (vq->pins[i].head == head)
			pin_drop(vq, i);
		else
			i++;
	}
}

/* Undo the pins a failed pop took: records from first on. */
static void pins_rollback(struct virtq *vq, unsigned first)
{
	while (vq->npins > first)
		pin_drop(vq, vq->npins - 1);
}

static bool is_pow2(uint16_t n)
{
	return n && !(n & (n - 1));
}

int virtq_enable(struct virtq *vq)
{
	uint16_t n = vq->size;

	if (!is_pow2(n) || n > VIRTQ_MAX_SIZE)
		return -EINVAL;
	/* Alignments from the spec (2.7): 16 for descriptors, 2 avail, 4 used. */
	if ((vq->desc_gpa & 15) || (vq->avail_gpa & 1) || (vq->used_gpa & 3))
		return -EINVAL;
	vq->desc = gm_ptr(vq->mem, vq->desc_gpa, virtq_desc_bytes(n));
	vq->avail = gm_ptr(vq->mem, vq->avail_gpa, virtq_avail_bytes(n));
	vq->used = gm_ptr(vq->mem, vq->used_gpa, virtq_used_bytes(n));
	if (!vq->desc || !vq->avail || !vq->used) {
		vq->desc = NULL;
		vq->avail = NULL;
		vq->used = NULL;
		return -EINVAL;
	}
	vq->last_avail = 0;
	vq->used_idx = 0;
	vq->signalled_used_valid = false;
	vq->broken = false;
	vq->enabled = true;
	return 0;
}

static int mark_broken(struct virtq *vq, const char *why)
{
	if (!vq->broken)
		pr_warn("virtqueue broken by the driver: %s", why);
	vq->broken = true;
	return -EIO;
}

/* Copy a descriptor out of guest memory once: the guest may change it under us. */
static struct virtq_desc read_desc(const volatile struct virtq_desc *p)
{
	struct virtq_desc d;

	d.addr = p->addr;
	d.len = p->len;
	d.flags = p->flags;
	d.next = p->next;
	return d;
}

/*
 * Pin a buffer for the transfer, before it is translated: once pinned, no
 * page of it can be released under the device. Zero-length buffers need none.
 */
static int pin_buffer(struct virtq *vq, uint16_t head, const struct virtq_desc *d)
{
	uint8_t *p;

	if (!d->len)
		return 0;
	p = gm_ptr(vq->mem, d->addr, d->len);
	if (!p)
		return mark_broken(vq, "buffer outside guest RAM");
	if (vq->npins >= VIRTQ_MAX_PINS)
		return mark_broken(vq, "too many buffers in flight");
	if (gm_pin_off(vq->mem, (uint64_t)(p - vq->mem->hva), d->len))
		return mark_broken(vq, "buffer pinned too often");
	vq->pins[vq->npins++] =
	    (struct virtq_pin){.off = (uint64_t)(p - vq->mem->hva), .len = d->len, .head = head};
	return 0;
}

/* Append one buffer to the chain; limit is the most buffers the chain may have. */
static int chain_add(struct virtq *vq, struct virtq_chain *ch, const struct virtq_desc *d,
		     unsigned limit)
{
	unsigned i = ch->nout + ch->nin;
	void *p;

	if (i >= limit || i >= VIRTQ_MAX_SIZE)
		return mark_broken(vq, "chain longer than the queue");
	if (pin_buffer(vq, ch->head, d))
		return -EIO;
	if (d->flags & VIRTQ_DESC_F_WRITE) {
		if ((uint64_t)ch->in_len + d->len > UINT32_MAX)
			return mark_broken(vq, "chain length overflows");
		p = gm_ptr_w(vq->mem, d->addr, d->len);
		ch->in_len += d->len;
		ch->nin++;
	} else {
		if (ch->nin)
			return mark_broken(vq, "readable buffer after a writable one");
		if ((uint64_t)ch->out_len + d->len > UINT32_MAX)
			return mark_broken(vq, "chain length overflows");
		p = gm_ptr(vq->mem, d->addr, d->len);
		ch->out_len += d->len;
		ch->nout++;
	}
	if (!p)
		return mark_broken(vq, "buffer outside guest RAM");
	ch->iov[i].iov_base = p;
	ch->iov[i].iov_len = d->len;
	return 0;
}

/* Walk an indirect table: bounded by its own length, no nesting. */
static int walk_indirect(struct virtq *vq, struct virtq_chain *ch, const struct virtq_desc *ind)
{
	const volatile struct virtq_desc *table;
	unsigned n, hops = 0;
	uint16_t i = 0;
	int ret;

	if (!vq->indirect)
		return mark_broken(vq, "indirect descriptor not negotiated");
	if (ind->flags & VIRTQ_DESC_F_NEXT)
		return mark_broken(vq, "indirect descriptor with NEXT");
	if (ind->len == 0 || ind->len % sizeof(struct virtq_desc))
		return mark_broken(vq, "bad indirect table length");
	n = ind->len / sizeof(struct virtq_desc);
	if (n > vq->size)
		return mark_broken(vq, "indirect table longer than the queue");
	table = gm_ptr(vq->mem, ind->addr, ind->len);
	if (!table)
		return mark_broken(vq, "indirect table outside guest RAM");
	for (;;) {
		struct virtq_desc d = read_desc(&table[i]);

		if (++hops > n)
			return mark_broken(vq, "indirect chain loops");
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return mark_broken(vq, "nested indirect descriptor");
		ret = chain_add(vq, ch, &d, vq->size);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= n)
			return mark_broken(vq, "indirect next out of range");
		i = d.next;
	}
}

static int walk_chain(struct virtq *vq, struct virtq_chain *ch, uint16_t head)
{
	unsigned hops = 0;
	uint16_t i = head;
	int ret;

	for (;;) {
		struct virtq_desc d = read_desc(&vq->desc[i]);

		if (++hops > vq->size)
			return mark_broken(vq, "descriptor chain loops");
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			/* Only as the whole chain, as every driver uses it. */
			if (hops != 1)
				return mark_broken(vq, "indirect descriptor inside a chain");
			return walk_indirect(vq, ch, &d);
		}
		ret = chain_add(vq, ch, &d, vq->size);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= vq->size)
			return mark_broken(vq, "next index out of range");
		i = d.next;
	}
}

int virtq_pop(struct virtq *vq, struct virtq_chain *ch)
{
	uint16_t avail_idx, head;
	unsigned first_pin;

	if (vq->broken)
		return -EIO;
	if (!vq->enabled)
		return 0;
	/* Acquire: the ring entry and descriptors are read after the index. */
	avail_idx = __atomic_load_n(&vq->avail[AVAIL_IDX], __ATOMIC_ACQUIRE);
	if (avail_idx == vq->last_avail)
		return 0;
	if ((uint16_t)(avail_idx - vq->last_avail) > vq->size)
		return mark_broken(vq, "avail index ran ahead of the queue");
	head = vq->avail[AVAIL_RING + vq->last_avail % vq->size];
	if (head >= vq->size)
		return mark_broken(vq, "head index out of range");
	vq->last_avail++;
	ch->head = head;
	ch->nout = ch->nin = 0;
	ch->out_len = ch->in_len = 0;
	first_pin = vq->npins;
	if (walk_chain(vq, ch, head)) {
		pins_rollback(vq, first_pin);
		return -EIO;
	}
	return 1;
}

bool virtq_has_avail(struct virtq *vq)
{
	if (!vq->enabled || vq->broken)
		return false;
	return __atomic_load_n(&vq->avail[AVAIL_IDX], __ATOMIC_ACQUIRE) != vq->last_avail;
}

void virtq_push(struct virtq *vq, uint16_t head, uint32_t len)
{
	uint64_t off = 4 + 8ull * (vq->used_idx % vq->size);
	uint32_t *elem = gm_ptr_w(vq->mem, vq->used_gpa + off, 8);
	uint16_t *idx = gm_ptr_w(vq->mem, vq->used_gpa + 2, 2);

	if (!elem || !idx) {
		virtq_unpin(vq, head);
		return; /* cannot happen: checked by virtq_enable() */
	}
	__atomic_store_n(&elem[0], (uint32_t)head, __ATOMIC_RELAXED);
	__atomic_store_n(&elem[1], len, __ATOMIC_RELAXED);
	vq->used_idx++;
	/* Release: the element is visible before the index that publishes it. */
	__atomic_store_n(idx, vq->used_idx, __ATOMIC_RELEASE);
	/* The transfer ends with the used-ring update: reclaim may take the pages now. */
	virtq_unpin(vq, head);
}

/* The event-index test of the spec (2.7.7.2 / 2.7.10). */
static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

bool virtq_should_notify(struct virtq *vq)
{
	uint16_t old, event;
	bool valid;

	if (!vq->enabled)
		return false;
	/* Our used->idx store must be visible before we read the driver's wishes. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!vq->event_idx)
		return !(__atomic_load_n(&vq->avail[AVAIL_FLAGS], __ATOMIC_RELAXED) &
			 VIRTQ_AVAIL_F_NO_INTERRUPT);
	old = vq->signalled_used;
	valid = vq->signalled_used_valid;
	vq->signalled_used = vq->used_idx;
	vq->signalled_used_valid = true;
	if (!valid)
		return true;
	event = __atomic_load_n(&vq->avail[AVAIL_RING + vq->size], __ATOMIC_RELAXED);
	return need_event(event, vq->used_idx, old);
}

bool virtq_set_notify(struct virtq *vq, bool enable)
{
	uint16_t *p;

	if (!vq->enabled || vq->broken)
		return false;
	if (vq->event_idx) {
		/* avail_event sits after the used ring; a stale value suppresses. */
		if (!enable)
			return false;
		p = gm_ptr_w(vq->mem, vq->used_gpa + 4 + 8ull * vq->size, 2);
		if (p)
			__atomic_store_n(p, vq->last_avail, __ATOMIC_RELAXED);
	} else {
		p = gm_ptr_w(vq->mem, vq->used_gpa, 2);
		if (p)
			__atomic_store_n(p, enable ? 0 : VIRTQ_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
		if (!enable)
			return false;
	}
	/* The flag store must be visible before we look at avail->idx again. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return virtq_has_avail(vq);
}

uint64_t iov_to_buf(const struct iovec *iov, unsigned n, uint64_t skip, void *buf, uint64_t len)
{
	uint64_t done = 0;

	for (unsigned i = 0; i < n && done < len; i++) {
		uint64_t l = iov[i].iov_len, c;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		c = l - skip < len - done ? l - skip : len - done;
		memcpy((uint8_t *)buf + done, (uint8_t *)iov[i].iov_base + skip, c);
		done += c;
		skip = 0;
	}
	return done;
}

uint64_t iov_from_buf(const struct iovec *iov, unsigned n, uint64_t skip, const void *buf,
		      uint64_t len)
{
	uint64_t done = 0;

	for (unsigned i = 0; i < n && done < len; i++) {
		uint64_t l = iov[i].iov_len, c;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		c = l - skip < len - done ? l - skip : len - done;
		memcpy((uint8_t *)iov[i].iov_base + skip, (const uint8_t *)buf + done, c);
		done += c;
		skip = 0;
	}
	return done;
}
