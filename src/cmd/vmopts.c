/* The machine options shared by tern run and tern snapshot (cmd/vmopts.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch/x86/machine.h"
#include "block/nbd.h"
#include "cmd/vmopts.h"
#include "cpu/cpu.h"

#define MIN_MEM_MIB 64
#define MAX_MEM_MIB (1024 * 1024)
#define MAX_CPUS 64
#define KERNEL_CMDLINE_MAX 2047
#define MAX_LONGOPTS 32

enum {
	O_KERNEL = 256,
	O_INITRD,
	O_CMDLINE,
	O_CPUS,
	O_MEMORY,
	O_DISK,
	O_ACCEL,
	O_API_SOCKET,
	O_BALLOON,
	O_MEM_BACKING,
	O_CPU_MODEL
};

static const struct option vm_longopts[] = {
    {"kernel", required_argument, NULL, O_KERNEL},
    {"initrd", required_argument, NULL, O_INITRD},
    {"cmdline", required_argument, NULL, O_CMDLINE},
    {"cpus", required_argument, NULL, O_CPUS},
    {"memory", required_argument, NULL, O_MEMORY},
    {"disk", required_argument, NULL, O_DISK},
    {"accel", required_argument, NULL, O_ACCEL},
    {"api-socket", required_argument, NULL, O_API_SOCKET},
    {"balloon", optional_argument, NULL, O_BALLOON},
    {"mem-backing", required_argument, NULL, O_MEM_BACKING},
    {"cpu-model", required_argument, NULL, O_CPU_MODEL},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
};

void vmopts_usage(FILE *f)
{
	fprintf(f,
		"  --kernel PATH       bzImage or vmlinux ELF (default: guest/out/vmlinuz)\n"
		"  --initrd PATH       initrd (default: guest/out/initrd with the default kernel)\n"
		"  --cmdline STR       appended to the kernel command line\n"
		"  --cpus N            vCPUs (default 1, at most %d)\n"
		"  --memory MIB        guest RAM in MiB (default 256, %d..%d)\n"
		"  --disk PATH[,readonly]  virtio-blk disk (repeatable, up to %d)\n"
		"  --api-socket PATH   serve the control API on this Unix socket (docs/api.md)\n"
		"  --balloon[=no-reporting]  virtio-balloon with statistics and free page\n"
		"                      reporting (=no-reporting: without it); docs/memory.md;\n"
		"                      target set through the API\n"
		"  --mem-backing auto|memfd|anon  what backs guest RAM (default auto: memfd\n"
		"                      when the host gives shared memory huge pages, else anon)\n"
		"  --accel kvm|emu|auto    CPU backend (default auto: kvm when the host has\n"
		"                      VMX/SVM, else tern's emulator)\n"
		"  --cpu-model host|portable  the CPU the guest sees (default host: all the\n"
		"                      backend offers; portable: the emulator's CPU limited to\n"
		"                      what this host's KVM offers, so a snapshot can resume\n"
		"                      on either backend)\n"
		"  -v, --verbose       more messages from tern (twice: debug)\n"
		"  -h, --help          this text\n",
		MAX_CPUS, MIN_MEM_MIB, MAX_MEM_MIB, MACHINE_MAX_DISKS);
}

static int usage_error(const struct vmopts *o, const char *fmt, const char *arg)
{
	fprintf(stderr, "tern %s: ", o->cmd);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "; see 'tern %s --help'\n", o->cmd);
	return VMOPTS_EXIT_USAGE;
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

static uint64_t host_ram_mib(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);

	if (pages <= 0 || psize <= 0)
		return MAX_MEM_MIB;
	return (uint64_t)pages * (uint64_t)psize >> 20;
}

/* A local disk must open as asked now: a clear message beats a failed boot. */
static int check_disk(const struct vmopts *o, const char *path, bool ro)
{
	struct stat st;
	int fd;

	if (nbd_is_uri(path)) /* blk_open connects and reports */
		return 0;
	fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "tern %s: --disk %s: cannot open %s: %s; check the path%s\n",
			o->cmd, path, ro ? "for reading" : "for reading and writing",
			strerror(errno), ro ? "" : " or add ,readonly");
		return VMOPTS_EXIT_USAGE;
	}
	if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		close(fd);
		fprintf(stderr, "tern %s: --disk %s: not a regular file or block device\n", o->cmd,
			path);
		return VMOPTS_EXIT_USAGE;
	}
	close(fd);
	return 0;
}

static int parse_disk(struct vmopts *o, const char *arg)
{
	const char *comma = strrchr(arg, ',');
	bool ro = comma && !strcmp(comma, ",readonly");
	char *path;
	int err;

	if (o->desc.ndisks == MACHINE_MAX_DISKS)
		return usage_error(o, "at most 16 disks ('%s')", arg);
	if (comma && !ro && strcmp(comma, ",rw"))
		return usage_error(o, "--disk %s: the only options are ,readonly and ,rw", arg);
	path = comma ? strndup(arg, (size_t)(comma - arg)) : strdup(arg);
	if (!path)
		return 1;
	err = machine_desc_add_disk(&o->desc, path, ro);
	if (err) {
		free(path);
		return usage_error(o, "--disk '%s': path too long", arg);
	}
	err = check_disk(o, path, ro);
	free(path);
	return err;
}

static int set_str(char **dst, const char *src)
{
	free(*dst);
	*dst = strdup(src);
	return *dst ? 0 : 1;
}

static int parse_one(struct vmopts *o, int c, const char *arg)
{
	uint64_t v;

	switch (c) {
	case O_KERNEL:
		return set_str(&o->desc.kernel, arg);
	case O_INITRD:
		return set_str(&o->desc.initrd, arg);
	case O_CMDLINE:
		o->cmdline = arg;
		return 0;
	case O_CPUS:
		if (parse_uint(arg, MAX_CPUS, &v) || v == 0)
			return usage_error(o, "--cpus '%s': give a number from 1 to 64", arg);
		o->desc.cpus = (int)v;
		return 0;
	case O_MEMORY:
		if (parse_uint(arg, MAX_MEM_MIB, &v) || v < MIN_MEM_MIB)
			return usage_error(o, "--memory '%s': give MiB from 64 to 1048576", arg);
		if (v > host_ram_mib())
			return usage_error(o, "--memory '%s': more than this host's RAM", arg);
		o->desc.mem_mib = v;
		return 0;
	case O_DISK:
		return parse_disk(o, arg);
	case O_ACCEL:
		if (strcmp(arg, "kvm") && strcmp(arg, "emu") && strcmp(arg, "auto"))
			return usage_error(o, "--accel '%s': choose kvm, emu or auto", arg);
		return set_str(&o->desc.accel, arg);
	case O_API_SOCKET:
		return set_str(&o->desc.api_socket, arg);
	case O_BALLOON:
		if (arg && strcmp(arg, "no-reporting"))
			return usage_error(o, "--balloon='%s': the only option is no-reporting",
					   arg);
		o->desc.balloon = true;
		o->desc.balloon_no_reporting = arg != NULL;
		return 0;
	case O_MEM_BACKING:
		if (gm_backing_parse(arg, &o->desc.mem_backing))
			return usage_error(o, "--mem-backing '%s': choose auto, memfd or anon",
					   arg);
		return 0;
	case O_CPU_MODEL:
		if (strcmp(arg, "host") && strcmp(arg, "portable"))
			return usage_error(o, "--cpu-model '%s': choose host or portable", arg);
		o->desc.portable_cpu = !strcmp(arg, "portable");
		return 0;
	case 'v':
		o->verbose++;
		return 0;
	}
	return VMOPTS_EXIT_USAGE;
}

/* The shared options, then the command's own, then the terminating zero entry. */
static int merge_longopts(struct option *all, const struct vmopts_extra *extra)
{
	size_t n = sizeof(vm_longopts) / sizeof(vm_longopts[0]);

	memcpy(all, vm_longopts, sizeof(vm_longopts));
	for (const struct option *e = extra ? extra->longopts : NULL; e && e->name; e++) {
		if (n + 1 >= MAX_LONGOPTS)
			return -E2BIG;
		all[n++] = *e;
	}
	all[n] = (struct option){0};
	return 0;
}

static void set_defaults(struct vmopts *o, const char *cmd)
{
	memset(o, 0, sizeof(*o));
	o->cmd = cmd;
	o->desc.cpus = 1;
	o->desc.mem_mib = 256;
	o->desc.identity = true;
}

int vmopts_parse(struct vmopts *o, const char *cmd, int argc, char **argv,
		 const struct vmopts_extra *extra, bool *help)
{
	struct option all[MAX_LONGOPTS];
	int c, err;

	set_defaults(o, cmd);
	if (merge_longopts(all, extra) || set_str(&o->desc.accel, "auto"))
		return 1;
	optind = 1;
	opterr = 0;
	/* '+': stop at the first non-option, so the guest command keeps its own options. */
	while ((c = getopt_long(argc, argv, "+vh", all, NULL)) != -1) {
		if (c == 'h') {
			*help = true;
			return 0;
		}
		if (c == '?' || c == ':') {
			const char *bad = argv[optind - 1];

			if (optopt && optopt < 256)
				return usage_error(o, "unknown or incomplete option '%s'", bad);
			return usage_error(o, "unknown option or missing value: '%s'", bad);
		}
		if (c >= VMOPTS_CMD_BASE && extra)
			err = extra->parse(extra->ctx, c, optarg);
		else
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

static int check_images(struct vmopts *o)
{
	struct machine_desc *d = &o->desc;

	if (!d->kernel) {
		d->kernel = default_guest_file("vmlinuz");
		if (!d->initrd)
			d->initrd = default_guest_file("initrd");
	}
	if (!d->kernel || access(d->kernel, R_OK)) {
		fprintf(stderr,
			"tern %s: kernel %s: %s; build the default guest with 'make guest' or "
			"pass --kernel PATH\n",
			o->cmd, d->kernel ? d->kernel : "?", strerror(errno));
		return VMOPTS_EXIT_USAGE;
	}
	if (d->initrd && access(d->initrd, R_OK)) {
		fprintf(stderr, "tern %s: initrd %s: %s; pass --initrd PATH\n", o->cmd, d->initrd,
			strerror(errno));
		return VMOPTS_EXIT_USAGE;
	}
	return 0;
}

/* The guest command goes to the guest's init as NUL-separated argv, base64 (guest-interface.md). */
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
static char *build_cmdline(const struct vmopts *o, bool emu)
{
	char *cmd = NULL, *b64 = NULL;
	const char *extra = emu ? " " X86_EMU_CMDLINE : "";
	int n;

	if (o->argv) {
		b64 = base64_argv(o->argv, o->argc);
		if (!b64)
			return NULL;
	}
	n = asprintf(&cmd, "%s%s%s%s%s%s", X86_DEFAULT_CMDLINE, extra, o->cmdline ? " " : "",
		     o->cmdline ? o->cmdline : "", b64 ? " tern.cmd=" : "", b64 ? b64 : "");
	free(b64);
	return n < 0 ? NULL : cmd;
}

int vmopts_finish(struct vmopts *o)
{
	int rc = check_images(o);

	if (rc)
		return rc;
	free(o->desc.cmdline);
	o->desc.cmdline = build_cmdline(o, machine_desc_backend(&o->desc) == &cpu_backend_emu);
	if (!o->desc.cmdline)
		return 1;
	if (strlen(o->desc.cmdline) > KERNEL_CMDLINE_MAX) {
		fprintf(stderr,
			"tern %s: the kernel command line would be %zu bytes (at most %d): "
			"shorten the command or --cmdline\n",
			o->cmd, strlen(o->desc.cmdline), KERNEL_CMDLINE_MAX);
		return VMOPTS_EXIT_USAGE;
	}
	return 0;
}

void vmopts_free(struct vmopts *o)
{
	machine_desc_clear(&o->desc);
}
