#!/usr/bin/env bash
# `tern volume pack/list/unpack` end to end, and the guest-side extractor
# (guest/volume-extract.sh) run on the host with busybox's applets only,
# as the guest runs it: same files out as went in; damaged and hostile
# images refused by both. Needs no guest and no KVM.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TERN=${TERN:-$PWD/build/tern}
[ -x "$TERN" ] || { echo "skip: $TERN not built"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"
fail() { echo "FAIL: $*"; exit 1; }
T() { timeout -k 2 60 "$@"; }

# a tree with nested directories, an empty file and directory, odd modes
mkdir -p src/etc/conf.d src/empty "src/with space"
printf 'hello\n' >src/etc/motd
head -c 300000 /dev/urandom >src/etc/conf.d/blob
: >src/etc/conf.d/zero
printf x >"src/with space/f"
chmod 0750 src/etc/conf.d
chmod 0600 src/etc/motd
chmod 0755 src/etc/conf.d/blob

"$TERN" volume --help | grep -q 'pack DIR OUT' || fail "help text"
set +e
"$TERN" volume pack src 2>/dev/null; rc=$?
set -e
[ $rc -eq 2 ] || fail "missing argument is not a usage error ($rc)"

T "$TERN" volume pack src vol.img
[ $(($(stat -c %s vol.img) % 4096)) -eq 0 ] || fail "image not 4 KiB aligned"
T "$TERN" volume list vol.img >list
grep -q '^-rw------- *6 etc/motd$' list || fail "list: motd ($(cat list))"
grep -q '^drwxr-x--- *0 etc/conf.d/$' list || fail "list: conf.d"
grep -q ' 300000 etc/conf.d/blob$' list || fail "list: blob"
grep -q ' with space/f$' list || fail "list: name with a space"
T "$TERN" volume unpack vol.img out
diff -r src out || fail "unpack differs"
[ "$(stat -c %a out/etc/conf.d/blob)" = 755 ] || fail "mode not kept"
[ "$(stat -c %a out/etc/motd)" = 600 ] || fail "mode not kept"
if T "$TERN" volume unpack vol.img out 2>/dev/null; then fail "unpack overwrote files"; fi

# damaged images: clear errors, exit 1
cp vol.img bad.img
printf 'X' | dd of=bad.img bs=1 seek=0 conv=notrunc 2>/dev/null
set +e
"$TERN" volume list bad.img 2>err; rc=$?
set -e
[ $rc -eq 1 ] && grep -q 'bad magic' err || fail "bad magic ($rc: $(cat err))"
cp vol.img bad.img
printf '..' | dd of=bad.img bs=1 seek=64 conv=notrunc 2>/dev/null
set +e
"$TERN" volume unpack bad.img bad-out 2>err; rc=$?
set -e
[ $rc -eq 1 ] && grep -q 'checksum' err || fail "bad checksum ($rc: $(cat err))"
[ ! -e bad-out ] || [ -z "$(ls -A bad-out)" ] || fail "a refused image wrote files"
head -c 3000 vol.img >short.img
if "$TERN" volume list short.img 2>err; then fail "truncated image accepted"; fi
grep -q 'refused' err || fail "truncated image: $(cat err)"

# the guest's extractor with busybox applets only (skipped without busybox)
if ! command -v busybox >/dev/null; then
	echo "volume: tern checks passed; skip: no busybox for the guest extractor"
	exit 0
fi
mkdir bb
for a in sh dd od tr head cat wc sort uniq cut grep mkdir chmod ls rm mktemp printf blockdev; do
	ln -s "$(command -v busybox)" "bb/$a"
done
bbx() { T env PATH="$d/bb" "$(command -v busybox)" sh "$ROOT/guest/volume-extract.sh" "$@"; }
bbx vol.img gout >gx.log 2>&1 || fail "guest extractor: $(cat gx.log)"
diff -r src gout || fail "guest extractor output differs"
[ "$(stat -c %a gout/etc/motd)" = 600 ] || fail "guest extractor: mode"

# hostile entries the extractor must refuse (it cannot check CRCs: structure only)
# entry 0's name at byte 64; entry 0's offset at 64+232
hostile() {
	cp vol.img h.img
	printf "$2" | dd of=h.img bs=1 seek="$1" conv=notrunc 2>/dev/null
	rm -rf hout
	if bbx h.img hout >hx.log 2>&1; then fail "guest extractor accepted: $3"; fi
	grep -q "$4" hx.log || fail "guest extractor, $3: $(cat hx.log)"
	[ ! -e hout ] || [ -z "$(ls -A hout)" ] || fail "guest extractor wrote files for: $3"
}
hostile 64 '../x\000' "a '..' name" "unsafe name"
hostile 64 '/abs\000' "an absolute name" "unsafe name"
hostile 64 'a//b\000' "an empty component" "unsafe name"
hostile 20 '\377\377\000\000' "a huge count" "count\|index size"
hostile 32 '\000\000\000\000\000\001\000\000' "an image larger than the disk" "image size"
echo "volume: all checks passed"
