//! polc's userspace dataplane: loads the runtime and generated programs, fills maps, attaches to tc.
//!
//! - [`sys`]: a thin, safe raw `bpf(2)` layer (maps, program load with verifier log, test run).
//! - [`runtime`]: the embedded tc runtime object, loaded with aya.
//! - [`bpffs`]: pins, objects by id, TCX links and hook queries, the pin-path lock.
//! - [`dataplane`]: attach / atomic swap / status / dump / detach of compiled policy.
//! - `netlink`: the rtnetlink calls aya lacks (clsact filter listing, qdisc delete).
//! - [`guard`]: the skip-or-fail gate for kernel tests (`POLC_REQUIRE_KERNEL=1`).

pub mod bpffs;
pub mod dataplane;
pub mod guard;
mod netlink;
pub mod runtime;
pub mod sys;

pub use guard::{kernel_test_guard, Skip, REQUIRE_KERNEL_ENV};
pub use runtime::{Hook, Runtime, RuntimeConfig, RuntimeError, RUNTIME_OBJECT};
