/*
 * Snapshot and restore of a running VM on the emulator: a guest program
 * counts in a register and stores the count in memory; after a restore
 * (twice, from one snapshot) it goes on from the saved count. Also: the
 * memory file stays untouched (copy-on-write), and mismatched, corrupted
 * or foreign snapshots are refused before anything runs.
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
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "arch/x86/machine.h"
#include "hw/pci.h"
#include "state/machine_desc.h"
#include "state/snapfile.h"
#include "state/snapshot.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define MEM_SIZE (32ull << 20)
#define CODE 0x10000ull
#define COUNTER 0x20000ull

static char tmpdir[] = "/tmp/tern-snapvm-XXXXXX";
static int null_fd = -1;

static char *tpath(const char *name)
{
	static char buf[4][256];
	static int n;
	char *p = buf[n++ % 4];

	snprintf(p, 256, "%s/%s", tmpdir, name);
	return p;
}

/* 32-bit flat protected mode, no paging: the smallest state a counter needs. */
static void flat_seg(struct cpu_seg *s, uint8_t type, uint16_t sel)
{
	*s = (struct cpu_seg){.base = 0,
			      .limit = 0xffffffff,
			      .sel = sel,
			      .type = type,
			      .present = 1,
			      .db = 1,
			      .s = 1,
			      .g = 1};
}

static void enter_counter(struct vm *vm)
{
	/* loop: inc eax; mov [COUNTER], eax; jmp loop */
	static const uint8_t code[] = {0x40, 0xa3, 0x00, 0x00, 0x02, 0x00, 0xeb, 0xf8};
	struct cpu_state st;

	assert_int_equal(gm_write(&vm->mem, CODE, code, sizeof(code)), 0);
	memset(&st, 0, sizeof(st));
	flat_seg(&st.cs, 0xb, 0x08);
	flat_seg(&st.ds, 0x3, 0x10);
	st.es = st.ss = st.fs = st.gs = st.ds;
	st.tr = (struct cpu_seg){.limit = 0x67, .type = 0xb, .present = 1};
	st.ldt = (struct cpu_seg){.unusable = 1};
	st.cr0 = 0x11; /* PE | ET */
	st.rip = CODE;
	st.rflags = 2;
	st.pending_exception = -1;
	assert_int_equal(vm->cpu->set_state(&vm->vcpus[0], &st), 0);
}

/* What tern run builds (no disks, no kernel), described so it can be saved. */
static void build_vm(struct vm *vm, int ncpus)
{
	struct vm_config cfg = {.mem_size = MEM_SIZE, .ncpus = ncpus, .cpu = &cpu_backend_emu};
	struct machine_config mc = {.console_fd = null_fd, .devices_only = true};
	struct machine_desc desc = {0};

	assert_int_equal(vm_create(vm, &cfg), 0);
	assert_int_equal(pci_init(vm), 0);
	assert_int_equal(virtio_rng_add(vm), 0);
	assert_int_equal(x86_machine_setup(vm, &mc), 0);
	assert_int_equal(snapshot_describe(vm, &desc), 0);
	enter_counter(vm);
}

static uint32_t counter(struct vm *vm)
{
	uint32_t v = 0;

	assert_int_equal(gm_read(&vm->mem, COUNTER, &v, sizeof(v)), 0);
	return __atomic_load_n(&v, __ATOMIC_RELAXED);
}

static uint32_t wait_counter_above(struct vm *vm, uint32_t min)
{
	for (int i = 0; i < 20000; i++) {
		uint32_t v = counter(vm);

		if (v > min)
			return v;
		usleep(1000);
	}
	fail_msg("the guest's counter did not pass %u", min);
	return 0;
}

static uint32_t file_counter(const char *mem_path)
{
	uint32_t v = 0;
	int fd = open(mem_path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &v, 4, (off_t)(SNAP_MEM_DATA_OFF + COUNTER)), 4);
	close(fd);
	return v;
}

/* Snapshot a running counter; returns the count the snapshot holds. */
static uint32_t take_snapshot(const char *state, const char *mem)
{
	struct vm vm;
	uint32_t saved, after;

	build_vm(&vm, 1);
	assert_int_equal(vm_start(&vm), 0);
	wait_counter_above(&vm, 100000);
	assert_int_equal(snapshot_save(&vm, state, mem), 0);
	saved = file_counter(mem);
	assert_true(saved > 100000);
	/* The original keeps running after the snapshot. */
	after = wait_counter_above(&vm, saved + 1000);
	assert_true(after > saved);
	vm_request_stop(&vm, VM_STOP_USER);
	vm_wait(&vm);
	vm_destroy(&vm);
	return saved;
}

static void restore_and_check(const char *state, const char *mem, uint32_t saved)
{
	struct snapshot_restore_cfg cfg = {
	    .state_path = state, .mem_path = mem, .console_fd = null_fd};
	struct cpu_state st;
	char why[256] = "";
	struct vm vm;
	uint32_t first;

	assert_int_equal(snapshot_restore(&vm, &cfg, why, sizeof(why)), 0);
	/* Memory and registers are the snapshot's before anything runs. */
	assert_int_equal(counter(&vm), saved);
	assert_int_equal(vm.cpu->get_state(&vm.vcpus[0], &st), 0);
	assert_true((uint32_t)st.gpr[0] == saved || (uint32_t)st.gpr[0] == saved + 1);
	assert_true(st.rip >= CODE && st.rip < CODE + 8);
	assert_int_equal(vm_start(&vm), 0);
	first = wait_counter_above(&vm, saved);
	/* It continues from the saved count: not from 0, no jump. */
	assert_true(first > saved && first < saved + 50000000u);
	wait_counter_above(&vm, saved + 100000);
	vm_request_stop(&vm, VM_STOP_USER);
	vm_wait(&vm);
	vm_destroy(&vm);
	/* The guest's writes went to a private copy, never to the memory file. */
	assert_int_equal(file_counter(mem), saved);
}

static void test_counter_continues_twice(void **state)
{
	uint32_t saved = take_snapshot(tpath("c.state"), tpath("c.mem"));

	restore_and_check(tpath("c.state"), tpath("c.mem"), saved);
	restore_and_check(tpath("c.state"), tpath("c.mem"), saved);
}

static void test_restored_vm_snapshots_again(void **state)
{
	struct snapshot_restore_cfg cfg = {.state_path = tpath("d.state"), .console_fd = null_fd};
	uint32_t saved = take_snapshot(tpath("d.state"), tpath("d.mem")), saved2;
	char why[256] = "";
	struct vm vm;

	/* No --mem: the default name next to the state file. */
	assert_int_equal(snapshot_restore(&vm, &cfg, why, sizeof(why)), 0);
	assert_int_equal(vm_start(&vm), 0);
	wait_counter_above(&vm, saved + 100000);
	assert_int_equal(snapshot_save(&vm, tpath("e.state"), tpath("e.mem")), 0);
	vm_request_stop(&vm, VM_STOP_USER);
	vm_wait(&vm);
	vm_destroy(&vm);
	saved2 = file_counter(tpath("e.mem"));
	assert_true(saved2 > saved + 100000);
	restore_and_check(tpath("e.state"), tpath("e.mem"), saved2);
}

static int restore_err(const char *state, const char *mem, char *why, size_t wl)
{
	struct snapshot_restore_cfg cfg = {
	    .state_path = state, .mem_path = mem, .console_fd = null_fd};
	struct vm vm;
	int err = snapshot_restore(&vm, &cfg, why, wl);

	if (!err) {
		vm_destroy(&vm);
		return 0;
	}
	/* Nothing is left behind on failure: vm is as if never created. */
	assert_null(vm.cpu);
	return err;
}

static void copy_file(const char *from, const char *to, long truncate_to, long flip)
{
	char cmd[700];

	snprintf(cmd, sizeof(cmd), "cp --sparse=always '%s' '%s'", from, to);
	assert_int_equal(system(cmd), 0);
	if (truncate_to >= 0)
		assert_int_equal(truncate(to, truncate_to), 0);
	if (flip >= 0) {
		int fd = open(to, O_RDWR);
		uint8_t b;

		assert_true(fd >= 0);
		assert_int_equal(pread(fd, &b, 1, flip), 1);
		b ^= 0x40;
		assert_int_equal(pwrite(fd, &b, 1, flip), 1);
		close(fd);
	}
}

static void test_bad_snapshots_refused(void **state)
{
	char why[256];

	take_snapshot(tpath("f.state"), tpath("f.mem"));
	take_snapshot(tpath("g.state"), tpath("g.mem"));

	copy_file(tpath("f.state"), tpath("t.state"), 200, -1);
	assert_int_not_equal(restore_err(tpath("t.state"), tpath("f.mem"), why, sizeof(why)), 0);
	assert_non_null(strstr(why, "truncated"));

	copy_file(tpath("f.state"), tpath("x.state"), -1, 300);
	assert_int_equal(restore_err(tpath("x.state"), tpath("f.mem"), why, sizeof(why)), -EBADMSG);
	assert_non_null(strstr(why, "corrupted"));

	/* A memory file from another snapshot of the same machine. */
	assert_int_equal(restore_err(tpath("f.state"), tpath("g.mem"), why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "another snapshot"));

	copy_file(tpath("f.mem"), tpath("t.mem"), 1 << 20, -1);
	assert_int_not_equal(restore_err(tpath("f.state"), tpath("t.mem"), why, sizeof(why)), 0);
	assert_non_null(strstr(why, "truncated"));

	assert_int_not_equal(restore_err(tpath("f.state"), tpath("none.mem"), why, sizeof(why)), 0);
	/* The originals still restore. */
	assert_int_equal(restore_err(tpath("f.state"), tpath("f.mem"), why, sizeof(why)), 0);
}

/* Rewrite a state file with a different CPU model string and a valid checksum. */
static void rewrite_model(const char *from, const char *to, const char *model)
{
	struct snap_image img;
	struct snap_writer w;
	const char *why;

	assert_int_equal(snap_image_load(&img, from, &why), 0);
	snap_w_begin(&w, &img.hdr);
	snap_w_section(&w, SNAP_SEC_CPU_MODEL, 0, model, strlen(model));
	snap_w_section(&w, SNAP_SEC_MACHINE, 0, img.machine.data, img.machine.len);
	for (uint32_t i = 0; i < img.hdr.ncpus; i++)
		snap_w_section(&w, SNAP_SEC_VCPU, i, img.vcpu[i].data, img.vcpu[i].len);
	snap_w_section(&w, SNAP_SEC_BACKEND, 0, img.backend.data, img.backend.len);
	for (unsigned i = 0; i < img.ndevs; i++)
		snap_w_device(&w, i, img.devs[i].name, img.devs[i].blob.data, img.devs[i].blob.len);
	assert_int_equal(snap_w_finish(&w), 0);
	assert_int_equal(snap_w_to_file(&w, to), 0);
	snap_w_free(&w);
	snap_image_free(&img);
}

static void test_other_cpu_model_refused(void **state)
{
	char why[256];

	take_snapshot(tpath("h.state"), tpath("h.mem"));
	rewrite_model(tpath("h.state"), tpath("h2.state"), "emu GenuineIntel 000806c1 deadbeef");
	assert_int_equal(restore_err(tpath("h2.state"), tpath("h.mem"), why, sizeof(why)), -EXDEV);
	assert_non_null(strstr(why, "another CPU model"));
}

static void test_two_vcpus(void **state)
{
	struct snapshot_restore_cfg cfg = {
	    .state_path = tpath("i.state"), .mem_path = tpath("i.mem"), .console_fd = null_fd};
	char why[256];
	struct vm vm;

	/* The AP never got a STARTUP IPI: it must still be waiting after the restore. */
	build_vm(&vm, 2);
	assert_int_equal(vm_start(&vm), 0);
	wait_counter_above(&vm, 1000);
	assert_int_equal(snapshot_save(&vm, cfg.state_path, cfg.mem_path), 0);
	vm_request_stop(&vm, VM_STOP_USER);
	vm_wait(&vm);
	vm_destroy(&vm);
	assert_int_equal(snapshot_restore(&vm, &cfg, why, sizeof(why)), 0);
	assert_int_equal(vm.ncpus, 2);
	assert_int_equal(vm_start(&vm), 0);
	wait_counter_above(&vm, file_counter(cfg.mem_path) + 1000);
	vm_request_stop(&vm, VM_STOP_USER);
	vm_wait(&vm);
	vm_destroy(&vm);
}

static void test_undescribed_vm_not_saved(void **state)
{
	struct vm_config cfg = {.mem_size = MEM_SIZE, .ncpus = 1, .cpu = &cpu_backend_emu};
	struct vm vm;

	assert_int_equal(vm_create(&vm, &cfg), 0);
	assert_int_equal(snapshot_save(&vm, tpath("u.state"), tpath("u.mem")), -ENOTSUP);
	assert_int_equal(access(tpath("u.state"), F_OK), -1);
	vm_destroy(&vm);
}

static int setup(void **state)
{
	null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	return mkdtemp(tmpdir) && null_fd >= 0 ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[300];

	close(null_fd);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_counter_continues_twice),
	    cmocka_unit_test(test_restored_vm_snapshots_again),
	    cmocka_unit_test(test_bad_snapshots_refused),
	    cmocka_unit_test(test_other_cpu_model_refused),
	    cmocka_unit_test(test_two_vcpus),
	    cmocka_unit_test(test_undescribed_vm_not_saved),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
