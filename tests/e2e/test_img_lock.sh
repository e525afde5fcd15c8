#!/usr/bin/env bash
# Image locks between tern and QEMU's tools, and between two tern
# processes: a writer excludes other writers and readers, readers (backing
# files, read-only disks) exclude writers, -U/--force-share reads anyway.
# Needs no KVM; the `tern run` refusals need the default guest (make guest)
# only to get as far as opening the disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
TERN=${TERN:-$PWD/build/tern}
ROOT=$PWD
[ -x "$TERN" ] || { echo "skip: $TERN not built"; exit 77; }
for t in qemu-img qemu-io qemu-nbd; do
	command -v $t >/dev/null || { echo "skip: $t not installed (Debian: qemu-utils)"; exit 77; }
done
d=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$d"
}
trap cleanup EXIT
cd "$d"
fail() { echo "FAIL: $*"; [ -f err ] && tail -n 5 err; exit 1; }
T() { timeout -k 2 20 "$@"; }
# refused WHAT CMD...: CMD must fail, saying the image is in use.
refused() {
	local what=$1
	shift
	if T "$@" >out 2>err; then fail "$what: succeeded while the image is held"; fi
	grep -Eqi "in use|lock" err || fail "$what: failed without naming the lock: $(cat err)"
	echo "  ok: $what refused: $(head -n 1 err)"
}
works() {
	local what=$1
	shift
	T "$@" >out 2>err || fail "$what: $(cat err)"
	echo "  ok: $what"
}
# hold NAME CMD...: run CMD in the background until the end of the test.
hold() {
	local name=$1
	shift
	timeout -k 2 120 "$@" >"$name.out" 2>"$name.err" &
	pids+=($!)
	HOLDER=$!
}
release() {
	kill "$HOLDER" 2>/dev/null || true
	wait "$HOLDER" 2>/dev/null || true
}
# lock_id FILE: the " MAJ:MIN:INODE " form /proc/locks names FILE's locks by
lock_id() {
	local dev
	dev=$(stat -c %d "$1")
	printf ' %02x:%02x:%s ' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) \
		"$(stat -c %i "$1")"
}
# wait until someone holds a lock on FILE
wait_locked() {
	local id
	id=$(lock_id "$1")
	for _ in $(seq 200); do
		grep -qF "$id" /proc/locks && return 0
		kill -0 "$HOLDER" 2>/dev/null || fail "the holder exited: $(cat ./*.err)"
		sleep 0.05
	done
	fail "$1 was never locked"
}
can_boot=
[ -f "$ROOT/guest/out/vmlinuz" ] && can_boot=1

qemu-img create -q -f qcow2 base.qcow2 16M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-img create -q -f raw disk.raw 4M

echo "check: tern writes an image (nbd-serve): QEMU and tern readers are refused, -U reads"
hold serve "$TERN" nbd-serve top.qcow2 --port 0
wait_locked top.qcow2
refused "qemu-img info" qemu-img info top.qcow2
works "qemu-img info -U" qemu-img info -U top.qcow2
refused "qemu-io write" qemu-io -c 'write 0 4k' top.qcow2
refused "tern img info" "$TERN" img info top.qcow2
grep -q 'force-share' err || fail "the refusal does not mention --force-share: $(cat err)"
grep -q "pid $HOLDER\b" err || grep -q 'pid [0-9]' err ||
	fail "the refusal does not name the holder's pid: $(cat err)"
works "tern img info -U" "$TERN" img info -U top.qcow2
works "tern img check --force-share" "$TERN" img check --force-share top.qcow2
refused "second tern nbd-serve" "$TERN" nbd-serve top.qcow2 --port 0
# The base is a backing file: read by both, written by neither.
works "qemu-img info on the backing file" qemu-img info base.qcow2
refused "tern img commit into the held backing file" "$TERN" img commit top.qcow2
refused "qemu-io write to the backing file" qemu-io -c 'write 0 4k' base.qcow2
release
works "tern img info once the server is gone" "$TERN" img info top.qcow2

echo "check: QEMU writes an image (qemu-nbd): tern refuses to open it"
hold qnbd qemu-nbd -f qcow2 -k "$d/nbd.sock" top.qcow2
wait_locked top.qcow2
refused "tern img info" "$TERN" img info top.qcow2
works "tern img info -U" "$TERN" img info -U top.qcow2
refused "tern nbd-serve" "$TERN" nbd-serve top.qcow2 --port 0
refused "tern img rebase" "$TERN" img rebase -u -b base.qcow2 -F qcow2 top.qcow2
refused "tern img check -r leaks" "$TERN" img check -r leaks top.qcow2
refused "tern img create over it" "$TERN" img create -f qcow2 top.qcow2 16M
refused "tern img convert into it" "$TERN" img convert -O qcow2 -U base.qcow2 top.qcow2
qemu-img info -U top.qcow2 | grep -q 'backing file: base.qcow2' ||
	fail "a refused create or convert changed the image"
refused "tern replicate send of an image being written" \
	"$TERN" replicate send --to "$d/replica" top.qcow2
refused "tern nbd-serve of the backing file (QEMU reads it)" "$TERN" nbd-serve base.qcow2 --port 0
works "tern nbd-serve --readonly of the backing file" \
	sh -c "timeout 1 '$TERN' nbd-serve base.qcow2 --port 0 --readonly; [ \$? = 124 ]"
if [ -n "$can_boot" ]; then
	refused "tern run --disk" "$TERN" run --disk "$d/top.qcow2" -- true
	refused "tern run --disk (the backing file)" "$TERN" run --disk "$d/base.qcow2" -- true
else
	echo "  skip: tern run refusals (no guest: make guest)"
fi
release

# A read-only qemu-nbd does not share resizing; tern's writers claim it (qcow2 grows).
echo "check: QEMU reads a raw disk (qemu-nbd -r): tern may read it too, not write it"
hold qnbd qemu-nbd -r -f raw -k "$d/nbd.sock" disk.raw
wait_locked disk.raw
works "tern img info" "$TERN" img info disk.raw
refused "tern nbd-serve (writable)" "$TERN" nbd-serve disk.raw --port 0
if [ -n "$can_boot" ]; then
	refused "tern run --disk" "$TERN" run --disk "$d/disk.raw" -- true
fi
release

echo "check: a tern reader (nbd-serve --readonly) keeps QEMU from writing, not from reading"
hold serve "$TERN" nbd-serve disk.raw --port 0 --readonly
wait_locked disk.raw
refused "qemu-io write" qemu-io -f raw -c 'write 0 4k' disk.raw
works "qemu-io -r read" qemu-io -r -f raw -c 'read 0 4k' disk.raw
works "qemu-img info" qemu-img info -f raw disk.raw
release
works "qemu-io write once tern is gone" qemu-io -f raw -c 'write 0 4k' disk.raw
if [ -n "$can_boot" ]; then
	echo "check: a running tern VM holds its disk: a second VM and tern img are refused"
	hold vm "$TERN" run --disk "$d/disk.raw" -- sleep 60
	wait_locked disk.raw
	refused "a second tern run --disk" "$TERN" run --disk "$d/disk.raw" -- true
	refused "tern img info" "$TERN" img info disk.raw
	works "tern img info -U" "$TERN" img info -U disk.raw
	# (qemu-img info of a raw image shares writing: it would succeed, as with QEMU.)
	refused "qemu-io write" qemu-io -f raw -c 'write 0 4k' disk.raw
	release
fi
echo "test_img_lock: all passed"
