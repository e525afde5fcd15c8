#!/usr/bin/env bash
# An NBD export as the guest's disk: tern nbd-serve exports a host file,
# tern run --disk nbd://... boots with it as /dev/vda; the guest reads the
# host's bytes and its synced writes reach the host file through NBD.
. "$(dirname "$0")/lib.sh"
e2e_require_boot
[ "$E2E_VMM" = tern ] || skip "tern-only: NBD disks"

disk=$E2E_TMP/disk.img
head -c $((8 << 20)) /dev/urandom >"$disk"
want=$(sha256sum <"$disk" | cut -d' ' -f1)
"$TERN" nbd-serve "$disk" --port 0 --export vda >"$E2E_TMP/serve.out" 2>"$E2E_TMP/serve.err" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$E2E_TMP"' EXIT
for _ in $(seq 100); do
	url=$(sed -n 's/^listening on //p' "$E2E_TMP/serve.out")
	[ -n "$url" ] && break
	sleep 0.05
done
[ -n "$url" ] || fail "tern nbd-serve did not start: $(cat "$E2E_TMP/serve.err")"

check "the guest reads the exported 8 MiB with the same sha256"
vm_run --disk "$url" -- sh -c 'echo "SIZE=$(cat /sys/block/vda/size)"; echo "SHA=$(sha256sum </dev/vda | cut -d" " -f1)"'
expect_rc 0
[ "$(vm_value SIZE)" = $((8 << 20 >> 9)) ] || fail "guest /dev/vda has $(vm_value SIZE) sectors"
[ "$(vm_value SHA)" = "$want" ] || fail "guest read sha256 '$(vm_value SHA)', export has $want"
ok "sha256 $want over $url"

check "1 MiB the guest writes and syncs reaches the exported file"
vm_run --disk "$url" -- sh -c '
	head -c 1048576 /dev/urandom >/tmp/blob
	dd if=/tmp/blob of=/dev/vda bs=65536 seek=32 conv=notrunc,fsync 2>/dev/null || exit 3
	sync
	echo "WROTE=$(sha256sum </tmp/blob | cut -d" " -f1)"'
expect_rc 0
wrote=$(vm_value WROTE)
got=$(dd if="$disk" bs=65536 skip=32 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
[ -n "$wrote" ] && [ "$got" = "$wrote" ] || fail "host file has sha256 $got at 2 MiB, guest wrote $wrote"
ok "guest write visible in the host file"

check "an unreachable server is a clear error at start, not a hang"
kill $server
wait $server 2>/dev/null || true
if "$TERN" run --disk "$url" -- true >/dev/null 2>"$E2E_TMP/dead.err"; then
	fail "tern run started with an unreachable NBD server"
fi
grep -q 'cannot connect' "$E2E_TMP/dead.err" || fail "no clear error: $(tail -n 3 "$E2E_TMP/dead.err")"
ok "refused: $(grep -m1 'cannot connect' "$E2E_TMP/dead.err")"
