//! The ABI shared by the eBPF runtime (runtime-ebpf) and userspace (compiler, loader):
//! map layouts, the per-CPU scratch state, prog-array slots and verdict codes.
#![no_std]
