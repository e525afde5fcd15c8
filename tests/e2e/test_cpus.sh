#!/usr/bin/env bash
# The guest sees as many CPUs as --cpus asks for.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

for n in 1 2; do
	check "--cpus $n: nproc and /proc/cpuinfo in the guest say $n"
	vm_run --cpus "$n" -- sh -c 'echo "NPROC=$(nproc)"; echo "CPUINFO=$(grep -c ^processor /proc/cpuinfo)"'
	expect_rc 0
	[ "$(vm_value NPROC)" = "$n" ] || fail "--cpus $n: guest nproc is '$(vm_value NPROC)'"
	[ "$(vm_value CPUINFO)" = "$n" ] || fail "--cpus $n: /proc/cpuinfo lists '$(vm_value CPUINFO)' processors"
	ok "$n online"
done
