/* Snapshot file formats: state file round trip and refusals, vCPU codec, sparse memory file. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "state/snapfile.h"
#include "state/snapshot.h"
#include "vmm/mem.h"

static char tmpdir[] = "/tmp/tern-snap-XXXXXX";

static char *tpath(const char *name)
{
	static char buf[4][256];
	static int n;
	char *p = buf[n++ % 4];

	snprintf(p, 256, "%s/%s", tmpdir, name);
	return p;
}

static void fill_state(struct cpu_state *st, unsigned seed)
{
	uint8_t *p = (uint8_t *)st;

	srand(seed);
	for (size_t i = 0; i < sizeof(*st); i++)
		p[i] = (uint8_t)rand();
	/* Fields the codec normalizes: keep them in range so the round trip is exact. */
	struct cpu_seg *segs[] = {&st->es, &st->cs, &st->ss,  &st->ds,
				  &st->fs, &st->gs, &st->ldt, &st->tr};
	for (int i = 0; i < 8; i++) {
		struct cpu_seg *s = segs[i];

		s->type &= 0xf;
		s->present &= 1;
		s->dpl &= 3;
		s->db &= 1;
		s->s &= 1;
		s->l &= 1;
		s->g &= 1;
		s->avl &= 1;
		s->unusable &= 1;
	}
	st->halted = seed & 1;
	st->intr_shadow = !(seed & 1);
	st->pending_exception = (int32_t)(seed % 33) - 1;
}

static void assert_same_state(const struct cpu_state *a, const struct cpu_state *b)
{
	assert_memory_equal(a->gpr, b->gpr, sizeof(a->gpr));
	assert_int_equal(a->rip, b->rip);
	assert_int_equal(a->rflags, b->rflags);
	assert_memory_equal(&a->cs, &b->cs, offsetof(struct cpu_seg, unusable) + 1);
	assert_memory_equal(&a->tr, &b->tr, offsetof(struct cpu_seg, unusable) + 1);
	assert_int_equal(a->gdt.base, b->gdt.base);
	assert_int_equal(a->idt.limit, b->idt.limit);
	assert_int_equal(a->cr3, b->cr3);
	assert_int_equal(a->efer, b->efer);
	assert_int_equal(a->tsc, b->tsc);
	assert_int_equal(a->tsc_deadline, b->tsc_deadline);
	assert_int_equal(a->kernel_gs_base, b->kernel_gs_base);
	assert_int_equal(a->kvm_wall_clock, b->kvm_wall_clock);
	assert_memory_equal(a->fxsave, b->fxsave, sizeof(a->fxsave));
	assert_memory_equal(a->lapic, b->lapic, sizeof(a->lapic));
	assert_int_equal(a->halted, b->halted);
	assert_int_equal(a->intr_shadow, b->intr_shadow);
	assert_int_equal(a->pending_exception, b->pending_exception);
	assert_int_equal(a->pending_error_code, b->pending_error_code);
}

static void test_cpu_codec_round_trip(void **state)
{
	for (unsigned seed = 1; seed < 20; seed++) {
		struct cpu_state a, b;
		struct dev_buf buf = {0};

		fill_state(&a, seed);
		assert_int_equal(snap_cpu_encode(&a, &buf), 0);
		assert_int_equal(snap_cpu_decode(buf.data, buf.len, &b), 0);
		assert_same_state(&a, &b);
		/* One byte short or long is refused. */
		assert_int_equal(snap_cpu_decode(buf.data, buf.len - 1, &b), -EINVAL);
		assert_int_equal(dev_buf_put(&buf, "", 1), 0);
		assert_int_equal(snap_cpu_decode(buf.data, buf.len, &b), -EINVAL);
		dev_buf_free(&buf);
	}
}

/* A small but complete image: model, machine, 2 vCPUs, backend, 3 devices. */
static void build_image(struct snap_writer *w, uint32_t ncpus)
{
	struct snap_header h = {.arch = SNAP_ARCH_X86_64, .ncpus = ncpus, .mem_size = 64 << 20};
	struct cpu_state st;

	memcpy(h.backend, "emu", 4);
	memset(h.id, 0xab, sizeof(h.id));
	snap_w_begin(w, &h);
	snap_w_section(w, SNAP_SEC_CPU_MODEL, 0, "model-x", 7);
	snap_w_section(w, SNAP_SEC_MACHINE, 0, "\1\0\0\0\0\0\0\0", 8);
	for (uint32_t i = 0; i < ncpus; i++) {
		struct dev_buf b = {0};

		fill_state(&st, i + 7);
		assert_int_equal(snap_cpu_encode(&st, &b), 0);
		snap_w_section(w, SNAP_SEC_VCPU, i, b.data, b.len);
		dev_buf_free(&b);
	}
	snap_w_section(w, SNAP_SEC_BACKEND, 0, "backend-blob", 12);
	snap_w_device(w, 0, "serial", "abc", 3);
	snap_w_device(w, 1, "virtio", "", 0);
	snap_w_device(w, 2, "rtc", "0123456789", 10);
	assert_int_equal(snap_w_finish(w), 0);
}

static uint8_t *copy_of(const struct snap_writer *w)
{
	uint8_t *p = malloc(w->buf.len);

	assert_non_null(p);
	memcpy(p, w->buf.data, w->buf.len);
	return p;
}

static int parse_copy(const uint8_t *data, uint64_t len, const char **why)
{
	struct snap_image img;
	uint8_t *p = malloc(len ? len : 1);
	int err;

	assert_non_null(p);
	memcpy(p, data, len);
	err = snap_image_parse(&img, p, len, why);
	snap_image_free(&img);
	return err;
}

/* Recompute the trailer CRC after an edit, as a deliberate (not accidental) change would. */
static void recrc(uint8_t *buf, uint64_t size)
{
	uint32_t crc = (uint32_t)crc32(0, buf, (uInt)(size - SNAP_TRAILER_SIZE));

	memcpy(buf + size - SNAP_TRAILER_SIZE, &crc, 4);
}

static void test_image_round_trip(void **state)
{
	struct snap_writer w;
	struct snap_image img;
	struct cpu_state st, want;
	const char *why = NULL;

	build_image(&w, 2);
	assert_int_equal(snap_w_to_file(&w, tpath("a.state")), 0);
	assert_int_equal(snap_image_load(&img, tpath("a.state"), &why), 0);
	assert_int_equal(img.hdr.version, SNAP_VERSION);
	assert_int_equal(img.hdr.ncpus, 2);
	assert_int_equal(img.hdr.mem_size, 64 << 20);
	assert_string_equal(img.hdr.backend, "emu");
	assert_int_equal(img.hdr.id[5], 0xab);
	assert_string_equal(img.cpu_model, "model-x");
	assert_int_equal(img.backend.len, 12);
	assert_memory_equal(img.backend.data, "backend-blob", 12);
	assert_int_equal(img.ndevs, 3);
	assert_string_equal(img.devs[0].name, "serial");
	assert_int_equal(img.devs[0].blob.len, 3);
	assert_int_equal(img.devs[1].blob.len, 0);
	assert_string_equal(img.devs[2].name, "rtc");
	assert_memory_equal(img.devs[2].blob.data, "0123456789", 10);
	fill_state(&want, 8);
	assert_int_equal(snap_cpu_decode(img.vcpu[1].data, img.vcpu[1].len, &st), 0);
	assert_same_state(&want, &st);
	snap_image_free(&img);
	snap_w_free(&w);
}

static void test_truncated_refused(void **state)
{
	struct snap_writer w;
	const char *why;

	build_image(&w, 2);
	for (uint64_t len = 0; len < w.buf.len; len += (len < 128 ? 1 : 37)) {
		why = NULL;
		assert_int_not_equal(parse_copy(w.buf.data, len, &why), 0);
		assert_non_null(why);
	}
	/* Also cut at exactly 8-byte boundaries with a valid-looking end. */
	assert_int_equal(parse_copy(w.buf.data, w.buf.len - 8, &why), -EINVAL);
	assert_int_equal(parse_copy(w.buf.data, w.buf.len, &why), 0);
	snap_w_free(&w);
}

static void test_corruption_refused(void **state)
{
	struct snap_writer w;
	const char *why;

	build_image(&w, 2);
	for (uint64_t off = 0; off < w.buf.len; off += 7) {
		uint8_t *p = copy_of(&w);
		int err;

		p[off] ^= 0x10;
		why = NULL;
		err = parse_copy(p, w.buf.len, &why);
		assert_int_not_equal(err, 0);
		assert_non_null(why);
		/* Inside the checked body, it is the checksum that catches it. */
		if (off >= 8 && off < w.buf.len - SNAP_TRAILER_SIZE && (off < 32 || off >= 40))
			assert_int_equal(err, -EBADMSG);
		free(p);
	}
	snap_w_free(&w);
}

static void test_version_and_arch_refused(void **state)
{
	struct snap_writer w;
	const char *why = NULL;
	uint8_t *p;

	build_image(&w, 1);
	p = copy_of(&w);
	p[8] = SNAP_VERSION + 1;
	recrc(p, w.buf.len);
	assert_int_equal(parse_copy(p, w.buf.len, &why), -EPROTONOSUPPORT);
	assert_non_null(strstr(why, "version"));
	memcpy(p, w.buf.data, w.buf.len);
	p[16] = 2; /* another architecture */
	recrc(p, w.buf.len);
	assert_int_equal(parse_copy(p, w.buf.len, &why), -EPROTONOSUPPORT);
	/* A vCPU count the sections do not back up. */
	memcpy(p, w.buf.data, w.buf.len);
	p[20] = 3;
	recrc(p, w.buf.len);
	assert_int_equal(parse_copy(p, w.buf.len, &why), -EINVAL);
	/* A section length running past the end. */
	memcpy(p, w.buf.data, w.buf.len);
	p[SNAP_HDR_SIZE + 8 + 6] = 0x7f;
	recrc(p, w.buf.len);
	assert_int_equal(parse_copy(p, w.buf.len, &why), -EINVAL);
	free(p);
	snap_w_free(&w);
}

static void test_size_limit(void **state)
{
	struct snap_image img;
	const char *why = NULL;
	int fd = open(tpath("huge.state"), O_CREAT | O_TRUNC | O_WRONLY, 0600);

	assert_true(fd >= 0);
	/* Sparse: costs nothing on disk, but is over the limit. */
	assert_int_equal(ftruncate(fd, (off_t)SNAP_STATE_MAX + 8), 0);
	close(fd);
	assert_int_equal(snap_image_load(&img, tpath("huge.state"), &why), -EFBIG);
	assert_non_null(strstr(why, "limit"));
	snap_image_free(&img);
	assert_int_equal(snap_image_load(&img, tpath("missing.state"), &why), -ENOENT);
	snap_image_free(&img);
}

static void test_memory_file_sparse(void **state)
{
	struct guest_mem gm;
	uint8_t id[SNAP_ID_LEN], other[SNAP_ID_LEN];
	const char *why;
	struct stat st;
	uint8_t *map;
	off_t data, hole;
	int fd;

	memset(id, 1, sizeof(id));
	memset(other, 2, sizeof(other));
	assert_int_equal(gm_init(&gm, 64 << 20), 0);
	gm.hva[0x5000] = 1;		       /* page 5 */
	memset(gm.hva + 0x100000, 0x77, 8192); /* pages 256, 257 */
	gm.hva[(64 << 20) - 1] = 9;	       /* last page */
	assert_int_equal(snap_mem_write(&gm, tpath("m.mem"), id), 0);
	assert_int_equal(stat(tpath("m.mem"), &st), 0);
	assert_int_equal(st.st_size, SNAP_MEM_DATA_OFF + (64 << 20));
	/* Header + 4 data pages; allow filesystem rounding but nothing like 64 MiB. */
	assert_true((uint64_t)st.st_blocks * 512 <= 64 * 4096);

	fd = snap_mem_open(tpath("m.mem"), id, 64 << 20, &why);
	assert_true(fd >= 0);
	data = lseek(fd, SNAP_MEM_DATA_OFF, SEEK_DATA);
	hole = lseek(fd, SNAP_MEM_DATA_OFF, SEEK_HOLE);
	/* tmpfs and ext4 both report holes at page granularity. */
	assert_true(hole == (off_t)SNAP_MEM_DATA_OFF || data == (off_t)SNAP_MEM_DATA_OFF);
	assert_int_equal(lseek(fd, SNAP_MEM_DATA_OFF + 0x6000, SEEK_DATA),
			 SNAP_MEM_DATA_OFF + 0x100000);

	/* Copy-on-write: the mapping reads the file, writes stay private. */
	map = mmap(NULL, 64 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, SNAP_MEM_DATA_OFF);
	assert_true(map != MAP_FAILED);
	assert_int_equal(map[0x5000], 1);
	assert_int_equal(map[0x100000 + 8191], 0x77);
	assert_int_equal(map[(64 << 20) - 1], 9);
	assert_int_equal(map[0x4fff], 0);
	map[0x5000] = 42;
	munmap(map, 64 << 20);
	{
		uint8_t b = 0;

		assert_int_equal(pread(fd, &b, 1, SNAP_MEM_DATA_OFF + 0x5000), 1);
		assert_int_equal(b, 1);
	}
	close(fd);

	assert_int_equal(snap_mem_open(tpath("m.mem"), other, 64 << 20, &why), -EINVAL);
	assert_non_null(strstr(why, "another snapshot"));
	assert_int_equal(snap_mem_open(tpath("m.mem"), id, 32 << 20, &why), -EINVAL);
	assert_int_equal(truncate(tpath("m.mem"), SNAP_MEM_DATA_OFF + (32 << 20)), 0);
	assert_int_equal(snap_mem_open(tpath("m.mem"), id, 64 << 20, &why), -EINVAL);
	assert_non_null(strstr(why, "truncated"));
	gm_destroy(&gm);
}

static void test_default_mem_path(void **state)
{
	char *p = snapshot_default_mem_path("dir.x/snap.state");

	assert_string_equal(p, "dir.x/snap.mem");
	free(p);
	p = snapshot_default_mem_path("dir.x/snap");
	assert_string_equal(p, "dir.x/snap.mem");
	free(p);
}

static int setup(void **state)
{
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cpu_codec_round_trip),
	    cmocka_unit_test(test_image_round_trip),
	    cmocka_unit_test(test_truncated_refused),
	    cmocka_unit_test(test_corruption_refused),
	    cmocka_unit_test(test_version_and_arch_refused),
	    cmocka_unit_test(test_size_limit),
	    cmocka_unit_test(test_memory_file_sparse),
	    cmocka_unit_test(test_default_mem_path),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
