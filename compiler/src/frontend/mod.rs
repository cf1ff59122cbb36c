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

/// [`load`] for the command line: also prints each warning (a field polc accepts but does
/// not enforce, an object it skips) as one `polc: warning: ...` line on stderr. Library
/// callers read [`Cluster::warnings`] instead.
pub fn load_reporting(paths: &[std::path::PathBuf]) -> Result<Cluster, crate::error::Error> {
    let cluster = load(paths)?;
    for warning in &cluster.warnings {
        eprintln!("polc: warning: {warning}");
    }
    Ok(cluster)
}
