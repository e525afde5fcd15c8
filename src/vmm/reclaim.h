/*
 * Memory reclaim: give guest pages back to the host while the guest runs.
 *
 *  - reclaim_sweep(): find resident guest pages that are entirely zero and
 *    release them (hole punch in the memfd); whole aligned 2 MiB ranges at
 *    once, 4 KiB pages otherwise. Released pages read as zero again.
 *  - reclaim_release_range(): release pages the guest says it does not use
 *    (balloon inflation, free page reporting), without looking at them.
 *
 * Neither ever takes a page pinned by a device (gm_pin()), and the sweep
 * never loses a byte written concurrently by a vCPU or a device: the
 * protocol is in docs/memory.md.
 */
#ifndef TERN_VMM_RECLAIM_H
#define TERN_VMM_RECLAIM_H

#include <stdint.h>

struct vm;
struct guest_mem;

struct reclaim_stats {
	uint64_t scanned;     /* resident bytes read */
	uint64_t nonresident; /* bytes skipped without reading: not resident */
	uint64_t released_4k; /* bytes released as single 4 KiB pages */
	uint64_t released_2m; /* bytes released as whole aligned 2 MiB ranges */
	/* Zero when scanned, then kept: written since (dirty) or under device I/O (pinned). */
	uint64_t kept_dirty, kept_pinned;
	uint64_t pauses;	 /* times the vCPUs were parked for a final check */
	uint64_t pause_ns_max;	 /* longest such pause */
	uint64_t pause_ns_total; /* all pauses together */
	uint64_t ns;		 /* wall time of the whole sweep */
};

/*
 * Sweep all of the VM's RAM once, from any thread but a vCPU's. The VM may
 * be running, paused, stopping or never started. Concurrent sweeps take
 * turns region by region. 0 and *out (may be NULL) filled in, or -errno.
 */
int reclaim_sweep(struct vm *vm, struct reclaim_stats *out);

/* Who asked for a range to be released: selects the counter in struct guest_mem. */
enum reclaim_source { RECLAIM_BALLOON, RECLAIM_FREE_REPORT };

/*
 * Release [gpa, gpa+len) that the guest gave up. gpa and len must be page
 * aligned and the range wholly inside one RAM region (-EINVAL, -EFAULT); if
 * any page of it is pinned, nothing is released (-EBUSY). The pages are
 * marked dirty: their content changed (to zero) for snapshot and migration.
 * Counted in gm->released_balloon.
 */
int reclaim_release_range(struct vm *vm, uint64_t gpa, uint64_t len);
/* The same, counted for the given source. */
int reclaim_release_range_src(struct vm *vm, uint64_t gpa, uint64_t len, enum reclaim_source src);

/* True if the 4 KiB page at p is all zero bytes (exposed for the benchmark). */
int reclaim_page_is_zero(const void *p);

#endif
