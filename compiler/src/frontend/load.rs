//! Reading inputs: paths -> files -> YAML documents -> typed objects -> a checked [`Cluster`].
//!
//! Each document is parsed three times from the same text: first only counted against the
//! node budget (limits.rs: alias bombs are refused before anything is built), then into an
//! untyped `Value` to learn its apiVersion/kind/name (and those of `List` items), then into the
//! typed shape for that kind, so that every error keeps the field path and line:column
//! serde_yaml_ng reports.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::limits::*;
use super::model::*;
use super::raw::*;
use crate::error::Error;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Loads every `-f` path (files, or directories searched recursively for `.yaml`, `.yml` and
/// `.json`, in sorted order; `-` is standard input) into one checked cluster.
pub fn load(paths: &[PathBuf]) -> Result<Cluster, Error> {
    // Read everything first: an input over the total limit is refused before any parsing.
    let mut texts = Vec::new();
    let mut walk_warnings = Vec::new();
    let mut total: u64 = 0;
    for path in paths {
        let stdin = path.as_os_str() == STDIN_ARG;
        let files = if stdin {
            vec![PathBuf::from(STDIN_NAME)]
        } else {
            input_files(path, &mut walk_warnings)?
        };
        for file in files {
            let bytes = if stdin { read_stdin()? } else { read_limited(&file)? };
            total += bytes.len() as u64;
            if total > MAX_TOTAL_BYTES {
                return Err(Error::input(format!(
                    "{}: the input files together are larger than {} MiB (limit)",
                    file.display(),
                    MAX_TOTAL_BYTES >> 20
                )));
            }
            let text = String::from_utf8(bytes).map_err(|e| {
                let valid = e.as_bytes().get(..e.utf8_error().valid_up_to()).unwrap_or_default();
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                Error::input(format!(
                    "{}: not UTF-8 text (invalid byte at line {line} column {column})",
                    file.display()
                ))
            })?;
            texts.push((file, text));
        }
    }
    let mut builder = Builder::default();
    builder.cluster.warnings = walk_warnings;
    for (file, text) in &texts {
        builder.add_file(file, text)?;
    }
    builder.finish()
}

/// The `-f` argument that means standard input, and the name messages give it.
const STDIN_ARG: &str = "-";
const STDIN_NAME: &str = "<stdin>";

/// Standard input is read once per process: reading it again would see an empty input, which
/// a reloading caller (the agent) must not mistake for "no policy".
static STDIN_READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads standard input, never more than [`MAX_FILE_BYTES`].
fn read_stdin() -> Result<Vec<u8>, Error> {
    let name = Path::new(STDIN_NAME);
    if STDIN_READ.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::input(format!(
            "{STDIN_NAME}: standard input was already read (give `-f -` once)"
        )));
    }
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(name, &e))?;
    check_file_size(name, bytes.len())?;
    Ok(bytes)
}

/// Reads a file, but never more than [`MAX_FILE_BYTES`] (also for `/dev/zero` or a pipe).
fn read_limited(file: &Path) -> Result<Vec<u8>, Error> {
    let handle = fs::File::open(file).map_err(|e| io_error(file, &e))?;
    let mut bytes = Vec::new();
    handle.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io_error(file, &e))?;
    check_file_size(file, bytes.len())?;
    Ok(bytes)
}

fn check_file_size(file: &Path, len: usize) -> Result<(), Error> {
    if len as u64 > MAX_FILE_BYTES {
        return Err(Error::input(format!(
            "{}: file is larger than {} MiB (limit)",
            file.display(),
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Loads one file's text as if it had been read from `name` (for tests and stdin).
pub fn load_str(name: &str, text: &str) -> Result<Cluster, Error> {
    check_file_size(Path::new(name), text.len())?;
    let mut builder = Builder::default();
    builder.add_file(Path::new(name), text)?;
    builder.finish()
}

fn io_error(path: &Path, err: &io::Error) -> Error {
    let msg = format!("{}: {err}", path.display());
    match err.kind() {
        io::ErrorKind::NotFound => Error::input(msg),
        _ => Error::other(msg),
    }
}

/// The files a `-f` path stands for; what a directory holds but polc cannot read is a
/// warning in `warnings`.
fn input_files(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<PathBuf>, Error> {
    let meta = fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let first_warning = warnings.len();
    collect_dir(path, &mut files, warnings)?;
    files.sort();
    warnings.get_mut(first_warning..).unwrap_or_default().sort();
    if files.is_empty() {
        return Err(Error::input(format!(
            "{}: no .yaml, .yml or .json files in this directory",
            path.display()
        )));
    }
    Ok(files)
}

fn collect_dir(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    let entries = fs::read_dir(dir).map_err(|e| io_error(dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, &e))?;
        // Hidden entries are skipped: a mounted ConfigMap holds its files a second time under
        // `..data` and `..2024_01_01_...` (the visible names are symlinks into them).
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| io_error(&path, &e))?;
        // Real directories are searched; symlinks are followed to files only (no loops).
        let target = file_type.is_symlink().then(|| fs::metadata(&path));
        let skipped = if file_type.is_dir() {
            collect_dir(&path, files, warnings)?;
            None
        } else if file_type.is_file() || matches!(&target, Some(Ok(t)) if t.is_file()) {
            let yaml = path.extension().and_then(|e| e.to_str());
            if yaml.is_some_and(|e| matches!(e, "yaml" | "yml" | "json")) {
                files.push(path.clone());
            }
            None
        } else {
            Some(match target {
                None => "not a regular file or directory".to_owned(),
                Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                    "a symlink to nothing (dangling)".to_owned()
                }
                Some(Err(e)) => format!("a symlink whose target cannot be read ({e})"),
                Some(Ok(t)) if t.is_dir() => "a symlink to a directory (not followed)".to_owned(),
                Some(Ok(_)) => "a symlink to something that is not a regular file".to_owned(),
            })
        };
        if let Some(why) = skipped {
            warnings.push(format!("{}: {why}: skipped", path.display()));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObjKind {
    Namespace,
    Pod,
    ServiceAccount,
    K8sPolicy,
    CalicoPolicy,
    GlobalPolicy,
    Tier,
    NetworkSet,
    GlobalNetworkSet,
    Service,
    EndpointSlice,
}

impl ObjKind {
    fn classify(api_version: &str, kind: &str) -> Option<ObjKind> {
        // crd.projectcalico.org/v1 is what `kubectl get` prints for Calico objects on clusters
        // without the Calico API server: the same spec as projectcalico.org/v3.
        let calico = matches!(api_version, "projectcalico.org/v3" | "crd.projectcalico.org/v1");
        Some(match (api_version, kind) {
            ("v1", "Namespace") => ObjKind::Namespace,
            ("v1", "Pod") => ObjKind::Pod,
            ("v1", "ServiceAccount") => ObjKind::ServiceAccount,
            ("networking.k8s.io/v1", "NetworkPolicy") => ObjKind::K8sPolicy,
            (_, "NetworkPolicy") if calico => ObjKind::CalicoPolicy,
            (_, "GlobalNetworkPolicy") if calico => ObjKind::GlobalPolicy,
            (_, "Tier") if calico => ObjKind::Tier,
            (_, "NetworkSet") if calico => ObjKind::NetworkSet,
            (_, "GlobalNetworkSet") if calico => ObjKind::GlobalNetworkSet,
            ("v1", "Service") => ObjKind::Service,
            ("discovery.k8s.io/v1", "EndpointSlice") => ObjKind::EndpointSlice,
            _ => return None,
        })
    }

    /// Whether an object polc does not read carries network policy (so skipping it deserves a
    /// warning, unlike a ConfigMap): Calico's staged policies, host endpoints and profiles,
    /// the Calico v1 API, pre-v1 Kubernetes NetworkPolicy, and any other kind named
    /// `...NetworkPolicy` (AdminNetworkPolicy, BaselineAdminNetworkPolicy, other CNIs').
    fn skipped_policy_kind(api_version: &str, kind: &str) -> bool {
        let calico = matches!(api_version, "projectcalico.org/v3" | "crd.projectcalico.org/v1");
        api_version == "projectcalico.org/v1"
            || (calico
                && matches!(
                    kind,
                    "StagedNetworkPolicy"
                        | "StagedGlobalNetworkPolicy"
                        | "StagedKubernetesNetworkPolicy"
                        | "HostEndpoint"
                        | "Profile"
                ))
            || kind.ends_with("NetworkPolicy")
    }

    fn namespaced(self) -> bool {
        matches!(
            self,
            ObjKind::Pod
                | ObjKind::ServiceAccount
                | ObjKind::K8sPolicy
                | ObjKind::CalicoPolicy
                | ObjKind::NetworkSet
                | ObjKind::Service
                | ObjKind::EndpointSlice
        )
    }
}

/// A typed object, before conversion to the model.
enum Object {
    Namespace(RawNamespace),
    Pod(Box<RawPod>),
    ServiceAccount(RawServiceAccount),
    K8sPolicy(Box<RawK8sPolicy>),
    CalicoPolicy(Box<RawCalicoPolicy>),
    Tier(RawTier),
    NetworkSet(RawNetworkSet),
    Service(Box<RawService>),
    EndpointSlice(Box<RawEndpointSlice>),
}

fn deserialize_object<'de, D: Deserializer<'de>>(kind: ObjKind, d: D) -> Result<Object, D::Error> {
    Ok(match kind {
        ObjKind::Namespace => Object::Namespace(RawNamespace::deserialize(d)?),
        ObjKind::Pod => Object::Pod(Box::new(RawPod::deserialize(d)?)),
        ObjKind::ServiceAccount => Object::ServiceAccount(RawServiceAccount::deserialize(d)?),
        ObjKind::K8sPolicy => Object::K8sPolicy(Box::new(RawK8sPolicy::deserialize(d)?)),
        ObjKind::CalicoPolicy | ObjKind::GlobalPolicy => {
            Object::CalicoPolicy(Box::new(RawCalicoPolicy::deserialize(d)?))
        }
        ObjKind::Tier => Object::Tier(RawTier::deserialize(d)?),
        ObjKind::NetworkSet | ObjKind::GlobalNetworkSet => {
            Object::NetworkSet(RawNetworkSet::deserialize(d)?)
        }
        ObjKind::Service => Object::Service(Box::new(RawService::deserialize(d)?)),
        ObjKind::EndpointSlice => {
            Object::EndpointSlice(Box::new(RawEndpointSlice::deserialize(d)?))
        }
    })
}

/// Deserializes one object of a known kind, or skips it.
struct ObjectSeed(Option<ObjKind>);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Option<Object>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            Some(kind) => deserialize_object(kind, d).map(Some),
            None => IgnoredAny::deserialize(d).map(|_| None),
        }
    }
}

/// Deserializes the `items` of a List document, item i as kind `kinds[i]`.
struct ListSeed<'a>(&'a [Option<ObjKind>]);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Option<Object>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Option<Object>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a List object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<Value>()? {
            if key.as_str() == Some("items") {
                items = map.next_value_seed(ItemsSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(items)
    }
}

struct ItemsSeed<'a>(&'a [Option<ObjKind>]);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<Object>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<Object>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let kind = self.0.get(out.len()).copied().flatten();
            match seq.next_element_seed(ObjectSeed(kind))? {
                Some(object) => out.push(object),
                None => return Ok(out),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Document headers (from the untyped pass)
// ---------------------------------------------------------------------------------------------

/// apiVersion/kind/namespace/name of an object, read leniently for messages and dispatch.
#[derive(Debug, Clone, Default)]
struct Header {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl Header {
    fn of(value: &Value) -> Header {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let meta = value.get("metadata");
        Header {
            api_version: text(value.get("apiVersion")),
            kind: text(value.get("kind")),
            namespace: meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(Into::into),
            name: text(meta.and_then(|m| m.get("name"))),
        }
    }

    /// `ns/name`, or `name` when there is no namespace (or the kind is cluster-scoped).
    fn display_name(&self, namespaced: bool) -> String {
        if self.name.is_empty() {
            return String::new();
        }
        match &self.namespace {
            Some(ns) if namespaced => format!("{ns}/{}", self.name),
            _ if namespaced => format!("default/{}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// Where an error is: file, document, List item, and the object when known.
struct Place<'a> {
    file: &'a Path,
    doc: usize,
    item: Option<usize>,
    object: Option<(String, String)>,
}

impl Place<'_> {
    fn error(&self, message: impl fmt::Display) -> Error {
        let mut out = format!("{}: document {}", self.file.display(), self.doc);
        if let Some(item) = self.item {
            out.push_str(&format!(" item {item}"));
        }
        match &self.object {
            Some((kind, name)) if name.is_empty() => out.push_str(&format!(" ({kind})")),
            Some((kind, name)) => out.push_str(&format!(" ({kind} {name})")),
            None => {}
        }
        Error::input(format!("{out}: {}", tidy_message(message.to_string())))
    }
}

/// Splits an error inside a List item, `items[N].spec...: msg`, into N and `spec...: msg`.
fn item_of_error(message: &str) -> Option<(usize, &str)> {
    let rest = message.strip_prefix("items[")?;
    let (index, rest) = rest.split_once(']')?;
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    Some((index.parse().ok()?, rest))
}

// ---------------------------------------------------------------------------------------------
// Building the cluster
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Builder {
    cluster: Cluster,
    /// (kind, namespace, name) -> first place it was defined.
    seen: HashMap<(ObjKind, Option<String>, String), Source>,
    /// Documents and List items read so far, against [`MAX_OBJECTS`].
    objects: usize,
    /// Skipped objects that carry policy: (kind, apiVersion) -> (count, where the first was).
    skipped_policy: BTreeMap<(String, String), (usize, String)>,
}

impl Builder {
    fn add_file(&mut self, file: &Path, text: &str) -> Result<(), Error> {
        // A byte order mark (some Windows editors write one) is not part of the YAML.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if let Some((doc, line, column)) = too_deep_flow(text) {
            let place = Place { file, doc, item: None, object: None };
            return Err(place.error(format!(
                "YAML nests deeper than {MAX_YAML_DEPTH} levels (limit) at line {line} column \
                 {column}"
            )));
        }
        // Three passes over each document: count its nodes (nothing built), read it untyped,
        // read it typed. The first two run on a second thread, a few documents ahead of the
        // third: peak memory stays a small multiple of a document.
        std::thread::scope(|scope| {
            let (send, untyped) = sync_channel(UNTYPED_AHEAD);
            scope.spawn(move || read_untyped(text, send));
            self.add_documents(file, text, untyped)
        })
    }

    /// The typed pass and the checks, over the untyped documents in `untyped`.
    fn add_documents(
        &mut self,
        file: &Path,
        text: &str,
        untyped: Receiver<Result<Value, serde_yaml_ng::Error>>,
    ) -> Result<(), Error> {
        let mut typed = serde_yaml_ng::Deserializer::from_str(text);
        for doc in 1.. {
            let Ok(value) = untyped.recv() else { break };
            let mut place = Place { file, doc, item: None, object: None };
            let value = value.map_err(|e| place.error(e))?;
            let Some(typed) = typed.next() else { break };
            let value = match value {
                Value::Null => continue, // empty document
                Value::Mapping(_) => value,
                _ => return Err(place.error("expected a Kubernetes object (a mapping)")),
            };
            for field in ["apiVersion", "kind"] {
                if value.get(field).is_some_and(|v| v.as_str().is_none()) {
                    return Err(place.error(format!("{field}: expected a string")));
                }
            }
            let header = Header::of(&value);
            if header.kind.is_empty() {
                return Err(place.error("missing field `kind`"));
            }
            if header.api_version.is_empty() {
                return Err(place.error("missing field `apiVersion`"));
            }

            let is_list = header.kind == "List" || header.kind.ends_with("List");
            // A List counts as its items.
            if !is_list {
                self.count_objects(1, &place)?;
            }
            if is_list {
                let items = match value.get("items") {
                    Some(Value::Sequence(items)) => items.as_slice(),
                    Some(Value::Null) | None => &[],
                    Some(_) => return Err(place.error("items: expected a list of objects")),
                };
                self.count_objects(items.len(), &place)?;
                let headers: Vec<Header> = items.iter().map(Header::of).collect();
                let kinds: Vec<Option<ObjKind>> = headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| self.kind_or_note(h, &Place { item: Some(i), ..place.clone() }))
                    .collect::<Result<_, _>>()?;
                let objects = ListSeed(&kinds).deserialize(typed).map_err(|e| {
                    let message = e.to_string();
                    let Some((i, message)) = item_of_error(&message) else {
                        return place.error(message);
                    };
                    let object = headers.get(i).zip(kinds.get(i).copied().flatten());
                    let object = object.map(|(h, k)| object_label(h, k));
                    Place { item: Some(i), object, ..place.clone() }.error(message)
                })?;
                for (i, (object, header)) in objects.into_iter().zip(&headers).enumerate() {
                    if let Some(object) = object {
                        self.add_object(object, header, Place { item: Some(i), ..place.clone() })?;
                    }
                }
            } else if let Some(kind) = self.kind_or_note(&header, &place)? {
                place.object = Some(object_label(&header, kind));
                let object = deserialize_object(kind, typed).map_err(|e| place.error(e))?;
                self.add_object(object, &header, place)?;
            }
        }
        Ok(())
    }

    fn count_objects(&mut self, n: usize, place: &Place) -> Result<(), Error> {
        self.objects += n;
        if self.objects > MAX_OBJECTS {
            return Err(
                place.error(format!("more than {MAX_OBJECTS} objects in the input (limit)"))
            );
        }
        Ok(())
    }

    /// The kind polc reads this object as, or `None` (with a note) for kinds it skips.
    fn kind_or_note(&mut self, header: &Header, place: &Place) -> Result<Option<ObjKind>, Error> {
        if header.kind.is_empty() || header.api_version.is_empty() {
            return Err(place.error("missing field `apiVersion` or `kind`"));
        }
        let kind = ObjKind::classify(&header.api_version, &header.kind);
        if kind.is_none() {
            let mut note = format!("{}: document {}", place.file.display(), place.doc);
            if let Some(item) = place.item {
                note.push_str(&format!(" item {item}"));
            }
            if ObjKind::skipped_policy_kind(&header.api_version, &header.kind) {
                let key = (header.kind.clone(), header.api_version.clone());
                self.skipped_policy.entry(key).or_insert((0, note.clone())).0 += 1;
            }
            note.push_str(&format!(
                ": skipped {} {} {} (not a kind polc reads)",
                header.api_version,
                header.kind,
                header.display_name(header.namespace.is_some())
            ));
            self.cluster.notes.push(note);
        }
        Ok(kind)
    }

    fn add_object(&mut self, object: Object, header: &Header, place: Place) -> Result<(), Error> {
        let kind = ObjKind::classify(&header.api_version, &header.kind);
        let Some(kind) = kind else { return Ok(()) };
        let place = Place { object: Some(object_label(header, kind)), ..place };
        if header.name.is_empty() {
            return Err(place.error("metadata.name: missing"));
        }
        let namespace =
            kind.namespaced().then(|| header.namespace.clone().unwrap_or("default".into()));
        let source = Source {
            file: place.file.to_owned(),
            doc: place.doc,
            item: place.item,
            kind: header.kind.clone(),
            name: header.display_name(kind.namespaced()),
        };
        let key = (kind, namespace.clone(), header.name.clone());
        if let Some(first) = self.seen.get(&key) {
            return Err(place.error(format!("duplicate object: already defined in {first}")));
        }
        self.seen.insert(key, source.clone());

        let name = header.name.clone();
        let ns = namespace.clone().unwrap_or_default();
        let c = &mut self.cluster;
        match object {
            Object::Namespace(raw) => c.namespaces.push(Namespace {
                source,
                name,
                labels: raw.metadata.labels.unwrap_or_default(),
                implicit: false,
            }),
            Object::ServiceAccount(raw) => c.service_accounts.push(ServiceAccount {
                source,
                namespace: ns,
                name,
                labels: raw.metadata.labels.unwrap_or_default(),
            }),
            Object::Pod(raw) => add_pod(c, *raw, source, ns, name),
            Object::K8sPolicy(raw) => {
                let spec = raw.spec;
                check_rules(&place, "spec.ingress", spec.ingress.as_ref())?;
                check_rules(&place, "spec.egress", spec.egress.as_ref())?;
                let policy_types = types(spec.policy_types, &place, "spec.policyTypes")?;
                c.k8s_policies.push(K8sNetworkPolicy {
                    source,
                    namespace: ns,
                    name,
                    pod_selector: spec.pod_selector.unwrap_or_default().into_model(),
                    policy_types,
                    ingress: (spec.ingress.unwrap_or_default().into_iter())
                        .map(|r| k8s_rule(r.from, r.ports))
                        .collect(),
                    egress: (spec.egress.unwrap_or_default().into_iter())
                        .map(|r| k8s_rule(r.to, r.ports))
                        .collect(),
                });
            }
            Object::CalicoPolicy(raw) => {
                let mut spec = raw.spec;
                check_rules(&place, "spec.ingress", spec.ingress.as_ref())?;
                check_rules(&place, "spec.egress", spec.egress.as_ref())?;
                let (selector, namespace_selector, service_account_selector) = spec.selectors();
                if kind == ObjKind::CalicoPolicy && namespace_selector.is_some() {
                    return Err(place.error(
                        "spec.namespaceSelector: only GlobalNetworkPolicy has it (a NetworkPolicy \
                         applies to its own namespace)",
                    ));
                }
                if let Some(why) = spec.host_endpoint_only() {
                    c.warnings
                        .push(format!("{source}: {why}, never to pods: the policy is skipped"));
                    return Ok(());
                }
                let ingress = calico_rules(c, &place, &source, spec.ingress.take(), "ingress")?;
                let egress = calico_rules(c, &place, &source, spec.egress.take(), "egress")?;
                let types = types(spec.types, &place, "spec.types")?;
                c.calico_policies.push(CalicoPolicy {
                    source,
                    namespace,
                    name,
                    tier: spec.tier.filter(|t| !t.is_empty()).unwrap_or("default".into()),
                    order: spec.order.map(|o| o.0),
                    selector,
                    namespace_selector,
                    service_account_selector,
                    types,
                    ingress,
                    egress,
                });
            }
            Object::Tier(raw) => c.tiers.push(Tier {
                source,
                name,
                order: raw.spec.order.map(|o| o.0),
                default_action: raw.spec.default_action.map_or(TierDefaultAction::Deny, |a| a.0),
            }),
            Object::NetworkSet(raw) => {
                if is_set(&raw.spec.allowed_egress_domains) {
                    // Rules selecting the set then match its nets only: less for an Allow
                    // rule, but also less for a Deny rule, so this is worth a warning.
                    c.warnings.push(format!(
                        "{source}: spec.allowedEgressDomains is set but polc cannot match \
                         domains: rules selecting this set match only its nets"
                    ));
                }
                c.network_sets.push(NetworkSet {
                    source,
                    namespace,
                    name,
                    labels: raw.metadata.labels.unwrap_or_default(),
                    nets: raw.spec.nets.unwrap_or_default().into_iter().map(|n| n.0).collect(),
                });
            }
            Object::Service(raw) => add_service(c, *raw, &place, source, ns, name)?,
            Object::EndpointSlice(raw) => add_endpoint_slice(c, *raw, &place, source, ns, name)?,
        }
        Ok(())
    }

    /// Cross-object checks and implicit namespaces.
    fn finish(mut self) -> Result<Cluster, Error> {
        let c = &mut self.cluster;

        for ((kind, api_version), (count, first)) in &self.skipped_policy {
            let objects = if *count == 1 { "object" } else { "objects" };
            c.warnings.push(format!(
                "skipped {count} {objects} of kind {kind} ({api_version}): polc does not enforce \
                 them (the first: {first})"
            ));
        }

        // Every non-default tier a policy names must exist (Calico refuses the policy otherwise).
        for policy in &c.calico_policies {
            if policy.tier != "default" && !c.tiers.iter().any(|t| t.name == policy.tier) {
                return Err(source_error(
                    &policy.source,
                    &format!(
                        "spec.tier: tier {:?} is not defined (no projectcalico.org/v3 Tier)",
                        policy.tier
                    ),
                ));
            }
        }

        // A pod IP identifies one endpoint.
        let mut owners: HashMap<IpAddr, &Pod> = HashMap::new();
        for pod in &c.pods {
            for ip in &pod.ips {
                if let Some(other) = owners.insert(*ip, pod) {
                    return Err(source_error(
                        &pod.source,
                        &format!(
                            "status.podIPs: IP {ip} is also the IP of pod {}/{} ({})",
                            other.namespace, other.name, other.source
                        ),
                    ));
                }
            }
        }

        // Namespaces: the automatic name label, and implicit ones for objects in undeclared ones.
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        for mut ns in c.namespaces.drain(..) {
            ns.labels.insert(NAMESPACE_NAME_LABEL.into(), ns.name.clone());
            namespaces.insert(ns.name.clone(), ns);
        }
        let users = (c.pods.iter().map(|p| (&p.namespace, &p.source)))
            .chain(c.service_accounts.iter().map(|s| (&s.namespace, &s.source)))
            .chain(c.k8s_policies.iter().map(|p| (&p.namespace, &p.source)))
            .chain(
                c.calico_policies.iter().filter_map(|p| Some((p.namespace.as_ref()?, &p.source))),
            )
            .chain(c.network_sets.iter().filter_map(|s| Some((s.namespace.as_ref()?, &s.source))));
        for (name, source) in users {
            if !namespaces.contains_key(name) {
                c.notes.push(format!(
                    "namespace {name} is not declared: created implicitly for {source}"
                ));
                let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.clone())]);
                let ns = Namespace {
                    source: source.clone(),
                    name: name.clone(),
                    labels,
                    implicit: true,
                };
                namespaces.insert(name.clone(), ns);
            }
        }
        c.namespaces = namespaces.into_values().collect();
        Ok(self.cluster)
    }
}

impl Clone for Place<'_> {
    fn clone(&self) -> Self {
        Place { file: self.file, doc: self.doc, item: self.item, object: self.object.clone() }
    }
}

/// Untyped documents read ahead of the typed pass (bounds the memory they hold).
const UNTYPED_AHEAD: usize = 4;

/// The count and untyped passes: each document's nodes counted against the budget (so alias
/// bombs are refused before anything is built), then the document read untyped. Sends the
/// results in document order; stops after the first error (on a syntax error the iterator
/// would repeat it forever) or when the receiver hangs up.
fn read_untyped(text: &str, send: SyncSender<Result<Value, serde_yaml_ng::Error>>) {
    let mut counted = serde_yaml_ng::Deserializer::from_str(text);
    let mut untyped = serde_yaml_ng::Deserializer::from_str(text);
    let nodes = Cell::new(0);
    loop {
        let Some(document) = counted.next() else { return };
        if let Err(e) = NodeBudget(&nodes).deserialize(document) {
            let _ = send.send(Err(e));
            return;
        }
        let Some(document) = untyped.next() else { return };
        let value = Value::deserialize(document);
        let failed = value.is_err();
        if send.send(value).is_err() || failed {
            return;
        }
    }
}

fn object_label(header: &Header, kind: ObjKind) -> (String, String) {
    (header.kind.clone(), header.display_name(kind.namespaced()))
}

fn add_pod(c: &mut Cluster, raw: RawPod, source: Source, namespace: String, name: String) {
    if raw.spec.host_network == Some(true) {
        c.notes.push(format!("{source}: hostNetwork pod is not a policy endpoint: skipped"));
        c.host_network_pods.push(format!("{namespace}/{name}"));
        return;
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = raw.status.phase.as_deref() {
        c.notes.push(format!("{source}: pod phase {phase}: not an endpoint any more: skipped"));
        return;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = raw.status.pod_ips.unwrap_or_default().into_iter().map(|p| p.ip.0);
    for ip in raw.status.pod_ip.and_then(|p| p.0).into_iter().chain(listed) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let ports = (raw.spec.containers.unwrap_or_default().into_iter())
        .flat_map(|c| c.ports.unwrap_or_default())
        .map(RawContainerPort::into_model)
        .collect();
    c.pods.push(Pod {
        source,
        namespace,
        name,
        labels: raw.metadata.labels.unwrap_or_default(),
        service_account: raw
            .spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or("default".into()),
        ports,
        ips,
    });
}

/// A Service with a cluster IP becomes a NAT frontend; others are noted and skipped.
fn add_service(
    c: &mut Cluster,
    raw: RawService,
    place: &Place,
    source: Source,
    namespace: String,
    name: String,
) -> Result<(), Error> {
    let spec = raw.spec;
    if spec.service_type.as_deref() == Some("ExternalName") {
        c.notes.push(format!("{source}: ExternalName service has no cluster IP: skipped"));
        return Ok(());
    }
    let mut texts: Vec<(String, String)> = Vec::new();
    match &spec.cluster_ips {
        Some(list) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                texts.push((format!("spec.clusterIPs[{i}]"), t.clone()));
            }
        }
        _ => texts.extend(spec.cluster_ip.clone().map(|t| ("spec.clusterIP".to_string(), t))),
    }
    if texts.iter().any(|(_, t)| t == "None") {
        c.notes.push(format!("{source}: headless service (clusterIP: None): skipped"));
        return Ok(());
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for (field, text) in texts.iter().filter(|(_, t)| !t.is_empty()) {
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| place.error(format!("{field}: invalid IP address {text:?}")))?;
        if cluster_ips.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(place.error(format!("{field}: a second cluster IP of the same family")));
        }
        cluster_ips.push(ip);
    }
    if cluster_ips.is_empty() {
        c.notes.push(format!("{source}: service has no cluster IP yet: skipped"));
        return Ok(());
    }
    let ports: Vec<ServicePort> =
        spec.ports.unwrap_or_default().into_iter().map(RawServicePort::into_model).collect();
    for (i, p) in ports.iter().enumerate() {
        let same = ports.iter().take(i).find(|q| q.port == p.port && q.protocol == p.protocol);
        if same.is_some() {
            return Err(place.error(format!(
                "spec.ports[{i}]: port {} {} is listed twice",
                p.port, p.protocol
            )));
        }
        if ports.len() > 1 && p.name.is_none() {
            return Err(place.error(format!(
                "spec.ports[{i}].name: required when a service has more than one port"
            )));
        }
        if ports.iter().take(i).any(|q| q.name.is_some() && q.name == p.name) {
            return Err(place.error(format!("spec.ports[{i}].name: listed twice")));
        }
    }
    // "" is what an unset string looks like in some exports: the API server's default.
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None" | "") => None,
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .and_then(|a| a.client_ip)
                .and_then(|ip| ip.timeout_seconds)
                .map_or(10_800, |t| t.0),
        ),
        Some(other) => {
            return Err(
                place.error(format!("spec.sessionAffinity: {other:?}: expected None or ClientIP"))
            )
        }
    };
    let external_traffic_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster" | "") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(place.error(format!(
                "spec.externalTrafficPolicy: {other:?}: expected Cluster or Local"
            )))
        }
    };
    c.services.push(Service {
        source,
        namespace,
        name,
        selector: spec.selector,
        cluster_ips,
        ports,
        affinity_timeout_s,
        external_traffic_local,
    });
    Ok(())
}

/// An EndpointSlice of IP addresses; FQDN slices are noted and skipped.
fn add_endpoint_slice(
    c: &mut Cluster,
    raw: RawEndpointSlice,
    place: &Place,
    source: Source,
    namespace: String,
    name: String,
) -> Result<(), Error> {
    let v4 = match raw.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        "FQDN" => {
            c.notes.push(format!("{source}: FQDN EndpointSlice: skipped"));
            return Ok(());
        }
        other => {
            return Err(place.error(format!("addressType: {other:?}: expected IPv4, IPv6 or FQDN")))
        }
    };
    let mut endpoints = Vec::new();
    for (i, e) in raw.endpoints.unwrap_or_default().into_iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, text) in e.addresses.iter().enumerate() {
            let ip: IpAddr = text.trim().parse().map_err(|_| {
                place.error(format!("endpoints[{i}].addresses[{j}]: invalid IP address {text:?}"))
            })?;
            if ip.is_ipv4() != v4 {
                return Err(place.error(format!(
                    "endpoints[{i}].addresses[{j}]: {ip} is not an {} address",
                    raw.address_type
                )));
            }
            addresses.push(ip);
        }
        let ready = e.conditions.ready.unwrap_or(true);
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: e.conditions.serving.unwrap_or(ready),
            terminating: e.conditions.terminating.unwrap_or(false),
        });
    }
    let service = raw
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .cloned();
    if service.is_none() {
        c.notes.push(format!(
            "{source}: EndpointSlice without a {SERVICE_NAME_LABEL} label backs no service"
        ));
    }
    c.endpoint_slices.push(EndpointSlice {
        source,
        namespace,
        name,
        service,
        endpoints,
        ports: raw.ports.unwrap_or_default().into_iter().map(RawSlicePort::into_model).collect(),
    });
    Ok(())
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Validated `policyTypes` / `types`: no duplicates.
fn types(
    raw: Option<Vec<PolicyTypeField>>,
    place: &Place,
    field: &str,
) -> Result<Option<Vec<PolicyType>>, Error> {
    let Some(raw) = raw else { return Ok(None) };
    let mut out = Vec::new();
    for t in raw {
        if out.contains(&t.0) {
            return Err(place.error(format!("{field}: {:?} is listed twice", t.0)));
        }
        out.push(t.0);
    }
    Ok(Some(out))
}

/// At most [`MAX_RULES_PER_POLICY`] rules per direction.
fn check_rules<T>(place: &Place, field: &str, rules: Option<&Vec<T>>) -> Result<(), Error> {
    let n = rules.map_or(0, Vec::len);
    if n > MAX_RULES_PER_POLICY {
        return Err(place.error(format!(
            "{field}: {n} rules, more than {MAX_RULES_PER_POLICY} in one policy (limit; split the \
             policy)"
        )));
    }
    Ok(())
}

/// A Calico policy's rules for one direction. A match polc cannot enforce (`http`,
/// `services`) is refused in an Allow or Pass rule, where ignoring it would let through more
/// than the policy says; in a Deny or Log rule ignoring it only makes the rule match more
/// (deny more, log more), so it is a warning.
fn calico_rules(
    c: &mut Cluster,
    place: &Place,
    source: &Source,
    list: Option<Vec<CalicoRuleField>>,
    dir: &str,
) -> Result<Vec<CalicoRule>, Error> {
    let list = list.unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        for u in &r.unenforced {
            let field = format!("spec.{dir}[{i}].{}", u.field());
            let what = u.what();
            match r.rule.action {
                Action::Allow => {
                    return Err(place.error(format!(
                        "{field}: polc cannot enforce {what}; an Allow rule without them would \
                         allow more than the policy says"
                    )))
                }
                Action::Pass => {
                    return Err(place.error(format!(
                        "{field}: polc cannot enforce {what}; a Pass rule without them would \
                         pass more to the next tier than the policy says"
                    )))
                }
                Action::Deny => c.warnings.push(format!(
                    "{source}: {field}: polc cannot enforce {what}: ignored, so this Deny rule \
                     denies all traffic its other fields match"
                )),
                Action::Log => c.warnings.push(format!(
                    "{source}: {field}: polc cannot enforce {what}: ignored, so this Log rule \
                     logs all traffic its other fields match"
                )),
            }
        }
        out.push(r.rule);
    }
    Ok(out)
}

/// An error about a whole object, found after loading (no line:column).
fn source_error(source: &Source, message: &str) -> Error {
    let mut out = format!("{}: document {}", source.file.display(), source.doc);
    if let Some(item) = source.item {
        out.push_str(&format!(" item {item}"));
    }
    Error::input(format!("{out} ({} {}): {message}", source.kind, source.name))
}
