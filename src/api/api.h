/*
 * The control API: HTTP/1.1 with JSON bodies on a Unix socket, for
 * `curl --unix-socket PATH http://localhost/vm` and `tern ctl PATH info`.
 * docs/api.md lists every endpoint with its request, response and errors.
 *
 * The server runs on its own threads (one per connection, a bounded number
 * of connections, an idle timeout on each) and only ever acts on the VM
 * through the vm_* calls of vmm/vm.h, so it needs no cooperation from the
 * vCPU threads.
 *
 * Lifetime, for the caller (tern run):
 *   vm_create(); ...devices...; api_start(&vm, path, &api);
 *   vm_start(); vm_wait();      <- PUT /vm/shutdown ends this wait
 *   api_stop(api);              <- before vm_destroy(): handlers use the vm
 *   vm_destroy();
 */
#ifndef TERN_API_API_H
#define TERN_API_API_H

struct vm;
struct api;

/* Largest request body accepted; bigger ones get 413. */
#define API_MAX_BODY (64 * 1024)
/* A connection idle this long is closed, so a slow client cannot hold a slot. */
#define API_CONN_TIMEOUT_S 10
/* Connections served at once; more wait in the listen backlog. */
#define API_MAX_CONNS 16

/*
 * Create the socket at socket_path (mode 0600) and serve the API for vm on it.
 * A stale socket left at the path by a dead process is replaced; a live one
 * (-EADDRINUSE) or a file that is not a socket (-EEXIST) is left alone.
 * Returns 0 and sets *out, or -errno after logging why.
 */
int api_start(struct vm *vm, const char *socket_path, struct api **out);

/* Stop serving (waits for requests in progress), remove the socket, free. NULL is a no-op. */
void api_stop(struct api *api);

#endif
