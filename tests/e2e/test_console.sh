#!/usr/bin/env bash
# Without a command, the guest runs an interactive shell on the console:
# what is typed on tern's standard input reaches it, its output comes back,
# and its exit status becomes tern's.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

check "typed input reaches the guest shell and 'exit 3' ends tern with status 3"
fifo=$E2E_TMP/stdin
raw=$E2E_TMP/console.raw
mkfifo "$fifo"
if [ "$E2E_VMM" = qemu ]; then
	export -f qemu_run e2e_b64_argv
	export E2E_KERNEL E2E_INITRD E2E_TMP
	timeout -k 5 "$E2E_TIMEOUT" bash -c 'qemu_run' <"$fifo" >"$raw" 2>"$VM_ERR" &
else
	# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
	timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} <"$fifo" >"$raw" 2>"$VM_ERR" &
fi
vmm=$!
exec 3>"$fifo"

# Type only once the shell prompts: the UART drops what arrives before the
# guest opens the port. (ash may follow its prompt with a cursor query.)
deadline=$((SECONDS + E2E_TIMEOUT))
until grep -q 'tern-init: no command given' "$raw" 2>/dev/null &&
	grep -q '^/ # ' "$raw"; do
	if [ $SECONDS -ge $deadline ] || ! kill -0 "$vmm" 2>/dev/null; then
		tr -d '\r' <"$raw" >"$VM_OUT"
		fail "no shell prompt on the console"
	fi
	sleep 0.2
done
printf 'echo "E2E_IN=$((6 * 7))"; exit 3\n' >&3
wait "$vmm"
VM_RC=$?
exec 3>&-
tr -d '\r' <"$raw" >"$VM_OUT"
case $VM_RC in 124 | 137) fail "guest did not finish within ${E2E_TIMEOUT}s" ;; esac
[ "$(vm_value E2E_IN)" = 42 ] || fail "the shell's answer (E2E_IN=42) is missing"
expect_rc 3
ok "shell answered 42, tern exited 3"
