#!/usr/bin/env bash
# Installs what a fresh machine of this kind (Debian 12, root, kernel with BPF) lacks for
# polc's tests, and with --runtime also for rebuilding runtime-ebpf from source.
# Idempotent: every step checks before it installs. Versions: ../shared/notes/ebpf-toolchain.md
#
#   scripts/setup.sh            bpftool, iproute2, llvm-22 tools (llvm-objdump, llvm-strip), bpffs,
#                               network-config-analyzer (PyPI; the independent oracle test)
#   scripts/setup.sh --runtime  + rust-src for nightly and bpf-linker 0.13 (llvm-22), ~1-2 min
set -euo pipefail

runtime=false
[ "${1:-}" = "--runtime" ] && runtime=true

need_apt=()
command -v bpftool >/dev/null 2>&1 || [ -x /usr/sbin/bpftool ] || need_apt+=(bpftool)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
[ -x /usr/lib/llvm-22/bin/llvm-objdump ] || need_apt+=(llvm-22)
if $runtime && [ ! -x /usr/lib/llvm-22/bin/llvm-config ]; then
  need_apt+=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: not root; please install: ${need_apt[*]}" >&2
  else
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
fi

# bpffs for pinning (bpftool and loader tests).
if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "setup: could not mount bpffs at /sys/fs/bpf (not root?)"
fi

# The independent oracle (compiler/tests/oracle.rs): network-config-analyzer's `nca`.
if ! command -v nca >/dev/null 2>&1; then
  echo "setup: pip install network-config-analyzer==2.1.0"
  python3 -m pip install -q network-config-analyzer==2.1.0 >/dev/null \
    || echo "setup: could not install network-config-analyzer; the oracle test will SKIP" >&2
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if $runtime; then
  # Nightly is only for runtime-ebpf; never `rustup update`.
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "setup: no nightly toolchain; runtime-ebpf cannot be rebuilt" >&2
    exit 1
  fi
  rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain nightly
  if ! command -v bpf-linker >/dev/null 2>&1; then
    echo "setup: cargo install bpf-linker 0.13.0 (llvm-22)"
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
      cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22
  fi
fi
echo "setup: ok"
