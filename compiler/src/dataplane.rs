//! `polc attach|detach|status|dump`: turns a compile and `--endpoint NS/POD=IFNAME` into the
//! loader's neutral description ([`polc_loader::dataplane::Desired`]) and prints what the
//! loader reports.

use crate::codegen::map;
use crate::compile::{listing, Compiled, CompiledProgram, OutputFormat};
use crate::error::{print_stdout, Error, Result};
use crate::services::Frontend;
use polc_abi::{family as abi_family, NatBackend, NatFrontendKey};
use polc_ir::{Direction, Family};
use polc_loader::dataplane::{
    self as dp, AttachOptions, Desired, EndpointAttach, MapBinding, MapDef, PolicyDirection,
    PolicyProgram, ServiceDef, TcMode,
};
use polc_loader::RuntimeConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Flags of `polc attach`.
#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// `NAMESPACE/POD=IFNAME`: enforce the pod's policy on its host-side interface
    /// (in the current network namespace); repeatable.
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<String>,
    /// Where polc pins its maps, programs and links (on bpffs).
    #[arg(long = "pin-path", default_value = dp::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// tc attachment: TCX links where available (auto), TCX only, or legacy clsact filters.
    #[arg(long = "tc-mode", value_enum, default_value = "auto")]
    pub tc_mode: TcModeArg,
    #[command(flatten)]
    pub runtime: RuntimeFlags,
    /// `text` or `json`.
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Runtime settings of `polc attach` and `polc agent`, used when the runtime is first
/// loaded under the pin path (a runtime already pinned keeps its own).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct RuntimeFlags {
    /// Conntrack capacity, used when the runtime is first loaded.
    #[arg(long = "ct-entries", default_value_t = polc_abi::CT_DEFAULT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ct_entries: u32,
    /// Flow cache refresh in milliseconds, used when the runtime is first loaded: an
    /// established flow's packets skip the conntrack lookup on a CPU for at most this long
    /// (docs/runtime.md, "Flow cache"); 0 turns the cache off.
    #[arg(long = "flow-cache-ms", default_value_t = polc_abi::FLOW_CACHE_DEFAULT_NS / 1_000_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub flow_cache_ms: u64,
}

impl RuntimeFlags {
    /// The loader's runtime settings.
    pub fn config(self) -> RuntimeConfig {
        RuntimeConfig {
            ct_max_entries: self.ct_entries,
            flow_cache_ns: self.flow_cache_ms * 1_000_000,
            ..RuntimeConfig::default()
        }
    }
}

/// `--tc-mode` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcModeArg {
    Auto,
    Tcx,
    Legacy,
}

/// Flags of `polc detach` and `polc status`.
#[derive(clap::Args, Debug)]
pub struct PinArgs {
    /// Where polc pinned its objects.
    #[arg(long = "pin-path", default_value = dp::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// `text` or `json`.
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Flags of `polc dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// The pod's host-side interface.
    pub ifname: String,
    /// Which policy: `ingress` (traffic to the pod) or `egress` (from it); both if omitted.
    #[arg(long = "hook", value_enum)]
    pub hook: Option<HookArg>,
    /// Where polc pinned its objects.
    #[arg(long = "pin-path", default_value = dp::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// `text` or `json`.
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Flags of `polc agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable. Watched.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// `NAMESPACE/POD=IFNAME`; repeatable.
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<String>,
    /// Where polc pins its maps, programs and links (on bpffs).
    #[arg(long = "pin-path", default_value = dp::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// How often to look at the files, in milliseconds.
    #[arg(long = "interval-ms", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
    /// A change is applied once the files stayed unchanged this long (milliseconds).
    #[arg(long = "debounce-ms", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub debounce_ms: u64,
    #[command(flatten)]
    pub runtime: RuntimeFlags,
}

/// `--hook` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookArg {
    Ingress,
    Egress,
}

fn loader_err(e: dp::DataplaneError) -> Error {
    match e {
        dp::DataplaneError::Invalid(m) => Error::input(m),
        dp::DataplaneError::Failed(m) => Error::other(m),
        e => Error::other(e.to_string()),
    }
}

/// Parses `NAMESPACE/POD=IFNAME`.
pub fn parse_endpoint(s: &str) -> Result<(String, String)> {
    let bad = || Error::input(format!("--endpoint `{s}`: expected NAMESPACE/POD=IFNAME"));
    let (pod, ifname) = s.split_once('=').ok_or_else(bad)?;
    let (ns, name) = pod.split_once('/').ok_or_else(bad)?;
    if ns.is_empty() || name.is_empty() || name.contains('/') || ifname.is_empty() {
        return Err(bad());
    }
    if ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
        return Err(Error::input(format!("--endpoint `{s}`: `{ifname}` is not an interface name")));
    }
    Ok((pod.to_string(), ifname.to_string()))
}

fn family_tag(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn label(p: &CompiledProgram) -> String {
    let mut eps = p.endpoints.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if p.endpoints.len() > 3 {
        eps.push_str(&format!(" and {} more", p.endpoints.len() - 3));
    }
    format!("{} IPv{} {eps}", p.direction.as_str(), p.family.number())
}

/// The compiled programs of `pod`: `[ingress v4, egress v4, ingress v6, egress v6]`, `None`
/// for a family the pod has no address of; an error if it has none at all.
fn programs_of(compiled: &Compiled, pod: &str) -> Result<[Option<usize>; 4]> {
    let mut out = [None; 4];
    for (i, p) in compiled.programs.iter().enumerate() {
        if !p.endpoints.iter().any(|e| e == pod) {
            continue;
        }
        let at = match (p.family, p.direction) {
            (Family::V4, Direction::Ingress) => 0,
            (Family::V4, Direction::Egress) => 1,
            (Family::V6, Direction::Ingress) => 2,
            (Family::V6, Direction::Egress) => 3,
        };
        if let Some(slot) = out.get_mut(at) {
            if slot.is_some() {
                return Err(Error::other(format!("{pod} has two programs for one family")));
            }
            *slot = Some(i);
        }
    }
    if out.iter().all(Option::is_none) {
        return Err(Error::input(format!(
            "--endpoint {pod}: no such pod with an IP address in the cluster files"
        )));
    }
    Ok(out)
}

/// The pod's own addresses (the runtime's anti-spoofing check), as the IR knows them.
fn addresses_of(compiled: &Compiled, pod: &str) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    for e in compiled.ir.endpoints.iter().filter(|e| e.endpoint == pod) {
        for a in &e.addresses {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

/// The loader's description of `compiled` enforced on `endpoints` (pod, ifname).
pub fn desired(compiled: &Compiled, endpoints: &[(String, String)]) -> Result<Desired> {
    let mut d = Desired {
        rules: (0..compiled.rules.len() as u32)
            .map(|id| compiled.rules.key(id).map(|k| k.describe()).unwrap_or_default())
            .collect(),
        ..Desired::default()
    };
    // Compiled program index -> Desired program index.
    let mut used: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pairs = Vec::new();
    for (pod, ifname) in endpoints {
        let progs = programs_of(compiled, pod)?;
        for i in progs.iter().flatten() {
            let next = used.len();
            used.entry(*i).or_insert(next);
        }
        pairs.push((pod, ifname, progs));
    }
    // Shared maps: one IP-set trie per family in use, one named-port hash, one counter array.
    let mut shared: BTreeMap<(u32, u8), usize> = BTreeMap::new();
    let mut order: Vec<(usize, usize)> = used.iter().map(|(&c, &k)| (k, c)).collect();
    order.sort();
    for &(_, ci) in &order {
        let p = compiled.programs.get(ci).ok_or_else(|| Error::other("program index"))?;
        let mut maps = Vec::new();
        for spec in compiled.program_map_specs(p) {
            let binding = match spec.handle {
                map::STATE => MapBinding::RuntimeState,
                map::JUMP => MapBinding::RuntimeJump,
                map::PARTS => MapBinding::OwnParts,
                h @ (map::IPSETS | map::NAMED_PORTS | map::COUNTERS) => {
                    let fam = if h == map::IPSETS { p.family.number() } else { 0 };
                    let idx = match shared.get(&(h, fam)) {
                        Some(&i) => i,
                        None => {
                            let entries = match h {
                                map::IPSETS => {
                                    compiled.ipset_entries.get(&fam).cloned().unwrap_or_default()
                                }
                                map::NAMED_PORTS => compiled.named_port_entries.clone(),
                                _ => Vec::new(),
                            };
                            let name = if h == map::IPSETS {
                                format!("ipsets_{}", family_tag(p.family))
                            } else if h == map::NAMED_PORTS {
                                "named_ports".to_string()
                            } else {
                                "rule_hits".to_string()
                            };
                            d.maps.push(MapDef {
                                name,
                                kind: spec.kind,
                                key_size: spec.key_size,
                                value_size: spec.value_size,
                                max_entries: spec.max_entries,
                                entries,
                            });
                            shared.insert((h, fam), d.maps.len() - 1);
                            d.maps.len() - 1
                        }
                    };
                    MapBinding::Shared(idx)
                }
                h => match p.local_maps.iter().find(|m| m.spec.handle == h) {
                    // The program's own maps: one per program. The -O2 tables refer to each
                    // other (class ids, trie nodes, rows), so they are double-buffered
                    // (MapBinding::Own); -O1's peer bitmaps are keyed by prefix, each entry
                    // right on its own.
                    Some(local) => {
                        d.maps.push(MapDef {
                            name: format!(
                                "{}_{}",
                                local.spec.name.trim_start_matches("polc_"),
                                d.programs.len()
                            ),
                            kind: local.spec.kind,
                            key_size: local.spec.key_size,
                            value_size: local.spec.value_size,
                            max_entries: local.spec.max_entries,
                            entries: local.entries.clone(),
                        });
                        if p.opt_level == 2 {
                            MapBinding::Own(d.maps.len() - 1)
                        } else {
                            MapBinding::Shared(d.maps.len() - 1)
                        }
                    }
                    None => {
                        return Err(Error::other(format!("program uses unknown map handle {h}")))
                    }
                },
            };
            maps.push((spec.handle, binding));
        }
        let counters = shared.get(&(map::COUNTERS, 0)).copied();
        d.programs.push(PolicyProgram {
            label: label(p),
            parts: p.parts.iter().map(|part| part.bytes.clone()).collect(),
            maps,
            counters,
            listing: listing(compiled, p),
            insns: p.insns(),
        });
    }
    for (pod, ifname, progs) in pairs {
        // Compiled program index -> Desired program index, per family and direction.
        let mut idx = [None; 4];
        for (to, from) in idx.iter_mut().zip(progs) {
            if let Some(c) = from {
                *to = Some(*used.get(&c).ok_or_else(|| Error::other("internal: program index"))?);
            }
        }
        let [ingress, egress, ingress_v6, egress_v6] = idx;
        d.endpoints.push(EndpointAttach {
            name: pod.clone(),
            ifname: ifname.clone(),
            ingress,
            egress,
            ingress_v6,
            egress_v6,
            addresses: addresses_of(compiled, pod),
        });
    }
    Ok(d)
}

/// The runtime's NAT entries for `frontends` (both families), and a note for each frontend
/// it does not translate (a protocol other than TCP, UDP and SCTP: see docs/runtime.md).
pub fn service_defs(frontends: &[Frontend]) -> (Vec<ServiceDef>, Vec<String>) {
    let mut defs = Vec::new();
    let mut notes = Vec::new();
    for fe in frontends {
        if !fe.translated() {
            notes.push(format!("{fe}: only TCP, UDP and SCTP services are translated"));
            continue;
        }
        let (addr, fam) = nat_addr(fe.ip);
        // Backends of the frontend's family only (the frontend code already picks them so).
        let backends = (fe.backends.iter())
            .filter(|b| b.ip.is_ipv4() == fe.ip.is_ipv4())
            .map(|b| NatBackend { addr: nat_addr(b.ip).0, port: b.port, _pad: 0 })
            .collect();
        defs.push(ServiceDef {
            label: fe.to_string(),
            frontend: NatFrontendKey { addr, port: fe.port, protocol: fe.protocol.0, family: fam },
            affinity_timeout_s: fe.affinity_timeout_s,
            backends,
        });
    }
    (defs, notes)
}

/// An address in the NAT maps' 16-byte form (IPv4 in bytes 0..4) and its family.
fn nat_addr(ip: std::net::IpAddr) -> ([u8; 16], u8) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, abi_family::IPV4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), abi_family::IPV6),
    }
}

/// Reads `files` once and describes the attach: programs for `endpoints` and the service
/// frontends, plus notes on services that are not translated.
pub fn desired_from_files(
    files: &[PathBuf],
    endpoints: &[(String, String)],
) -> Result<(Desired, Vec<String>)> {
    let cluster = crate::frontend::load_reporting(files)?;
    let frontends = crate::services::frontends(&cluster)?;
    let compiled = crate::compile::compile_ir(crate::lower::lower(&cluster))?;
    let mut d = desired(&compiled, endpoints)?;
    let (services, notes) = service_defs(&frontends);
    d.services = services;
    Ok((d, notes))
}

/// `polc attach`.
pub fn run_attach(args: &AttachArgs) -> Result<()> {
    let endpoints = args.endpoints.iter().map(|s| parse_endpoint(s)).collect::<Result<Vec<_>>>()?;
    let (d, notes) = desired_from_files(&args.files, &endpoints)?;
    for n in &notes {
        eprintln!("polc: note: {n}");
    }
    let opts = AttachOptions {
        pin_path: args.pin_path.clone(),
        tc_mode: match args.tc_mode {
            TcModeArg::Auto => TcMode::Auto,
            TcModeArg::Tcx => TcMode::Tcx,
            TcModeArg::Legacy => TcMode::Legacy,
        },
        runtime: args.runtime.config(),
    };
    let report = dp::attach(&d, &opts).map_err(loader_err)?;
    match args.output {
        OutputFormat::Json => print_stdout(&format!("{}\n", to_json(&report)?)),
        OutputFormat::Text => {
            let mut out = format!(
                "generation {}: {} programs loaded, {} endpoints in {} ms{}\n",
                report.generation,
                report.programs_loaded,
                report.endpoints.len(),
                report.elapsed_us / 1000,
                if report.runtime_loaded { " (runtime loaded)" } else { "" }
            );
            for e in &report.endpoints {
                let mut slots = Vec::new();
                for (fam, ing, eg) in
                    [(4, e.ingress_slot, e.egress_slot), (6, e.ingress_slot_v6, e.egress_slot_v6)]
                {
                    if let (Some(i), Some(o)) = (ing, eg) {
                        slots.push(format!("IPv{fam} ingress slot {i}, egress slot {o}"));
                    }
                }
                out.push_str(&format!(
                    "  {} on {} (ifindex {}): {}\n",
                    e.name,
                    e.ifname,
                    e.ifindex,
                    slots.join("; ")
                ));
            }
            for i in &report.interfaces_detached {
                out.push_str(&format!("  detached {i}\n"));
            }
            if report.services > 0 {
                out.push_str(&format!(
                    "  {} service frontends ({} installed or changed)\n",
                    report.services, report.services_changed
                ));
            }
            print_stdout(&out)
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::other(format!("encoding JSON: {e}")))
}

/// `polc detach`.
pub fn run_detach(args: &PinArgs) -> Result<()> {
    // Detaching nothing succeeds (cleanup scripts and traps run it unconditionally).
    let report = match dp::detach(&args.pin_path) {
        Err(dp::DataplaneError::NotAttached(path)) => {
            if args.output == OutputFormat::Text {
                return print_stdout(&format!("nothing attached under {path}\n"));
            }
            dp::DetachReport::default()
        }
        other => other.map_err(loader_err)?,
    };
    match args.output {
        OutputFormat::Json => print_stdout(&format!("{}\n", to_json(&report)?)),
        OutputFormat::Text => print_stdout(&format!(
            "detached {} tc hooks, cleared {} policy slots, removed {} pins\n",
            report.hooks.len(),
            report.slots,
            report.pins
        )),
    }
}

/// `polc status`.
pub fn run_status(args: &PinArgs) -> Result<()> {
    // Nothing attached is a state, not an error: exit 0, and JSON of the same shape.
    let (st, attached) = match dp::status(&args.pin_path) {
        Err(dp::DataplaneError::NotAttached(path)) => {
            if args.output == OutputFormat::Text {
                return print_stdout(&format!("nothing attached under {path}\n"));
            }
            let empty = dp::Status {
                pin_path: path,
                generation: 0,
                runtime: Vec::new(),
                endpoints: Vec::new(),
                conntrack: dp::ConntrackStatus { entries: 0, max_entries: 0 },
                drops: Default::default(),
                services: Vec::new(),
            };
            (empty, false)
        }
        other => (other.map_err(loader_err)?, true),
    };
    match args.output {
        OutputFormat::Json => {
            let mut value = serde_json::to_value(&st)
                .map_err(|e| Error::other(format!("cannot encode the status: {e}")))?;
            if let Some(object) = value.as_object_mut() {
                object.insert("attached".into(), attached.into());
                if !attached {
                    // No conntrack map to report on.
                    object.insert("conntrack".into(), serde_json::Value::Null);
                }
            }
            print_stdout(&format!("{}\n", to_json(&value)?))
        }
        OutputFormat::Text => print_stdout(&status_text(&st)),
    }
}

fn status_text(st: &dp::Status) -> String {
    let mut out = format!("pin path {} (generation {})\n", st.pin_path, st.generation);
    for p in &st.runtime {
        out.push_str(&format!(
            "runtime {} id {}: {} insns, {} bytes jited\n",
            p.name, p.id, p.xlated_insns, p.jited_bytes
        ));
    }
    for e in &st.endpoints {
        let hooks: Vec<String> =
            e.tc.iter()
                .map(|h| {
                    let state = match h.attached {
                        Some(true) => "",
                        Some(false) => " NOT ATTACHED",
                        None => "",
                    };
                    format!("{} {:?}{state}", h.hook.as_str(), h.kind).to_lowercase()
                })
                .collect();
        out.push_str(&format!(
            "endpoint {} on {} (ifindex {}, id {}), tc: {}\n",
            e.name,
            e.ifname,
            e.ifindex,
            e.endpoint_id,
            hooks.join(", ")
        ));
        let policies = [
            ("IPv4 ingress", &e.ingress),
            ("IPv4 egress", &e.egress),
            ("IPv6 ingress", &e.ingress_v6),
            ("IPv6 egress", &e.egress_v6),
        ];
        for (dir, p) in policies {
            let Some(p) = p else { continue };
            let kernel = p.kernel.as_ref().map_or("slot EMPTY".to_string(), |k| {
                format!(
                    "prog id {}, {} insns xlated, {} bytes jited",
                    k.id, k.xlated_insns, k.jited_bytes
                )
            });
            out.push_str(&format!(
                "  {dir}: slot {}, {} insns in {} part(s), {kernel} [{}]\n",
                p.slot, p.insns, p.parts, p.label
            ));
        }
    }
    for svc in &st.services {
        out.push_str(&format!(
            "{}: {} backend(s), NAT service id {}\n",
            svc.name, svc.backends, svc.service_id
        ));
    }
    out.push_str(&format!(
        "conntrack: {} of {} entries\ndrops:",
        st.conntrack.entries, st.conntrack.max_entries
    ));
    for (reason, n) in &st.drops {
        out.push_str(&format!(" {reason}={n}"));
    }
    out.push('\n');
    out
}

/// `polc dump`.
pub fn run_dump(args: &DumpArgs) -> Result<()> {
    let dirs = match args.hook {
        Some(HookArg::Ingress) => vec![PolicyDirection::Ingress],
        Some(HookArg::Egress) => vec![PolicyDirection::Egress],
        None => vec![PolicyDirection::Ingress, PolicyDirection::Egress],
    };
    let dumps = dirs
        .into_iter()
        .map(|d| dp::dump(Path::new(&args.pin_path), &args.ifname, d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(loader_err)?;
    match args.output {
        OutputFormat::Json => print_stdout(&format!("{}\n", to_json(&dumps)?)),
        OutputFormat::Text => {
            let mut out = String::new();
            for d in &dumps {
                out.push_str(&format!(
                    "; {} policy of {} (slot {}); hits are first packets decided, summed over \
                     CPUs and over every endpoint sharing the rule\n",
                    d.direction, d.endpoint, d.slot
                ));
                for r in &d.rules {
                    out.push_str(&format!(
                        ";   rule id {}: {} hits  {}\n",
                        r.id, r.hits, r.description
                    ));
                }
                out.push_str(&d.listing);
                out.push('\n');
            }
            print_stdout(&out)
        }
    }
}

/// Path, size and modification time of every file under `paths` (recursive, sorted): a
/// change in any of them means the cluster files changed.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    fn walk(p: &Path, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        walk(&e.path(), out);
                    }
                }
            }
            Ok(m) => out.push((p.to_path_buf(), m.len(), m.modified().ok())),
            Err(_) => out.push((p.to_path_buf(), u64::MAX, None)),
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out);
    }
    out.sort();
    out
}

/// `polc agent`: attaches, then re-attaches whenever the files change (debounced) and the
/// resulting description differs from the applied one. A failed reconcile (bad YAML, a
/// verifier rejection, an interface that does not exist yet) is reported and leaves the
/// previous policy attached; it is retried every interval until it succeeds or the files
/// change again. Runs until killed; the attached policy stays after it exits.
pub fn run_agent(args: &AgentArgs) -> Result<()> {
    let endpoints = args.endpoints.iter().map(|s| parse_endpoint(s)).collect::<Result<Vec<_>>>()?;
    let opts = AttachOptions {
        pin_path: args.pin_path.clone(),
        runtime: args.runtime.config(),
        ..AttachOptions::default()
    };
    let interval = std::time::Duration::from_millis(args.interval_ms);
    let debounce = std::time::Duration::from_millis(args.debounce_ms);
    let mut applied: Option<Desired> = None;
    let mut seen = fingerprint(&args.files);
    let mut dirty = true;
    loop {
        if dirty {
            let outcome =
                desired_from_files(&args.files, &endpoints).map(|(d, _notes)| d).and_then(|d| {
                    if applied.as_ref() == Some(&d) {
                        return Ok(None);
                    }
                    let r = dp::attach(&d, &opts).map_err(loader_err)?;
                    applied = Some(d);
                    Ok(Some(r))
                });
            // Retry a failed reconcile on the next tick (e.g. an interface not there yet).
            let failed = outcome.is_err();
            match outcome {
                Ok(Some(r)) => eprintln!(
                    "polc agent: generation {} attached: {} programs, {} endpoints in {} ms",
                    r.generation,
                    r.programs_loaded,
                    r.endpoints.len(),
                    r.elapsed_us / 1000
                ),
                Ok(None) => eprintln!("polc agent: files changed, policy unchanged"),
                Err(e) => eprintln!("polc agent: not applied (previous policy stays): {e}"),
            }
            dirty = failed;
        }
        std::thread::sleep(interval);
        let now = fingerprint(&args.files);
        if now != seen {
            // Debounce: wait until the files stop changing.
            let mut last = now;
            loop {
                std::thread::sleep(debounce);
                let again = fingerprint(&args.files);
                if again == last {
                    break;
                }
                last = again;
            }
            seen = last;
            dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `polc attach`'s and `polc agent`'s flags, parsed the way the binary parses them.
    #[derive(clap::Parser)]
    struct Attach {
        #[command(flatten)]
        args: AttachArgs,
    }
    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        args: AgentArgs,
    }

    #[test]
    fn attach_and_agent_flags_set_the_runtime_config() {
        let base = ["polc", "-f", "x.yaml", "--endpoint", "a/b=v0"];
        let agent = |extra: &[&str]| {
            Agent::try_parse_from(base.iter().chain(extra)).map(|a| a.args.runtime.config())
        };
        let set = agent(&["--flow-cache-ms", "0", "--ct-entries", "4096"]).unwrap();
        assert_eq!((set.flow_cache_ns, set.ct_max_entries), (0, 4096));
        assert_eq!(agent(&[]).unwrap().flow_cache_ns, polc_abi::FLOW_CACHE_DEFAULT_NS);
        let parse = |extra: &[&str]| {
            Attach::try_parse_from(base.iter().chain(extra)).map(|a| a.args.runtime.config())
        };
        let default = parse(&[]).unwrap();
        assert_eq!(default.flow_cache_ns, polc_abi::FLOW_CACHE_DEFAULT_NS);
        assert_eq!(default.ct_max_entries, polc_abi::CT_DEFAULT_ENTRIES);
        let set = parse(&["--flow-cache-ms", "0", "--ct-entries", "4096"]).unwrap();
        assert_eq!((set.flow_cache_ns, set.ct_max_entries), (0, 4096));
        assert_eq!(parse(&["--flow-cache-ms", "250"]).unwrap().flow_cache_ns, 250_000_000);
        assert!(parse(&["--flow-cache-ms", "-1"]).is_err());
        assert!(parse(&["--flow-cache-ms", "3600001"]).is_err());
    }

    #[test]
    fn endpoint_flags_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_endpoint("app/web=veth1").unwrap(),
            ("app/web".to_string(), "veth1".to_string())
        );
        for bad in ["app/web", "web=veth1", "/web=v", "app/=v", "app/web=", "a/b/c=v"] {
            let e = parse_endpoint(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.message.contains("NAMESPACE/POD=IFNAME"), "{bad}: {e}");
        }
        let e = parse_endpoint("a/b=sixteen-chars-xx").unwrap_err();
        assert!(e.message.contains("not an interface name"), "{e}");
    }

    fn demo() -> Compiled {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/cases");
        let file = PathBuf::from(dir).join("k8s-allow-from-pod-selector.yaml");
        crate::compile::compile_files(&[file]).unwrap()
    }

    #[test]
    fn the_description_binds_every_handle_and_shares_programs() {
        let c = demo();
        // app/web is dual-stack (tested below); app/db and other/client are IPv4 only.
        let eps = vec![
            ("app/db".to_string(), "veth0".to_string()),
            ("other/client".to_string(), "veth1".to_string()),
        ];
        let d = desired(&c, &eps).unwrap();
        assert_eq!(d.endpoints.len(), 2);
        // No program embeds its endpoint's address (the runtime checks it), so pods with
        // the same policy share one: neither has an egress policy.
        assert_eq!(d.endpoints[0].egress, d.endpoints[1].egress);
        assert_ne!(d.endpoints[0].ingress, d.endpoints[1].ingress);
        assert_eq!(d.programs.len(), 3);
        for p in &d.programs {
            let handles: Vec<u32> = p.maps.iter().map(|(h, _)| *h).collect();
            for h in [map::STATE, map::JUMP, map::IPSETS, map::NAMED_PORTS, map::COUNTERS] {
                assert!(handles.contains(&h), "{} lacks handle {h}", p.label);
            }
            assert!(p.counters.is_some());
            assert!(p.listing.contains("rule id"), "{}", p.label);
        }
        let names: Vec<&str> = d.maps.iter().map(|m| m.name.as_str()).collect();
        // Shared maps once; each -O2 program with address classes has its own class maps
        // (IPv4: the class trie and the class values).
        let used: Vec<&crate::compile::CompiledProgram> = (c.programs.iter())
            .filter(|p| d.programs.iter().any(|dp| dp.label == label(p)))
            .collect();
        let own: usize = used.iter().map(|p| p.local_maps.len()).sum();
        assert!(own >= 2, "no -O2 program with class maps");
        assert_eq!(names[..3], ["ipsets_v4", "named_ports", "rule_hits"]);
        assert_eq!(names.len(), 3 + own);
        let class_maps = ["classtrie_", "classvals_"];
        assert!(
            names[3..].iter().all(|n| class_maps.iter().any(|m| n.starts_with(m))),
            "{names:?}"
        );
        assert_eq!(d.maps[0].entries.len(), c.ipset_entries.get(&4).map_or(0, Vec::len));
        assert_eq!(d.rules.len(), c.rules.len());
    }

    #[test]
    fn dual_stack_pods_get_a_program_pair_per_family() {
        let c = demo();
        let eps = [("app/web".to_string(), "v0".to_string()), ("app/db".into(), "v1".into())];
        let d = desired(&c, &eps).unwrap();
        let (web, db) = (&d.endpoints[0], &d.endpoints[1]);
        let all = [web.ingress, web.egress, web.ingress_v6, web.egress_v6];
        assert!(all.iter().all(Option::is_some), "{web:?}");
        assert_ne!(web.ingress, web.ingress_v6, "one program per family");
        assert!(d.programs[web.ingress_v6.unwrap()].label.contains("IPv6"));
        assert!(d.programs[web.ingress.unwrap()].label.contains("IPv4"));
        // app/db is IPv4-only: its IPv6 traffic has no program (the runtime drops it).
        assert!(db.ingress.is_some() && db.egress.is_some());
        assert_eq!((db.ingress_v6, db.egress_v6), (None, None));
        let names: Vec<&str> = d.maps.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"ipsets_v6") && names.contains(&"ipsets_v4"), "{names:?}");
    }

    #[test]
    fn unknown_pods_are_input_errors() {
        let c = demo();
        let e = desired(&c, &[("nope/nope".into(), "v".into())]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message.contains("nope/nope"), "{e}");
    }
}
