/*
 * Port-I/O and MMIO buses: a sorted array of claimed ranges, binary-searched
 * under a shared lock. Handlers are called with the lock released so a
 * handler may itself move ranges (a PCI BAR write re-registers the BAR) and
 * two vCPUs can be inside different devices at once. Ranges are never freed
 * while the VM runs, only moved, so the copied range stays valid.
 */
#include "vmm/bus.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

int bus_init(struct io_bus *bus, const char *name)
{
	int err;

	memset(bus, 0, sizeof(*bus));
	bus->name = name;
	err = pthread_rwlock_init(&bus->lock, NULL);
	return err ? -err : 0;
}

void bus_destroy(struct io_bus *bus)
{
	pthread_rwlock_destroy(&bus->lock);
	free(bus->ranges);
	bus->ranges = NULL;
	bus->count = bus->cap = 0;
}

/* Index of the first range whose end lies above addr (may be count). */
static unsigned bus_lower_bound(const struct io_bus *bus, uint64_t addr)
{
	unsigned lo = 0, hi = bus->count;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		const struct bus_range *r = &bus->ranges[mid];

		if (r->base + (r->len - 1) < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int bus_grow(struct io_bus *bus)
{
	unsigned cap = bus->cap ? bus->cap * 2 : 16;
	struct bus_range *n;

	if (bus->count < bus->cap)
		return 0;
	n = realloc(bus->ranges, cap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	bus->ranges = n;
	bus->cap = cap;
	return 0;
}

int bus_register(struct io_bus *bus, uint64_t base, uint64_t len, const struct bus_ops *ops,
		 void *opaque, const char *name)
{
	uint64_t last = base + len - 1;
	unsigned i;
	int err;

	if (len == 0 || last < base || !ops)
		return -EINVAL;
	pthread_rwlock_wrlock(&bus->lock);
	i = bus_lower_bound(bus, base);
	/* ranges[i] is the first range ending at or after base: it overlaps iff it starts <= last.
	 */
	if (i < bus->count && bus->ranges[i].base <= last) {
		err = -EBUSY;
		goto out;
	}
	err = bus_grow(bus);
	if (err)
		goto out;
	memmove(&bus->ranges[i + 1], &bus->ranges[i], (bus->count - i) * sizeof(bus->ranges[0]));
	bus->ranges[i] = (struct bus_range){
	    .base = base, .len = len, .ops = ops, .opaque = opaque, .name = name};
	bus->count++;
out:
	pthread_rwlock_unlock(&bus->lock);
	return err;
}

int bus_unregister(struct io_bus *bus, uint64_t base)
{
	int err = -ENOENT;
	unsigned i;

	pthread_rwlock_wrlock(&bus->lock);
	i = bus_lower_bound(bus, base);
	if (i < bus->count && bus->ranges[i].base == base) {
		memmove(&bus->ranges[i], &bus->ranges[i + 1],
			(bus->count - i - 1) * sizeof(bus->ranges[0]));
		bus->count--;
		err = 0;
	}
	pthread_rwlock_unlock(&bus->lock);
	return err;
}

/* Copy out the range wholly containing [addr, addr+size); false if none does. */
static bool bus_find(struct io_bus *bus, uint64_t addr, unsigned size, struct bus_range *out)
{
	bool found = false;
	unsigned i;

	if (size == 0 || addr + (size - 1) < addr)
		return false;
	pthread_rwlock_rdlock(&bus->lock);
	i = bus_lower_bound(bus, addr);
	if (i < bus->count) {
		const struct bus_range *r = &bus->ranges[i];

		if (r->base <= addr && addr + (size - 1) <= r->base + (r->len - 1)) {
			*out = *r;
			found = true;
		}
	}
	pthread_rwlock_unlock(&bus->lock);
	return found;
}

/*
 * Absent hardware: count it, and warn once per 4 KiB page (remembered in a
 * small table; once that is full, further pages are only counted) so a
 * guest scanning ports cannot flood the log.
 */
static void bus_unclaimed(struct io_bus *bus, uint64_t addr, unsigned size, bool write)
{
	uint64_t page = addr >> 12;
	unsigned n;

	__atomic_fetch_add(&bus->unclaimed, 1, __ATOMIC_RELAXED);
	pthread_rwlock_wrlock(&bus->lock);
	n = bus->nlogged;
	for (unsigned i = 0; i < n; i++) {
		if (bus->logged[i] == page)
			goto out;
	}
	if (n < BUS_LOGGED_MAX) {
		bus->logged[n] = page;
		bus->nlogged = n + 1;
		pr_info("%s: unclaimed %s of %u bytes at 0x%" PRIx64 " (faked; further accesses "
			"to this page not logged)",
			bus->name ? bus->name : "bus", write ? "write" : "read", size, addr);
	}
out:
	pthread_rwlock_unlock(&bus->lock);
}

bool bus_read(struct io_bus *bus, uint64_t addr, void *data, unsigned size)
{
	struct bus_range r;

	if (bus_find(bus, addr, size, &r) && r.ops->read) {
		r.ops->read(r.opaque, addr - r.base, data, size);
		return true;
	}
	memset(data, 0xff, size);
	bus_unclaimed(bus, addr, size, false);
	return false;
}

bool bus_write(struct io_bus *bus, uint64_t addr, const void *data, unsigned size)
{
	struct bus_range r;

	if (bus_find(bus, addr, size, &r) && r.ops->write) {
		r.ops->write(r.opaque, addr - r.base, data, size);
		return true;
	}
	bus_unclaimed(bus, addr, size, true);
	return false;
}
