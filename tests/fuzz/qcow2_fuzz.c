/*
 * libFuzzer harness for the qcow2 open and read paths and the consistency
 * check: the input is the whole image file. Run with `make fuzz-qcow2`.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"
#include "block/qcow2.h"

static char img_path[4096];
static int img_fd = -1;

static int setup(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(img_path, sizeof(img_path), "%s/tern-fuzz-qcow2-%d.qcow2", tmp ? tmp : P_tmpdir,
		 (int)getpid());
	img_fd = open(img_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	return img_fd < 0 ? -1 : 0;
}

/* Read a few spread-out pieces, bounded so huge virtual sizes stay cheap. */
static void read_some(struct blockdev *bd)
{
	static uint8_t buf[256 << 10];
	uint64_t offs[] = {0, 512, 65536 - 100, bd->size / 2, bd->size - 1};

	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		uint64_t off = offs[i] < bd->size ? offs[i] : 0;
		uint64_t n = bd->size - off < sizeof(buf) ? bd->size - off : sizeof(buf);

		if (n && blk_pread(bd, buf, n, off) < 0)
			return;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct blockdev *bd;
	struct qcow2_check_result res;

	if (img_fd < 0 && setup() < 0)
		abort();
	if (ftruncate(img_fd, 0) < 0 || pwrite(img_fd, data, size, 0) != (ssize_t)size)
		abort();
	if (blk_open_fmt(img_path, "qcow2", true, &bd) < 0)
		return 0;
	read_some(bd);
	qcow2_check(bd, false, &res);
	blk_close(bd);
	return 0;
}
