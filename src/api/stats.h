/*
 * Per-device counters for GET /vm/stats.
 *
 * A device that wants its counters shown fills in device_ops.stats (vmm/vm.h);
 * when a client asks for stats the API walks the VM's device registry and
 * calls it with an empty struct dev_stats, then reports the counters under
 * the device's name. A virtio device would report, say,
 *
 *	dev_stats_add(st, "requests", q->nreq);
 *	dev_stats_add(st, "bytes_read", d->bytes_read);
 *
 * The callback runs on an API thread while the vCPUs run: read counters with
 * relaxed atomic loads or under the device's own lock, never take vm->lock.
 */
#ifndef TERN_API_STATS_H
#define TERN_API_STATS_H

#include <stdint.h>

#define DEV_STATS_MAX 32
#define DEV_STAT_NAME_MAX 48

struct dev_stat {
	char name[DEV_STAT_NAME_MAX];
	uint64_t value;
};

struct dev_stats {
	unsigned n;
	struct dev_stat c[DEV_STATS_MAX];
};

/*
 * Record one counter. Names are short snake_case words (truncated to
 * DEV_STAT_NAME_MAX - 1 bytes). Returns 0, or -ENOSPC when the table is full
 * (the counter is dropped), -EINVAL for a NULL or empty name.
 */
int dev_stats_add(struct dev_stats *st, const char *name, uint64_t value);

#endif
