/*
 * libFuzzer harness for the single volume image's index parser: any input
 * is an image whose disk is exactly as long as the input. Whatever
 * vol_parse accepts must satisfy the promises extraction relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/volume.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vol_index vi;
	char why[256];

	if (vol_parse(data, size, size, &vi, why, sizeof(why)) < 0)
		return 0;
	if (vi.image_size > size || vi.index_size > vi.image_size)
		abort();
	for (uint32_t i = 0; i < vi.count; i++) {
		const struct vol_entry *e = &vi.entries[i];

		if (!vol_name_ok(e->name) || !memchr(e->name, 0, sizeof(e->name)))
			abort();
		if (e->size &&
		    (e->offset < vi.index_size || e->offset > size || e->size > size - e->offset))
			abort();
	}
	vol_index_free(&vi);
	return 0;
}
