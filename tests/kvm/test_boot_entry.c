/*
 * The whole boot path up to the kernel's first instruction, on KVM: a tiny
 * bzImage (a real setup header, and 64-bit code at the entry point) is
 * loaded by x86_machine_setup() exactly as `tern run` loads Linux. The code
 * prints through COM1, reads boot_params via RSI (type_of_loader, and the
 * command line through cmd_line_ptr), and reports an exit status through
 * the exit device. This checks the loader, the entry state, the serial
 * output path, the exit device and vm_start/vm_wait together.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arch/x86/machine.h"
#include "kvm/lib/kvm_util.h"
#include "vmm/vm.h"

/* 64-bit code placed at load address + 0x200 (the 64-bit entry). */
static const uint8_t entry_code[] = {
    0x66, 0xba, 0xf8, 0x03,		/* mov dx, 0x3f8 */
    0xb0, 'O',	0xee,			/* mov al, 'O'; out dx, al */
    0xb0, 'K',	0xee,			/* mov al, 'K'; out dx, al */
    0x8a, 0x86, 0x10, 0x02, 0x00, 0x00, /* mov al, [rsi + 0x210] (type_of_loader) */
    0xee,				/* out dx, al */
    0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, /* mov eax, [rsi + 0x228] (cmd_line_ptr) */
    0x8a, 0x00,				/* mov al, [rax] */
    0xee,				/* out dx, al */
    0xb0, '\n', 0xee,			/* mov al, '\n'; out dx, al */
    0x66, 0xba, 0xf0, 0x04,		/* mov dx, 0x4f0 */
    0xb0, 42,	0xee,			/* mov al, 42; out dx, al */
    0xf4,				/* hlt */
    0xeb, 0xfd,				/* jmp hlt */
};

static void put(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void write_tiny_bzimage(const char *path)
{
	size_t setup = 5 * 512, pm = 0x1000;
	uint8_t *k = calloc(1, setup + pm);
	FILE *f;

	TEST_ASSERT(k, "out of memory");
	k[0x1f1] = 4;
	put(k + 0x1fe, 0xaa55, 2);
	k[0x201] = 0x66;
	memcpy(k + 0x202, "HdrS", 4);
	put(k + 0x206, 0x020f, 2);
	k[0x211] = 0x01;
	put(k + 0x22c, 0x7fffffff, 4);
	put(k + 0x230, 0x200000, 4);
	k[0x234] = 1;
	put(k + 0x236, 0x3, 2);
	put(k + 0x238, 2047, 4);
	put(k + 0x258, 0x1000000, 8);
	put(k + 0x260, 0x100000, 4);
	memcpy(k + setup + 0x200, entry_code, sizeof(entry_code));
	f = fopen(path, "wb");
	TEST_ASSERT(f, "cannot create %s", path);
	TEST_ASSERT_EQ(fwrite(k, 1, setup + pm, f), setup + pm);
	fclose(f);
	free(k);
}

int main(void)
{
	char path[] = "/tmp/tern-tiny-XXXXXX";
	struct vm_config cfg = {.mem_size = 64 << 20, .ncpus = 1, .cpu = &cpu_backend_kvm};
	struct machine_config mc = {.cmdline = "console=ttyS0 tern.test"};
	struct vm vm;
	char out[64] = {0};
	int pipefd[2], fd, err, status;
	enum vm_stop_reason why;
	ssize_t n;

	kvm_require();
	fd = mkstemp(path);
	TEST_ASSERT(fd >= 0, "mkstemp: %s", strerror(errno));
	close(fd);
	write_tiny_bzimage(path);
	TEST_ASSERT(pipe(pipefd) == 0, "pipe: %s", strerror(errno));

	err = vm_create(&vm, &cfg);
	if (err == -ENODEV || err == -ENOTSUP)
		test_skip("the KVM backend cannot create a VM here: %s", strerror(-err));
	TEST_ASSERT(!err, "vm_create: %s", strerror(-err));
	mc.kernel_path = path;
	mc.console_fd = pipefd[1];
	err = x86_machine_setup(&vm, &mc);
	TEST_ASSERT(!err, "x86_machine_setup: %s", strerror(-err));
	TEST_ASSERT(!vm_start(&vm), "vm_start");
	why = vm_wait(&vm);
	status = vm.exit_status;
	vm_destroy(&vm); /* flushes the serial output */
	unlink(path);
	close(pipefd[1]);
	n = read(pipefd[0], out, sizeof(out) - 1);
	close(pipefd[0]);

	TEST_ASSERT_EQ(why, VM_STOP_POWEROFF);
	TEST_ASSERT_EQ(status, 42);
	TEST_ASSERT(n == 5, "guest output has %zd bytes, expected 5: '%s'", n, out);
	TEST_ASSERT(!memcmp(out,
			    "OK\xff"
			    "c\n",
			    5),
		    "guest printed '%s'", out);
	printf("guest printed OK, saw type_of_loader 0xff and the command line through RSI\n");
	return 0;
}
