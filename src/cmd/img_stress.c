/*
 * tern img stress: a writer for crash-safety tests of the block layer.
 *
 *   tern img stress [--seed N] [--flush-every K] [--count N] FILE LOG
 *       write records to FILE through the block layer until killed (or N
 *       writes), flushing every K writes; after each successful flush the
 *       writes it made durable are appended to LOG, one "seq slot len" line
 *       each. Numbering goes on from the last write LOG holds, and each
 *       write goes to its own slot, so no acknowledged write is overwritten
 *       by a later run on the same image.
 *   tern img stress --verify [--format raw|qcow2] FILE LOG
 *       every write LOG acknowledges must be in FILE; exit 1 if one is not.
 *
 * Slot s of 16 KiB holds write n as len bytes (4 KiB..16 KiB) of the 8-byte
 * value (n << 16 | word index).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/block.h"
#include "cmd/cmd.h"

#define SLOT (16u << 10)
#define MAX_LINE 128

static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill_record(uint64_t *buf, uint64_t seq, uint64_t len)
{
	for (uint64_t i = 0; i < len / 8; i++)
		buf[i] = seq << 16 | (i & 0xffff);
}

/* Slot of write n: a fixed odd stride walks every slot once before repeating. */
static uint64_t slot_of(uint64_t n, uint64_t nslots, uint64_t stride)
{
	return (n * stride) % nslots;
}

static int log_acks(int fd, uint64_t first, uint64_t last, const uint64_t *slots,
		    const uint32_t *lens)
{
	char line[MAX_LINE];

	for (uint64_t n = first; n < last; n++) {
		int len = snprintf(line, sizeof(line), "%" PRIu64 " %" PRIu64 " %u\n", n,
				   slots[n - first], lens[n - first]);

		if (write(fd, line, (size_t)len) != len)
			return -EIO;
	}
	return 0;
}

/* The write after the last one LOG acknowledges (0 for an empty log). */
static uint64_t resume_point(const char *logpath)
{
	uint64_t n, slot, next = 0;
	unsigned len;
	FILE *f = fopen(logpath, "re");

	if (!f)
		return 0;
	while (fscanf(f, "%" SCNu64 " %" SCNu64 " %u", &n, &slot, &len) == 3)
		if (n + 1 > next)
			next = n + 1;
	fclose(f);
	return next;
}

static int stress(const char *file, const char *logpath, uint64_t seed, unsigned every,
		  uint64_t count)
{
	struct blockdev *bd;
	uint64_t *buf = malloc(SLOT), nslots, stride, first = 0;
	uint64_t *slots = calloc(every, sizeof(*slots));
	uint32_t *lens = calloc(every, sizeof(*lens));
	uint64_t start = resume_point(logpath);
	int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644), r;

	if (!buf || !slots || !lens || logfd < 0) {
		fprintf(stderr, "tern img stress: cannot start: %s\n", strerror(errno));
		return 1;
	}
	r = blk_open(file, false, &bd);
	if (r < 0)
		return 1;
	nslots = bd->size / SLOT;
	stride = (nslots / 3) | 1;
	while (stride > 1 && nslots % stride == 0)
		stride += 2;
	first = start;
	for (uint64_t n = start; n - start < count && n < nslots && r == 0; n++) {
		uint64_t len = 4096 * (1 + next_rand(&seed) % (SLOT / 4096));

		slots[n - first] = slot_of(n, nslots, stride);
		lens[n - first] = (uint32_t)len;
		fill_record(buf, n, len);
		r = blk_pwrite(bd, buf, len, slots[n - first] * SLOT);
		if (r == 0 && n + 1 - first == every) {
			r = blk_flush(bd);
			if (r == 0)
				r = log_acks(logfd, first, n + 1, slots, lens);
			first = n + 1;
		}
	}
	if (r < 0)
		fprintf(stderr, "tern img stress: %s: %s\n", file, strerror(-r));
	blk_close(bd);
	close(logfd);
	free(buf);
	free(slots);
	free(lens);
	return r < 0 ? 1 : 0;
}

static int verify(const char *file, const char *fmt, const char *logpath)
{
	struct blockdev *bd;
	uint64_t *got = malloc(SLOT), *want = malloc(SLOT), n, slot, checked = 0, bad = 0;
	unsigned len;
	FILE *f = fopen(logpath, "re");

	if (!got || !want || !f || blk_open_fmt(file, fmt, true, &bd) < 0) {
		fprintf(stderr, "tern img stress: cannot verify %s against %s\n", file, logpath);
		return 2;
	}
	while (fscanf(f, "%" SCNu64 " %" SCNu64 " %u", &n, &slot, &len) == 3) {
		if (len > SLOT || len % 4096 || slot >= bd->size / SLOT) {
			bad++;
			break;
		}
		fill_record(want, n, len);
		if (blk_pread(bd, got, len, slot * SLOT) < 0 || memcmp(got, want, len)) {
			if (bad++ < 5)
				fprintf(stderr,
					"write %" PRIu64 " (slot %" PRIu64
					") was acknowledged after a flush but is not there\n",
					n, slot);
		}
		checked++;
	}
	printf("verified %" PRIu64 " acknowledged writes, %" PRIu64 " missing\n", checked, bad);
	blk_close(bd);
	fclose(f);
	free(got);
	free(want);
	return bad ? 1 : 0;
}

int img_stress(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"seed", required_argument, NULL, 's'},   {"flush-every", required_argument, NULL, 'k'},
	    {"count", required_argument, NULL, 'n'},  {"verify", no_argument, NULL, 'v'},
	    {"format", required_argument, NULL, 'f'}, {NULL, 0, NULL, 0}};
	uint64_t seed = 1, count = UINT64_MAX;
	unsigned every = 8;
	const char *fmt = NULL;
	bool check = false;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			seed = strtoull(optarg, NULL, 0) | 1;
			break;
		case 'k':
			every = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'n':
			count = strtoull(optarg, NULL, 0);
			break;
		case 'v':
			check = true;
			break;
		case 'f':
			fmt = optarg;
			break;
		default:
			return 2;
		}
	}
	if (argc - optind != 2 || every < 1 || every > 4096) {
		fprintf(stderr, "usage: tern img stress [--verify [--format F]] [--seed N] "
				"[--flush-every K] [--count N] FILE LOG\n");
		return 2;
	}
	if (check)
		return verify(argv[optind], fmt, argv[optind + 1]);
	return stress(argv[optind], argv[optind + 1], seed, every, count);
}
