#!/usr/bin/env bash
# Runs every test: unit programs (ASan+UBSan), KVM backend programs, end-to-end scripts.
# A test passes with exit 0, is skipped with exit 77 (it prints why), fails otherwise.
# Closes with the line "N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.."
only=${TERN_TEST_ONLY:-}
pass=0 fail=0 skip=0 failed=()
run_one() {
	local name=$1; shift
	local log; log=$(mktemp)
	local t0=$SECONDS
	"$@" >"$log" 2>&1
	local rc=$?
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $name ($((SECONDS - t0))s)";;
	77) skip=$((skip + 1)); echo "SKIP $name: $(tail -n 1 "$log")";;
	*) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc)"; tail -n 40 "$log" | sed 's/^/    /';;
	esac
	rm -f "$log"
}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ -z "$only" ] || [ "$only" = unit ]; then
	for t in build-asan/tests/unit/test_*; do [ -x "$t" ] && run_one "unit/${t##*/}" "$t"; done
fi
if [ -z "$only" ] || [ "$only" = kvm ]; then
	for t in build-asan/tests/kvm/test_*; do [ -x "$t" ] && run_one "kvm/${t##*/}" "$t"; done
fi
if [ -z "$only" ] || [ "$only" = e2e ]; then
	for t in tests/e2e/test_*.sh; do [ -f "$t" ] && run_one "e2e/${t##*/}" bash "$t"; done
fi
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
