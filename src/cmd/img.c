/*
 * `tern img`: create, inspect, check, convert, commit and rebase disk images
 * (raw and qcow2). Exit status: 0 success, 1 error, 2 usage; check also
 * returns 2 for corruption and 3 for leaked clusters.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/block.h"
#include "block/qcow2.h"
#include "cmd/cmd.h"
#include "util/log.h"

#define CHUNK (1u << 20)

static const char usage_text[] =
    "usage: tern img <command> [options]\n"
    "\n"
    "  create [-f raw|qcow2] [-b BACKING [-F FMT]] [-o OPTS] FILE [SIZE]\n"
    "      new image; SIZE takes K, M, G, T suffixes (powers of 1024) and defaults\n"
    "      to the backing file's size. OPTS (qcow2): cluster_size=N, compat=0.10|1.1,\n"
    "      refcount_bits=N\n"
    "  info [-U] [--output=human|json] FILE\n"
    "      format, sizes and backing chain\n"
    "  check [-U] [-r leaks] FILE\n"
    "      verify qcow2 metadata; exit 2 on corruption, 3 on leaked clusters\n"
    "  convert [-U] [-f FMT] [-O raw|qcow2] [-o OPTS] [-p] SRC DST\n"
    "      copy the whole disk SRC sees (backing chain included) into a new image\n"
    "  commit [-p] FILE\n"
    "      write the data FILE holds into its backing file\n"
    "  rebase [-u] [-p] -b BACKING [-F FMT] FILE\n"
    "      point FILE at another backing file; without -u, first copy into FILE\n"
    "      whatever would read differently (-b \"\" removes the backing file)\n"
    "  stress [--verify [--format F]] [--seed N] [--flush-every K] [--count N] FILE LOG\n"
    "      crash-test writer: writes until killed, logs what each flush made durable;\n"
    "      --verify checks FILE holds every write LOG acknowledges\n"
    "\n"
    "-p shows progress (default when standard output is a terminal). -U\n"
    "(--force-share) reads an image another process is writing, which it would\n"
    "otherwise refuse (the result may be inconsistent).\n";

static int usage_err(const char *msg)
{
	fprintf(stderr, "tern img: %s\n%s", msg, usage_text);
	return 2;
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	case 'b':
	case 'B':
		end++;
		break;
	default:
		break;
	}
	if (*end == 'i' || *end == 'B')
		end += (*end == 'i') + (end[*end == 'i'] == 'B');
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

/* ---- progress ---- */

struct progress {
	bool on;
	int last;
};

static void progress_init(struct progress *p, bool forced)
{
	p->on = forced || isatty(STDOUT_FILENO);
	p->last = -1;
}

static void progress_show(struct progress *p, uint64_t done, uint64_t total)
{
	int pct = total ? (int)(done * 1000 / total) : 1000;

	if (!p->on || pct == p->last)
		return;
	p->last = pct;
	printf("\r    (%d.%d/100%%)", pct / 10, pct % 10);
	fflush(stdout);
}

static void progress_end(struct progress *p)
{
	if (p->on)
		printf("\r    (100.0/100%%)\n");
}

/* ---- qcow2 options ---- */

static int parse_qcow2_opts(char *opts, struct qcow2_create_opts *o)
{
	for (char *save = NULL, *kv = strtok_r(opts, ",", &save); kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *v = strchr(kv, '=');
		uint64_t n;

		if (!v)
			goto bad;
		*v++ = 0;
		if (!strcmp(kv, "cluster_size")) {
			if (parse_size(v, &n) < 0 || n < 512 || n > (2u << 20) || (n & (n - 1)))
				goto bad;
			o->cluster_bits = (unsigned)__builtin_ctzll(n);
		} else if (!strcmp(kv, "compat")) {
			if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
				o->version = 2;
			else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
				o->version = 3;
			else
				goto bad;
		} else if (!strcmp(kv, "refcount_bits")) {
			if (parse_size(v, &n) < 0 || n < 1 || n > 64 || (n & (n - 1)))
				goto bad;
			o->refcount_order = (unsigned)__builtin_ctzll(n);
		} else {
			goto bad;
		}
		continue;
	bad:
		fprintf(stderr, "tern img: bad or unknown option '%s%s%s'\n", kv, v ? "=" : "",
			v ? v : "");
		return -EINVAL;
	}
	return 0;
}

static int create_raw(const char *path, uint64_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int r = 0;

	if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	if (r < 0)
		fprintf(stderr, "tern img: %s: %s\n", path, strerror(-r));
	return r;
}

/*
 * Create a raw or qcow2 image at path. An existing file is write-locked
 * first: an image another process uses is refused, not truncated under it.
 */
static int create_image(const char *path, const char *fmt, const struct qcow2_create_opts *o)
{
	struct img_lock *lock = NULL;
	struct stat st;
	int r = 0;

	/* Only files hold locks (opening a FIFO to lock it would block). */
	if (stat(path, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)))
		r = img_lock_take(path, IMG_LOCK_WRITE, &lock);
	if (r == 0)
		r = strcmp(fmt, "raw") ? qcow2_create(path, o) : create_raw(path, o->size);
	img_lock_release(lock);
	return r;
}

/* The backing file as the new image will name it, opened to learn its size and format. */
static int probe_backing(const char *file, const char *backing, const char **fmt, uint64_t *size)
{
	const char *slash = strrchr(file, '/');
	char *path;
	struct blockdev *bd;
	int r;

	if (backing[0] == '/' || !slash) {
		path = strdup(backing);
	} else if (asprintf(&path, "%.*s/%s", (int)(slash - file), file, backing) < 0) {
		path = NULL;
	}
	if (!path)
		return -ENOMEM;
	r = blk_open_fmt(path, *fmt, true, &bd);
	if (r == 0) {
		*fmt = bd->ops->format;
		*size = bd->size;
		blk_close(bd);
	}
	free(path);
	return r;
}

static int img_create(int argc, char **argv)
{
	const char *fmt = "raw", *bfmt = NULL;
	struct qcow2_create_opts o = {0};
	char *opts = NULL;
	uint64_t size = 0, bsize = 0;
	bool have_size;
	int c, r;

	while ((c = getopt(argc, argv, "f:b:F:o:h")) != -1) {
		switch (c) {
		case 'f':
			fmt = optarg;
			break;
		case 'b':
			o.backing = optarg;
			break;
		case 'F':
			bfmt = optarg;
			break;
		case 'o':
			opts = optarg;
			break;
		default:
			return usage_err("create: bad option");
		}
	}
	if (optind >= argc || argc - optind > 2)
		return usage_err("create: need FILE [SIZE]");
	have_size = argc - optind == 2;
	if (have_size && parse_size(argv[optind + 1], &size) < 0)
		return usage_err("create: SIZE must be a number with an optional K/M/G/T suffix");
	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return usage_err("create: format must be raw or qcow2");
	if (!strcmp(fmt, "raw")) {
		if (o.backing || opts || !have_size)
			return usage_err("create: raw images take a SIZE and no -b or -o");
		o.size = size;
		return create_image(argv[optind], fmt, &o) < 0 ? 1 : 0;
	}
	if (opts && parse_qcow2_opts(opts, &o) < 0)
		return 2;
	if (o.backing) {
		if (probe_backing(argv[optind], o.backing, &bfmt, &bsize) < 0) {
			fprintf(stderr, "tern img: cannot open backing file '%s'\n", o.backing);
			return 1;
		}
		o.backing_fmt = bfmt;
		if (!have_size)
			size = bsize;
	} else if (!have_size) {
		return usage_err("create: SIZE is needed without a backing file");
	}
	o.size = size;
	r = create_image(argv[optind], fmt, &o);
	if (r < 0) {
		fprintf(stderr, "tern img: creating %s failed: %s\n", argv[optind], strerror(-r));
		return 1;
	}
	printf("Formatting '%s', fmt=%s size=%" PRIu64 "\n", argv[optind], fmt, size);
	return 0;
}

/* ---- info ---- */

static void human_size(uint64_t n, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	double v = (double)n;
	int u = 0;

	while (v >= 1024 && u < 6) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", n);
	else
		snprintf(buf, len, "%.3g %s", v, units[u]);
}

static uint64_t disk_usage(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (uint64_t)st.st_blocks * 512;
}

static void info_human(struct blockdev *bd, const char *path)
{
	char vs[32], ds[32];
	struct qcow2_info qi;

	human_size(bd->size, vs, sizeof(vs));
	human_size(disk_usage(path), ds, sizeof(ds));
	printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64 " bytes)\ndisk size: %s\n",
	       path, bd->ops->format, vs, bd->size, ds);
	if (strcmp(bd->ops->format, "qcow2"))
		return;
	qcow2_get_info(bd, &qi);
	printf("cluster_size: %u\n", 1u << qi.cluster_bits);
	if (qi.backing_name) {
		printf("backing file: %s", qi.backing_name);
		if (strcmp(qi.backing_name, qi.backing_path))
			printf(" (actual path: %s)", qi.backing_path);
		printf("\nbacking file format: %s\n",
		       qi.backing_fmt ? qi.backing_fmt : qi.backing->ops->format);
	}
	printf("Format specific information:\n    compat: %s\n", qi.version >= 3 ? "1.1" : "0.10");
	printf("    lazy refcounts: %s\n", qi.compatible & 1 ? "true" : "false");
	printf("    refcount bits: %u\n", qi.refcount_bits);
	printf("    corrupt: %s\n", qi.incompatible & 2 ? "true" : "false");
	if (qi.nb_snapshots)
		printf("    internal snapshots: %u\n", qi.nb_snapshots);
}

static void json_str(const char *key, const char *s, bool comma)
{
	printf("    \"%s\": \"", key);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	printf("\"%s\n", comma ? "," : "");
}

static void info_json(struct blockdev *bd, const char *path)
{
	struct qcow2_info qi;
	bool q = !strcmp(bd->ops->format, "qcow2");

	printf("{\n    \"virtual-size\": %" PRIu64 ",\n", bd->size);
	json_str("filename", path, true);
	json_str("format", bd->ops->format, true);
	if (q) {
		qcow2_get_info(bd, &qi);
		printf("    \"cluster-size\": %u,\n", 1u << qi.cluster_bits);
		printf("    \"compat\": \"%s\",\n", qi.version >= 3 ? "1.1" : "0.10");
		printf("    \"refcount-bits\": %u,\n", qi.refcount_bits);
		if (qi.backing_name) {
			json_str("backing-filename", qi.backing_name, true);
			json_str("full-backing-filename", qi.backing_path, true);
			json_str("backing-filename-format",
				 qi.backing_fmt ? qi.backing_fmt : qi.backing->ops->format, true);
		}
	}
	printf("    \"actual-size\": %" PRIu64 "\n}\n", disk_usage(path));
}

/* Open an image to read; force_share: even while another process writes it. */
static int open_ro(const char *path, const char *fmt, bool force_share, struct blockdev **bd)
{
	return force_share ? blk_open_shared(path, fmt, bd) : blk_open_fmt(path, fmt, true, bd);
}

static bool is_force_share(const char *arg)
{
	return !strcmp(arg, "-U") || !strcmp(arg, "--force-share");
}

static int img_info(int argc, char **argv)
{
	bool json = false, share = false;
	struct blockdev *bd;
	int i = 1;

	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--output=json"))
			json = true;
		else if (is_force_share(argv[i]))
			share = true;
		else if (strcmp(argv[i], "--output=human"))
			return usage_err("info: bad option");
	}
	if (i != argc - 1)
		return usage_err("info: need FILE");
	if (open_ro(argv[i], NULL, share, &bd) < 0)
		return 1;
	if (json)
		info_json(bd, argv[i]);
	else
		info_human(bd, argv[i]);
	blk_close(bd);
	return 0;
}

/* ---- check ---- */

static const struct option share_opts[] = {{"force-share", no_argument, NULL, 'U'}, {0}};

static int img_check(int argc, char **argv)
{
	struct qcow2_check_result res;
	struct blockdev *bd;
	bool repair = false, share = false;
	int c, r;

	while ((c = getopt_long(argc, argv, "Ur:h", share_opts, NULL)) != -1) {
		if (c == 'r' && (!strcmp(optarg, "leaks") || !strcmp(optarg, "all")))
			repair = true;
		else if (c == 'U')
			share = true;
		else
			return usage_err("check: bad option (only -r leaks is supported)");
	}
	if (optind != argc - 1)
		return usage_err("check: need FILE");
	if (repair && share)
		return usage_err("check: -U only reads: it cannot repair");
	if ((repair ? blk_open(argv[optind], false, &bd)
		    : open_ro(argv[optind], NULL, share, &bd)) < 0)
		return 1;
	if (strcmp(bd->ops->format, "qcow2")) {
		printf("%s: %s images have no metadata to check\n", argv[optind], bd->ops->format);
		blk_close(bd);
		return 0;
	}
	r = qcow2_check(bd, repair, &res);
	blk_close(bd);
	if (r < 0) {
		fprintf(stderr, "tern img: check failed: %s\n", strerror(-r));
		return 1;
	}
	if (res.repaired)
		printf("Repaired %" PRIu64 " leaked clusters.\n", res.repaired);
	if (res.corruptions)
		printf("%" PRIu64 " errors were found on the image.\n", res.corruptions);
	if (res.leaks > res.repaired)
		printf("%" PRIu64 " leaked clusters were found on the image.\n",
		       res.leaks - res.repaired);
	if (!res.corruptions && res.leaks <= res.repaired)
		printf("No errors were found on the image.\n");
	if (res.total_clusters)
		printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated, %.2f%% compressed clusters\n",
		       res.data_clusters, res.total_clusters,
		       100.0 * (double)res.data_clusters / (double)res.total_clusters,
		       res.data_clusters
			   ? 100.0 * (double)res.compressed / (double)res.data_clusters
			   : 0.0);
	printf("Image end offset: %" PRIu64 "\n", res.image_end);
	return res.corruptions ? 2 : res.leaks > res.repaired ? 3 : 0;
}

/* ---- convert ---- */

static bool all_zero(const char *p, size_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

/* Copy every non-zero chunk of src into dst, which reads as zeroes when new. */
static int copy_all(struct blockdev *src, struct blockdev *dst, struct progress *pg)
{
	char *buf = malloc(CHUNK);
	int r = buf ? 0 : -ENOMEM;

	for (uint64_t off = 0; r == 0 && off < src->size; off += CHUNK) {
		uint64_t n = src->size - off < CHUNK ? src->size - off : CHUNK;

		r = blk_pread(src, buf, n, off);
		if (r == 0 && !all_zero(buf, n))
			r = blk_pwrite(dst, buf, n, off);
		progress_show(pg, off + n, src->size);
	}
	if (r == 0)
		r = blk_flush(dst);
	free(buf);
	return r;
}

static int img_convert(int argc, char **argv)
{
	const char *ifmt = NULL, *ofmt = "raw";
	struct qcow2_create_opts o = {0};
	struct blockdev *src = NULL, *dst = NULL;
	struct progress pg;
	bool show = false, share = false;
	char *opts = NULL;
	int c, r;

	while ((c = getopt_long(argc, argv, "Uf:O:o:ph", share_opts, NULL)) != -1) {
		switch (c) {
		case 'U':
			share = true;
			break;
		case 'f':
			ifmt = optarg;
			break;
		case 'O':
			ofmt = optarg;
			break;
		case 'o':
			opts = optarg;
			break;
		case 'p':
			show = true;
			break;
		default:
			return usage_err("convert: bad option");
		}
	}
	if (argc - optind != 2)
		return usage_err("convert: need SRC and DST");
	if (strcmp(ofmt, "raw") && strcmp(ofmt, "qcow2"))
		return usage_err("convert: output format must be raw or qcow2");
	if (opts && (strcmp(ofmt, "qcow2") || parse_qcow2_opts(opts, &o) < 0))
		return usage_err("convert: -o is for qcow2 output only");
	if (open_ro(argv[optind], ifmt, share, &src) < 0)
		return 1;
	o.size = src->size;
	r = create_image(argv[optind + 1], ofmt, &o);
	if (r == 0)
		r = blk_open_fmt(argv[optind + 1], ofmt, false, &dst);
	progress_init(&pg, show);
	if (r == 0)
		r = copy_all(src, dst, &pg);
	if (r == 0)
		progress_end(&pg);
	blk_close(dst);
	blk_close(src);
	if (r < 0)
		fprintf(stderr, "tern img: convert failed: %s\n", strerror(-r));
	return r < 0;
}

/* ---- commit ---- */

/* Copy what top stores itself (not what it reads through) into base. */
static int commit_data(struct blockdev *top, struct blockdev *base, struct progress *pg)
{
	char *buf = malloc(CHUNK);
	uint64_t off = 0;
	int r = buf ? 0 : -ENOMEM;

	while (r == 0 && off < top->size) {
		uint64_t len = top->size - off < CHUNK ? top->size - off : CHUNK, n;
		int alloc = qcow2_block_status(top, off, len, &n);

		r = alloc < 0 ? alloc : 0;
		if (alloc > 0) {
			r = blk_pread(top, buf, n, off);
			if (r == 0)
				r = blk_pwrite(base, buf, n, off);
		}
		off += n;
		progress_show(pg, off, top->size);
	}
	if (r == 0)
		r = blk_flush(base);
	free(buf);
	return r;
}

static int img_commit(int argc, char **argv)
{
	struct blockdev *top = NULL, *base = NULL;
	struct qcow2_info qi;
	struct progress pg;
	bool show = false;
	int c, r;

	while ((c = getopt(argc, argv, "ph")) != -1) {
		if (c != 'p')
			return usage_err("commit: bad option");
		show = true;
	}
	if (argc - optind != 1)
		return usage_err("commit: need FILE");
	if (blk_open(argv[optind], true, &top) < 0)
		return 1;
	r = -EINVAL;
	if (strcmp(top->ops->format, "qcow2")) {
		fprintf(stderr, "tern img: %s has no backing file\n", argv[optind]);
		goto out;
	}
	qcow2_get_info(top, &qi);
	if (!qi.backing) {
		fprintf(stderr, "tern img: %s has no backing file\n", argv[optind]);
		goto out;
	}
	if (qi.backing->size < top->size) {
		fprintf(stderr, "tern img: backing file is smaller than %s\n", argv[optind]);
		goto out;
	}
	/* The top's own handle of the base only reads it: let the writer below in. */
	r = blk_set_lock(qi.backing, IMG_LOCK_SHARED);
	if (r == 0)
		r = blk_open_fmt(qi.backing_path, qi.backing->ops->format, false, &base);
	progress_init(&pg, show);
	if (r == 0)
		r = commit_data(top, base, &pg);
	if (r == 0) {
		progress_end(&pg);
		printf("Image committed.\n");
	}
out:
	blk_close(base);
	blk_close(top);
	if (r < 0 && r != -EINVAL)
		fprintf(stderr, "tern img: commit failed: %s\n", strerror(-r));
	return r < 0;
}

/* ---- rebase ---- */

/* Before switching backing files, copy into top every cluster it does not
 * store whose content would change. */
static int rebase_copy(struct blockdev *top, struct blockdev *nb, struct progress *pg)
{
	char *a = malloc(CHUNK), *b = malloc(CHUNK);
	uint64_t off = 0;
	int r = a && b ? 0 : -ENOMEM;

	while (r == 0 && off < top->size) {
		uint64_t len = top->size - off < 65536 ? top->size - off : 65536, n, have = 0;
		int alloc = qcow2_block_status(top, off, len, &n);

		r = alloc < 0 ? alloc : 0;
		if (alloc == 0) {
			r = blk_pread(top, a, n, off);
			memset(b, 0, n);
			if (nb && off < nb->size)
				have = nb->size - off < n ? nb->size - off : n;
			if (r == 0 && have)
				r = blk_pread(nb, b, have, off);
			if (r == 0 && memcmp(a, b, n))
				r = blk_pwrite(top, a, n, off);
		}
		off += n;
		progress_show(pg, off, top->size);
	}
	free(a);
	free(b);
	return r;
}

static int img_rebase(int argc, char **argv)
{
	const char *nbname = NULL, *nbfmt = NULL;
	struct blockdev *top = NULL;
	struct progress pg;
	bool unsafe = false, show = false;
	uint64_t nbsize;
	int c, r;

	while ((c = getopt(argc, argv, "ub:F:ph")) != -1) {
		switch (c) {
		case 'u':
			unsafe = true;
			break;
		case 'b':
			nbname = optarg;
			break;
		case 'F':
			nbfmt = optarg;
			break;
		case 'p':
			show = true;
			break;
		default:
			return usage_err("rebase: bad option");
		}
	}
	if (argc - optind != 1 || !nbname)
		return usage_err("rebase: need -b BACKING and FILE");
	if (!*nbname)
		nbname = NULL;
	if (blk_open_fmt(argv[optind], "qcow2", false, &top) < 0)
		return 1;
	r = nbname ? probe_backing(argv[optind], nbname, &nbfmt, &nbsize) : 0;
	if (r == 0 && !unsafe) {
		struct blockdev *nb = NULL;
		const char *slash = strrchr(argv[optind], '/');
		char *path = NULL;

		if (nbname && (nbname[0] == '/' || !slash))
			path = strdup(nbname);
		else if (nbname && asprintf(&path, "%.*s/%s", (int)(slash - argv[optind]),
					    argv[optind], nbname) < 0)
			path = NULL;
		if (nbname)
			r = path ? blk_open_fmt(path, nbfmt, true, &nb) : -ENOMEM;
		progress_init(&pg, show);
		if (r == 0)
			r = rebase_copy(top, nb, &pg);
		if (r == 0)
			progress_end(&pg);
		blk_close(nb);
		free(path);
	}
	if (r == 0)
		r = blk_flush(top);
	if (r == 0)
		r = qcow2_set_backing(top, nbname, nbfmt);
	blk_close(top);
	if (r < 0)
		fprintf(stderr, "tern img: rebase failed: %s\n", strerror(-r));
	return r < 0;
}

int cmd_img(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} subs[] = {
	    {"create", img_create},   {"info", img_info},     {"check", img_check},
	    {"convert", img_convert}, {"commit", img_commit}, {"rebase", img_rebase},
	    {"stress", img_stress},
	};

	if (argc < 2)
		return usage_err("missing command");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		fputs(usage_text, stdout);
		return 0;
	}
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--help")) {
			fputs(usage_text, stdout);
			return 0;
		}
	}
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		if (!strcmp(argv[1], subs[i].name)) {
			optind = 1;
			return subs[i].fn(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "tern img: unknown command '%s'\n%s", argv[1], usage_text);
	return 2;
}
