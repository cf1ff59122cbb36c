#!/usr/bin/env bash
# Builds the eBPF tc runtime (runtime-ebpf/) with nightly + bpf-linker and copies the object,
# with DWARF stripped (BTF kept), to the committed path the loader embeds:
#   runtime-ebpf/prebuilt/polc-runtime.o
# Userspace builds never run this; they use the committed object. Re-run it after changing
# runtime-ebpf/ (or the ABI crate) and commit the result; scripts/check-runtime.sh verifies.
#
# Usage: scripts/build-runtime.sh [OUTPUT]   (default: runtime-ebpf/prebuilt/polc-runtime.o)
# Env:   LLVM_STRIP (default /usr/lib/llvm-22/bin/llvm-strip)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/runtime-ebpf"
out="${1:-$src/prebuilt/polc-runtime.o}"
strip="${LLVM_STRIP:-/usr/lib/llvm-22/bin/llvm-strip}"

command -v bpf-linker >/dev/null || { echo "build-runtime: bpf-linker not on PATH (see docs: cargo install bpf-linker --no-default-features --features llvm-22)" >&2; exit 1; }
[ -x "$strip" ] || { echo "build-runtime: $strip not found (apt-get install llvm-22)" >&2; exit 1; }

# The eBPF crate has its own target dir (runtime-ebpf/target, gitignored): never share the
# userspace one, whatever CARGO_TARGET_DIR the caller exported.
export CARGO_TARGET_DIR="$src/target"
(cd "$src" && cargo +nightly build --release --locked)

mkdir -p "$(dirname "$out")"
"$strip" -g -o "$out" "$CARGO_TARGET_DIR/bpfel-unknown-none/release/polc-runtime"
echo "build-runtime: wrote $out ($(stat -c %s "$out") bytes; $(rustc +nightly -V); $(bpf-linker --version))"
