/* Placeholder until the subcommand lands. */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_img(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "tern: '%s' is not available in this build\n", argv[0]);
	return 2;
}
