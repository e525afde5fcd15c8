/*
 * Split virtqueue parsing against rings built in real guest memory: normal
 * and indirect chains, the malicious ones (loops, bad indices, addresses
 * outside RAM, length overflow, nesting), and EVENT_IDX suppression.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#include <cmocka.h>

#include "virtio/queue.h"
#include "vmm/mem.h"

#define QSZ 16
#define DESC 0x1000
#define AVAIL 0x2000
#define USED 0x3000
#define TABLE 0x4000
#define BUF 0x10000
#define RAM (2u << 20)

struct fix {
	struct guest_mem gm;
	struct virtq vq;
	struct virtq_chain *ch;
	uint16_t avail_idx;
};

static void set_desc(struct fix *f, uint64_t base, uint16_t i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	struct virtq_desc d = {addr, len, flags, next};

	assert_int_equal(gm_write(&f->gm, base + 16ull * i, &d, sizeof(d)), 0);
}

/* Make head available to the device. */
static void offer(struct fix *f, uint16_t head)
{
	assert_int_equal(gm_write(&f->gm, AVAIL + 4 + 2 * (f->avail_idx % QSZ), &head, 2), 0);
	f->avail_idx++;
	assert_int_equal(gm_write(&f->gm, AVAIL + 2, &f->avail_idx, 2), 0);
}

static uint16_t rd16(struct fix *f, uint64_t gpa)
{
	uint16_t v;

	assert_int_equal(gm_read(&f->gm, gpa, &v, 2), 0);
	return v;
}

static uint32_t rd32(struct fix *f, uint64_t gpa)
{
	uint32_t v;

	assert_int_equal(gm_read(&f->gm, gpa, &v, 4), 0);
	return v;
}

static int fix_init(struct fix *f, uint64_t ram)
{
	memset(f, 0, sizeof(*f));
	if (gm_init(&f->gm, ram))
		return -1;
	f->ch = malloc(sizeof(*f->ch));
	if (!f->ch)
		return -1;
	virtq_reset(&f->vq, &f->gm);
	f->vq.size = QSZ;
	f->vq.desc_gpa = DESC;
	f->vq.avail_gpa = AVAIL;
	f->vq.used_gpa = USED;
	return virtq_enable(&f->vq);
}

static int setup(void **state)
{
	struct fix *f = malloc(sizeof(*f));

	if (!f || fix_init(f, RAM))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	gm_destroy(&f->gm);
	free(f->ch);
	free(f);
	return 0;
}

static void test_normal_chain(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 3, BUF, 16, VIRTQ_DESC_F_NEXT, 7);
	set_desc(f, DESC, 7, BUF + 0x100, 100, VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, DESC, 2, BUF + 0x1000, 513, VIRTQ_DESC_F_WRITE, 0);
	assert_int_equal(virtq_pop(&f->vq, f->ch), 0);
	offer(f, 3);
	assert_true(virtq_has_avail(&f->vq));
	assert_int_equal(virtq_pop(&f->vq, f->ch), 1);
	assert_int_equal(f->ch->head, 3);
	assert_int_equal(f->ch->nout, 2);
	assert_int_equal(f->ch->nin, 1);
	assert_int_equal(f->ch->out_len, 116);
	assert_int_equal(f->ch->in_len, 513);
	assert_ptr_equal(f->ch->iov[0].iov_base, f->gm.hva + BUF);
	assert_ptr_equal(f->ch->iov[1].iov_base, f->gm.hva + BUF + 0x100);
	assert_ptr_equal(f->ch->iov[2].iov_base, f->gm.hva + BUF + 0x1000);
	assert_int_equal(f->ch->iov[2].iov_len, 513);
	assert_int_equal(virtq_pop(&f->vq, f->ch), 0);
	assert_false(virtq_has_avail(&f->vq));

	virtq_push(&f->vq, 3, 513);
	assert_int_equal(rd16(f, USED + 2), 1);
	assert_int_equal(rd32(f, USED + 4), 3);
	assert_int_equal(rd32(f, USED + 8), 513);
	/* The used ring page was written by the device: dirty for migration. */
	assert_true(gm_test_clear_dirty(&f->gm, USED >> GM_PAGE_SHIFT));
	assert_false(f->vq.broken);
}

static void test_zero_length_and_single(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 0, VIRTQ_DESC_F_WRITE, 0);
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->vq, f->ch), 1);
	assert_int_equal(f->ch->nin, 1);
	assert_int_equal(f->ch->in_len, 0);
}

static void test_indirect(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, TABLE, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, TABLE, 2, BUF + 0x200, 4096, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, TABLE, 1, BUF + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
	set_desc(f, DESC, 5, TABLE, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(f, 5);
	assert_int_equal(virtq_pop(&f->vq, f->ch), 1);
	assert_int_equal(f->ch->head, 5);
	assert_int_equal(f->ch->nout, 2);
	assert_int_equal(f->ch->nin, 1);
	assert_int_equal(f->ch->out_len, 16 + 4096);
	assert_int_equal(f->ch->in_len, 1);
	assert_ptr_equal(f->ch->iov[2].iov_base, f->gm.hva + BUF + 0x2000);
}

/* Offer head, expect the queue to be marked broken, and stay broken. */
static void expect_broken(struct fix *f, uint16_t head)
{
	offer(f, head);
	assert_int_equal(virtq_pop(&f->vq, f->ch), -EIO);
	assert_true(f->vq.broken);
	offer(f, head);
	assert_int_equal(virtq_pop(&f->vq, f->ch), -EIO);
	assert_false(virtq_has_avail(&f->vq));
}

static void test_indirect_not_negotiated(void **state)
{
	struct fix *f = *state;

	set_desc(f, TABLE, 0, BUF, 16, 0, 0);
	set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_loop(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, DESC, 1, BUF, 16, VIRTQ_DESC_F_NEXT, 0);
	expect_broken(f, 0);
}

static void test_self_loop(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 4, BUF, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4);
	expect_broken(f, 4);
}

static void test_next_out_of_range(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 16, VIRTQ_DESC_F_NEXT, QSZ);
	expect_broken(f, 0);
}

static void test_head_out_of_range(void **state)
{
	struct fix *f = *state;

	expect_broken(f, QSZ + 100);
}

static void test_addr_outside_ram(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, RAM + 0x1000, 16, 0, 0);
	expect_broken(f, 0);
}

static void test_addr_straddles_end(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, DESC, 1, RAM - 8, 16, VIRTQ_DESC_F_WRITE, 0);
	expect_broken(f, 0);
}

static void test_addr_wraps(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, UINT64_MAX - 7, 16, 0, 0);
	expect_broken(f, 0);
}

static void test_readable_after_writable(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, DESC, 1, BUF, 16, 0, 0);
	expect_broken(f, 0);
}

static void test_nested_indirect(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, TABLE, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, TABLE, 1, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(f, DESC, 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_indirect_loop(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, TABLE, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, TABLE, 1, BUF, 16, VIRTQ_DESC_F_NEXT, 0);
	set_desc(f, DESC, 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_indirect_next_out_of_range(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, TABLE, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, DESC, 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_indirect_too_long(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	for (uint16_t i = 0; i < 2 * QSZ; i++)
		set_desc(f, TABLE, i, BUF, 16, i + 1 < 2 * QSZ ? VIRTQ_DESC_F_NEXT : 0, i + 1);
	set_desc(f, DESC, 0, TABLE, 2 * QSZ * 16, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_indirect_bad_len(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, DESC, 0, TABLE, 17, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_indirect_with_next(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, TABLE, 0, BUF, 16, 0, 0);
	set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, DESC, 1, BUF, 16, 0, 0);
	expect_broken(f, 0);
}

static void test_indirect_table_outside_ram(void **state)
{
	struct fix *f = *state;

	f->vq.indirect = true;
	set_desc(f, DESC, 0, RAM - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_broken(f, 0);
}

static void test_avail_runs_ahead(void **state)
{
	struct fix *f = *state;
	uint16_t idx = QSZ + 1;

	assert_int_equal(gm_write(&f->gm, AVAIL + 2, &idx, 2), 0);
	assert_int_equal(virtq_pop(&f->vq, f->ch), -EIO);
	assert_true(f->vq.broken);
}

/* Buffers in low and high RAM whose lengths add past 32 bits. Sparse RAM. */
static void test_length_overflow(void **state)
{
	struct fix big;

	(void)state;
	if (fix_init(&big, 5ull << 30)) {
		gm_destroy(&big.gm);
		free(big.ch);
		skip();
	}
	/* Exactly UINT32_MAX bytes in total is still fine... */
	set_desc(&big, DESC, 0, 0x100000, 0xbfe00000u, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(&big, DESC, 1, MEM_HIGH_START, 0x401fffffu, VIRTQ_DESC_F_WRITE, 0);
	offer(&big, 0);
	assert_int_equal(virtq_pop(&big.vq, big.ch), 1);
	assert_int_equal(big.ch->in_len, UINT32_MAX);
	/* ...one byte more overflows the 32-bit used length. */
	set_desc(&big, DESC, 1, MEM_HIGH_START, 0x40200000u, VIRTQ_DESC_F_WRITE, 0);
	expect_broken(&big, 0);
	gm_destroy(&big.gm);
	free(big.ch);
}

static void test_enable_checks(void **state)
{
	struct fix *f = *state;
	struct virtq q;

	virtq_reset(&q, &f->gm);
	q.desc_gpa = DESC, q.avail_gpa = AVAIL, q.used_gpa = USED;
	q.size = 12; /* not a power of two */
	assert_int_equal(virtq_enable(&q), -EINVAL);
	q.size = 2 * VIRTQ_MAX_SIZE;
	assert_int_equal(virtq_enable(&q), -EINVAL);
	q.size = QSZ;
	q.desc_gpa = DESC + 8; /* misaligned */
	assert_int_equal(virtq_enable(&q), -EINVAL);
	q.desc_gpa = DESC;
	q.used_gpa = RAM - 8; /* used ring runs off RAM */
	assert_int_equal(virtq_enable(&q), -EINVAL);
	assert_false(q.enabled);
	assert_int_equal(virtq_pop(&q, f->ch), 0);
	q.used_gpa = USED;
	assert_int_equal(virtq_enable(&q), 0);
	assert_true(q.enabled);
}

static void push_one(struct fix *f, uint16_t head)
{
	set_desc(f, DESC, head, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
	offer(f, head);
	assert_int_equal(virtq_pop(&f->vq, f->ch), 1);
	virtq_push(&f->vq, head, 8);
}

static void set_used_event(struct fix *f, uint16_t ev)
{
	assert_int_equal(gm_write(&f->gm, AVAIL + 4 + 2 * QSZ, &ev, 2), 0);
}

static void test_event_idx_interrupts(void **state)
{
	struct fix *f = *state;

	f->vq.event_idx = true;
	push_one(f, 0);
	assert_true(virtq_should_notify(&f->vq));  /* first one always */
	assert_false(virtq_should_notify(&f->vq)); /* nothing new */
	/* Driver asks for an interrupt only after used idx passes 3. */
	set_used_event(f, 3);
	push_one(f, 1); /* used 2 */
	assert_false(virtq_should_notify(&f->vq));
	push_one(f, 2); /* used 3 */
	assert_false(virtq_should_notify(&f->vq));
	push_one(f, 3); /* used 4: crossed event 3 */
	assert_true(virtq_should_notify(&f->vq));
	/* Several pushes at once that jump over the event still notify. */
	set_used_event(f, 5);
	push_one(f, 4);
	push_one(f, 5);
	push_one(f, 6); /* used 7, old 4: event 5 in [4, 7) */
	assert_true(virtq_should_notify(&f->vq));
	/* The ring's NO_INTERRUPT flag is ignored once EVENT_IDX is on. */
	uint16_t fl = VIRTQ_AVAIL_F_NO_INTERRUPT;
	assert_int_equal(gm_write(&f->gm, AVAIL, &fl, 2), 0);
	set_used_event(f, 7);
	push_one(f, 7);
	assert_true(virtq_should_notify(&f->vq));
}

static void test_event_idx_wrap(void **state)
{
	struct fix *f = *state;

	f->vq.event_idx = true;
	/* Driver and device both about to wrap the 16-bit indices. */
	f->avail_idx = 0xfffe;
	f->vq.last_avail = 0xfffe;
	f->vq.used_idx = 0xfffe;
	push_one(f, 1);
	assert_true(virtq_should_notify(&f->vq));
	set_used_event(f, 0xffff);
	push_one(f, 2); /* used wraps to 0 */
	assert_int_equal(rd16(f, USED + 2), 0);
	assert_true(virtq_should_notify(&f->vq));
	set_used_event(f, 5);
	push_one(f, 3);
	assert_false(virtq_should_notify(&f->vq));
}

static void test_no_interrupt_flag(void **state)
{
	struct fix *f = *state;
	uint16_t fl = VIRTQ_AVAIL_F_NO_INTERRUPT;

	push_one(f, 0);
	assert_true(virtq_should_notify(&f->vq));
	assert_int_equal(gm_write(&f->gm, AVAIL, &fl, 2), 0);
	push_one(f, 1);
	assert_false(virtq_should_notify(&f->vq));
}

static void test_set_notify(void **state)
{
	struct fix *f = *state;

	/* Without EVENT_IDX: the used ring's NO_NOTIFY flag. */
	assert_false(virtq_set_notify(&f->vq, false));
	assert_int_equal(rd16(f, USED), VIRTQ_USED_F_NO_NOTIFY);
	assert_false(virtq_set_notify(&f->vq, true));
	assert_int_equal(rd16(f, USED), 0);
	/* Buffers that arrived while notifications were off are reported. */
	virtq_set_notify(&f->vq, false);
	set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
	offer(f, 0);
	assert_true(virtq_set_notify(&f->vq, true));

	/* With EVENT_IDX: avail_event tells the driver where to kick next. */
	f->vq.event_idx = true;
	assert_int_equal(virtq_pop(&f->vq, f->ch), 1);
	assert_false(virtq_set_notify(&f->vq, true));
	assert_int_equal(rd16(f, USED + 4 + 8 * QSZ), 1);
}

static void test_iov_copy(void **state)
{
	uint8_t a[3] = {1, 2, 3}, b[5] = {4, 5, 6, 7, 8}, out[8];
	struct iovec iov[2] = {{a, 3}, {b, 5}};

	(void)state;
	memset(out, 0, sizeof(out));
	assert_int_equal(iov_to_buf(iov, 2, 2, out, 4), 4);
	assert_memory_equal(out, ((uint8_t[]){3, 4, 5, 6}), 4);
	assert_int_equal(iov_to_buf(iov, 2, 6, out, 10), 2);
	assert_int_equal(iov_to_buf(iov, 2, 9, out, 10), 0);
	assert_int_equal(iov_from_buf(iov, 2, 1, ((uint8_t[]){9, 9, 9}), 3), 3);
	assert_memory_equal(a, ((uint8_t[]){1, 9, 9}), 3);
	assert_int_equal(b[0], 9);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_normal_chain),
	    T(test_zero_length_and_single),
	    T(test_indirect),
	    T(test_indirect_not_negotiated),
	    T(test_loop),
	    T(test_self_loop),
	    T(test_next_out_of_range),
	    T(test_head_out_of_range),
	    T(test_addr_outside_ram),
	    T(test_addr_straddles_end),
	    T(test_addr_wraps),
	    T(test_readable_after_writable),
	    T(test_nested_indirect),
	    T(test_indirect_loop),
	    T(test_indirect_next_out_of_range),
	    T(test_indirect_too_long),
	    T(test_indirect_bad_len),
	    T(test_indirect_with_next),
	    T(test_indirect_table_outside_ram),
	    T(test_avail_runs_ahead),
	    cmocka_unit_test(test_length_overflow),
	    T(test_enable_checks),
	    T(test_event_idx_interrupts),
	    T(test_event_idx_wrap),
	    T(test_no_interrupt_flag),
	    T(test_set_notify),
	    cmocka_unit_test(test_iov_copy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
