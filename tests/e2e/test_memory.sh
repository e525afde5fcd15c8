#!/usr/bin/env bash
# The guest sees the memory --memory asks for: MemTotal is what the kernel
# has left after its own image and tables, so it must lie between 3/4 of the
# request and the request itself (the ranges for 256 and 512 do not overlap).
. "$(dirname "$0")/lib.sh"
e2e_require_boot

for mib in 256 512; do
	check "--memory $mib: MemTotal in [$((mib * 3 / 4)), $mib] MiB"
	vm_run --memory "$mib" -- sh -c 'echo "MEMTOTAL_KB=$(sed -n "s/^MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo)"'
	expect_rc 0
	kb=$(vm_value MEMTOTAL_KB)
	case $kb in
	'' | *[!0-9]*) fail "no MemTotal from the guest" ;;
	esac
	[ "$kb" -le $((mib * 1024)) ] || fail "MemTotal ${kb} kB exceeds --memory $mib"
	[ "$kb" -ge $((mib * 1024 * 3 / 4)) ] || fail "MemTotal ${kb} kB is under 3/4 of --memory $mib"
	ok "MemTotal $kb kB"
done
