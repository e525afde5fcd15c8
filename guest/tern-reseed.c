/*
 * tern-reseed: reseed the guest kernel's RNG when the VM was restored or
 * cloned, so copies of one snapshot do not produce the same random numbers.
 *
 * usage: tern-reseed                 reseed once
 *        tern-reseed --watch CONFIG  poll tern's identity device (its PCI config
 *                                    file in sysfs) and reseed whenever its
 *                                    generation id changes
 *
 * The default guest's kernel has no VM generation ID driver, so this is the
 * guest half of the protocol in docs/snapshot-format.md ("Clones"): tern
 * renews the generation id on every restore and clone; this program feeds
 * fresh host entropy (virtio-rng, /dev/hwrng) into the input pool and forces
 * an immediate reseed of the kernel's CRNG (RNDRESEEDCRNG), which also mixes
 * in RDSEED/RDRAND (each tern process serves those from the host's own RNG).
 */
#include "rt.h"

#define SYS_READ 0
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_PREAD64 17
#define SYS_NANOSLEEP 35
#define O_RDONLY 0
#define O_WRONLY 1
#define O_NONBLOCK 04000
#define RNDADDENTROPY 0x40085203 /* _IOW('R', 3, int[2]) */
#define RNDRESEEDCRNG 0x5207	 /* _IO('R', 7) */
#define POLL_NS 200000000L	 /* 0.2 s: the window in which a copy may repeat output */
#define ID_CAP_PTR 0x34
#define ID_GEN_OFF 8 /* generation id: 16 bytes at capability + 8 */

struct pool_info {
	int entropy_bits;
	int size;
	unsigned char buf[64];
};

static void reseed(void)
{
	struct pool_info info = {0, 0, {0}};
	long fd = syscall3(SYS_OPEN, (long)"/dev/hwrng", O_RDONLY | O_NONBLOCK, 0);
	long n = 0;

	if (fd >= 0) {
		n = syscall3(SYS_READ, fd, (long)info.buf, sizeof(info.buf));
		syscall3(SYS_CLOSE, fd, 0, 0);
	}
	fd = syscall3(SYS_OPEN, (long)"/dev/urandom", O_WRONLY, 0);
	if (fd < 0)
		return;
	if (n > 0) {
		info.size = (int)n;
		info.entropy_bits = (int)n * 8;
		syscall3(SYS_IOCTL, fd, RNDADDENTROPY, (long)&info);
	}
	syscall3(SYS_IOCTL, fd, RNDRESEEDCRNG, 0);
	syscall3(SYS_CLOSE, fd, 0, 0);
}

static int read_gen(long fd, unsigned char gen[16])
{
	unsigned char cap = 0;

	if (syscall4(SYS_PREAD64, fd, (long)&cap, 1, ID_CAP_PTR) != 1 || cap < 0x40)
		return -1;
	return syscall4(SYS_PREAD64, fd, (long)gen, 16, cap + ID_GEN_OFF) == 16 ? 0 : -1;
}

static int same(const unsigned char *a, const unsigned char *b)
{
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

int guest_main(long argc, char **argv)
{
	unsigned char gen[16], now[16];
	long ts[2] = {0, POLL_NS};
	long fd;

	if (argc == 1) {
		reseed();
		return 0;
	}
	if (argc != 3 || argv[1][0] != '-' || argv[1][1] != '-' || argv[1][2] != 'w') {
		put_fd(2, "usage: tern-reseed [--watch CONFIG]\n");
		return 2;
	}
	fd = syscall3(SYS_OPEN, (long)argv[2], O_RDONLY, 0);
	if (fd < 0 || read_gen(fd, gen)) {
		put_fd(2, "tern-reseed: cannot read the identity device\n");
		return 1;
	}
	for (;;) {
		syscall3(SYS_NANOSLEEP, (long)ts, 0, 0);
		if (read_gen(fd, now) || same(now, gen))
			continue;
		reseed();
		for (int i = 0; i < 16; i++)
			gen[i] = now[i];
	}
}
