#!/usr/bin/env bash
# Seed corpus for the qcow2 fuzzer: small images of each kind qemu-img makes.
set -euo pipefail
out=$1
mkdir -p "$out"
command -v qemu-img >/dev/null || { echo "qemu-img missing: fuzzing without seeds"; exit 0; }
cd "$out"
qemu-img create -q -f qcow2 -o cluster_size=512 plain.qcow2 1M
qemu-io -c 'write -P 0x5a 1000 3000' -c 'write -z 8k 2k' plain.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2.qcow2 64k
qemu-io -c 'write -P 1 0 1k' v2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 rc1.qcow2 256k
qemu-io -c 'write -P 2 512 4k' rc1.qcow2 >/dev/null
head -c 8192 /dev/zero | tr '\0' 'x' >text.raw
qemu-img convert -q -c -O qcow2 -o cluster_size=4k text.raw comp.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 -b plain.qcow2 -F qcow2 overlay.qcow2
qemu-io -c 'write -P 3 100 100' overlay.qcow2 >/dev/null
rm -f text.raw
