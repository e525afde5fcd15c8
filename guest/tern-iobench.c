/*
 * tern-iobench: block device throughput from inside the guest, for
 * bench/disk. O_DIRECT, so the guest's page cache is out of the way and
 * every request reaches the virtual disk.
 *
 * usage: tern-iobench DEVICE MIB RANDOPS [QD]
 *
 * Four phases over the first MIB MiB of DEVICE, in this order (reads first,
 * so they see what the disk held before, e.g. a backing chain's data):
 *   SEQR  sequential 1 MiB reads of the whole range
 *   RANDR RANDOPS 4 KiB reads at 4 KiB-aligned random offsets
 *   SEQW  sequential 1 MiB writes over the whole range, then fdatasync
 *   RANDW RANDOPS 4 KiB writes at random offsets, then fdatasync
 * With QD > 1, QD processes each do their share at the same time (the
 * sequential range is split into QD consecutive parts), so up to QD
 * requests are in flight. They are forked first and start together; a
 * phase lasts from the start to the last one's end, so forking and reaping
 * them is not counted. Offsets come from xorshift64 with a fixed seed per
 * worker: every run issues the same requests.
 *
 * Prints one line per result, MB = 2^20 bytes:
 *   SEQR=<MB/s> RANDR_IOPS=<n> RANDR=<MB/s> SEQW=<MB/s> RANDW_IOPS=<n> RANDW=<MB/s>
 * The device's content is overwritten. Exit status 1 on any I/O error.
 */
#include "rt.h"

#define SYS_READ_AT 17	/* pread64 */
#define SYS_WRITE_AT 18 /* pwrite64 */
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_MMAP 9
#define SYS_SCHED_YIELD 24
#define SYS_FDATASYNC 75
#define SYS_CLOCK_GETTIME 228

#define O_RDWR 02
#define O_DIRECT 040000
#define PROT_RW 3
#define MAP_SHARED_ANON (0x01 | 0x20)
#define MAP_POPULATE 0x8000
#define CLOCK_MONOTONIC 1

#define SEQ_BS (1ul << 20)
#define RAND_BS 4096ul
#define MAX_MIB 4096ul
#define MAX_RANDOPS 1000000ul
#define MAX_QD 32ul

enum phase { PH_SEQR, PH_RANDR, PH_SEQW, PH_RANDW };

struct timespec_k {
	long sec, nsec;
};

/* Shared by the workers of one phase (a MAP_SHARED page). */
struct sync {
	volatile unsigned long go;	    /* start time, 0 until all are forked */
	volatile unsigned long end[MAX_QD]; /* each worker's end time */
};

struct job {
	int fd;
	unsigned char *buf; /* SEQ_BS bytes per worker, page aligned, shared */
	unsigned long mib, randops, qd;
	struct sync *sync;
};

static unsigned long now_ns(void)
{
	struct timespec_k t;

	syscall3(SYS_CLOCK_GETTIME, CLOCK_MONOTONIC, (long)&t, 0);
	return (unsigned long)t.sec * 1000000000ul + (unsigned long)t.nsec;
}

static unsigned long xorshift64(unsigned long *s)
{
	unsigned long x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* One whole transfer; O_DIRECT on a block device is never short unless it fails. */
static int xfer(const struct job *j, int write, unsigned long len, unsigned long off)
{
	long r =
	    syscall4(write ? SYS_WRITE_AT : SYS_READ_AT, j->fd, (long)j->buf, (long)len, (long)off);

	return r == (long)len ? 0 : -1;
}

static int sync_dev(const struct job *j)
{
	return syscall3(SYS_FDATASYNC, j->fd, 0, 0) == 0 ? 0 : -1;
}

/* Worker w of j->qd: its slice of the sequential range. */
static int seq_part(const struct job *j, int write, unsigned long w)
{
	unsigned long per = j->mib / j->qd, first = w * per;
	unsigned long n = w == j->qd - 1 ? j->mib - first : per;

	for (unsigned long i = 0; i < n; i++)
		if (xfer(j, write, SEQ_BS, (first + i) * SEQ_BS))
			return -1;
	return 0;
}

/* Worker w of j->qd: its share of the random requests. */
static int rand_part(const struct job *j, int write, unsigned long w)
{
	unsigned long blocks = j->mib * (SEQ_BS / RAND_BS);
	unsigned long n = j->randops / j->qd + (w < j->randops % j->qd);
	unsigned long seed = 0x9e3779b97f4a7c15ul * (w + 1);

	for (unsigned long i = 0; i < n; i++)
		if (xfer(j, write, RAND_BS, (xorshift64(&seed) % blocks) * RAND_BS))
			return -1;
	return 0;
}

static int part(const struct job *j, int phase, unsigned long w)
{
	switch (phase) {
	case PH_SEQR:
		return seq_part(j, 0, w);
	case PH_RANDR:
		return rand_part(j, 0, w);
	case PH_SEQW:
		return seq_part(j, 1, w);
	default:
		return rand_part(j, 1, w);
	}
}

/* mmap(NULL, len, PROT_RW, flags, -1, 0): six arguments, more than rt.h passes. */
static long map_anon(unsigned long len, long flags)
{
	register long r10 __asm__("r10") = flags;
	register long r8 __asm__("r8") = -1;
	register long r9 __asm__("r9") = 0;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(SYS_MMAP), "D"(0), "S"(len), "d"(PROT_RW), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

/* The workers' buffers, one mapping shared with the children (no copy-on-write faults). */
static unsigned char *alloc_bufs(unsigned long qd)
{
	long p = map_anon(qd * SEQ_BS, MAP_SHARED_ANON | MAP_POPULATE);

	/* Errors come back as -4095..-1. */
	if ((unsigned long)p > -4096ul)
		return 0;
	/* Written data that no device or format can store as "all zero". */
	for (unsigned long i = 0; i < qd * SEQ_BS; i++)
		((unsigned char *)p)[i] = (unsigned char)(i * 7 + 1);
	return (unsigned char *)p;
}

/* A child process runs worker w with a buffer of its own; returns its status. */
static int run_child(struct job *j, int phase, unsigned long w)
{
	int r;

	j->buf += w * SEQ_BS;
	/* fork() leaves shared mappings unmapped: fault the buffer in before the clock runs. */
	for (unsigned long i = 0; i < SEQ_BS; i += 4096)
		((volatile unsigned char *)j->buf)[i] = j->buf[i];
	/* One vCPU may run all of them: yield until the parent says go. */
	while (!j->sync->go)
		syscall3(SYS_SCHED_YIELD, 0, 0, 0);
	r = part(j, phase, w) == 0 ? 0 : 1;
	j->sync->end[w] = now_ns();
	return r;
}

/* Fork the workers, start them together, reap them; returns the elapsed ns or 0. */
static unsigned long run_workers(struct job *j, int phase)
{
	unsigned long started = 0, t1 = 0;
	int fail = 0;

	j->sync->go = 0;
	for (unsigned long w = 0; w < j->qd; w++) {
		long pid = syscall3(SYS_FORK, 0, 0, 0);

		if (pid == 0)
			syscall3(SYS_EXIT, run_child(j, phase, w), 0, 0);
		if (pid < 0) {
			fail = 1;
			break;
		}
		started++;
	}
	j->sync->go = now_ns();
	for (unsigned long w = 0; w < started; w++) {
		int st = 0;

		if (syscall4(SYS_WAIT4, -1, (long)&st, 0, 0) < 0 || st != 0)
			fail = 1;
	}
	for (unsigned long w = 0; w < started; w++)
		if (j->sync->end[w] > t1)
			t1 = j->sync->end[w];
	return fail || t1 < j->sync->go ? 0 : t1 - j->sync->go + 1;
}

/* Run one phase on j->qd workers; returns elapsed ns, or 0 on failure. */
static unsigned long run_phase(struct job *j, int phase)
{
	unsigned long t0 = now_ns(), ns;

	if (j->qd == 1)
		ns = part(j, phase, 0) ? 0 : now_ns() - t0 + 1;
	else
		ns = run_workers(j, phase);
	/* The flush after a write phase counts: the data is on the disk then. */
	if (ns && phase >= PH_SEQW) {
		t0 = now_ns();
		ns = sync_dev(j) ? 0 : ns + now_ns() - t0;
	}
	return ns;
}

static void put_kv(const char *k, unsigned long v)
{
	put_fd(1, k);
	put_fd(1, "=");
	put_ulong(1, v);
	put_fd(1, "\n");
}

/* MiB/s for bytes in ns, without overflow for bytes <= 4 GiB. */
static unsigned long mib_per_s(unsigned long bytes, unsigned long ns)
{
	return bytes / 1024 * 1000000ul / (ns / 1000 + 1) / 1024;
}

static void report(const struct job *j, const unsigned long ns[4])
{
	unsigned long seq = j->mib * SEQ_BS, rnd = j->randops * RAND_BS;

	put_kv("SEQR", mib_per_s(seq, ns[PH_SEQR]));
	put_kv("RANDR_IOPS", j->randops * 1000000000ul / ns[PH_RANDR]);
	put_kv("RANDR", mib_per_s(rnd, ns[PH_RANDR]));
	put_kv("SEQW", mib_per_s(seq, ns[PH_SEQW]));
	put_kv("RANDW_IOPS", j->randops * 1000000000ul / ns[PH_RANDW]);
	put_kv("RANDW", mib_per_s(rnd, ns[PH_RANDW]));
}

static int parse_args(long argc, char **argv, struct job *j)
{
	if (argc < 4 || argc > 5 || parse_ulong(argv[2], MAX_MIB, &j->mib) || !j->mib ||
	    parse_ulong(argv[3], MAX_RANDOPS, &j->randops) || !j->randops)
		return -1;
	j->qd = 1;
	if (argc == 5 && (parse_ulong(argv[4], MAX_QD, &j->qd) || !j->qd || j->qd > j->mib))
		return -1;
	return 0;
}

int guest_main(long argc, char **argv)
{
	static const char *const names[4] = {"sequential read", "random read", "sequential write",
					     "random write"};
	unsigned long ns[4];
	struct job j;

	if (parse_args(argc, argv, &j)) {
		put_fd(2, "usage: tern-iobench DEVICE MIB(1..4096) RANDOPS(1..1000000) "
			  "[QD(1..32, <= MIB)]\n");
		return 2;
	}
	j.fd = (int)syscall3(SYS_OPEN, (long)argv[1], O_RDWR | O_DIRECT, 0);
	j.buf = alloc_bufs(j.qd);
	j.sync = (struct sync *)map_anon(sizeof(struct sync), MAP_SHARED_ANON);
	if (j.fd < 0 || !j.buf || (unsigned long)j.sync > -4096ul) {
		put_fd(2, "tern-iobench: cannot open the device or map a buffer\n");
		return 1;
	}
	for (int p = 0; p < 4; p++) {
		ns[p] = run_phase(&j, p);
		if (!ns[p]) {
			put_fd(2, "tern-iobench: I/O error in the ");
			put_fd(2, names[p]);
			put_fd(2, " phase\n");
			return 1;
		}
	}
	syscall3(SYS_CLOSE, j.fd, 0, 0);
	report(&j, ns);
	return 0;
}
