#!/usr/bin/env bash
# `tern nbd-serve` with QEMU's tools as the clients: qemu-img convert/compare
# and qemu-io over TCP and Unix sockets, raw and qcow2 exports, read-only
# exports, two clients sharing one export, and protocol abuse that must leave
# the server running. Needs no guest and no KVM; loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
TERN=${TERN:-$PWD/build/tern}
[ -x "$TERN" ] || { echo "skip: $TERN not built"; exit 77; }
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null ||
	{ echo "skip: qemu-img/qemu-io not installed (Debian: qemu-utils)"; exit 77; }
d=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$d"
}
trap cleanup EXIT
cd "$d"
fail() { echo "FAIL: $*"; [ -f serve.err ] && tail -n 5 serve.err; exit 1; }
T() { timeout -k 2 60 "$@"; }
qio() { T qemu-io "$@" >/dev/null; }

# serve ARGS...: start tern nbd-serve, set URL to what it listens on.
serve() {
	: >serve.out
	timeout -k 2 300 "$TERN" nbd-serve "$@" >serve.out 2>serve.err &
	pids+=($!)
	SERVER=$!
	for _ in $(seq 100); do
		URL=$(sed -n 's/^listening on //p' serve.out)
		[ -n "$URL" ] && return 0
		kill -0 "$SERVER" 2>/dev/null || fail "nbd-serve exited: $(cat serve.err)"
		sleep 0.05
	done
	fail "nbd-serve did not start"
}
stop() {
	kill "$SERVER"
	wait "$SERVER" || fail "nbd-serve did not exit cleanly on SIGTERM"
}

# usage errors
set +e
"$TERN" nbd-serve >/dev/null 2>err; rc=$?
set -e
[ $rc -eq 2 ] && grep -q 'usage: tern nbd-serve' err || fail "no image is not a usage error ($rc)"
"$TERN" nbd-serve --help | grep -q -- '--socket PATH' || fail "help text"

# a raw image over TCP on a free port: qemu-img reads what the file holds
T qemu-img create -q -f raw a.raw 64M
qio -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 40M 3M' -c 'write -P 0x33 63M 1M' a.raw
serve a.raw --port 0 --export disk
case $URL in nbd://127.0.0.1:*/disk) ;; *) fail "unexpected URL $URL" ;; esac
T qemu-img info "$URL" | grep -q 'virtual size: 64 MiB' || fail "qemu-img info over NBD"
T qemu-img compare -q -f raw -F raw a.raw "$URL" || fail "qemu-img compare"
T qemu-img convert -f raw -O qcow2 "$URL" copy.qcow2
T qemu-img compare -q -F raw copy.qcow2 a.raw || fail "qemu-img convert from the export"

# qemu-io writes, flushes, discards and zeroes through the export
qio -f raw -c 'write -P 0x44 5M 2M' -c flush -c 'write -z 40M 1M' -c 'discard 62M 64k' "$URL"
qio -f raw -c 'read -P 0x44 5M 2M' -c 'read -P 0 40M 1M' -c 'read -P 0x22 41M 2M' "$URL" ||
	fail "reading back through the export"
# The file itself, beside the running server: tern holds its write lock, so -U.
qio -r -U -f raw -c 'read -P 0x44 5M 2M' -c 'read -P 0 40M 1M' a.raw || fail "writes did not reach the file"

# an unknown export name is refused, the empty name is the default export
if T qemu-img info "${URL%/disk}/other" >/dev/null 2>&1; then fail "unknown export accepted"; fi
T qemu-img info "${URL%/disk}/" >/dev/null || fail "default export"

# two clients on one export see each other's flushed writes
qio -f raw -c 'write -P 0x55 10M 64k' -c flush "$URL"
qio -f raw -c 'read -P 0x55 10M 64k' "$URL" || fail "second client does not see the first's write"

# protocol abuse: garbage, a truncated handshake, oversized requests; the server stays
port=${URL#nbd://127.0.0.1:}
port=${port%%/*}
if command -v python3 >/dev/null; then
	T python3 - "$port" <<'EOF' || fail "abuse script"
import socket, struct, sys
port = int(sys.argv[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    hello = b""
    while len(hello) < 18:
        hello += s.recv(18 - len(hello))
    assert hello[:8] == b"NBDMAGIC"
    return s
# garbage instead of client flags and options
s = conn(); s.sendall(b"\xff" * 4096); s.close()
s = conn(); s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(">II", 7, 1 << 31)); s.close()
# reach transmission, then an oversized read (EINVAL), an unknown command, a huge write
s = conn()
s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">III", 7, 10, 4) + b"disk" + b"\0\0")
while True:
    h = b""
    while len(h) < 20:
        h += s.recv(20 - len(h))
    n = struct.unpack(">I", h[16:20])[0]
    while n:
        n -= len(s.recv(n))
    if struct.unpack(">I", h[12:16])[0] == 1:
        break
def req(t, cookie, off, ln):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, t, cookie, off, ln))
def reply():
    r = b""
    while len(r) < 16:
        r += s.recv(16 - len(r))
    return struct.unpack(">IIQ", r)
req(0, 1, 0, 0xFFFFFFFF); assert reply() == (0x67446698, 22, 1), "oversized read"
req(99, 2, 0, 0); assert reply() == (0x67446698, 22, 2), "unknown command"
req(1, 3, 0, 0x7FFFFFFF)
s.settimeout(10)
assert s.recv(1) == b"", "huge write not disconnected"
s.close()
EOF
fi
kill -0 "$SERVER" || fail "server died under abuse"
T qemu-img compare -q -f raw -F raw a.raw "$URL" || fail "export broken after abuse"
stop

# a qcow2 image over a Unix socket, read-only
T qemu-img create -q -f qcow2 b.qcow2 32M
qio -f qcow2 -c 'write -P 0x66 1M 1M' b.qcow2
serve b.qcow2 --socket "$d/s.sock" --readonly
[ "$URL" = "nbd+unix:///?socket=$d/s.sock" ] || fail "unexpected URL $URL"
T qemu-img compare -q -F qcow2 "$URL" b.qcow2 || fail "qcow2 export differs"
if T qemu-io -f raw -c 'write 0 512' "$URL" >/dev/null 2>&1; then fail "write to a read-only export"; fi
stop
[ ! -e "$d/s.sock" ] || fail "socket left behind"

# tern's client against tern's server
serve a.raw --port 0
T "$TERN" img convert -O raw "$URL" back.raw
cmp -s a.raw back.raw || fail "tern img convert from tern nbd-serve"
stop
echo "nbd-serve: all checks passed"
