#!/usr/bin/env bash
# Rebuilds testdata/bpf/sample.o (a clang-built object) and the llvm-objdump listing the
# disassembler test compares against. Needs clang-22 and llvm-22 (scripts/setup.sh installs llvm-22).
set -euo pipefail
cd "$(dirname "$0")/../testdata/bpf"
clang-22 -O2 -g0 -target bpf -mcpu=v4 -c sample.c -o sample.o
/usr/lib/llvm-22/bin/llvm-objdump -d --no-show-raw-insn sample.o > sample.objdump
