#!/usr/bin/env bash
# `tern img` end to end, checked against qemu-img: create, info, check,
# convert, commit, rebase, and clear errors. Needs no guest and no KVM.
set -euo pipefail
cd "$(dirname "$0")/../.."
TERN=${TERN:-$PWD/build/tern}
[ -x "$TERN" ] || { echo "skip: $TERN not built"; exit 77; }
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null ||
	{ echo "skip: qemu-img/qemu-io not installed (Debian: qemu-utils)"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"
fail() { echo "FAIL: $*"; exit 1; }
qio() { qemu-io "$@" >/dev/null; }

# help and usage errors
"$TERN" img --help | grep -q 'create \[-f raw|qcow2\]' || fail "help text"
set +e
"$TERN" img create -f qcow2 x.qcow2 12Q 2>err; rc=$?
set -e
[ $rc -eq 2 ] && grep -q SIZE err || fail "bad size not a usage error ($rc)"
set +e
"$TERN" img info nope.qcow2 2>err; rc=$?
set -e
[ $rc -eq 1 ] && grep -q 'No such file' err || fail "missing file ($rc)"

# create: raw and qcow2, sizes as qemu-img sees them
"$TERN" img create -f raw r.raw 10M >/dev/null
[ "$(stat -c %s r.raw)" = 10485760 ] || fail "raw size"
"$TERN" img create -f qcow2 -o cluster_size=4k a.qcow2 100M >/dev/null
qemu-img check -q a.qcow2 || fail "qemu-img check on a fresh image"
qemu-img info --output=json a.qcow2 | grep -q '"virtual-size": 104857600' || fail "virtual size"
qemu-img info --output=json a.qcow2 | grep -q '"cluster-size": 4096' || fail "cluster size"
"$TERN" img info a.qcow2 | grep -q 'virtual size: 100 MiB (104857600 bytes)' || fail "tern info"
"$TERN" img info --output=json a.qcow2 | grep -q '"virtual-size": 104857600' || fail "json info"
"$TERN" img create -f qcow2 -o compat=0.10 v2.qcow2 1G >/dev/null
qemu-img info v2.qcow2 | grep -q 'compat: 0.10' || fail "v2 compat"

# convert both ways, a qemu-written image as the source
qio -c 'write -P 0x11 0 1M' -c 'write -P 0x22 50M 3M' -c 'write -z 51M 64k' a.qcow2
"$TERN" img convert -O raw a.qcow2 a.raw
qemu-img compare -q -F raw a.qcow2 a.raw || fail "convert to raw"
"$TERN" img convert -p -O qcow2 -o cluster_size=2M a.raw b.qcow2 >progress
grep -q '100.0/100%' progress || fail "progress"
qemu-img check -q b.qcow2 || fail "check after convert"
qemu-img compare -q b.qcow2 a.qcow2 || fail "convert to qcow2"
"$TERN" img check b.qcow2 | grep -q 'No errors' || fail "tern check"

# backing chain with a relative name: qemu writes, tern reads and commits
mkdir sub
"$TERN" img create -f qcow2 -b ../b.qcow2 sub/ov.qcow2 >/dev/null
qemu-img info sub/ov.qcow2 | grep -q 'backing file: ../b.qcow2' || fail "backing name"
qemu-img info sub/ov.qcow2 | grep -q 'backing file format: qcow2' || fail "backing format"
qio -c 'write -P 0x33 100k 5k' -c 'write -P 0x44 50M 64k' sub/ov.qcow2
qemu-img convert -O raw sub/ov.qcow2 ov.expect
"$TERN" img convert -O raw sub/ov.qcow2 ov.got
cmp -s ov.expect ov.got || fail "reading through the chain"
"$TERN" img commit sub/ov.qcow2 >/dev/null
qemu-img check -q b.qcow2 || fail "check after commit"
qemu-img compare -q -F raw b.qcow2 ov.expect || fail "commit content"

# rebase (safe): content stays, backing changes
"$TERN" img create -f qcow2 c.qcow2 100M >/dev/null
qio -c 'write -P 0x55 0 128k' c.qcow2
qemu-img convert -O raw sub/ov.qcow2 before.raw
"$TERN" img rebase -b ../c.qcow2 sub/ov.qcow2
qemu-img info sub/ov.qcow2 | grep -q 'backing file: ../c.qcow2' || fail "rebase name"
qemu-img check -q sub/ov.qcow2 || fail "check after rebase"
qemu-img compare -q -F raw sub/ov.qcow2 before.raw || fail "rebase changed content"
# rebase -u only rewrites the name; removing the backing file keeps the data
"$TERN" img rebase -u -b ../b.qcow2 sub/ov.qcow2
qemu-img info sub/ov.qcow2 | grep -q 'backing file: ../b.qcow2' || fail "unsafe rebase"
"$TERN" img rebase -b "" sub/ov.qcow2
qemu-img info sub/ov.qcow2 | grep -q 'backing file' && fail "backing not removed"
qemu-img compare -q -F raw sub/ov.qcow2 ov.expect || fail "flattening changed content"

# check finds corruption (exit 2) and leaks (exit 3, repaired by -r leaks)
cp a.qcow2 bad.qcow2
rt=$(od -An -tu8 --endian=big -j48 -N8 bad.qcow2 | tr -d ' ')
rb=$(od -An -tu8 --endian=big -j"$rt" -N8 bad.qcow2 | tr -d ' ')
printf '\x00\x00' | dd of=bad.qcow2 bs=1 seek=$((rb + 2 * 3)) conv=notrunc status=none
set +e
"$TERN" img check bad.qcow2 >/dev/null 2>&1; rc=$?
set -e
[ $rc -eq 2 ] || fail "corruption not reported ($rc)"
cp a.qcow2 leak.qcow2
printf '\x00\x01' | dd of=leak.qcow2 bs=1 seek=$((rb + 2 * 2000)) conv=notrunc status=none
set +e
"$TERN" img check leak.qcow2 >/dev/null 2>&1; rc=$?
set -e
[ $rc -eq 3 ] || fail "leak not reported ($rc)"
"$TERN" img check -r leaks leak.qcow2 >/dev/null
qemu-img check -q leak.qcow2 || fail "leak not repaired"
echo "test_img: all passed"
