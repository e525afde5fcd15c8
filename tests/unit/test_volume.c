/*
 * Single volume image: pack/list/unpack round trips on real directories,
 * and the index parser against hostile indexes (each mutation re-signed
 * with a valid checksum, so the check under test is the one that refuses).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "block/volume.h"

static char *tmpdir(void)
{
	char *d = NULL;

	assert_true(asprintf(&d, "%s/tern-vol-XXXXXX", P_tmpdir) > 0);
	assert_non_null(mkdtemp(d));
	return d;
}

static void rmrf(const char *d)
{
	char *cmd = NULL;

	assert_true(asprintf(&cmd, "rm -rf '%s'", d) > 0);
	assert_int_equal(system(cmd), 0);
	free(cmd);
}

static void put_file(const char *dir, const char *name, size_t size, unsigned seed)
{
	char *p = NULL;
	FILE *f;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	f = fopen(p, "wb");
	assert_non_null(f);
	for (size_t i = 0; i < size; i++)
		fputc((int)((seed + i * 31) & 0xff), f);
	fclose(f);
	free(p);
}

static uint8_t *slurp(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *b;
	FILE *f = fopen(path, "rb");

	assert_non_null(f);
	assert_int_equal(fstat(fileno(f), &st), 0);
	b = malloc((size_t)st.st_size + 1);
	assert_int_equal(fread(b, 1, (size_t)st.st_size, f), (size_t)st.st_size);
	fclose(f);
	*len = (size_t)st.st_size;
	return b;
}

/* A packed image of a small tree: a.txt, sub/, sub/b.bin (9000 bytes), sub/empty. */
struct fixture {
	char *root, *src, *img;
	uint8_t *buf;
	size_t len;
};

static void make_fixture(struct fixture *fx)
{
	char *p = NULL;

	fx->root = tmpdir();
	assert_true(asprintf(&fx->src, "%s/src", fx->root) > 0);
	assert_true(asprintf(&fx->img, "%s/vol.img", fx->root) > 0);
	assert_int_equal(mkdir(fx->src, 0755), 0);
	assert_true(asprintf(&p, "%s/sub", fx->src) > 0);
	assert_int_equal(mkdir(p, 0750), 0);
	free(p);
	put_file(fx->src, "a.txt", 5, 1);
	put_file(fx->src, "sub/b.bin", 9000, 2);
	put_file(fx->src, "sub/empty", 0, 3);
	assert_int_equal(vol_pack(fx->src, fx->img), 0);
	fx->buf = slurp(fx->img, &fx->len);
}

static void free_fixture(struct fixture *fx)
{
	rmrf(fx->root);
	free(fx->root);
	free(fx->src);
	free(fx->img);
	free(fx->buf);
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void set32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void set64(uint8_t *p, uint64_t v)
{
	set32(p, (uint32_t)v);
	set32(p + 4, (uint32_t)(v >> 32));
}

/* Recompute the index checksum the way the format defines it. */
static void resign(uint8_t *b)
{
	size_t used = VOL_HEADER_SIZE + (size_t)le32(b + VOL_H_COUNT) * VOL_ENTRY_SIZE;
	uLong c;

	set32(b + VOL_H_CRC, 0);
	c = crc32(crc32(0, Z_NULL, 0), b, (uInt)used);
	set32(b + VOL_H_CRC, (uint32_t)c);
}

static uint8_t *entry_named(uint8_t *b, const char *name)
{
	for (uint32_t i = 0; i < le32(b + VOL_H_COUNT); i++) {
		uint8_t *e = b + VOL_HEADER_SIZE + (size_t)i * VOL_ENTRY_SIZE;

		if (!strcmp((char *)e, name))
			return e;
	}
	fail_msg("no entry %s", name);
	return NULL;
}

static void set_name(uint8_t *e, const char *name)
{
	memset(e, 0, VOL_NAME_SIZE);
	memcpy(e, name, strlen(name));
}

static void expect_refused(const uint8_t *b, size_t len, uint64_t disk, const char *why_part)
{
	struct vol_index vi;
	char why[256] = "";

	assert_int_equal(vol_parse(b, len, disk, &vi, why, sizeof(why)), -EINVAL);
	if (!strstr(why, why_part))
		fail_msg("refused for '%s', expected '%s'", why, why_part);
	assert_null(vi.entries);
}

static void test_roundtrip(void **state)
{
	struct fixture fx;
	struct vol_index vi;
	char why[256], *out = NULL, *cmd = NULL;
	struct stat st;

	make_fixture(&fx);
	assert_int_equal(vol_parse(fx.buf, fx.len, fx.len, &vi, why, sizeof(why)), 0);
	assert_int_equal(vi.count, 4);
	assert_int_equal(vi.index_size, VOL_ALIGN);
	assert_int_equal(vi.image_size, fx.len);
	for (uint32_t i = 0; i < vi.count; i++) {
		const struct vol_entry *e = &vi.entries[i];

		assert_int_equal(e->offset % VOL_ALIGN, 0);
		if (!strcmp(e->name, "sub")) {
			assert_int_equal(e->type, VOL_DIR);
			assert_int_equal(e->mode, 0750);
		}
		if (!strcmp(e->name, "sub/b.bin")) {
			assert_int_equal(e->size, 9000);
			assert_memory_equal(fx.buf + e->offset, "\x02\x21\x40", 3);
		}
	}
	vol_index_free(&vi);

	assert_true(asprintf(&out, "%s/out", fx.root) > 0);
	assert_int_equal(vol_unpack(fx.img, out), 0);
	assert_true(asprintf(&cmd, "diff -r '%s' '%s'", fx.src, out) > 0);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	cmd = NULL;
	assert_true(asprintf(&cmd, "%s/sub", out) > 0);
	assert_int_equal(stat(cmd, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0750);
	free(cmd);
	/* a second unpack into the same place overwrites nothing */
	assert_int_not_equal(vol_unpack(fx.img, out), 0);
	free(out);
	free_fixture(&fx);
}

/* An output directory that already holds a symlink is not followed. */
static void test_unpack_symlink(void **state)
{
	struct fixture fx;
	char *out = NULL, *link = NULL, *outside = NULL, *probe = NULL;
	struct stat st;

	make_fixture(&fx);
	assert_true(asprintf(&out, "%s/out", fx.root) > 0);
	assert_true(asprintf(&outside, "%s/outside", fx.root) > 0);
	assert_true(asprintf(&link, "%s/sub", out) > 0);
	assert_int_equal(mkdir(out, 0755), 0);
	assert_int_equal(mkdir(outside, 0755), 0);
	assert_int_equal(symlink(outside, link), 0);
	assert_int_not_equal(vol_unpack(fx.img, out), 0);
	assert_true(asprintf(&probe, "%s/b.bin", outside) > 0);
	assert_int_equal(stat(probe, &st), -1);
	free(out);
	free(link);
	free(outside);
	free(probe);
	free_fixture(&fx);
}

static void test_names(void **state)
{
	assert_true(vol_name_ok("a"));
	assert_true(vol_name_ok("a/b/c.txt"));
	assert_true(vol_name_ok("..a/b.."));
	assert_false(vol_name_ok(""));
	assert_false(vol_name_ok("/etc/passwd"));
	assert_false(vol_name_ok(".."));
	assert_false(vol_name_ok("a/../../b"));
	assert_false(vol_name_ok("a/.."));
	assert_false(vol_name_ok("./a"));
	assert_false(vol_name_ok("a//b"));
	assert_false(vol_name_ok("a/"));
	assert_false(vol_name_ok("a\\..\\b"));
	assert_false(vol_name_ok("a\nb"));
}

static void test_hostile_header(void **state)
{
	struct fixture fx;
	uint8_t *b;

	make_fixture(&fx);
	b = malloc(fx.len);

	memcpy(b, fx.buf, fx.len);
	b[0] = 'X';
	expect_refused(b, fx.len, fx.len, "magic");

	memcpy(b, fx.buf, fx.len);
	b[100] ^= 1; /* inside an entry's name, checksum left alone */
	expect_refused(b, fx.len, fx.len, "checksum");

	memcpy(b, fx.buf, fx.len);
	set32(b + VOL_H_VERSION, 2);
	resign(b);
	expect_refused(b, fx.len, fx.len, "version");

	memcpy(b, fx.buf, fx.len);
	set32(b + VOL_H_COUNT, 0xffffffffu);
	expect_refused(b, fx.len, fx.len, "count");

	memcpy(b, fx.buf, fx.len);
	set32(b + VOL_H_COUNT, 17); /* 64 + 17*256 > 4096 */
	expect_refused(b, fx.len, fx.len, "index size");

	memcpy(b, fx.buf, fx.len);
	set32(b + VOL_H_INDEX_SIZE, 4095);
	resign(b);
	expect_refused(b, fx.len, fx.len, "index size");

	memcpy(b, fx.buf, fx.len);
	expect_refused(b, 200, fx.len, "truncated");
	expect_refused(b, 10, fx.len, "magic");

	/* the image claims more than the disk has */
	expect_refused(fx.buf, fx.len, fx.len - 1, "out of range");

	memcpy(b, fx.buf, fx.len);
	b[VOL_H_RESERVED + 3] = 1;
	resign(b);
	expect_refused(b, fx.len, fx.len, "reserved");
	free(b);
	free_fixture(&fx);
}

static void test_hostile_entries(void **state)
{
	struct fixture fx;
	uint8_t *b, *e;

	make_fixture(&fx);
	b = malloc(fx.len);

	static const char *const bad_names[] = {"../escape", "/abs", "sub/../../x", "sub/./b",
						"sub//b",    "x/",   ".."};
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		memcpy(b, fx.buf, fx.len);
		set_name(entry_named(b, "a.txt"), bad_names[i]);
		resign(b);
		expect_refused(b, fx.len, fx.len, "unsafe name");
	}

	memcpy(b, fx.buf, fx.len);
	memset(entry_named(b, "a.txt"), 'A', VOL_NAME_SIZE);
	resign(b);
	expect_refused(b, fx.len, fx.len, "not terminated");

	memcpy(b, fx.buf, fx.len);
	set_name(entry_named(b, "a.txt"), "sub/b.bin");
	resign(b);
	expect_refused(b, fx.len, fx.len, "duplicate");

	/* a file used as a directory */
	memcpy(b, fx.buf, fx.len);
	set_name(entry_named(b, "sub/empty"), "a.txt/inner");
	resign(b);
	expect_refused(b, fx.len, fx.len, "is a file");

	/* overlapping extents: a.txt points into b.bin's data */
	memcpy(b, fx.buf, fx.len);
	e = entry_named(b, "a.txt");
	set64(e + VOL_E_OFFSET, le32(entry_named(b, "sub/b.bin") + VOL_E_OFFSET) + 4096);
	resign(b);
	expect_refused(b, fx.len, fx.len, "overlaps");

	/* beyond the image, wrapping, into the index, misaligned */
	memcpy(b, fx.buf, fx.len);
	set64(entry_named(b, "sub/b.bin") + VOL_E_SIZE, fx.len);
	resign(b);
	expect_refused(b, fx.len, fx.len, "out of range");
	memcpy(b, fx.buf, fx.len);
	set64(entry_named(b, "sub/b.bin") + VOL_E_SIZE, UINT64_MAX - 4095);
	resign(b);
	expect_refused(b, fx.len, fx.len, "out of range");
	memcpy(b, fx.buf, fx.len);
	set64(entry_named(b, "sub/b.bin") + VOL_E_OFFSET, 0);
	resign(b);
	expect_refused(b, fx.len, fx.len, "out of range");
	memcpy(b, fx.buf, fx.len);
	set64(entry_named(b, "a.txt") + VOL_E_OFFSET, 4097);
	resign(b);
	expect_refused(b, fx.len, fx.len, "out of range");

	/* directories with data, unknown types, setuid bits */
	memcpy(b, fx.buf, fx.len);
	set64(entry_named(b, "sub") + VOL_E_SIZE, 1);
	resign(b);
	expect_refused(b, fx.len, fx.len, "directory with data");
	memcpy(b, fx.buf, fx.len);
	set32(entry_named(b, "a.txt") + VOL_E_TYPE, 7);
	resign(b);
	expect_refused(b, fx.len, fx.len, "unknown type");
	memcpy(b, fx.buf, fx.len);
	set32(entry_named(b, "a.txt") + VOL_E_MODE, 04755);
	resign(b);
	expect_refused(b, fx.len, fx.len, "mode");
	free(b);
	free_fixture(&fx);
}

/* Data that does not match its checksum is reported when unpacking. */
static void test_data_crc(void **state)
{
	struct fixture fx;
	struct vol_index vi;
	char why[256], *out = NULL;
	FILE *f;

	make_fixture(&fx);
	assert_int_equal(vol_parse(fx.buf, fx.len, fx.len, &vi, why, sizeof(why)), 0);
	f = fopen(fx.img, "r+b");
	for (uint32_t i = 0; i < vi.count; i++)
		if (!strcmp(vi.entries[i].name, "sub/b.bin"))
			fseek(f, (long)vi.entries[i].offset + 10, SEEK_SET);
	fputc(0xee, f);
	fclose(f);
	vol_index_free(&vi);
	assert_true(asprintf(&out, "%s/out", fx.root) > 0);
	assert_int_equal(vol_unpack(fx.img, out), -EBADMSG);
	free(out);
	free_fixture(&fx);
}

static void test_empty_dir(void **state)
{
	char *root = tmpdir(), *img = NULL;
	struct vol_index vi;
	uint8_t *b;
	size_t len;
	char why[128];

	assert_true(asprintf(&img, "%s.img", root) > 0);
	assert_int_equal(vol_pack(root, img), 0);
	b = slurp(img, &len);
	assert_int_equal(len, VOL_ALIGN);
	assert_int_equal(vol_parse(b, len, len, &vi, why, sizeof(why)), 0);
	assert_int_equal(vi.count, 0);
	vol_index_free(&vi);
	unlink(img);
	rmrf(root);
	free(b);
	free(img);
	free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),	    cmocka_unit_test(test_unpack_symlink),
	    cmocka_unit_test(test_names),	    cmocka_unit_test(test_hostile_header),
	    cmocka_unit_test(test_hostile_entries), cmocka_unit_test(test_data_crc),
	    cmocka_unit_test(test_empty_dir),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
