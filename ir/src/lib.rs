//! The policy IR, the packet/flow model and the reference evaluator (the executable spec).
//!
//! - [`net`]: prefixes, prefix difference, port ranges, protocol numbers.
//! - [`types`]: the IR (endpoint x direction -> tiers -> policies -> rules; IP and port sets).
//! - [`flow`]: the flow a decision is made for.
//! - [`eval`]: the reference evaluator.
//! - [`text`]: the deterministic text form (Display impls).

pub mod eval;
pub mod flow;
pub mod net;
pub mod text;
pub mod types;

pub use eval::{evaluate, Decision, RuleHit, TraceStep, Verdict};
pub use flow::Flow;
pub use net::{proto, Family, PortRange, Prefix};
pub use types::*;
