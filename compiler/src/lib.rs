//! polc: compiles Kubernetes and Calico network policy into eBPF bytecode.
//!
//! The pipeline is `frontend` (YAML -> cluster model) -> `resolve`/`lower` (-> IR in
//! `polc_ir`) -> codegen -> `asm` (bytecode, listings) -> `elf` (objects) and `vm` (rbpf).

pub mod asm;
pub mod bench;
pub mod cfg;
pub mod codegen;
pub mod compile;
pub mod dataplane;
pub mod elf;
pub mod engine;
pub mod error;
pub mod explain;
pub mod frontend;
pub mod lower;
pub mod opt;
pub mod resolve;
pub mod selector;
pub mod services;
pub mod synth;
pub mod vm;
