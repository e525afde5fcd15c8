/*
 * virtio-balloon (virtio 1.x, section 5.5) with the statistics queue,
 * deflate-on-OOM and free page reporting, and the host's side of memory
 * overcommit: the target the guest is asked to give up, and what it gave.
 *
 * Queues: 0 inflate, 1 deflate, then (as the driver negotiated them) the
 * statistics queue and the free page reporting queue, numbered without gaps
 * as Linux and other VMMs do. Pages inflated (PFNs in 4 KiB units) and
 * ranges reported free are released to the host at once
 * (reclaim_release_range_src()) and read as zero when touched again; pages
 * pinned by a device transfer are kept. Every PFN and range is checked: one
 * outside RAM, unaligned, repeated or of absurd size is refused alone.
 *
 * Raising the target first runs a zero-page sweep of the whole guest
 * (reclaim_sweep()), then asks the guest to inflate: the "sweep request" of
 * the reclaim technique. docs/memory.md has the whole picture.
 */
#ifndef TERN_VIRTIO_BALLOON_H
#define TERN_VIRTIO_BALLOON_H

#include <stdbool.h>
#include <stdint.h>

#include "vmm/reclaim.h"

struct vm;
struct balloon;

#define BALLOON_PAGE_SHIFT 12

/* Statistics tags of the stats queue (5.5.6.3); values are bytes or counts. */
enum balloon_stat_tag {
	BALLOON_S_SWAP_IN,
	BALLOON_S_SWAP_OUT,
	BALLOON_S_MAJFLT,
	BALLOON_S_MINFLT,
	BALLOON_S_MEMFREE,
	BALLOON_S_MEMTOT,
	BALLOON_S_AVAIL,
	BALLOON_S_CACHES,
	BALLOON_S_HTLB_PGALLOC,
	BALLOON_S_HTLB_PGFAIL,
	BALLOON_S_NR,
};

/* What GET /vm/balloon reports; a consistent copy taken under the device's lock. */
struct balloon_info {
	bool driver_ok;					    /* the guest's driver is up */
	bool stats_vq, deflate_on_oom, free_page_reporting; /* negotiated */
	uint64_t guest_bytes;
	uint64_t target_pages;	/* what the host asks for (num_pages) */
	uint64_t actual_pages;	/* what the driver says it holds (actual) */
	uint64_t balloon_pages; /* distinct pages tern saw inflated and not deflated */
	/* Counters since the device was created. */
	uint64_t inflated, deflated;	  /* pages accepted */
	uint64_t refused_pfns;		  /* outside RAM, repeated, not in the balloon */
	uint64_t kept_pinned;		  /* inflated but under device I/O: not released */
	uint64_t reports, reported_bytes; /* free page reports and bytes in them */
	uint64_t refused_ranges;	  /* reported ranges unaligned or not RAM */
	uint64_t released_balloon, released_free_report, released_sweep; /* bytes, whole VM */
	/* The guest's statistics, from the last buffer it sent. */
	uint64_t stats_updates; /* buffers received */
	uint64_t stats_age_ms;	/* since the last one, UINT64_MAX if none yet */
	uint32_t stats_valid;	/* bit per enum balloon_stat_tag present */
	uint64_t stats[BALLOON_S_NR];
	/* Sweeps run because the target rose, and the last one's result. */
	uint64_t sweeps;
	struct reclaim_stats last_sweep;
};

/*
 * Add the device (call after pci_init()); free page reporting is offered
 * only if asked for. The VM owns it. 0 or -errno.
 */
int virtio_balloon_add(struct vm *vm, bool free_page_reporting);

/* The VM's balloon, or NULL if it has none. */
struct balloon *balloon_find(struct vm *vm);

/*
 * Ask the guest to hold `pages` 4 KiB pages in its balloon (-EINVAL above
 * guest RAM). When the target rises, a zero-page sweep runs first; *swept
 * says whether it did and *sweep (may be NULL) gets its result. Not from a
 * vCPU or device thread (the sweep pauses the VM). 0 or -errno.
 */
int balloon_set_target(struct balloon *b, uint64_t pages, bool *swept, struct reclaim_stats *sweep);

/*
 * Ask the guest for fresh statistics and wait up to wait_ms for them
 * (0: do not ask), then fill *out. 0, or -ETIMEDOUT when no fresh buffer
 * came in time (*out is filled with what there is).
 */
int balloon_get_info(struct balloon *b, unsigned wait_ms, struct balloon_info *out);

/* Name of a statistics tag as the API shows it ("memory_free", ...). */
const char *balloon_stat_name(unsigned tag);

#endif
