/*
 * virtio-rng (virtio 1.x, section 5.4): fills the driver's writable buffers
 * from getrandom(). One queue, no config, no features.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util/log.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define VIRTIO_ID_RNG 4
#define RNG_QUEUE_SIZE 64
#define RNG_MAX_PER_REQ (64u << 10) /* bound host work per request */

/* Fill up to RNG_MAX_PER_REQ bytes of the writable buffers; returns bytes written. */
static uint32_t rng_fill(const struct virtq_chain *ch)
{
	uint32_t done = 0;

	for (unsigned i = ch->nout; i < ch->nout + ch->nin && done < RNG_MAX_PER_REQ; i++) {
		size_t want = ch->iov[i].iov_len, got = 0;

		if (want > RNG_MAX_PER_REQ - done)
			want = RNG_MAX_PER_REQ - done;
		while (got < want) {
			ssize_t r = getrandom((char *)ch->iov[i].iov_base + got, want - got, 0);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				pr_warn_once("virtio-rng: getrandom failed");
				return done + (uint32_t)got;
			}
			got += (size_t)r;
		}
		done += (uint32_t)got;
	}
	return done;
}

static int rng_handle_queue(struct virtio_dev *vd, unsigned q, struct virtq *vq,
			    struct virtq_chain *ch)
{
	int r;

	while ((r = virtq_pop(vq, ch)) > 0)
		virtq_push(vq, ch->head, rng_fill(ch));
	return r;
}

static const struct virtio_dev_ops rng_ops = {
    .name = "rng",
    .device_type = VIRTIO_ID_RNG,
    .class_code = 0x00ff00,
    .num_queues = 1,
    .queue_size = RNG_QUEUE_SIZE,
    .handle_queue = rng_handle_queue,
};

int virtio_rng_add(struct vm *vm)
{
	struct virtio_dev *vd;
	int err = virtio_pci_create(vm, &rng_ops, NULL, NULL, &vd);

	if (err)
		pr_err("virtio-rng: %s", strerror(-err));
	return err;
}
