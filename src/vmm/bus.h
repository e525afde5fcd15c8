/*
 * Port-I/O and MMIO buses. Devices claim ranges; a vCPU's access goes to the
 * device owning the address. An access no device owns gets a faked answer
 * (reads return all ones, writes are dropped) and is logged once per range
 * so a guest probing absent hardware cannot crash tern or flood the log.
 *
 * Handlers run on vCPU threads, possibly several at once: a device protects
 * its own state.
 */
#ifndef TERN_VMM_BUS_H
#define TERN_VMM_BUS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct bus_ops {
	/* offset is relative to the claimed base; size is 1, 2, 4 or 8. */
	void (*read)(void *opaque, uint64_t offset, void *data, unsigned size);
	void (*write)(void *opaque, uint64_t offset, const void *data, unsigned size);
};

struct bus_range {
	uint64_t base, len;
	const struct bus_ops *ops;
	void *opaque;
	const char *name;
};

#define BUS_LOGGED_MAX 32

struct io_bus {
	pthread_rwlock_t lock;	  /* ranges change rarely (BAR moves); lookups are shared */
	struct bus_range *ranges; /* sorted by base, non-overlapping */
	unsigned count, cap;
	const char *name;
	/* Unclaimed accesses seen, for stats and "log once" per 4 KiB page. */
	uint64_t unclaimed;
	/* Pages already warned about (under lock); beyond BUS_LOGGED_MAX only counted. */
	uint64_t logged[BUS_LOGGED_MAX];
	unsigned nlogged;
};

int bus_init(struct io_bus *bus, const char *name);
void bus_destroy(struct io_bus *bus);
/* Returns 0, -EBUSY if the range overlaps a claimed one, -EINVAL if empty/wrapping. */
int bus_register(struct io_bus *bus, uint64_t base, uint64_t len, const struct bus_ops *ops,
		 void *opaque, const char *name);
int bus_unregister(struct io_bus *bus, uint64_t base);
/* Dispatch. Returns true if a device handled it, false if the faked answer was used. */
bool bus_read(struct io_bus *bus, uint64_t addr, void *data, unsigned size);
bool bus_write(struct io_bus *bus, uint64_t addr, const void *data, unsigned size);

#endif
