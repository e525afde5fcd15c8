/*
 * `tern volume`: pack a directory into one read-only disk image (a
 * single volume image), list it, unpack it. Exit status: 0 success,
 * 1 error (a refused image included), 2 usage.
 */
#include <stdio.h>
#include <string.h>

#include "block/volume.h"
#include "cmd/cmd.h"

static const char usage_text[] =
    "usage: tern volume <command> ...\n"
    "\n"
    "  pack DIR OUT     write the files and directories under DIR as one image OUT\n"
    "  list IMG         show the image's entries (mode, size, name)\n"
    "  unpack IMG DIR   extract the image into DIR (created if missing; nothing is overwritten)\n"
    "\n"
    "The image is a raw disk: attach it with 'tern run --disk OUT,readonly'.\n"
    "The format is described in docs/volume.md.\n";

int cmd_volume(int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "";

	if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (!strcmp(sub, "pack") && argc == 4)
		return vol_pack(argv[2], argv[3]) < 0;
	if (!strcmp(sub, "unpack") && argc == 4)
		return vol_unpack(argv[2], argv[3]) < 0;
	if (!strcmp(sub, "list") && argc == 3)
		return vol_list(argv[2], stdout) < 0;
	fputs(usage_text, stderr);
	return 2;
}
