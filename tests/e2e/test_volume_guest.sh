#!/usr/bin/env bash
# The single volume image in the guest: tern volume pack writes a tree as
# one disk (/dev/vda); guest/volume-extract.sh, handed in on a second disk,
# extracts it with the guest's busybox; the files' checksums match.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

src=$E2E_TMP/src
mkdir -p "$src/etc/conf.d" "$src/empty"
printf 'hello from the host\n' >"$src/etc/motd"
head -c 200000 /dev/urandom >"$src/etc/conf.d/blob"
: >"$src/etc/conf.d/zero"
"$TERN" volume pack "$src" "$E2E_TMP/vol.img" || fail "tern volume pack"
want=$(cd "$src" && find . -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
script=$E2E_TMP/script.img
cp "$E2E_ROOT/guest/volume-extract.sh" "$script"
len=$(stat -c %s "$script")
truncate -s 64K "$script"

check "the guest extracts the volume and sees the same files"
vm_run --disk "$E2E_TMP/vol.img,readonly" --disk "$script,readonly" -- sh -c "
	head -c $len /dev/vdb >/tmp/volume-extract.sh
	sh /tmp/volume-extract.sh /dev/vda /tmp/out || exit 3
	cd /tmp/out && echo \"SUM=\$(find . -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)\"
	[ -d /tmp/out/empty ] && echo EMPTY=yes"
expect_rc 0
[ "$(vm_value SUM)" = "$want" ] || fail "guest files sum to '$(vm_value SUM)', host has $want"
[ "$(vm_value EMPTY)" = yes ] || fail "empty directory missing"
ok "all files match (sha256 of sums $want)"
