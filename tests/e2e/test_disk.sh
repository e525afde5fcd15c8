#!/usr/bin/env bash
# A host file attached with --disk is the guest's /dev/vda: what the host
# wrote reads back in the guest, and what the guest writes and syncs is in
# the host file afterwards.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

disk=$E2E_TMP/disk.img
head -c $((8 << 20)) /dev/urandom >"$disk"
want=$(sha256sum <"$disk" | cut -d' ' -f1)
cp "$disk" "$E2E_TMP/orig.img"

check "the guest reads the 8 MiB host file back with the same sha256"
vm_run --disk "$disk" -- sh -c 'echo "SIZE=$(cat /sys/block/vda/size)"; echo "SHA=$(sha256sum </dev/vda | cut -d" " -f1)"'
expect_rc 0
[ "$(vm_value SIZE)" = $((8 << 20 >> 9)) ] || fail "guest /dev/vda has $(vm_value SIZE) sectors, expected $((8 << 20 >> 9))"
[ "$(vm_value SHA)" = "$want" ] || fail "guest read sha256 '$(vm_value SHA)', host file has $want"
ok "sha256 $want"

check "1 MiB the guest writes at offset 3 MiB and syncs is in the host file"
vm_run --disk "$disk" -- sh -c '
	head -c 1048576 /dev/urandom >/tmp/blob
	dd if=/tmp/blob of=/dev/vda bs=65536 seek=48 conv=notrunc,fsync 2>/dev/null || exit 3
	sync
	echo "WROTE=$(sha256sum </tmp/blob | cut -d" " -f1)"'
expect_rc 0
wrote=$(vm_value WROTE)
[ -n "$wrote" ] || fail "guest reported no checksum"
got=$(dd if="$disk" bs=65536 skip=48 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$wrote" ] || fail "host file at 3 MiB has sha256 $got, guest wrote $wrote"
[ "$(stat -c %s "$disk")" = $((8 << 20)) ] || fail "the disk file changed size"
# Everything outside the written MiB must be as the host left it.
cmp -s -n $((3 << 20)) "$disk" "$E2E_TMP/orig.img" || fail "the guest's write changed the disk before 3 MiB"
cmp -s -i $((4 << 20)) "$disk" "$E2E_TMP/orig.img" || fail "the guest's write changed the disk after 4 MiB"
ok "host sees the guest's 1 MiB (sha256 $got), the rest untouched"

check "a second disk is /dev/vdb and keeps its own contents"
disk2=$E2E_TMP/disk2.img
printf 'second-disk-%s\n' "$$" >"$disk2"
truncate -s 1M "$disk2"
vm_run --disk "$disk" --disk "$disk2" -- sh -c 'echo "VDB=$(head -n 1 /dev/vdb)"'
expect_rc 0
[ "$(vm_value VDB)" = "second-disk-$$" ] || fail "guest /dev/vdb starts with '$(vm_value VDB)'"
ok "/dev/vdb is the second file"
