#!/usr/bin/env bash
# Seed corpus for volume_fuzz: small images packed by tern itself.
# usage: volume_seeds.sh TERN CORPUS_DIR
set -euo pipefail
tern=$1 out=$2
mkdir -p "$out"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/a/sub/deeper" "$d/empty"
printf 'hello' >"$d/a/x.txt"
head -c 5000 /dev/zero | tr '\0' 'z' >"$d/a/sub/y.bin"
: >"$d/a/sub/deeper/z"
"$tern" volume pack "$d/a" "$out/tree.img"
"$tern" volume pack "$d/empty" "$out/empty.img"
