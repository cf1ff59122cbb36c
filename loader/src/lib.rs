//! polc's userspace dataplane: loads the runtime and generated programs, fills maps, attaches to tc.
//!
//! - [`sys`]: a thin, safe raw `bpf(2)` layer (maps, program load with verifier log, test run).
//! - [`runtime`]: the embedded tc runtime object, loaded with aya.
//! - [`guard`]: the skip-or-fail gate for kernel tests (`POLC_REQUIRE_KERNEL=1`).

pub mod guard;
pub mod runtime;
pub mod sys;

pub use guard::{kernel_test_guard, Skip, REQUIRE_KERNEL_ENV};
pub use runtime::{Hook, Runtime, RuntimeConfig, RuntimeError, RUNTIME_OBJECT};
