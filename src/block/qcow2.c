/* qcow2 driver (being written). */
#include <errno.h>

#include "block/blk_int.h"
#include "util/log.h"

int qcow2_open(const char *path, bool readonly, int depth, struct blockdev **out)
{
	pr_err("%s: qcow2 images are not supported yet", path);
	return -ENOTSUP;
}
