//! Frontend: Kubernetes/Calico YAML (what `kubectl get -o yaml` and `calicoctl get -o yaml`
//! print) -> the typed, validated cluster model in [`model`].
//!
//! YAML is read with serde_yaml_ng, the maintained successor of the deprecated serde_yaml (same
//! API), because its errors keep the field path and line:column we put in every message.

pub mod limits;
mod load;
pub mod model;
mod raw;

pub use load::{load, load_str, NAMESPACE_NAME_LABEL, SERVICE_NAME_LABEL};
pub use model::*;
