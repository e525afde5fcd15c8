#!/usr/bin/env bash
# Which backend a snapshot resumes on (tern restore --accel): a snapshot of
# the default guest booted on the emulator with --cpu-model portable carries
# the backend-neutral record (section type 6) with the portable flag and
# without the CPU features this host's KVM lacks; --accel emu resumes it; --accel kvm is refused on a host
# whose KVM cannot run a guest kernel (PVM, no VMX/SVM) and otherwise either
# resumes or is refused naming the CPU features this KVM lacks; an unknown
# --accel is a usage error; a damaged neutral record (CRC fixed up, so only
# the record's own checks can catch it) is refused and nothing runs.
. "$(dirname "$0")/lib.sh"
e2e_require_boot
[ "$E2E_VMM" = qemu ] && skip "tern-only: snapshot and restore"
command -v python3 >/dev/null || skip "python3 is needed to read and damage the state file"

state=$E2E_TMP/x.state
guest='echo SNAP-NOW; i=0; while [ $i -lt 3 ]; do i=$((i + 1)); echo "TICK=$i"; sleep 0.2; done; exit 5'

check "tern snapshot --accel emu --cpu-model portable saves a backend-neutral record"
# shellcheck disable=SC2086
timeout -k 5 "$E2E_TIMEOUT" "$TERN" snapshot ${TERN_E2E_ARGS:-} --accel emu --cpu-model portable \
	--state "$state" --at-output SNAP-NOW -- sh -c "$guest" </dev/null >"$VM_OUT" 2>"$VM_ERR"
VM_RC=$?
expect_rc 0
# Sections: u32 type, u32 index, u64 length, payload padded to 8 bytes; the CRC trailer is 16 bytes.
sections() {
	python3 - "$1" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
off = 64
while off < len(b) - 16:
    t, i, n = struct.unpack_from("<IIQ", b, off)
    print(t, i, n, off + 16)
    off += 16 + ((n + 7) & ~7)
PY
}
sections "$state" >"$E2E_TMP/sections"
grep -q '^6 0 ' "$E2E_TMP/sections" || fail "no neutral record (type 6) in the state file"
flags=$(python3 -c 'import struct, sys; print(struct.unpack_from("<I", open(sys.argv[1], "rb").read(), int(sys.argv[2]) + 4)[0])' \
	"$state" "$(awk '$1 == 6 { print $4 }' "$E2E_TMP/sections")")
[ $((flags & 1)) = 1 ] || fail "the neutral record does not say portable (flags $flags)"
ok "neutral record of $(awk '$1 == 6 { print $3 }' "$E2E_TMP/sections") bytes"

restore() { # expected rc, then tern restore arguments
	local want=$1
	shift
	timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore "$@" </dev/null >"$VM_OUT" 2>"$VM_ERR"
	VM_RC=$?
	expect_rc "$want"
}

check "tern restore --accel emu resumes it"
restore 5 --accel emu "$state"
[ "$(vm_value TICK | tail -n 1)" = 3 ] || grep -q 'TICK=3' "$VM_OUT" ||
	fail "the restored guest did not finish counting"
ok "resumed on the emulator"

check "tern restore --accel kvm: refused where this KVM cannot run the guest"
timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore --accel kvm "$state" </dev/null >"$VM_OUT" \
	2>"$VM_ERR"
VM_RC=$?
if ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -w /dev/kvm ]; then
	expect_rc 2
	grep -q "cannot run a guest kernel (no VMX/SVM); nothing was started" "$VM_ERR" ||
		fail "unexpected refusal: $(cat "$VM_ERR")"
	ok "$(tail -n 1 "$VM_ERR")"
elif [ "$VM_RC" = 2 ]; then
	grep -q "cannot offer the CPU the guest was given: CPUID" "$VM_ERR" ||
		fail "refused without naming the CPU features: $(cat "$VM_ERR")"
	ok "refused: $(tail -n 1 "$VM_ERR")"
else
	expect_rc 5
	ok "resumed on KVM"
fi

check "tern restore --accel with an unknown backend is a usage error"
restore 2 --accel xen "$state"
grep -q "choose kvm, emu or auto" "$VM_ERR" || fail "message: $(cat "$VM_ERR")"
ok "refused"

check "a damaged neutral record is refused before anything runs"
cp "$state" "$E2E_TMP/bad.state"
ln -sf "$E2E_TMP/x.mem" "$E2E_TMP/bad.mem"
python3 - "$E2E_TMP/bad.state" "$(awk '$1 == 6 { print $4 }' "$E2E_TMP/sections")" <<'PY'
import struct, sys, zlib
path, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(path, "rb").read())
struct.pack_into("<I", b, off + 12, 0)  # the LAPIC timer tick: 0 ns is out of range
struct.pack_into("<I", b, len(b) - 16, zlib.crc32(bytes(b[:-16])))
open(path, "wb").write(b)
PY
restore 2 "$E2E_TMP/bad.state"
grep -q "malformed backend-neutral state record; nothing was started" "$VM_ERR" ||
	fail "message: $(cat "$VM_ERR")"
grep -q TICK "$VM_OUT" && fail "the guest ran"
ok "refused: $(tail -n 1 "$VM_ERR")"
exit 0
