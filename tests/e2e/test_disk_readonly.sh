#!/usr/bin/env bash
# --disk PATH,readonly: the guest sees a read-only disk, its writes fail,
# and the host file is unchanged.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

disk=$E2E_TMP/ro.img
head -c $((4 << 20)) /dev/urandom >"$disk"
want=$(sha256sum <"$disk" | cut -d' ' -f1)

check "the guest reads a readonly disk and sees it marked read-only"
vm_run --disk "$disk,readonly" -- sh -c 'echo "RO=$(cat /sys/block/vda/ro)"; echo "SHA=$(sha256sum </dev/vda | cut -d" " -f1)"'
expect_rc 0
[ "$(vm_value RO)" = 1 ] || fail "/sys/block/vda/ro is '$(vm_value RO)', expected 1"
[ "$(vm_value SHA)" = "$want" ] || fail "guest read sha256 '$(vm_value SHA)', host file has $want"
ok "read-only, contents match"

check "a guest write to the readonly disk fails and leaves the host file as it was"
vm_run --disk "$disk,readonly" -- sh -c '
	head -c 65536 /dev/zero | dd of=/dev/vda bs=65536 conv=notrunc,fsync 2>/dev/null
	echo "DD=$?"
	# Bypass the block layer read-only flag as far as a guest can.
	blockdev --setrw /dev/vda 2>/dev/null
	head -c 65536 /dev/zero | dd of=/dev/vda bs=65536 conv=notrunc,fsync oflag=direct 2>/dev/null
	echo "DD2=$?"
	sync'
expect_rc 0
case $(vm_value DD) in '' | 0) fail "guest write to a readonly disk succeeded (dd status '$(vm_value DD)')" ;; esac
got=$(sha256sum <"$disk" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "the readonly host file changed (sha256 $got, was $want)"
ok "write refused (dd status $(vm_value DD), forced retry status $(vm_value DD2)); host file unchanged"
