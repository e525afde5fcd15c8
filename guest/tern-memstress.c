/*
 * tern-memstress: a guest workload that checks that memory overcommit loses
 * nothing. While the host sweeps zero pages, inflates and deflates the
 * balloon and takes free page reports, this program keeps memory and a disk
 * busy with data it can verify to the byte.
 *
 * usage: tern-memstress SECONDS PERCENT [DEVICE MIB]
 *
 * Memory (this process): a buffer of PERCENT of the guest's free memory, in
 * 2 MiB chunks. Every page holds either zeros or a pattern derived from its
 * index and a generation number the program remembers. For SECONDS it
 * rewrites random pages with new generations, zeroes pages (the sweep's
 * prey: a zero page that is written again must keep what was written),
 * unmaps and maps chunks again (freed memory for the balloon and for free
 * page reporting; the new chunk must read as zero), and verifies random
 * pages, at random and in order, over and over, and the whole buffer at
 * the end.
 *
 * Disk (a child process, if DEVICE is given): the first MIB MiB of DEVICE
 * in 4 KiB blocks, written with O_DIRECT (so the data really goes through
 * the device, from and into pinned guest pages) in runs of 1-16 blocks with
 * a pattern of (block, generation), fsync'ed now and then, read back and
 * verified at random and in order, overwrites included.
 *
 * On the first mismatch it prints "MEMSTRESS MISMATCH" with the page or
 * block, the byte offset, the expected and the found 64-bit word and how
 * many words of that page differ, and exits 1. At the end:
 * "MEMSTRESS OK pages=N verified=N rewrites=N zeroed=N remaps=N passes=N
 *  disk_blocks=N disk_writes=N disk_verified=N".
 */
#include "rt.h"

#define SYS_KILL 62
#define SIGKILL 9
#define PROT_RW 3
#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define O_RDWR 2
#define O_DIRECT 040000
#define CLOCK_MONOTONIC 1

#define PAGE 4096ul
#define WORDS (PAGE / 8)
#define CHUNK_PAGES 512ul /* 2 MiB: the unit that is unmapped and mapped again */
#define MAX_RUN 16	  /* blocks per disk write */
#define MAX_MIB 1048576ul

struct sysinfo_raw {
	long uptime;
	unsigned long loads[3];
	unsigned long totalram, freeram, sharedram, bufferram, totalswap, freeswap;
	unsigned short procs, pad;
	unsigned long totalhigh, freehigh;
	unsigned int mem_unit;
	char reserved[256];
};

struct timespec_raw {
	long sec, nsec;
};

/* What the disk process did, in memory it shares with the parent. */
struct disk_stats {
	unsigned long blocks, writes, verified, failed;
};

static unsigned long rng_state = 0x9e3779b97f4a7c15ul;

static unsigned long rnd(void)
{
	/* xorshift64: fast, and good enough to pick pages. */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static unsigned long now_ms(void)
{
	struct timespec_raw ts = {0, 0};

	syscall3(SYS_CLOCK_GETTIME, CLOCK_MONOTONIC, (long)&ts, 0);
	return (unsigned long)ts.sec * 1000 + (unsigned long)ts.nsec / 1000000;
}

static void put_hex(int fd, unsigned long v)
{
	char buf[19] = "0x";

	for (int i = 0; i < 16; i++)
		buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
	buf[18] = '\0';
	put_fd(fd, buf);
}

static void put_kv(const char *key, unsigned long v)
{
	put_fd(1, key);
	put_ulong(1, v);
}

/* The seed of unit (page or block) idx at generation gen; generation 0 is all zeros. */
static unsigned long seed_of(unsigned long idx, unsigned long gen, unsigned long salt)
{
	unsigned long x = (idx << 24 ^ gen ^ salt) + 0x9e3779b97f4a7c15ul;

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ul;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebul;
	return x ^ (x >> 31);
}

/*
 * Word i of a unit at generation gen > 0: seed + i * STEP with the low bit
 * set, never zero and different in every word and unit; one add per word,
 * which keeps a full pass affordable on an emulated CPU.
 */
#define STEP 0x9e3779b97f4a7c15ul

static void fill_unit(unsigned long *p, unsigned long idx, unsigned long gen, unsigned long salt)
{
	unsigned long w = seed_of(idx, gen, salt), on = gen ? ~0ul : 0;

	/* No branch in the loop: an emulated CPU pays for every block. */
	for (unsigned long i = 0; i < WORDS; i++, w += STEP)
		p[i] = (w | 1) & on;
}

/* Index of the first word that differs from the expected content, or WORDS. */
static unsigned long check_unit(const unsigned long *p, unsigned long idx, unsigned long gen,
				unsigned long salt, unsigned long *want, unsigned long *got,
				unsigned long *nbad)
{
	unsigned long w = seed_of(idx, gen, salt), on = gen ? ~0ul : 0, diff = 0, first = WORDS;

	*nbad = 0;
	/* The fast path: one OR of all differences, branch-free. */
	for (unsigned long i = 0; i < WORDS; i++, w += STEP)
		diff |= p[i] ^ ((w | 1) & on);
	if (!diff)
		return WORDS;
	w = seed_of(idx, gen, salt);
	for (unsigned long i = 0; i < WORDS; i++, w += STEP) {
		unsigned long e = (w | 1) & on;

		if (p[i] == e)
			continue;
		if (first == WORDS) {
			first = i;
			*want = e;
			*got = p[i];
		}
		(*nbad)++;
	}
	return first;
}

static void report_mismatch(const char *what, unsigned long idx, unsigned long gen,
			    unsigned long word, unsigned long want, unsigned long got,
			    unsigned long nbad)
{
	put_fd(1, "MEMSTRESS MISMATCH ");
	put_fd(1, what);
	put_kv(" index=", idx);
	put_kv(" gen=", gen);
	put_kv(" offset=", idx * PAGE + word * 8);
	put_fd(1, " expected=");
	put_hex(1, want);
	put_fd(1, " got=");
	put_hex(1, got);
	put_kv(" bad_words=", nbad);
	put_fd(1, "\n");
}

static void *map_anon(void *at, unsigned long len, int flags)
{
	long r = syscall6(SYS_MMAP, (long)at, (long)len, PROT_RW,
			  flags | MAP_ANONYMOUS | (at ? MAP_FIXED : 0), -1, 0);

	return r < 0 && r > -4096 ? 0 : (void *)r;
}

/* ---- memory ---- */

struct mem {
	unsigned char *buf;
	unsigned int *gen; /* per page; 0: must read as zero */
	unsigned long pages, next_gen;
	unsigned long verified, rewrites, zeroed, remaps, passes;
};

static int mem_verify_page(struct mem *m, unsigned long pg)
{
	unsigned long want = 0, got = 0, nbad;
	unsigned long w = check_unit((const unsigned long *)(m->buf + pg * PAGE), pg, m->gen[pg], 0,
				     &want, &got, &nbad);

	m->verified++;
	if (w == WORDS)
		return 0;
	report_mismatch("memory page", pg, m->gen[pg], w, want, got, nbad);
	return -1;
}

static void mem_write_page(struct mem *m, unsigned long pg, unsigned long gen)
{
	fill_unit((unsigned long *)(m->buf + pg * PAGE), pg, gen, 0);
	m->gen[pg] = (unsigned int)gen;
}

/* Unmap a chunk and map fresh zero memory in its place: frees its pages in the guest. */
static int mem_remap(struct mem *m, unsigned long chunk)
{
	unsigned char *at = m->buf + chunk * CHUNK_PAGES * PAGE;
	unsigned long first = chunk * CHUNK_PAGES, n = CHUNK_PAGES;

	if (first + n > m->pages)
		n = m->pages - first;
	syscall3(SYS_MUNMAP, (long)at, (long)(n * PAGE), 0);
	if (map_anon(at, n * PAGE, MAP_PRIVATE) != at) {
		put_fd(1, "MEMSTRESS ERROR mmap after munmap failed\n");
		return -1;
	}
	for (unsigned long i = 0; i < n; i++)
		m->gen[first + i] = 0;
	m->remaps++;
	/* Half of the remapped chunks get data again at once. */
	if (rnd() & 1)
		for (unsigned long i = 0; i < n; i++)
			mem_write_page(m, first + i, ++m->next_gen);
	return 0;
}

static int mem_verify_all(struct mem *m)
{
	for (unsigned long pg = 0; pg < m->pages; pg++)
		if (mem_verify_page(m, pg))
			return -1;
	return 0;
}

/* One random step; most of them are writes, zeroing is the sweep's bait. */
static int mem_step(struct mem *m)
{
	unsigned long r = rnd(), pg = (r >> 8) % m->pages, op = r & 255;

	if (op < 2)
		return mem_remap(m, pg / CHUNK_PAGES);
	if (mem_verify_page(m, pg))
		return -1;
	if (op < 128) {
		mem_write_page(m, pg, ++m->next_gen);
		m->rewrites++;
	} else if (op < 176) {
		mem_write_page(m, pg, 0);
		m->zeroed++;
	}
	return 0;
}

/*
 * Batches of: the next pages of the first fill (so random work starts at
 * once, however slow the CPU), random steps, and the next pages in order
 * to verify: every page is checked again and again, not only the ones
 * picked at random.
 */
static int mem_run(struct mem *m, unsigned long end_ms)
{
	unsigned long cursor = 0, filled = 0;

	while (now_ms() < end_ms) {
		for (int i = 0; i < 64 && filled < m->pages; i++, filled++) {
			/* A third of the pages start zero. */
			mem_write_page(m, filled, filled % 3 ? ++m->next_gen : 0);
		}
		for (int i = 0; i < 64; i++)
			if (mem_step(m))
				return -1;
		for (int i = 0; i < 64; i++) {
			if (mem_verify_page(m, cursor))
				return -1;
			if (++cursor == m->pages) {
				cursor = 0;
				m->passes++;
			}
		}
	}
	return mem_verify_all(m);
}

/* ---- disk ---- */

struct disk {
	long fd;
	unsigned char *buf; /* MAX_RUN blocks, page aligned for O_DIRECT */
	unsigned int *gen;
	unsigned long blocks, next_gen;
	struct disk_stats *st;
};

static int disk_write(struct disk *d, unsigned long first, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++) {
		d->gen[first + i] = (unsigned int)++d->next_gen;
		fill_unit((unsigned long *)(d->buf + i * PAGE), first + i, d->gen[first + i], 1);
	}
	if (syscall4(SYS_PWRITE64, d->fd, (long)d->buf, (long)(n * PAGE), (long)(first * PAGE)) !=
	    (long)(n * PAGE)) {
		put_fd(1, "MEMSTRESS ERROR disk write failed\n");
		return -1;
	}
	d->st->writes++;
	return 0;
}

static int disk_verify(struct disk *d, unsigned long first, unsigned long n)
{
	unsigned long want = 0, got = 0, nbad;

	/* Scribble over the buffer first: stale data in it must not pass. */
	for (unsigned long i = 0; i < n * WORDS; i++)
		((unsigned long *)d->buf)[i] = 0xdeadbeefdeadbeeful;
	if (syscall4(SYS_PREAD64, d->fd, (long)d->buf, (long)(n * PAGE), (long)(first * PAGE)) !=
	    (long)(n * PAGE)) {
		put_fd(1, "MEMSTRESS ERROR disk read failed\n");
		return -1;
	}
	for (unsigned long i = 0; i < n; i++) {
		unsigned long w = check_unit((const unsigned long *)(d->buf + i * PAGE), first + i,
					     d->gen[first + i], 1, &want, &got, &nbad);

		d->st->verified++;
		if (w != WORDS) {
			report_mismatch("disk block", first + i, d->gen[first + i], w, want, got,
					nbad);
			return -1;
		}
	}
	return 0;
}

static int disk_verify_all(struct disk *d)
{
	for (unsigned long b = 0; b < d->blocks; b += MAX_RUN) {
		unsigned long n = d->blocks - b < MAX_RUN ? d->blocks - b : MAX_RUN;

		if (disk_verify(d, b, n))
			return -1;
	}
	return 0;
}

static int disk_step(struct disk *d)
{
	unsigned long r = rnd(), n = 1 + (r & (MAX_RUN - 1)), first = (r >> 8) % d->blocks;

	if (first + n > d->blocks)
		n = d->blocks - first;
	if ((r >> 4) & 1) {
		/* Overwrite, then read back at once. */
		if (disk_write(d, first, n) || disk_verify(d, first, n))
			return -1;
	} else if (disk_verify(d, first, n)) {
		return -1;
	}
	if ((r >> 5 & 15) == 0 && syscall3(SYS_FSYNC, d->fd, 0, 0) < 0) {
		put_fd(1, "MEMSTRESS ERROR fsync failed\n");
		return -1;
	}
	return 0;
}

static int disk_run(struct disk *d, unsigned long end_ms)
{
	unsigned long cursor = 0;

	for (unsigned long b = 0; b < d->blocks; b += MAX_RUN)
		if (disk_write(d, b, d->blocks - b < MAX_RUN ? d->blocks - b : MAX_RUN))
			return -1;
	while (now_ms() < end_ms) {
		unsigned long n = d->blocks - cursor < MAX_RUN ? d->blocks - cursor : MAX_RUN;

		/* A random step, then the next blocks in order. */
		if (disk_step(d) || disk_verify(d, cursor, n))
			return -1;
		cursor = cursor + n == d->blocks ? 0 : cursor + n;
	}
	return disk_verify_all(d);
}

static int disk_child(const char *dev, unsigned long mib, unsigned long end_ms,
		      struct disk_stats *st)
{
	struct disk d = {.blocks = mib * (1048576 / PAGE), .st = st};
	int err;

	rng_state ^= 0x5bd1e995ul;
	d.fd = syscall3(SYS_OPEN, (long)dev, O_RDWR | O_DIRECT, 0);
	if (d.fd < 0) {
		put_fd(1, "MEMSTRESS ERROR cannot open the disk with O_DIRECT\n");
		return 1;
	}
	d.buf = map_anon(0, MAX_RUN * PAGE, MAP_PRIVATE);
	d.gen = map_anon(0, d.blocks * sizeof(*d.gen), MAP_PRIVATE);
	if (!d.buf || !d.gen) {
		put_fd(1, "MEMSTRESS ERROR out of memory for the disk\n");
		return 1;
	}
	st->blocks = d.blocks;
	err = disk_run(&d, end_ms);
	if (!err && syscall3(SYS_FSYNC, d.fd, 0, 0) < 0)
		err = -1;
	syscall3(SYS_CLOSE, d.fd, 0, 0);
	st->failed = err != 0;
	return err ? 1 : 0;
}

/* ---- main ---- */

static long start_disk(const char *dev, unsigned long mib, unsigned long end_ms,
		       struct disk_stats *st)
{
	long pid = syscall3(SYS_FORK, 0, 0, 0);

	if (pid == 0)
		syscall3(SYS_EXIT, disk_child(dev, mib, end_ms, st), 0, 0);
	return pid;
}

static int wait_disk(long pid)
{
	int status = 0;
	long r;

	do
		r = syscall4(SYS_WAIT4, pid, (long)&status, 0, 0);
	while (r == -EINTR);
	return r == pid && (status & 0x7f) == 0 && ((status >> 8) & 0xff) == 0 ? 0 : -1;
}

static int mem_setup(struct mem *m, unsigned long percent)
{
	struct sysinfo_raw si;
	unsigned long free_bytes, len;

	if (syscall3(SYS_SYSINFO, (long)&si, 0, 0) < 0)
		return -1;
	free_bytes = si.freeram * (si.mem_unit ? si.mem_unit : 1);
	m->pages = free_bytes / PAGE * percent / 100;
	if (m->pages < CHUNK_PAGES)
		m->pages = CHUNK_PAGES;
	len = (m->pages + CHUNK_PAGES - 1) / CHUNK_PAGES * CHUNK_PAGES * PAGE;
	m->buf = map_anon(0, len, MAP_PRIVATE);
	m->gen = map_anon(0, m->pages * sizeof(*m->gen), MAP_PRIVATE);
	return m->buf && m->gen ? 0 : -1;
}

int guest_main(long argc, char **argv)
{
	unsigned long secs, percent, mib = 0, end_ms;
	struct disk_stats *st;
	struct mem m = {0};
	long pid = 0;
	int err;

	if ((argc != 3 && argc != 5) || parse_ulong(argv[1], 86400, &secs) ||
	    parse_ulong(argv[2], 90, &percent) || !percent ||
	    (argc == 5 && (parse_ulong(argv[4], MAX_MIB, &mib) || !mib))) {
		put_fd(2, "usage: tern-memstress SECONDS PERCENT [DEVICE MIB]\n");
		return 2;
	}
	st = map_anon(0, PAGE, MAP_SHARED);
	if (!st || mem_setup(&m, percent)) {
		put_fd(1, "MEMSTRESS ERROR out of memory\n");
		return 1;
	}
	rng_state ^= now_ms();
	end_ms = now_ms() + secs * 1000;
	if (argc == 5) {
		pid = start_disk(argv[3], mib, end_ms, st);
		if (pid < 0) {
			put_fd(1, "MEMSTRESS ERROR fork failed\n");
			return 1;
		}
	}
	err = mem_run(&m, end_ms);
	/* A memory mismatch ends the run now: the disk process must not outlive it. */
	if (err && pid > 0)
		syscall3(SYS_KILL, pid, SIGKILL, 0);
	if (pid > 0 && wait_disk(pid))
		err = -1;
	if (err)
		return 1;
	put_kv("MEMSTRESS OK pages=", m.pages);
	put_kv(" verified=", m.verified);
	put_kv(" rewrites=", m.rewrites);
	put_kv(" zeroed=", m.zeroed);
	put_kv(" remaps=", m.remaps);
	put_kv(" passes=", m.passes);
	put_kv(" disk_blocks=", st->blocks);
	put_kv(" disk_writes=", st->writes);
	put_kv(" disk_verified=", st->verified);
	put_fd(1, "\n");
	return 0;
}
