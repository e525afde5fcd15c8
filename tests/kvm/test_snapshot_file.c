/*
 * A KVM VM through the snapshot files of state/ (docs/snapshot-format.md):
 * the state file (CPU model, vCPU records, the backend record) and the
 * sparse memory file are written the way snapshot_save() writes them, the
 * VM is destroyed, and a new one is built from the files the way
 * snapshot_restore() does (memory file mapped copy-on-write, CPU model
 * compared, vCPUs, then the backend record). The guest counts in r12 and in
 * memory with its LAPIC timer armed; after the restore the count goes on
 * from the saved value and the timer fires. A state file with a flipped
 * byte in the backend record is refused by its CRC.
 *
 * snapshot_restore() itself refuses KVM snapshots on hosts without
 * VMX/SVM and rebuilds the full machine, so this test drives the file
 * layer directly with the small test VM.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvm/lib/kvm_util.h"
#include "state/snapfile.h"

#define PORT 0x510
#define IDT_ADDR 0xa000ull
#define NCPUS 2
#define MEM_SIZE (16ull << 20)
#define TMICT 2000000000u /* 2 s at KVM's 1 GHz APIC timer: ample on a loaded host */

/* rdi = GUEST_DATA_ADDR, esi = timer count. Reports 0xee when set up, 0x42 from the timer. */
__asm__(".pushsection .text\n"
	".globl guest_sf_start, guest_sf_42, guest_sf_end\n"
	"guest_sf_start:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	mov $0xff, %al\n"
	"	out %al, $0x21\n"
	"	out %al, $0xa1\n"
	"	movl $0xb, 0x3e0(%rbx)\n"
	"	movl $0x42, 0x320(%rbx)\n"
	"	movl %esi, 0x380(%rbx)\n"
	"	mov $0x510, %dx\n"
	"	mov $0xee, %al\n"
	"	out %al, %dx\n"
	"	xor %r12d, %r12d\n"
	"	sti\n"
	"1:	inc %r12\n"
	"	mov %r12, (%rdi)\n"
	"	jmp 1b\n"
	"guest_sf_42:\n"
	"	movl $0, 0xb0(%rbx)\n"
	"	mov $0x510, %dx\n"
	"	mov $0x42, %al\n"
	"	out %al, %dx\n"
	"	iretq\n"
	"guest_sf_end:\n"
	".popsection\n");
extern const char guest_sf_start[], guest_sf_42[], guest_sf_end[];

static void *kick_after(void *arg)
{
	struct vcpu *v = arg;

	usleep(100 * 1000);
	v->vm->cpu->kick(v);
	return NULL;
}

static void guest_start(struct vm *vm, struct test_dev *dev)
{
	uint64_t h = GUEST_CODE_ADDR + (uint64_t)(guest_sf_42 - guest_sf_start);
	uint64_t gate[2] = {
	    (h & 0xffff) | (0x10ull << 16) | (0x8eull << 40) | ((h >> 16 & 0xffff) << 48), h >> 32};
	struct vcpu *v = &vm->vcpus[0];
	struct cpu_state st;
	pthread_t t;

	test_guest_load(vm, guest_sf_start, guest_sf_end);
	TEST_ASSERT(gm_write(&vm->mem, IDT_ADDR + 16 * 0x42, gate, sizeof(gate)) == 0, "IDT");
	test_vcpu_enter_long_mode(v, GUEST_DATA_ADDR);
	vcpu_get_state(v, &st);
	st.gpr[6] = TMICT;
	st.idt.base = IDT_ADDR;
	st.idt.limit = 256 * 16 - 1;
	vcpu_set_state(v, &st);
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	test_dev_expect(dev, 0, 0, 1, true, 0xee);
	/* Count for 0.1 s; the timer has 2 s to go. */
	TEST_ASSERT(pthread_create(&t, NULL, kick_after, v) == 0, "pthread_create");
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	pthread_join(t, NULL);
	TEST_ASSERT_EQ(dev->n, 1);
}

/* The state file as snapshot_save() lays it out, with no devices. */
static void save_files(struct vm *vm, const char *state, const char *mem)
{
	struct snap_header h = {
	    .arch = SNAP_ARCH_X86_64, .ncpus = (uint32_t)vm->ncpus, .mem_size = vm->mem.size};
	char model[SNAP_MODEL_MAX + 1];
	struct snap_writer w;
	struct dev_buf b = {0};
	struct cpu_state st;

	memcpy(h.backend, vm->cpu->name, strlen(vm->cpu->name));
	TEST_ASSERT(getrandom(h.id, sizeof(h.id), 0) == (ssize_t)sizeof(h.id), "getrandom");
	snap_w_begin(&w, &h);
	TEST_ASSERT_EQ(vm->cpu->cpu_model(vm, model, sizeof(model)), 0);
	snap_w_section(&w, SNAP_SEC_CPU_MODEL, 0, model, strlen(model));
	snap_w_section(&w, SNAP_SEC_MACHINE, 0, (const uint8_t[8]){1}, 8); /* v1, no disks */
	for (int i = 0; i < vm->ncpus; i++) {
		vcpu_get_state(&vm->vcpus[i], &st);
		TEST_ASSERT_EQ(snap_cpu_encode(&st, &b), 0);
		snap_w_section(&w, SNAP_SEC_VCPU, (uint32_t)i, b.data, b.len);
		dev_buf_free(&b);
	}
	TEST_ASSERT_EQ(vm->cpu->save_extra(vm, &b), 0);
	snap_w_section(&w, SNAP_SEC_BACKEND, 0, b.data, b.len);
	dev_buf_free(&b);
	TEST_ASSERT_EQ(snap_w_finish(&w), 0);
	TEST_ASSERT_EQ(snap_mem_write(&vm->mem, mem, h.id), 0);
	TEST_ASSERT_EQ(snap_w_to_file(&w, state), 0);
	snap_w_free(&w);
}

/* snapshot_restore()'s steps for the test VM; the caller runs it. */
static void restore_files(struct vm *vm, struct test_dev *dev, const char *state, const char *mem)
{
	const struct cpu_backend *cpu = &cpu_backend_kvm;
	char model[SNAP_MODEL_MAX + 1];
	struct snap_image img;
	struct cpu_state st;
	const char *why = NULL;
	int fd, r;

	r = snap_image_load(&img, state, &why);
	TEST_ASSERT(r == 0, "snap_image_load: %s", why ? why : strerror(-r));
	TEST_ASSERT(!strcmp(img.hdr.backend, cpu->name), "backend %s", img.hdr.backend);
	test_vm_create(vm, cpu, img.hdr.mem_size, (int)img.hdr.ncpus);
	test_dev_attach(dev, vm, &vm->pio, PORT, 1);
	dev->kick_offset = 0;
	fd = snap_mem_open(mem, img.hdr.id, img.hdr.mem_size, &why);
	TEST_ASSERT(fd >= 0, "snap_mem_open: %s", why ? why : strerror(-fd));
	TEST_ASSERT_EQ(gm_map_file_private(&vm->mem, fd, SNAP_MEM_DATA_OFF), 0);
	close(fd);
	TEST_ASSERT_EQ(vm->cpu->cpu_model(vm, model, sizeof(model)), 0);
	TEST_ASSERT(!strcmp(model, img.cpu_model), "model %s, saved %s", model, img.cpu_model);
	for (int i = 0; i < vm->ncpus; i++) {
		TEST_ASSERT_EQ(snap_cpu_decode(img.vcpu[i].data, img.vcpu[i].len, &st), 0);
		vcpu_set_state(&vm->vcpus[i], &st);
	}
	r = vm->cpu->restore_extra(vm, img.backend.data, img.backend.len);
	TEST_ASSERT(r == 0, "restore_extra: %s", strerror(-r));
	snap_image_free(&img);
}

/* Flip one byte inside the backend record: the CRC must catch it before any use. */
static void corrupt_and_load(const char *state)
{
	struct snap_image img;
	const char *why = NULL;
	struct stat sb;
	uint8_t byte;
	int fd = open(state, O_RDWR | O_CLOEXEC), r;

	TEST_ASSERT(fd >= 0 && fstat(fd, &sb) == 0, "open %s", state);
	TEST_ASSERT(pread(fd, &byte, 1, sb.st_size / 2) == 1, "pread");
	byte ^= 0x40;
	TEST_ASSERT(pwrite(fd, &byte, 1, sb.st_size / 2) == 1, "pwrite");
	close(fd);
	r = snap_image_load(&img, state, &why);
	TEST_ASSERT(r == -EBADMSG, "a corrupted state file loaded: %d", r);
	snap_image_free(&img);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : P_tmpdir;
	char dir[512], state[600], mem[600];
	struct test_dev dev_a, dev_b;
	struct cpu_state st;
	uint64_t r12;
	struct vm a, b;

	kvm_require();
	alarm(60);
	snprintf(dir, sizeof(dir), "%s/tern-kvm-snap-XXXXXX", tmp);
	TEST_ASSERT(mkdtemp(dir), "mkdtemp %s: %s", dir, strerror(errno));
	snprintf(state, sizeof(state), "%s/vm.state", dir);
	snprintf(mem, sizeof(mem), "%s/vm.mem", dir);

	test_vm_create(&a, &cpu_backend_kvm, MEM_SIZE, NCPUS);
	test_dev_attach(&dev_a, &a, &a.pio, PORT, 1);
	dev_a.kick_offset = 0;
	guest_start(&a, &dev_a);
	vcpu_get_state(&a.vcpus[0], &st);
	r12 = st.gpr[12];
	TEST_ASSERT(r12 > 0, "the guest did not count");
	save_files(&a, state, mem);
	vm_destroy(&a);

	restore_files(&b, &dev_b, state, mem);
	vcpu_get_state(&b.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[12], r12);
	/* Only the timer (0.2 s left) ends this run; alarm() ends the test if it never fires. */
	vcpu_run_expect(&b.vcpus[0], VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev_b.n, 1);
	test_dev_expect(&dev_b, 0, 0, 1, true, 0x42);
	vcpu_get_state(&b.vcpus[0], &st);
	TEST_ASSERT(st.gpr[12] > r12, "r12 %llu, saved %llu", (unsigned long long)st.gpr[12],
		    (unsigned long long)r12);
	vm_destroy(&b);

	corrupt_and_load(state);
	unlink(state);
	unlink(mem);
	rmdir(dir);
	printf("PASS: a KVM VM saved to and restored from tern's snapshot files continues "
	       "(count, LAPIC timer); a corrupted state file is refused\n");
	return 0;
}
