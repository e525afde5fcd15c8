/* The counter table devices fill for GET /vm/stats; see stats.h. */
#include "api/stats.h"

#include <errno.h>
#include <stdio.h>

int dev_stats_add(struct dev_stats *st, const char *name, uint64_t value)
{
	if (!name || !*name)
		return -EINVAL;
	if (st->n >= DEV_STATS_MAX)
		return -ENOSPC;
	snprintf(st->c[st->n].name, sizeof(st->c[st->n].name), "%s", name);
	st->c[st->n].value = value;
	st->n++;
	return 0;
}
