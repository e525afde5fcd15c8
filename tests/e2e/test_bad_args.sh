#!/usr/bin/env bash
# Bad arguments to 'tern run' give one line of error on stderr, a non-zero
# exit status and no boot, quickly.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = tern ] || skip "checks tern's own argument handling"
# No boot needed: each error must name the value at fault, which shows the
# refusal is about that value and not tern refusing everything.
e2e_require_tern

unreadable=$E2E_TMP/unreadable-dir
mkdir -p "$unreadable"
good_disk=$E2E_TMP/good.img
truncate -s 1M "$good_disk"

# bad_run WHAT MUST_NAME ARGS...: MUST_NAME, when not empty, is a string the
# error line has to contain so the user can tell which argument was wrong.
bad_run() {
	local what=$1 must=$2 out=$E2E_TMP/bad.out err=$E2E_TMP/bad.err rc lines
	shift 2
	check "$what: tern run $* -> one-line error, non-zero exit"
	timeout -k 2 20 "$TERN" run "$@" </dev/null >"$out" 2>"$err"
	rc=$?
	case $rc in 124 | 137) fail "$what: tern did not give up within 20 s" ;; esac
	[ "$rc" -ne 0 ] || fail "$what: exit status 0"
	lines=$(grep -c . "$err")
	[ "$lines" -eq 1 ] || { cat "$err"; fail "$what: $lines lines on stderr, expected 1"; }
	! grep -q 'tern-init: ready' "$out" || fail "$what: the guest booted anyway"
	if [ -n "$must" ]; then
		grep -qF -- "$must" "$err" || fail "$what: the error does not name '$must': $(cat "$err")"
	fi
	ok "exit $rc: $(cat "$err")"
}

bad_run "missing kernel" /nonexistent/vmlinuz --kernel /nonexistent/vmlinuz -- true
bad_run "missing initrd" /nonexistent/initrd --initrd /nonexistent/initrd -- true
bad_run "missing disk" /nonexistent/disk.img --disk /nonexistent/disk.img -- true
bad_run "disk is a directory" "$unreadable" --disk "$unreadable" -- true
bad_run "unknown disk flag" "$good_disk,bogus" --disk "$good_disk,bogus" -- true
bad_run "absurd memory size" "" --memory 99999999999 -- true
bad_run "zero memory" "" --memory 0 -- true
bad_run "memory not a number" "" --memory lots -- true
bad_run "zero cpus" "" --cpus 0 -- true
bad_run "absurd cpu count" "" --cpus 100000 -- true
bad_run "unknown accelerator" "" --accel warp -- true
bad_run "unknown option" --frobnicate --frobnicate -- true
bad_run "option missing its value" "" --memory
