#!/usr/bin/env bash
# Checks that the committed runtime object (runtime-ebpf/prebuilt/polc-runtime.o) is what the
# current runtime-ebpf/ sources build to: copies the sources to a temporary directory, builds
# there with scripts/build-runtime.sh and compares byte for byte. The build is reproducible
# across directories thanks to `-Z remap-cwd-prefix=.` (runtime-ebpf/.cargo/config.toml).
# Needs nightly + rust-src + bpf-linker (llvm-22). Exit 0 if fresh, 1 if stale or on error.
#
# Usage: scripts/check-runtime.sh [OBJECT]   (default: runtime-ebpf/prebuilt/polc-runtime.o)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
committed="${1:-$root/runtime-ebpf/prebuilt/polc-runtime.o}"
[ -f "$committed" ] || { echo "check-runtime: $committed is missing; run scripts/build-runtime.sh" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/scripts"
cp "$root/scripts/build-runtime.sh" "$tmp/scripts/"
# Sources only: no target/ and no prebuilt/ (the copy must not see the committed object).
# The root Cargo.toml comes along because the ABI crate inherits package fields from it.
tar -C "$root" --exclude=runtime-ebpf/target --exclude=runtime-ebpf/prebuilt -cf - \
  Cargo.toml runtime-ebpf \
  | tar -C "$tmp" -xf -

"$tmp/scripts/build-runtime.sh" "$tmp/polc-runtime.o" >&2
if cmp "$committed" "$tmp/polc-runtime.o"; then
  echo "check-runtime: $committed is up to date"
else
  echo "check-runtime: $committed is STALE: run scripts/build-runtime.sh and commit the object" >&2
  exit 1
fi
