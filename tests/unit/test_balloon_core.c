/*
 * What the balloon rests on: descriptor buffers pinned by the virtqueue from
 * pop to push (so reclaim never takes a page under device I/O), and
 * vm_pause()/vm_resume() nesting (so a sweep's pause and a user's pause
 * compose).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "test_pci_vm.h"
#include "virtio/queue.h"
#include "vmm/reclaim.h"

#define QSZ 16
#define DESC 0x1000
#define AVAIL 0x2000
#define USED 0x3000
#define TABLE 0x4000
#define BUF 0x10000
#define RAM (4u << 20)

struct fix {
	struct vm vm;
	struct virtq vq;
	struct virtq_chain ch;
	uint16_t avail_idx;
};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));

	if (!f || test_vm_create(&f->vm, RAM))
		return -1;
	virtq_reset(&f->vq, &f->vm.mem);
	f->vq.size = QSZ;
	f->vq.desc_gpa = DESC;
	f->vq.avail_gpa = AVAIL;
	f->vq.used_gpa = USED;
	f->vq.indirect = true;
	if (virtq_enable(&f->vq))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	virtq_release_all(&f->vq);
	vm_destroy(&f->vm);
	free(f);
	return 0;
}

static void set_desc(struct fix *f, uint64_t base, uint16_t i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	struct virtq_desc d = {addr, len, flags, next};

	assert_int_equal(gm_write(&f->vm.mem, base + 16ull * i, &d, sizeof(d)), 0);
}

static void offer(struct fix *f, uint16_t head)
{
	assert_int_equal(gm_write(&f->vm.mem, AVAIL + 4 + 2 * (f->avail_idx % QSZ), &head, 2), 0);
	f->avail_idx++;
	assert_int_equal(gm_write(&f->vm.mem, AVAIL + 2, &f->avail_idx, 2), 0);
}

static bool pinned(struct fix *f, uint64_t gpa)
{
	return gm_page_pinned(&f->vm.mem, gm_page_index(&f->vm.mem, gpa));
}

/* A chain's buffers are pinned from pop to push, and only those pages. */
static void test_pinned_pop_to_push(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	/* Three pages: crosses two page boundaries. */
	set_desc(f, DESC, 1, BUF + 0x2ff0, 0x2020, VIRTQ_DESC_F_WRITE, 0);
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), 1);
	assert_true(pinned(f, BUF));
	assert_false(pinned(f, BUF + 0x1000));
	assert_true(pinned(f, BUF + 0x2000));
	assert_true(pinned(f, BUF + 0x3000));
	assert_true(pinned(f, BUF + 0x5000));
	assert_false(pinned(f, BUF + 0x6000));
	/* Reclaim refuses pinned pages while the transfer runs... */
	assert_int_equal(reclaim_release_range(&f->vm, BUF + 0x3000, 0x1000), -EBUSY);
	assert_int_equal(reclaim_release_range(&f->vm, BUF + 0x1000, 0x1000), 0);
	virtq_push(&f->vq, 0, 0x2020);
	/* ...and takes them after the used-ring update. */
	assert_false(pinned(f, BUF));
	assert_false(pinned(f, BUF + 0x3000));
	assert_int_equal(f->vq.npins, 0);
	assert_int_equal(reclaim_release_range(&f->vm, BUF + 0x3000, 0x1000), 0);
}

/* Two chains in flight: pushing one unpins only its own buffers. */
static void test_pins_per_chain(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 100, 0, 0);
	set_desc(f, DESC, 1, BUF + 0x1000, 100, VIRTQ_DESC_F_WRITE, 0);
	/* Both chains touch page BUF + 0x1000 / BUF: pin counts add up. */
	set_desc(f, DESC, 2, BUF + 0x800, 0x1000, 0, 0);
	offer(f, 0);
	offer(f, 1);
	offer(f, 2);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), 1);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), 1);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), 1);
	virtq_push(&f->vq, 0, 0);
	assert_true(pinned(f, BUF)); /* chain 2 still holds it */
	virtq_push(&f->vq, 2, 0);
	assert_false(pinned(f, BUF));
	assert_true(pinned(f, BUF + 0x1000));
	virtq_unpin(&f->vq, 1); /* done with the memory before the push */
	assert_false(pinned(f, BUF + 0x1000));
	virtq_push(&f->vq, 1, 0);
	assert_int_equal(f->vq.npins, 0);
}

/* A chain that breaks half way leaves nothing pinned. */
static void test_broken_chain_unpins(void **state)
{
	struct fix *f = *state;

	set_desc(f, DESC, 0, BUF, 100, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, DESC, 1, BUF + 0x1000, 100, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	set_desc(f, DESC, 2, RAM - 0x10, 0x100, VIRTQ_DESC_F_WRITE, 0); /* runs off RAM */
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), -EIO);
	assert_false(pinned(f, BUF));
	assert_false(pinned(f, BUF + 0x1000));
	assert_int_equal(f->vq.npins, 0);
}

/* An indirect chain pins its buffers (not the table, which is copied at once). */
static void test_indirect_pins(void **state)
{
	struct fix *f = *state;

	set_desc(f, TABLE, 0, BUF + 0x4000, 64, VIRTQ_DESC_F_NEXT, 1);
	set_desc(f, TABLE, 1, BUF + 0x8000, 64, VIRTQ_DESC_F_WRITE, 0);
	set_desc(f, DESC, 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->vq, &f->ch), 1);
	assert_true(pinned(f, BUF + 0x4000));
	assert_true(pinned(f, BUF + 0x8000));
	assert_false(pinned(f, TABLE));
	virtq_release_all(&f->vq);
	assert_false(pinned(f, BUF + 0x4000));
	assert_false(pinned(f, BUF + 0x8000));
}

/* ---- nested pause ---- */

struct counting_dev {
	pthread_mutex_t lock;
	int paused; /* 1 while paused */
	int npause, nresume;
	bool bad; /* paused twice or resumed while running */
};

static void cdev_pause(void *p)
{
	struct counting_dev *d = p;

	pthread_mutex_lock(&d->lock);
	d->bad |= d->paused != 0;
	d->paused = 1;
	d->npause++;
	pthread_mutex_unlock(&d->lock);
}

static void cdev_resume(void *p)
{
	struct counting_dev *d = p;

	pthread_mutex_lock(&d->lock);
	d->bad |= d->paused != 1;
	d->paused = 0;
	d->nresume++;
	pthread_mutex_unlock(&d->lock);
}

static const struct device_ops cdev_ops = {
    .name = "counting",
    .pause = cdev_pause,
    .resume = cdev_resume,
};

static bool vm_paused(struct vm *vm)
{
	bool p;

	pthread_mutex_lock(&vm->lock);
	p = vm->pause_req;
	pthread_mutex_unlock(&vm->lock);
	return p;
}

static void test_pause_nests(void **state)
{
	struct fix *f = *state;
	struct counting_dev d = {.lock = PTHREAD_MUTEX_INITIALIZER};

	assert_int_equal(vm_add_device(&f->vm, &cdev_ops, &d), 0);
	assert_int_equal(vm_pause(&f->vm), 0); /* the user */
	assert_int_equal(vm_pause(&f->vm), 0); /* a sweep */
	assert_true(vm_paused(&f->vm));
	vm_resume(&f->vm); /* the sweep is done: the user's pause holds */
	assert_true(vm_paused(&f->vm));
	assert_int_equal(d.npause, 1);
	assert_int_equal(d.nresume, 0);
	vm_resume(&f->vm);
	assert_false(vm_paused(&f->vm));
	assert_int_equal(d.nresume, 1);
	/* An unmatched resume changes nothing. */
	vm_resume(&f->vm);
	assert_false(vm_paused(&f->vm));
	assert_int_equal(d.nresume, 1);
	assert_false(d.bad);
}

static void *pause_loop(void *arg)
{
	struct vm *vm = arg;

	for (int i = 0; i < 2000; i++) {
		if (vm_pause(vm))
			return (void *)1;
		if (!__atomic_load_n(&vm->pause_req, __ATOMIC_SEQ_CST))
			return (void *)2; /* paused means paused */
		vm_resume(vm);
	}
	return NULL;
}

/* Pausers on several threads: devices see strict pause/resume alternation. */
static void test_pause_concurrent(void **state)
{
	struct fix *f = *state;
	struct counting_dev d = {.lock = PTHREAD_MUTEX_INITIALIZER};
	pthread_t t[3];
	void *rc;

	assert_int_equal(vm_add_device(&f->vm, &cdev_ops, &d), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&t[i], NULL, pause_loop, &f->vm), 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pthread_join(t[i], &rc), 0);
		assert_null(rc);
	}
	assert_false(d.bad);
	assert_int_equal(d.npause, d.nresume);
	assert_true(d.npause >= 1);
	assert_false(vm_paused(&f->vm));
	assert_int_equal(f->vm.pause_count, 0);
}

/* A stopped VM cannot be paused, and a pause held across the stop still resumes. */
static void test_pause_stopped(void **state)
{
	struct fix *f = *state;

	assert_int_equal(vm_pause(&f->vm), 0);
	vm_request_stop(&f->vm, VM_STOP_USER);
	assert_int_equal(vm_pause(&f->vm), -ESRCH);
	vm_resume(&f->vm);
	assert_int_equal(f->vm.pause_count, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_pinned_pop_to_push, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pins_per_chain, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_broken_chain_unpins, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_indirect_pins, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pause_nests, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pause_concurrent, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pause_stopped, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
