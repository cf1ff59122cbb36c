//! Frontend: Kubernetes/Calico YAML -> typed cluster model.
