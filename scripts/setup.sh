#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks for the full polc build and test:
# bpftool and clang/llvm tools (kernel + ELF tests), rust-src for the nightly used by
# runtime-ebpf, and bpf-linker. Idempotent: every step checks before it installs.
# Versions are the ones verified in ../shared/notes/ebpf-toolchain.md.
set -euo pipefail

need_apt=()
command -v bpftool >/dev/null 2>&1 || need_apt+=(bpftool)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v llvm-objdump >/dev/null 2>&1 || need_apt+=(llvm)
[ -x /usr/lib/llvm-22/bin/llvm-config ] || need_apt+=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# bpffs for pinning (loader tests).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "setup: could not mount bpffs (not root?)"
fi

# Nightly is only for runtime-ebpf; never `rustup update`.
if rustup toolchain list | grep -q '^nightly'; then
  rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain nightly
else
  echo "setup: no nightly toolchain; runtime-ebpf cannot be rebuilt (the committed object is used)"
fi

if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  echo "setup: cargo install bpf-linker 0.13.0 (llvm-22)"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22
fi
echo "setup: ok"
