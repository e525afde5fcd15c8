#!/usr/bin/env bash
# The guest command's exit status is tern's exit status, and its argv
# arrives intact.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

check "'tern run -- true' exits 0 and the guest printed the init marker"
vm_run -- true
expect_rc 0
grep -q 'tern-init: ready$' "$VM_OUT" || fail "no 'tern-init: ready' line on the console"
ok "status 0, marker seen"

check "'tern run -- false' exits 1"
vm_run -- false
expect_rc 1
ok "status 1"

check "'tern run -- sh -c \"exit 7\"' exits 7"
vm_run -- sh -c 'exit 7'
expect_rc 7
ok "status 7"

check "a command that does not exist exits 127"
vm_run -- /no/such/command
expect_rc 127
ok "status 127"

check "arguments with spaces, quotes and empty strings survive"
vm_run -- sh -c 'i=0; for a in "$@"; do i=$((i + 1)); echo "ARG$i=<$a>"; done; echo "ARGC=$#"' \
	sh 'two  spaces' '' "quote\"s and 'apostrophes'" '$HOME;*' ''
expect_rc 0
[ "$(vm_value ARGC)" = 5 ] || fail "guest saw $(vm_value ARGC) arguments, expected 5"
[ "$(vm_value ARG1)" = '<two  spaces>' ] || fail "argument 1 arrived as $(vm_value ARG1)"
[ "$(vm_value ARG2)" = '<>' ] || fail "argument 2 (empty) arrived as $(vm_value ARG2)"
[ "$(vm_value ARG3)" = "<quote\"s and 'apostrophes'>" ] || fail "argument 3 arrived as $(vm_value ARG3)"
[ "$(vm_value ARG4)" = '<$HOME;*>' ] || fail "argument 4 arrived as $(vm_value ARG4)"
[ "$(vm_value ARG5)" = '<>' ] || fail "argument 5 (trailing empty) arrived as $(vm_value ARG5)"
ok "5 arguments, byte for byte"
