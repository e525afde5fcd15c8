/*
 * tern run: boot a guest, connect its serial console to this terminal, and
 * exit with the status of the command it ran (see docs/cli.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "api/api.h"
#include "arch/x86/machine.h"
#include "block/nbd.h"
#include "cmd/cmd.h"
#include "cpu/cpu.h"
#include "hw/pci.h"
#include "hw/serial.h"
#include "util/log.h"
#include "virtio/balloon.h"
#include "virtio/virtio.h"
#include "vmm/vm.h"

#define EXIT_USAGE 2
#define EXIT_GUEST_FAILED 3 /* panic, reboot, triple fault, no status reported */
#define EXIT_STOPPED 130    /* stopped from the host: Ctrl-A x, SIGINT, SIGTERM */
#define MAX_DISKS 16
#define MIN_MEM_MIB 64
#define MAX_MEM_MIB (1024 * 1024)
#define MAX_CPUS 64
#define KERNEL_CMDLINE_MAX 2047

struct disk_opt {
	const char *path;
	bool readonly;
};

struct run_opts {
	char *kernel, *initrd;
	const char *cmdline;
	int cpus;
	uint64_t mem_mib;
	const char *accel;
	const char *api_socket; /* --api-socket PATH, or NULL */
	bool balloon;		/* --balloon: a virtio-balloon device */
	struct disk_opt disks[MAX_DISKS];
	int ndisks;
	char **argv; /* the guest command, NULL-terminated, or NULL */
	int argc;
	int verbose;
};

static void run_usage(FILE *f)
{
	fprintf(f,
		"usage: tern run [options] [-- COMMAND [ARGS...]]\n"
		"\n"
		"Boot a Linux guest. With a COMMAND, run it in the guest and exit with its\n"
		"status; without one, attach this terminal to the guest's console\n"
		"(Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A).\n"
		"\n"
		"options:\n"
		"  --kernel PATH       bzImage or vmlinux ELF (default: guest/out/vmlinuz)\n"
		"  --initrd PATH       initrd (default: guest/out/initrd with the default kernel)\n"
		"  --cmdline STR       appended to the kernel command line\n"
		"  --cpus N            vCPUs (default 1, at most %d)\n"
		"  --memory MIB        guest RAM in MiB (default 256, %d..%d)\n"
		"  --disk PATH[,readonly]  virtio-blk disk (repeatable, up to %d)\n"
		"  --api-socket PATH   serve the control API on this Unix socket (docs/api.md)\n"
		"  --balloon           virtio-balloon with statistics and free page reporting\n"
		"                      (docs/memory.md; target set through the API)\n"
		"  --accel kvm|emu|auto    CPU backend (default auto: kvm when the host has\n"
		"                      VMX/SVM, else tern's emulator)\n"
		"  -v, --verbose       more messages from tern (twice: debug)\n"
		"  -h, --help          this text\n"
		"\n"
		"exit status: the command's status; %d bad arguments; 1 tern failed;\n"
		"%d the guest panicked, rebooted, triple-faulted or stopped without\n"
		"reporting a status; %d stopped from the host (Ctrl-A x, a signal).\n",
		MAX_CPUS, MIN_MEM_MIB, MAX_MEM_MIB, MAX_DISKS, EXIT_USAGE, EXIT_GUEST_FAILED,
		EXIT_STOPPED);
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "tern run: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "; see 'tern run --help'\n");
	return EXIT_USAGE;
}

static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_disk(struct run_opts *o, const char *arg)
{
	struct disk_opt *d;
	const char *comma;
	struct stat st;
	int fd;

	if (o->ndisks == MAX_DISKS)
		return usage_error("at most 16 disks ('%s')", arg);
	d = &o->disks[o->ndisks];
	comma = strrchr(arg, ',');
	d->readonly = comma && !strcmp(comma, ",readonly");
	if (comma && !d->readonly && strcmp(comma, ",rw"))
		return usage_error("--disk %s: the only options are ,readonly and ,rw", arg);
	d->path = comma ? strndup(arg, (size_t)(comma - arg)) : strdup(arg);
	if (!d->path)
		return 1;
	o->ndisks++;
	/* A network disk has no path to check here: blk_open connects and reports. */
	if (nbd_is_uri(d->path))
		return 0;
	fd = open(d->path, (d->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "tern run: --disk %s: cannot open %s: %s; check the path%s\n",
			d->path, d->readonly ? "for reading" : "for reading and writing",
			strerror(errno), d->readonly ? "" : " or add ,readonly");
		return EXIT_USAGE;
	}
	if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		close(fd);
		fprintf(stderr, "tern run: --disk %s: not a regular file or block device\n",
			d->path);
		return EXIT_USAGE;
	}
	close(fd);
	return 0;
}

/* <directory of the tern binary>/../guest/out/NAME, else ./guest/out/NAME. */
static char *default_guest_file(const char *name)
{
	char exe[PATH_MAX], *path = NULL;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n > 0) {
		char *slash;

		exe[n] = 0;
		slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		if (asprintf(&path, "%s/../guest/out/%s", exe, name) < 0)
			return NULL;
		if (!access(path, R_OK))
			return path;
		free(path);
	}
	if (asprintf(&path, "guest/out/%s", name) < 0)
		return NULL;
	return path;
}

static uint64_t host_ram_mib(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);

	if (pages <= 0 || psize <= 0)
		return MAX_MEM_MIB;
	return (uint64_t)pages * (uint64_t)psize >> 20;
}

enum { OPT_KERNEL = 256, OPT_INITRD, OPT_CMDLINE, OPT_CPUS, OPT_MEMORY, OPT_DISK, OPT_ACCEL, OPT_API_SOCKET, OPT_BALLOON };

static int parse_one(struct run_opts *o, int c, const char *arg)
{
	uint64_t v;

	switch (c) {
	case OPT_KERNEL:
		free(o->kernel);
		o->kernel = strdup(arg);
		return 0;
	case OPT_INITRD:
		free(o->initrd);
		o->initrd = strdup(arg);
		return 0;
	case OPT_CMDLINE:
		o->cmdline = arg;
		return 0;
	case OPT_CPUS:
		if (parse_uint(arg, MAX_CPUS, &v) || v == 0)
			return usage_error("--cpus '%s': give a number from 1 to 64", arg);
		o->cpus = (int)v;
		return 0;
	case OPT_MEMORY:
		if (parse_uint(arg, MAX_MEM_MIB, &v) || v < MIN_MEM_MIB)
			return usage_error("--memory '%s': give MiB from 64 to 1048576", arg);
		if (v > host_ram_mib())
			return usage_error("--memory '%s': more than this host's RAM", arg);
		o->mem_mib = v;
		return 0;
	case OPT_DISK:
		return parse_disk(o, arg);
	case OPT_ACCEL:
		if (strcmp(arg, "kvm") && strcmp(arg, "emu") && strcmp(arg, "auto"))
			return usage_error("--accel '%s': choose kvm, emu or auto", arg);
		o->accel = arg;
		return 0;
	case OPT_API_SOCKET:
		o->api_socket = arg;
		return 0;
	case OPT_BALLOON:
		o->balloon = true;
		return 0;
	case 'v':
		o->verbose++;
		return 0;
	}
	return EXIT_USAGE;
}

static int parse_args(struct run_opts *o, int argc, char **argv, bool *help)
{
	static const struct option longopts[] = {
	    {"kernel", required_argument, NULL, OPT_KERNEL},
	    {"initrd", required_argument, NULL, OPT_INITRD},
	    {"cmdline", required_argument, NULL, OPT_CMDLINE},
	    {"cpus", required_argument, NULL, OPT_CPUS},
	    {"memory", required_argument, NULL, OPT_MEMORY},
	    {"disk", required_argument, NULL, OPT_DISK},
	    {"accel", required_argument, NULL, OPT_ACCEL},
	    {"api-socket", required_argument, NULL, OPT_API_SOCKET},
	    {"balloon", no_argument, NULL, OPT_BALLOON},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c, err;

	o->cpus = 1;
	o->mem_mib = 256;
	o->accel = "auto";
	optind = 1;
	opterr = 0;
	/* '+': stop at the first non-option, so the guest command keeps its own options. */
	while ((c = getopt_long(argc, argv, "+vh", longopts, NULL)) != -1) {
		if (c == 'h') {
			*help = true;
			return 0;
		}
		if (c == '?' || c == ':') {
			const char *bad = argv[optind - 1];

			if (optopt && optopt < 256)
				return usage_error("unknown or incomplete option '%s'", bad);
			return usage_error("unknown option or missing value: '%s'", bad);
		}
		err = parse_one(o, c, optarg);
		if (err)
			return err;
	}
	if (optind < argc) {
		o->argv = argv + optind;
		o->argc = argc - optind;
	}
	return 0;
}

static int check_images(struct run_opts *o)
{
	bool default_kernel = !o->kernel;

	if (default_kernel) {
		o->kernel = default_guest_file("vmlinuz");
		if (!o->initrd)
			o->initrd = default_guest_file("initrd");
	}
	if (!o->kernel || access(o->kernel, R_OK)) {
		fprintf(stderr,
			"tern run: kernel %s: %s; build the default guest with 'make guest' or "
			"pass --kernel PATH\n",
			o->kernel ? o->kernel : "?", strerror(errno));
		return EXIT_USAGE;
	}
	if (o->initrd && access(o->initrd, R_OK)) {
		fprintf(stderr, "tern run: initrd %s: %s; pass --initrd PATH\n", o->initrd,
			strerror(errno));
		return EXIT_USAGE;
	}
	return 0;
}

static char *base64_argv(char **argv, int argc)
{
	static const char tbl[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t len = 0, o = 0, i;
	unsigned char *raw;
	char *out;

	for (int a = 0; a < argc; a++)
		len += strlen(argv[a]) + 1;
	raw = malloc(len ? len : 1);
	out = malloc((len + 2) / 3 * 4 + 1);
	if (!raw || !out) {
		free(raw);
		free(out);
		return NULL;
	}
	for (int a = 0; a < argc; a++) {
		size_t l = strlen(argv[a]) + 1;

		memcpy(raw + o, argv[a], l);
		o += l;
	}
	for (i = 0, o = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)raw[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)raw[i + 1] << 8;
		if (i + 2 < len)
			v |= raw[i + 2];
		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? tbl[v & 63] : '=';
	}
	out[o] = 0;
	free(raw);
	return out;
}

/* tern's defaults (more on the emulator), then --cmdline, then the command. */
static char *build_cmdline(const struct run_opts *o, bool emu)
{
	char *cmd = NULL, *b64 = NULL;
	int n;

	if (o->argv) {
		b64 = base64_argv(o->argv, o->argc);
		if (!b64)
			return NULL;
	}
	n = asprintf(&cmd, "%s%s%s%s%s%s", X86_DEFAULT_CMDLINE, emu ? " " X86_EMU_CMDLINE : "",
		     o->cmdline ? " " : "", o->cmdline ? o->cmdline : "", b64 ? " tern.cmd=" : "",
		     b64 ? b64 : "");
	free(b64);
	return n < 0 ? NULL : cmd;
}

static const struct cpu_backend *pick_backend(const char *accel)
{
	bool want_kvm = !strcmp(accel, "kvm");

	if (!strcmp(accel, "auto"))
		want_kvm = cpu_kvm_has_hw_virt();
	return want_kvm ? &cpu_backend_kvm : &cpu_backend_emu;
}

/* ---- console: stdin -> serial, Ctrl-A escape, signals, output flushing ---------- */

struct console {
	struct vm *vm;
	struct serial *ser;
	int in_fd;   /* -1 after EOF */
	bool tty;    /* in_fd is a terminal we put in raw mode */
	bool escape; /* last key was Ctrl-A */
	int sig_fd, stop_fd;
	int got_signal;
	pthread_t thread;
	struct termios saved;
};

static void console_inject(struct console *c, const uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		done += serial_inject(c->ser, buf + done, len - done);
		if (done == len)
			break;
		/* The guest is not reading: wait, but give up once the VM stops. */
		serial_flush(c->ser);
		if (poll(&(struct pollfd){.fd = c->stop_fd, .events = POLLIN}, 1, 10) > 0)
			return;
	}
}

/* Terminal input: Ctrl-A x quits, Ctrl-A Ctrl-A is a literal Ctrl-A. */
static void console_keys(struct console *c, const uint8_t *buf, size_t len)
{
	uint8_t out[512];
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		uint8_t k = buf[i];

		if (c->escape) {
			c->escape = false;
			if (k == 'x' || k == 'X') {
				vm_request_stop(c->vm, VM_STOP_USER);
				break;
			}
			if (k != 0x01)
				continue; /* unknown escape: swallowed */
		} else if (k == 0x01) {
			c->escape = true;
			continue;
		}
		out[n++] = k;
	}
	console_inject(c, out, n);
}

static void console_read_input(struct console *c)
{
	uint8_t buf[512];
	ssize_t n = read(c->in_fd, buf, c->tty ? sizeof(buf) : sizeof(buf) / 2);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		c->in_fd = -1; /* EOF: the guest keeps running, it just gets no more input */
		return;
	}
	if (c->tty)
		console_keys(c, buf, (size_t)n);
	else
		console_inject(c, buf, (size_t)n);
}

static void *console_thread(void *arg)
{
	struct console *c = arg;

	for (;;) {
		struct pollfd p[3] = {{.fd = c->stop_fd, .events = POLLIN},
				      {.fd = c->sig_fd, .events = POLLIN},
				      {.fd = c->in_fd, .events = POLLIN}};
		int n = poll(p, c->in_fd >= 0 ? 3 : 2, 20);

		/* Idle or not, push out what the guest wrote without a newline (prompts). */
		serial_flush(c->ser);
		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0)
			continue;
		if (p[0].revents)
			break;
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(c->sig_fd, &si, sizeof(si)) == sizeof(si))
				c->got_signal = (int)si.ssi_signo;
			vm_request_stop(c->vm, VM_STOP_USER);
		}
		if (c->in_fd >= 0 && (p[2].revents & (POLLIN | POLLHUP | POLLERR)))
			console_read_input(c);
	}
	serial_flush(c->ser);
	return NULL;
}

static int console_start(struct console *c, struct vm *vm, const sigset_t *sigs)
{
	struct x86_machine *m = vm->machine;
	int err;

	memset(c, 0, sizeof(*c));
	c->vm = vm;
	c->ser = m->com1;
	c->in_fd = STDIN_FILENO;
	c->sig_fd = signalfd(-1, sigs, SFD_CLOEXEC);
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (c->sig_fd < 0 || c->stop_fd < 0)
		goto fail;
	if (isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, &c->saved)) {
		struct termios raw = c->saved;

		cfmakeraw(&raw);
		if (!tcsetattr(STDIN_FILENO, TCSANOW, &raw))
			c->tty = true;
	}
	err = pthread_create(&c->thread, NULL, console_thread, c);
	if (err) {
		errno = err;
		goto fail;
	}
	return 0;
fail:
	err = -errno;
	if (c->tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
	if (c->sig_fd >= 0)
		close(c->sig_fd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	return err;
}

static void console_stop(struct console *c)
{
	uint64_t one = 1;

	if (write(c->stop_fd, &one, sizeof(one)) != sizeof(one))
		pr_warn("console: cannot signal the console thread");
	pthread_join(c->thread, NULL);
	if (c->tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
	close(c->sig_fd);
	close(c->stop_fd);
}

/* ---- the run itself ------------------------------------------------------------- */

static int add_devices(struct vm *vm, const struct run_opts *o)
{
	int err = pci_init(vm);

	if (err) {
		pr_err("PCI: %s", strerror(-err));
		return err;
	}
	err = virtio_rng_add(vm);
	if (err)
		pr_err("virtio-rng: %s", strerror(-err));
	for (int i = 0; !err && i < o->ndisks; i++) {
		err = virtio_blk_add(vm, o->disks[i].path, o->disks[i].readonly);
		if (err)
			pr_err("--disk %s: %s", o->disks[i].path, strerror(-err));
	}
	if (!err && o->balloon)
		err = virtio_balloon_add(vm);
	return err;
}

/* What tern exits with, and a line saying why when it was not the command's own status. */
static int exit_code(struct vm *vm, enum vm_stop_reason why, const struct run_opts *o,
		     const struct console *con)
{
	int status = vm->exit_status;

	switch (why) {
	case VM_STOP_POWEROFF:
		if (status >= 0)
			return status;
		if (!o->argv)
			return 0;
		fprintf(stderr, "tern: the guest powered off without reporting the command's "
				"exit status\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_RESET:
		if (!o->argv) {
			fprintf(stderr, "tern: the guest rebooted; tern does not restart it\n");
			return 0;
		}
		fprintf(stderr, "tern: the guest rebooted before the command finished\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_PANIC:
		fprintf(stderr, "tern: the guest kernel panicked (see the console output above)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_SHUTDOWN:
		fprintf(stderr, "tern: the guest triple-faulted (CPU shutdown)\n");
		return EXIT_GUEST_FAILED;
	case VM_STOP_USER:
		if (con->got_signal)
			fprintf(stderr, "tern: stopped by signal %d\n", con->got_signal);
		else
			fprintf(stderr, "tern: stopped from the host (Ctrl-A x or the API)\n");
		return EXIT_STOPPED;
	case VM_STOP_ERROR:
	case VM_RUNNING:
		break;
	}
	fprintf(stderr, "tern: the VM stopped on an internal error (see above)\n");
	return 1;
}

static int run_vm(const struct run_opts *o, const struct cpu_backend *backend, const char *cmdline)
{
	struct vm_config cfg = {.mem_size = o->mem_mib << 20, .ncpus = o->cpus};
	struct machine_config mc = {.kernel_path = o->kernel,
				    .initrd_path = o->initrd,
				    .cmdline = cmdline,
				    .console_fd = STDOUT_FILENO};
	struct console con;
	struct api *api = NULL;
	sigset_t sigs;
	struct vm vm;
	int err, rc = 1;

	/* Every thread created from here on inherits the mask; the console reads them. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGQUIT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	cfg.cpu = backend;
	pr_info("backend %s, %d vCPU(s), %llu MiB", cfg.cpu->name, o->cpus,
		(unsigned long long)o->mem_mib);
	err = vm_create(&vm, &cfg);
	if (err) {
		fprintf(stderr, "tern: cannot create the VM (%s backend): %s\n", cfg.cpu->name,
			strerror(-err));
		return 1;
	}
	err = add_devices(&vm, o);
	if (!err)
		err = x86_machine_setup(&vm, &mc);
	/* Before the console thread, so a refused socket leaves nothing to stop. */
	if (!err && o->api_socket)
		err = api_start(&vm, o->api_socket, &api);
	if (!err)
		err = console_start(&con, &vm, &sigs);
	if (err) {
		fprintf(stderr, "tern: cannot set up the machine: %s\n", strerror(-err));
		goto out;
	}
	err = vm_start(&vm);
	if (!err) {
		enum vm_stop_reason why = vm_wait(&vm);

		console_stop(&con);
		rc = exit_code(&vm, why, o, &con);
	} else {
		vm_wait(&vm);
		console_stop(&con);
		fprintf(stderr, "tern: cannot start the vCPUs: %s\n", strerror(-err));
	}
out:
	api_stop(api);
	vm_destroy(&vm);
	return rc;
}

static void free_opts(struct run_opts *o)
{
	free(o->kernel);
	free(o->initrd);
	for (int i = 0; i < o->ndisks; i++)
		free((char *)o->disks[i].path);
}

int cmd_run(int argc, char **argv)
{
	const struct cpu_backend *backend;
	struct run_opts o;
	bool help = false;
	char *cmdline = NULL;
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv, &help);
	if (rc || help) {
		if (help)
			run_usage(stdout);
		goto out;
	}
	if (o.verbose)
		log_set_level(o.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	rc = check_images(&o);
	if (rc)
		goto out;
	backend = pick_backend(o.accel);
	cmdline = build_cmdline(&o, backend == &cpu_backend_emu);
	if (!cmdline) {
		rc = 1;
		goto out;
	}
	if (strlen(cmdline) > KERNEL_CMDLINE_MAX) {
		fprintf(stderr,
			"tern run: the kernel command line would be %zu bytes (at most %d): "
			"shorten the command or --cmdline\n",
			strlen(cmdline), KERNEL_CMDLINE_MAX);
		rc = EXIT_USAGE;
		goto out;
	}
	rc = run_vm(&o, backend, cmdline);
out:
	free(cmdline);
	free_opts(&o);
	return rc;
}
