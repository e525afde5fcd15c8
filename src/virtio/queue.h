/*
 * Split virtqueues (virtio 1.x, section 2.7) as a device sees them.
 *
 * Everything in the rings is written by the guest and read while the guest
 * runs, so it is hostile and may change under us: each descriptor is copied
 * out once, every (addr, len) goes through gm_ptr()/gm_ptr_w(), chains are
 * bounded by the queue size (loops cannot spin), indirect tables are bounded
 * and may not nest, and length sums are checked against 32 bits. A chain
 * that breaks a rule marks the queue broken: virtq_pop() returns -EIO from
 * then on and the transport marks the device NEEDS_RESET.
 *
 * Notification suppression in both directions: VIRTIO_RING_F_EVENT_IDX
 * (used_event / avail_event) when negotiated, the ring flags otherwise.
 *
 * Pins (docs/memory.md): every buffer of a popped chain is pinned with
 * gm_pin() before it is translated, and stays pinned until the chain is
 * pushed back (virtq_push) or the device says it is done with the memory
 * (virtq_unpin): memory reclaim never takes a page under device I/O. The
 * queue keeps its own record of what it pinned (never re-read from the
 * guest), at most VIRTQ_MAX_PINS buffers in flight per queue: a device holds
 * at most one chain's worth of buffers per queue between pop and push.
 *
 * A virtq is used by one thread at a time (the device's I/O thread); the
 * transport serialises configuration against processing.
 */
#ifndef TERN_VIRTIO_QUEUE_H
#define TERN_VIRTIO_QUEUE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vmm/mem.h"

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

/* Largest queue tern offers; also the most buffers one chain may have. */
#define VIRTQ_MAX_SIZE 1024

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/*
 * One popped chain: the device-readable buffers first (iov[0..nout)), then the
 * device-writable ones (iov[nout..nout+nin)), already translated to host
 * pointers inside guest RAM.
 */
struct virtq_chain {
	uint16_t head;
	unsigned nout, nin;
	uint32_t out_len, in_len; /* byte totals, at most UINT32_MAX each */
	struct iovec iov[VIRTQ_MAX_SIZE];
};

/* One pinned buffer of a chain in flight: hva offset, length, the chain's head. */
struct virtq_pin {
	uint64_t off;
	uint32_t len;
	uint16_t head;
};

#define VIRTQ_MAX_PINS VIRTQ_MAX_SIZE

struct virtq {
	struct guest_mem *mem;
	/* Set by the driver through the transport. */
	uint16_t size; /* power of two, <= VIRTQ_MAX_SIZE */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	bool event_idx; /* VIRTIO_RING_F_EVENT_IDX negotiated */
	bool indirect;	/* VIRTIO_RING_F_INDIRECT_DESC negotiated */

	/* Device state. */
	bool enabled;
	bool broken;
	uint16_t last_avail; /* next avail ring entry to consume */
	uint16_t used_idx;   /* our copy of used->idx */
	uint16_t signalled_used;
	bool signalled_used_valid;

	/* Ring pointers, valid while enabled (checked at enable time). */
	const volatile struct virtq_desc *desc;
	const volatile uint16_t *avail; /* flags, idx, ring[size], used_event */
	volatile uint16_t *used;	/* flags, idx, then ring of {u32 id, u32 len} */

	/* Buffers pinned for chains popped and not yet pushed (or unpinned). */
	unsigned npins;
	struct virtq_pin pins[VIRTQ_MAX_PINS];
};

/* Byte sizes of the three parts for a queue of n entries (with the event fields). */
static inline uint64_t virtq_desc_bytes(uint16_t n)
{
	return 16ull * n;
}
static inline uint64_t virtq_avail_bytes(uint16_t n)
{
	return 6ull + 2ull * n;
}
static inline uint64_t virtq_used_bytes(uint16_t n)
{
	return 6ull + 8ull * n;
}

/*
 * Put the queue in its reset state (disabled, indices zero, no pins); keeps
 * mem. Forgets pins without dropping them: on a queue that was in use, call
 * virtq_release_all() first.
 */
void virtq_reset(struct virtq *vq, struct guest_mem *mem);

/* Unpin every buffer of every chain still in flight (device reset, restore). */
void virtq_release_all(struct virtq *vq);

/*
 * Check the driver's size and ring addresses (alignment, inside RAM) and
 * start using them. Returns 0 or -EINVAL (the queue stays disabled).
 */
int virtq_enable(struct virtq *vq);

/*
 * Take the next available chain, its buffers pinned. Returns 1 with *ch
 * filled, 0 if the ring is empty, -EIO if the queue is (or just became)
 * broken (nothing of that chain stays pinned).
 */
int virtq_pop(struct virtq *vq, struct virtq_chain *ch);

/*
 * Return a chain to the driver with len bytes written into its buffers, and
 * unpin what is left pinned of it (the used-ring update ends the transfer).
 */
void virtq_push(struct virtq *vq, uint16_t head, uint32_t len);

/*
 * Unpin the buffers of the chain in flight with this head before it is
 * pushed: the device no longer touches them as memory (a device that gives
 * the pages themselves back to the host, e.g. free page reporting).
 */
void virtq_unpin(struct virtq *vq, uint16_t head);

/* After one or more pushes: does the driver want an interrupt now? */
bool virtq_should_notify(struct virtq *vq);

/*
 * Tell the driver whether we want notifications (doorbell writes) for new
 * buffers. When enabling, returns true if buffers arrived meanwhile, so the
 * caller processes again instead of sleeping on a notification that will not
 * come.
 */
bool virtq_set_notify(struct virtq *vq, bool enable);

/* True if the driver has made buffers available that we have not popped. */
bool virtq_has_avail(struct virtq *vq);

/* Copy helpers over a chain's buffers. Return the number of bytes copied. */
uint64_t iov_to_buf(const struct iovec *iov, unsigned n, uint64_t skip, void *buf, uint64_t len);
uint64_t iov_from_buf(const struct iovec *iov, unsigned n, uint64_t skip, const void *buf,
		      uint64_t len);

#endif
