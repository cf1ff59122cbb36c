//! The node dataplane: attaches compiled policy to pods' host-side interfaces, swaps it
//! atomically on change, reports status and per-rule hits, and detaches.
//!
//! Everything that must outlive the `polc` process is pinned under the pin path:
//!
//! ```text
//! PIN/POLC_JUMP POLC_STATE POLC_EP POLC_CT POLC_DROPS   the runtime's maps
//! PIN/POLC_NAT_FE POLC_NAT_BE POLC_NAT_AFF             service NAT maps
//! PIN/polc_from_ep polc_to_ep polc_epilogue            the runtime's classifiers
//! PIN/link_<ifindex>_from, link_<ifindex>_to           TCX links (tc ingress / egress)
//! PIN/polc_current                                     array[1] of u64: the live generation
//! PIN/g<N>/                                            generation N: the generated programs'
//!        <map name>, parts_<k>, meta                   maps, split programs' part arrays, and
//!                                                      a JSON record (listings, slots, links)
//! ```
//!
//! Policy programs live in `POLC_JUMP` slots (the prog array keeps them loaded). An update
//! builds generation N+1 completely (maps, programs in free slots, record), then switches
//! each endpoint with one `POLC_EP` update (both of its slots at once), then frees N. Any
//! error before the switch removes N+1 and leaves N untouched. Conntrack is never reset.
//!
//! Service frontends ([`ServiceDef`]) are switched the same way: a changed service gets its
//! backends written under a fresh service id first, then one `POLC_NAT_FE` update points the
//! frontend at them; unchanged services are not touched (their ClientIP affinities stay).
//!
//! The loader never sees policy: callers (the `polc` CLI, an agent) describe what to load
//! as raw instructions whose LD_IMM64 map references carry HANDLES, plus what each handle
//! means ([`MapBinding`]).
//!
//! ```no_run
//! use polc_loader::dataplane::{
//!     attach, status, AttachOptions, Desired, EndpointAttach, MapBinding, PolicyProgram,
//! };
//! // An "allow everything" program: verdict ALLOW into the scratch state, then tail-call
//! // the epilogue. Handle 0 is bound to POLC_STATE, handle 1 to POLC_JUMP.
//! # let allow_all_insns: Vec<u8> = Vec::new();
//! let program = PolicyProgram {
//!     label: "allow all".into(),
//!     parts: vec![allow_all_insns],
//!     maps: vec![(0, MapBinding::RuntimeState), (1, MapBinding::RuntimeJump)],
//!     counters: None,
//!     listing: String::new(),
//!     insns: 0,
//! };
//! let desired = Desired {
//!     maps: vec![],
//!     programs: vec![program],
//!     endpoints: vec![EndpointAttach {
//!         name: "default/web".into(),
//!         ifname: "cali1234".into(),
//!         ingress: Some(0),
//!         egress: Some(0),
//!         ingress_v6: None, // IPv4-only pod: its IPv6 packets are dropped
//!         egress_v6: None,
//!         addresses: vec!["10.0.0.7".parse().unwrap()],
//!     }],
//!     rules: vec![],
//!     services: vec![],
//! };
//! let report = attach(&desired, &AttachOptions::default())?; // again later: atomic swap
//! println!("generation {} in {} us", report.generation, report.elapsed_us);
//! let st = status(&AttachOptions::default().pin_path)?;
//! println!("{} conntrack entries", st.conntrack.entries);
//! # Ok::<(), polc_loader::dataplane::DataplaneError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use polc_abi::{
    drop_reason, nat_flags, Endpoint, NatBackend, NatBackendKey, NatFrontendKey, NatService,
    ENDPOINT_SIZE, JUMP_ENTRIES, MAP_CT, MAP_DROPS, MAP_EP, MAP_JUMP, MAP_NAT_AFF, MAP_NAT_BE,
    MAP_NAT_FE, MAP_STATE, NAT_BE_ENTRIES, NAT_FE_ENTRIES, PROG_EPILOGUE, PROG_FROM_EP, PROG_TO_EP,
    SLOT_EPILOGUE, SLOT_FIRST_POLICY, SLOT_NONE,
};
use serde::{Deserialize, Serialize};

use crate::bpffs::{self, PinLock, ProgSummary, ATTACH_TCX_EGRESS, ATTACH_TCX_INGRESS};
use crate::netlink;
use crate::runtime::{Hook, Runtime, RuntimeConfig};
use crate::sys::{self, BpfError, Fd, MapKind, MapSpec, UpdateFlags};

/// The default pin path (the CLI contract's `--pin-path`).
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/polc";

/// Errors of the dataplane operations: one line each, except that a verifier rejection
/// carries the verifier log.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A bpf(2) call failed.
    #[error(transparent)]
    Bpf(BpfError),
    /// The runtime object could not be loaded.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The description or the arguments are wrong (e.g. an unknown interface): bad input.
    #[error("{0}")]
    Invalid(String),
    /// Loading, pinning or attaching failed (a verifier rejection carries the log).
    #[error("{0}")]
    Failed(String),
    /// Nothing is attached under the pin path.
    #[error("nothing attached under {0} (run `polc attach` first)")]
    NotAttached(String),
}

type Result<T> = std::result::Result<T, DataplaneError>;

impl From<BpfError> for DataplaneError {
    fn from(e: BpfError) -> Self {
        match e {
            // bpffs and lock errors carry their own context (path, interface).
            BpfError::Invalid(msg) => DataplaneError::Failed(msg),
            e => DataplaneError::Bpf(e),
        }
    }
}

/// Bad input: the description, an interface name, or a question about an endpoint.
fn invalid(msg: impl Into<String>) -> DataplaneError {
    DataplaneError::Invalid(msg.into())
}

/// Anything else that went wrong (kernel, bpffs, the pinned record).
fn failed(msg: impl Into<String>) -> DataplaneError {
    DataplaneError::Failed(msg.into())
}

// ------------------------------------------------------------------ the description

/// A map the generated programs share (IP sets, named ports, rule-hit counters), with its
/// initial contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Kernel name and pin name: at most 15 bytes of `[A-Za-z0-9_]`, unique.
    pub name: String,
    /// The map type.
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// (key, value) pairs to insert.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a map handle in a program's LD_IMM64 (src_reg 1 or 2) instructions stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapBinding {
    /// The runtime's per-CPU `POLC_STATE`.
    RuntimeState,
    /// The runtime's `POLC_JUMP` prog array (the epilogue's slot).
    RuntimeJump,
    /// [`Desired::maps`]`[i]`.
    Shared(usize),
    /// [`Desired::maps`]`[i]`, a table of this program alone whose entries refer to each
    /// other (class ids, trie nodes, rows): entry-by-entry updates would let a packet see
    /// a mix of two numberings. Such maps are kept in two copies and the program is loaded
    /// once per copy; an in-place update rewrites the spare copy, then switches the
    /// program's `POLC_JUMP` slot to it in one step. Only for single-part programs, and a
    /// map bound this way belongs to one program.
    Own(usize),
    /// The program's own prog array of its parts (part k at index k).
    OwnParts,
}

/// One generated policy program: raw instructions with map HANDLES in LD_IMM64 immediates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProgram {
    /// Human description for status (e.g. "ingress IPv4 app/db").
    pub label: String,
    /// Part 0 is the entry; later parts are tail-called through [`MapBinding::OwnParts`].
    pub parts: Vec<Vec<u8>>,
    /// Handle -> map, for every handle the parts use.
    pub maps: Vec<(u32, MapBinding)>,
    /// Index into [`Desired::maps`] of the per-CPU u64 rule-hit counters, by rule id.
    pub counters: Option<usize>,
    /// The annotated listing (`polc dump` adds hit counts to lines naming `rule id N`).
    pub listing: String,
    /// Instruction slots over all parts (as compiled).
    pub insns: usize,
}

/// One pod to enforce: its host-side interface, its programs (two per address family it
/// has) and its addresses. A family without programs (`None`) is dropped by the runtime
/// (fail closed). A new flow whose pod-side address is not the pod's address of that
/// family is dropped by the runtime as `spoofed` before policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAttach {
    /// `namespace/pod`.
    pub name: String,
    /// The pod's host-side interface in the calling network namespace.
    pub ifname: String,
    /// Index into [`Desired::programs`]: IPv4 ingress policy (traffic to the pod).
    pub ingress: Option<usize>,
    /// Index into [`Desired::programs`]: IPv4 egress policy (traffic from the pod).
    pub egress: Option<usize>,
    /// Index into [`Desired::programs`]: IPv6 ingress policy.
    pub ingress_v6: Option<usize>,
    /// Index into [`Desired::programs`]: IPv6 egress policy.
    pub egress_v6: Option<usize>,
    /// The pod's own addresses (its `podIPs`): at most one per family, and one for each
    /// family that has programs.
    pub addresses: Vec<IpAddr>,
}

impl EndpointAttach {
    /// The programs by (family, direction), in the order IPv4 ingress, IPv4 egress, IPv6
    /// ingress, IPv6 egress.
    pub fn programs(&self) -> [(u8, PolicyDirection, Option<usize>); 4] {
        [
            (4, PolicyDirection::Ingress, self.ingress),
            (4, PolicyDirection::Egress, self.egress),
            (6, PolicyDirection::Ingress, self.ingress_v6),
            (6, PolicyDirection::Egress, self.egress_v6),
        ]
    }
}

/// Everything that should be enforced after `attach`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Maps shared by the programs.
    pub maps: Vec<MapDef>,
    /// Policy programs (each loaded once, shared by the endpoints that use it).
    pub programs: Vec<PolicyProgram>,
    /// The endpoints; interfaces attached before but missing here are detached.
    pub endpoints: Vec<EndpointAttach>,
    /// Rule id -> description, for `dump`.
    pub rules: Vec<String>,
    /// Service frontends for the runtime's NAT maps; frontends installed before but missing
    /// here are removed.
    pub services: Vec<ServiceDef>,
}

/// One service frontend (cluster IP, port, protocol) and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    /// For status and errors, e.g. `service shop/web 10.96.0.10:80/TCP`.
    pub label: String,
    /// The frontend key (IPv4 TCP/UDP: the runtime translates only those).
    pub frontend: NatFrontendKey,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// Ordinal i is `backends[i]`. Empty: packets to the frontend are dropped (`no_backend`).
    pub backends: Vec<NatBackend>,
}

/// How to attach the runtime to tc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// TCX links where the kernel has them (6.6+), legacy clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links only.
    Tcx,
    /// Legacy clsact qdisc + bpf filter (direct action), via netlink.
    Legacy,
}

/// Options of [`attach`].
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Directory on bpffs for the pins (created; bpffs mounted at /sys/fs/bpf if absent).
    pub pin_path: PathBuf,
    /// TCX or legacy tc.
    pub tc_mode: TcMode,
    /// Runtime settings, used only when the runtime is loaded (the first attach).
    pub runtime: RuntimeConfig,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            tc_mode: TcMode::Auto,
            runtime: RuntimeConfig::default(),
        }
    }
}

/// What [`attach`] did.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    /// The generation now live.
    pub generation: u64,
    /// Whether this call loaded the runtime (first attach under the pin path).
    pub runtime_loaded: bool,
    /// Policy programs loaded by this call.
    pub programs_loaded: usize,
    /// Endpoints now enforced.
    pub endpoints: Vec<EndpointReport>,
    /// Interfaces whose tc hooks were attached by this call.
    pub interfaces_attached: Vec<String>,
    /// Interfaces detached because they are no longer endpoints.
    pub interfaces_detached: Vec<String>,
    /// Prog-array slots of the previous generation freed after the switch.
    pub slots_freed: usize,
    /// Service frontends now installed.
    pub services: usize,
    /// Of those, the ones this call installed or changed (the rest were left untouched).
    pub services_changed: usize,
    /// True when only map contents changed (e.g. pods elsewhere came, went or were
    /// relabelled): the live programs stayed, their maps were updated entry by entry, and
    /// the generation did not change.
    pub in_place: bool,
    /// Map entries added, changed or removed by an in-place update.
    pub map_entries_changed: usize,
    /// Wall-clock time of the whole call, in microseconds.
    pub elapsed_us: u128,
}

/// One enforced endpoint in an [`AttachReport`].
#[derive(Clone, Debug, Serialize)]
pub struct EndpointReport {
    /// `namespace/pod`.
    pub name: String,
    /// Host-side interface.
    pub ifname: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// The id copied into `FlowState::endpoint_id`.
    pub endpoint_id: u32,
    /// `POLC_JUMP` slot of its IPv4 ingress policy (`None`: no IPv4, dropped).
    pub ingress_slot: Option<u32>,
    /// `POLC_JUMP` slot of its IPv4 egress policy.
    pub egress_slot: Option<u32>,
    /// `POLC_JUMP` slot of its IPv6 ingress policy (`None`: no IPv6, dropped).
    pub ingress_slot_v6: Option<u32>,
    /// `POLC_JUMP` slot of its IPv6 egress policy.
    pub egress_slot_v6: Option<u32>,
    /// Its own addresses (anti-spoofing).
    pub addresses: Vec<IpAddr>,
}

// ------------------------------------------------------------------ the pinned record

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    generation: u64,
    endpoints: Vec<MetaEndpoint>,
    programs: Vec<MetaProgram>,
    rules: Vec<String>,
    links: Vec<MetaLink>,
    /// Installed service frontends (absent in records of older versions).
    #[serde(default)]
    services: Vec<MetaService>,
    /// [`fingerprint`] of the description this generation was built from: equal means only
    /// map contents (and services) differ, and the update can happen in place.
    #[serde(default)]
    fingerprint: Option<String>,
}

/// A frontend as installed: enough to tell whether a new description changes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MetaService {
    label: String,
    /// `NatFrontendKey` bytes.
    key: Vec<u8>,
    service_id: u32,
    /// `NatService` bytes (id, count, flags, timeout).
    value: Vec<u8>,
    /// `NatBackend` bytes by ordinal.
    backends: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetaEndpoint {
    name: String,
    ifname: String,
    ifindex: u32,
    endpoint_id: u32,
    /// Indexes into `Meta::programs`, by family and direction (as in [`EndpointAttach`]).
    ingress: Option<usize>,
    egress: Option<usize>,
    ingress_v6: Option<usize>,
    egress_v6: Option<usize>,
    /// The pod's own addresses (absent in records of older versions).
    #[serde(default)]
    addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetaProgram {
    label: String,
    slot: u32,
    insns: usize,
    parts: usize,
    listing: String,
    /// Pin name (in the generation directory) of the rule-hit counters.
    counters: Option<String>,
    /// Programs with [`MapBinding::Own`] maps: which copy is live in the slot (0: the maps
    /// pinned under their names and program `prog_{i}_a`; 1: `copyb_NAME` and `prog_{i}_b`).
    #[serde(default)]
    live_copy: Option<u8>,
}

/// Which tc hook of the host-side interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcHook {
    /// tc ingress: packets from the pod (`polc_from_ep`, the pod's egress policy).
    Ingress,
    /// tc egress: packets to the pod (`polc_to_ep`, the pod's ingress policy).
    Egress,
}

impl TcHook {
    fn program(self) -> &'static str {
        match self {
            TcHook::Ingress => PROG_FROM_EP,
            TcHook::Egress => PROG_TO_EP,
        }
    }
    fn tcx_type(self) -> u32 {
        match self {
            TcHook::Ingress => ATTACH_TCX_INGRESS,
            TcHook::Egress => ATTACH_TCX_EGRESS,
        }
    }
    fn aya_type(self) -> TcAttachType {
        match self {
            TcHook::Ingress => TcAttachType::Ingress,
            TcHook::Egress => TcAttachType::Egress,
        }
    }
    fn pin_suffix(self) -> &'static str {
        match self {
            TcHook::Ingress => "from",
            TcHook::Egress => "to",
        }
    }
    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }
}

/// How a runtime classifier is attached to one tc hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A TCX link, pinned.
    Tcx,
    /// A legacy clsact bpf filter named after the classifier.
    Legacy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetaLink {
    ifname: String,
    ifindex: u32,
    hook: TcHook,
    kind: LinkKind,
    /// Pin name under the pin path (TCX only).
    pin: Option<String>,
    /// Legacy only: this attach added the interface's clsact qdisc, so detach removes it
    /// again once no filter is left on it.
    #[serde(default)]
    added_clsact: bool,
}

const META_PIN: &str = "meta";
/// Pin prefixes of second copies of own maps, and of programs with own maps.
const OWN_COPY_PREFIX: &str = "copyb_";
const OWN_PROG_PREFIX: &str = "prog_";
const CURRENT_PIN: &str = "polc_current";
/// Bytes per entry of the record map; entry 0 starts with the record's u64 length.
const META_CHUNK: usize = 4096;

fn gen_dir(pin: &Path, generation: u64) -> PathBuf {
    pin.join(format!("g{generation}"))
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let json = serde_json::to_vec(meta).map_err(|e| failed(format!("encoding record: {e}")))?;
    let mut bytes = (json.len() as u64).to_ne_bytes().to_vec();
    bytes.extend_from_slice(&json);
    let chunks = bytes.len().div_ceil(META_CHUNK).max(1);
    let entries = u32::try_from(chunks).map_err(|_| failed("record too large"))?;
    let fd = sys::map_create(&MapSpec {
        kind: MapKind::Array,
        name: "polc_meta",
        key_size: 4,
        value_size: META_CHUNK as u32,
        max_entries: entries,
    })?;
    for (i, chunk) in (0u32..).zip(bytes.chunks(META_CHUNK)) {
        let mut value = vec![0u8; META_CHUNK];
        value[..chunk.len()].copy_from_slice(chunk);
        sys::map_update(fd.as_fd(), &i.to_ne_bytes(), &value, UpdateFlags::Any)?;
    }
    // Pinned under a temporary name and renamed over the old record (in-place updates
    // rewrite it): readers see the old record or the new one, never none.
    let tmp = dir.join(format!("{META_PIN}_new")); // bpffs names have no dots
    let _ = bpffs::unpin(&tmp);
    bpffs::pin(fd.as_fd(), &tmp)?;
    std::fs::rename(&tmp, dir.join(META_PIN)).map_err(|e| {
        let _ = bpffs::unpin(&tmp);
        failed(format!("renaming {} into place: {e}", tmp.display()))
    })
}

fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let Some(fd) = bpffs::get_pinned(&dir.join(META_PIN))? else { return Ok(None) };
    let info = sys::map_info(fd.as_fd())?;
    let mut bytes = Vec::new();
    for i in 0..info.max_entries {
        match sys::map_lookup(fd.as_fd(), &i.to_ne_bytes())? {
            Some(v) => bytes.extend_from_slice(&v),
            None => break,
        }
    }
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_ne_bytes)
        .ok_or_else(|| failed(format!("record in {} is empty", dir.display())))?;
    let json = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .ok_or_else(|| failed(format!("record in {} is truncated", dir.display())))?;
    let meta = serde_json::from_slice(json)
        .map_err(|e| failed(format!("record in {} is corrupt: {e}", dir.display())))?;
    Ok(Some(meta))
}

fn read_current(pin: &Path) -> Result<Option<u64>> {
    let Some(fd) = bpffs::get_pinned(&pin.join(CURRENT_PIN))? else { return Ok(None) };
    let v = sys::map_lookup(fd.as_fd(), &0u32.to_ne_bytes())?;
    Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(u64::from_ne_bytes))
}

fn write_current(pin: &Path, generation: u64) -> Result<()> {
    let path = pin.join(CURRENT_PIN);
    let fd = match bpffs::get_pinned(&path)? {
        Some(fd) => fd,
        None => {
            let fd = sys::map_create(&MapSpec {
                kind: MapKind::Array,
                name: CURRENT_PIN,
                key_size: 4,
                value_size: 8,
                max_entries: 1,
            })?;
            bpffs::pin(fd.as_fd(), &path)?;
            fd
        }
    };
    sys::map_update(fd.as_fd(), &0u32.to_ne_bytes(), &generation.to_ne_bytes(), UpdateFlags::Any)?;
    Ok(())
}

// ------------------------------------------------------------------ the runtime, pinned

/// The runtime's maps and classifiers, opened from their pins.
struct RuntimeFds {
    jump: Fd,
    state: Fd,
    ep: Fd,
    ct: Fd,
    drops: Fd,
    from_ep: Fd,
    to_ep: Fd,
    nat_fe: Fd,
    nat_be: Fd,
}

const RUNTIME_PINS: [&str; 11] = [
    MAP_JUMP,
    MAP_STATE,
    MAP_EP,
    MAP_CT,
    MAP_DROPS,
    PROG_FROM_EP,
    PROG_TO_EP,
    PROG_EPILOGUE,
    MAP_NAT_FE,
    MAP_NAT_BE,
    MAP_NAT_AFF,
];

/// Refuses to attach through a runtime pinned by a polc with another `POLC_EP` layout
/// (e.g. from before endpoints carried their addresses, which that runtime would not
/// check). Detach still works with such a runtime.
fn check_endpoint_layout(rt: &RuntimeFds, pin: &Path) -> Result<()> {
    let size = sys::map_info(rt.ep.as_fd())?.value_size;
    if size as usize != ENDPOINT_SIZE {
        return Err(failed(format!(
            "{} holds a runtime of another polc version (POLC_EP values of {size} bytes, this \
             polc writes {ENDPOINT_SIZE}): run `polc detach` and attach again",
            pin.display()
        )));
    }
    Ok(())
}

fn open_runtime(pin: &Path) -> Result<Option<RuntimeFds>> {
    let mut fds = Vec::new();
    for name in RUNTIME_PINS {
        match bpffs::get_pinned(&pin.join(name))? {
            Some(fd) => fds.push(fd),
            None if fds.is_empty() => return Ok(None),
            None => {
                return Err(failed(format!(
                    "{} is incomplete: `{name}` is not pinned (run `polc detach` and attach again)",
                    pin.display()
                )))
            }
        }
    }
    let mut it = fds.into_iter();
    let mut next = || it.next().ok_or_else(|| failed("internal: runtime pins"));
    Ok(Some(RuntimeFds {
        jump: next()?,
        state: next()?,
        ep: next()?,
        ct: next()?,
        drops: next()?,
        from_ep: next()?,
        to_ep: next()?,
        nat_fe: {
            next()?; // the epilogue: pinned so it stays in its slot, not used here
            next()?
        },
        nat_be: next()?,
    }))
}

/// Loads the runtime (aya) and pins its maps and classifiers; the epilogue is already in
/// its slot. On error, removes what it pinned.
fn load_runtime(pin: &Path, config: &RuntimeConfig) -> Result<RuntimeFds> {
    let rt = Runtime::load_with(config).map_err(|e| DataplaneError::Runtime(e.to_string()))?;
    let rt_err = |e: crate::runtime::RuntimeError| DataplaneError::Runtime(e.to_string());
    let objects: [BorrowedFd<'_>; 11] = [
        rt.jump_map_fd().map_err(rt_err)?,
        rt.state_map_fd().map_err(rt_err)?,
        rt.ep_map_fd().map_err(rt_err)?,
        rt.ct_map_fd().map_err(rt_err)?,
        rt.drops_map_fd().map_err(rt_err)?,
        rt.hook_fd(Hook::FromEndpoint).map_err(rt_err)?,
        rt.hook_fd(Hook::ToEndpoint).map_err(rt_err)?,
        rt.epilogue_fd().map_err(rt_err)?,
        rt.nat_map_fd(MAP_NAT_FE).map_err(rt_err)?,
        rt.nat_map_fd(MAP_NAT_BE).map_err(rt_err)?,
        rt.nat_map_fd(MAP_NAT_AFF).map_err(rt_err)?,
    ];
    for (k, (name, fd)) in RUNTIME_PINS.iter().zip(objects).enumerate() {
        if let Err(e) = bpffs::pin(fd, &pin.join(name)) {
            for done in RUNTIME_PINS.iter().take(k) {
                let _ = bpffs::unpin(&pin.join(done));
            }
            return Err(e.into());
        }
    }
    drop(rt);
    open_runtime(pin)?.ok_or_else(|| failed("runtime pins vanished right after pinning"))
}

// ------------------------------------------------------------------ attach

/// Makes `desired` the enforced policy: loads the runtime and attaches it on first use,
/// loads the new programs into free slots, switches each endpoint atomically, then frees
/// the previous generation. On error nothing is switched and the previous state stays.
pub fn attach(desired: &Desired, opts: &AttachOptions) -> Result<AttachReport> {
    let started = Instant::now();
    validate(desired)?;
    // Resolve interfaces first: an unknown one fails before anything changes.
    let mut ifindexes = Vec::new();
    for ep in &desired.endpoints {
        ifindexes.push(bpffs::ifindex(&ep.ifname).map_err(|e| match e {
            BpfError::Invalid(m) => invalid(m),
            e => e.into(),
        })?);
    }

    let pin = opts.pin_path.as_path();
    bpffs::ensure_pin_dir(pin)?;
    let _lock = PinLock::acquire(pin, true)?;

    let (rt, runtime_loaded) = match open_runtime(pin)? {
        Some(rt) => (rt, false),
        None => (load_runtime(pin, &opts.runtime)?, true),
    };
    check_endpoint_layout(&rt, pin)?;
    let current = read_current(pin)?;
    let old = match current {
        Some(g) => read_meta(&gen_dir(pin, g))?,
        None => None,
    };
    remove_stale_generations(pin, &rt, current, old.as_ref())?;
    if let Some(old) = &old {
        if let Some(report) = update_in_place(desired, old, pin, &rt, &ifindexes, started)? {
            return Ok(report);
        }
    }

    let generation = current.map_or(1, |g| g + 1);
    let dir = gen_dir(pin, generation);
    std::fs::create_dir(&dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
    let built = match build_generation(desired, &rt, &dir) {
        Ok(b) => b,
        Err(e) => {
            remove_generation(&dir, &rt, None);
            return Err(e);
        }
    };
    // New backends go in under fresh service ids: nothing points at them before the switch.
    let nat = match prepare_services(desired, old.as_ref(), &rt) {
        Ok(n) => n,
        Err(e) => {
            remove_generation(&dir, &rt, Some(&built.slots));
            return Err(e);
        }
    };

    // Endpoint ids are kept across generations (by pod name).
    let mut endpoints = Vec::new();
    let mut used_ids: BTreeSet<u32> = BTreeSet::new();
    let old_ids: BTreeMap<&str, u32> = old
        .iter()
        .flat_map(|m| m.endpoints.iter().map(|e| (e.name.as_str(), e.endpoint_id)))
        .collect();
    for ep in &desired.endpoints {
        if let Some(&id) = old_ids.get(ep.name.as_str()) {
            used_ids.insert(id);
        }
    }
    let mut next_id = 1u32;
    for (ep, &ifindex) in desired.endpoints.iter().zip(&ifindexes) {
        let endpoint_id = match old_ids.get(ep.name.as_str()) {
            Some(&id) => id,
            None => {
                while used_ids.contains(&next_id) {
                    next_id += 1;
                }
                used_ids.insert(next_id);
                next_id
            }
        };
        endpoints.push(MetaEndpoint {
            name: ep.name.clone(),
            ifname: ep.ifname.clone(),
            ifindex,
            endpoint_id,
            ingress: ep.ingress,
            egress: ep.egress,
            ingress_v6: ep.ingress_v6,
            egress_v6: ep.egress_v6,
            addresses: ep.addresses.clone(),
        });
    }

    // tc hooks for interfaces that have none yet. Until their POLC_EP entry exists the
    // runtime lets their packets pass, which is what they had before.
    let old_links = old.as_ref().map(|m| m.links.clone()).unwrap_or_default();
    let mut links: Vec<MetaLink> = Vec::new();
    let mut new_links: Vec<MetaLink> = Vec::new();
    let mut interfaces_attached = Vec::new();
    for ep in &endpoints {
        for hook in [TcHook::Ingress, TcHook::Egress] {
            if let Some(l) = old_links
                .iter()
                .find(|l| l.ifindex == ep.ifindex && l.hook == hook && live(pin, &rt, l))
            {
                links.push(l.clone());
                continue;
            }
            match attach_hook(pin, &rt, &ep.ifname, ep.ifindex, hook, opts.tc_mode) {
                Ok(l) => {
                    new_links.push(l.clone());
                    links.push(l);
                }
                Err(e) => {
                    let _ = detach_links(pin, &new_links);
                    remove_backends(&rt, &nat.written);
                    remove_generation(&dir, &rt, Some(&built.slots));
                    return Err(e);
                }
            }
        }
        if new_links.iter().any(|l| l.ifindex == ep.ifindex) {
            interfaces_attached.push(ep.ifname.clone());
        }
    }

    let meta = Meta {
        generation,
        endpoints,
        programs: built.programs,
        rules: desired.rules.clone(),
        links: links.clone(),
        services: nat.services.clone(),
        fingerprint: Some(fingerprint(desired)),
    };
    if let Err(e) = write_meta(&dir, &meta) {
        let _ = detach_links(pin, &new_links);
        remove_backends(&rt, &nat.written);
        remove_generation(&dir, &rt, Some(&built.slots));
        return Err(e);
    }

    // The switch: one POLC_EP update per endpoint moves both of its hooks at once.
    let mut switched = Saved::new();
    let mut outcome = Ok(());
    for ep in &meta.endpoints {
        let Some(value) = endpoint_value(&meta, ep) else {
            outcome = Err(failed("internal: endpoint program index"));
            break;
        };
        let key = ep.ifindex.to_ne_bytes();
        if let Err(e) = set_saved(rt.ep.as_fd(), &key, Some(&value.to_bytes()), &mut switched) {
            outcome = Err(e.into());
            break;
        }
    }
    let mut frontends_switched = Saved::new();
    if outcome.is_ok() {
        outcome = switch_frontends(&rt, &nat.services, old.as_ref(), &mut frontends_switched);
    }
    if outcome.is_ok() {
        outcome = write_current(pin, generation);
    }
    if let Err(e) = outcome {
        // Put back what was switched; the old generation is still loaded and current.
        restore(rt.nat_fe.as_fd(), &frontends_switched);
        remove_backends(&rt, &nat.written);
        restore(rt.ep.as_fd(), &switched);
        let _ = detach_links(pin, &new_links);
        remove_generation(&dir, &rt, Some(&built.slots));
        return Err(e);
    }

    // After the switch: drop endpoints that are gone, then the old generation.
    let mut interfaces_detached = Vec::new();
    if let Some(old) = &old {
        for ep in &old.endpoints {
            if meta.endpoints.iter().any(|e| e.ifindex == ep.ifindex) {
                continue;
            }
            let gone: Vec<MetaLink> =
                old.links.iter().filter(|l| l.ifindex == ep.ifindex).cloned().collect();
            detach_links(pin, &gone)?;
            sys::map_delete(rt.ep.as_fd(), &ep.ifindex.to_ne_bytes())?;
            interfaces_detached.push(ep.ifname.clone());
        }
    }
    if let Some(old) = &old {
        remove_stale_backends(&rt, old, &meta);
    }
    let mut slots_freed = 0;
    if let Some(old) = &old {
        let old_slots: Vec<u32> = old.programs.iter().map(|p| p.slot).collect();
        slots_freed = old_slots.len();
        remove_generation(&gen_dir(pin, old.generation), &rt, Some(&old_slots));
    }

    let endpoints = endpoint_reports(&meta);
    Ok(AttachReport {
        generation,
        runtime_loaded,
        programs_loaded: meta.programs.len(),
        endpoints,
        interfaces_attached,
        interfaces_detached,
        slots_freed,
        services: meta.services.len(),
        services_changed: nat.written.len(),
        in_place: false,
        map_entries_changed: 0,
        elapsed_us: started.elapsed().as_micros(),
    })
}

/// A digest of everything in `desired` except map contents, services and listings: equal
/// digests mean the same programs (bytes and map bindings), map shapes, endpoints and rules.
/// Two FNV-1a passes with different bases make a 128-bit digest (an accidental collision
/// would reuse programs that differ; 2^-128 is not a risk worth a crypto dependency).
fn fingerprint(d: &Desired) -> String {
    let mut text: Vec<u8> = Vec::new();
    let mut put = |b: &[u8]| {
        text.extend_from_slice(&(b.len() as u64).to_le_bytes());
        text.extend_from_slice(b);
    };
    for m in &d.maps {
        put(m.name.as_bytes());
        put(format!("{:?} {} {} {}", m.kind, m.key_size, m.value_size, m.max_entries).as_bytes());
    }
    for p in &d.programs {
        put(p.label.as_bytes());
        for part in &p.parts {
            put(part);
        }
        put(format!("{:?} {:?}", p.maps, p.counters).as_bytes());
    }
    for e in &d.endpoints {
        put(format!("{e:?}").as_bytes());
    }
    for r in &d.rules {
        put(r.as_bytes());
    }
    let fnv = |basis: u64| {
        text.iter().fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    format!("{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

/// Every (key, value) of a hash or LPM map.
fn map_entries(fd: BorrowedFd<'_>) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut prev: Option<Vec<u8>> = None;
    while let Some(k) = sys::map_next_key(fd, prev.as_deref())? {
        if let Some(v) = sys::map_lookup(fd, &k)? {
            out.insert(k.clone(), v);
        }
        prev = Some(k);
    }
    Ok(out)
}

/// Keys to delete, then entries to write.
type MapDiff = (Vec<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);

/// The keys to delete from a map holding `current` and the entries to write so that it
/// holds what `m` describes (an array has every key: one `m` leaves out is zero).
fn map_diff(m: &MapDef, current: &BTreeMap<Vec<u8>, Vec<u8>>) -> MapDiff {
    let mut want: BTreeMap<&[u8], &[u8]> =
        m.entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let zero = vec![0u8; m.value_size as usize];
    if m.kind == MapKind::Array {
        for k in current.keys() {
            want.entry(k.as_slice()).or_insert(zero.as_slice());
        }
    }
    let deletes = current.keys().filter(|k| !want.contains_key(k.as_slice())).cloned().collect();
    let updates = (want.iter())
        .filter(|(k, v)| current.get(**k).map(Vec::as_slice) != Some(**v))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    (deletes, updates)
}

/// One map's changes in an in-place update.
struct MapPlan {
    name: String,
    fd: Fd,
    /// Its entries before.
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    deletes: Vec<Vec<u8>>,
    updates: Vec<(Vec<u8>, Vec<u8>)>,
    /// For the spare copy of an own map: (program, copy written).
    owner: Option<(usize, u8)>,
}

/// When `desired` differs from the live generation only in map contents (and services),
/// updates the live maps entry by entry and keeps every program, slot and link: pod churn
/// elsewhere in the cluster costs map updates, not program loads. Each entry changes
/// atomically; a packet may see some entries old and some new while it runs, as with
/// Calico's IP-set updates. `None` when the update needs a new generation.
fn update_in_place(
    desired: &Desired,
    old: &Meta,
    pin: &Path,
    rt: &RuntimeFds,
    ifindexes: &[u32],
    started: Instant,
) -> Result<Option<AttachReport>> {
    if old.fingerprint.as_deref() != Some(fingerprint(desired).as_str())
        || old.endpoints.len() != ifindexes.len()
        || old.endpoints.iter().zip(ifindexes).any(|(e, &i)| e.ifindex != i)
        || !old.links.iter().all(|l| live(pin, rt, l))
    {
        return Ok(None);
    }
    let dir = gen_dir(pin, old.generation);
    // The owner of each own map, and the copy an update writes: the spare one.
    let mut spare_of: BTreeMap<usize, (usize, u8)> = BTreeMap::new();
    for (i, p) in desired.programs.iter().enumerate() {
        for (_, b) in &p.maps {
            if let MapBinding::Own(k) = *b {
                // A record without copies (older polc) gets a new generation.
                let Some(live) = old.programs.get(i).and_then(|m| m.live_copy) else {
                    return Ok(None);
                };
                spare_of.insert(k, (i, 1 - live.min(1)));
            }
        }
    }
    // The diff per map, computed before anything changes.
    let mut plans = Vec::new();
    for (k, m) in desired.maps.iter().enumerate() {
        if matches!(m.kind, MapKind::PerCpuArray | MapKind::ProgArray) {
            continue; // rule-hit counters and parts: runtime data, kept
        }
        let owner = spare_of.get(&k).copied();
        let pinned = |copy: u8| -> Result<Option<Fd>> {
            Ok(bpffs::get_pinned(&dir.join(own_map_pin(&m.name, copy)))?)
        };
        // Own maps: nothing to do when the live copy is already right; else the spare copy
        // is rewritten (possibly with nothing to change) and the program switches to it.
        if let Some((_, spare)) = owner {
            let Some(live) = pinned(1 - spare)? else { return Ok(None) };
            let (deletes, updates) = map_diff(m, &map_entries(live.as_fd())?);
            if deletes.is_empty() && updates.is_empty() {
                continue;
            }
        }
        let Some(fd) = pinned(owner.map_or(0, |(_, spare)| spare))? else { return Ok(None) };
        let current = map_entries(fd.as_fd())?;
        let (deletes, updates) = map_diff(m, &current);
        if !deletes.is_empty() || !updates.is_empty() || owner.is_some() {
            plans.push(MapPlan { name: m.name.clone(), fd, current, deletes, updates, owner });
        }
    }
    // Spare copies first: no packet sees them until their program's slot switches.
    plans.sort_by_key(|p| p.owner.is_none());
    let nat = prepare_services(desired, Some(old), rt)?;
    let mut changed = 0usize;
    let mut failure = None;
    'apply: for plan in &plans {
        // Deletes first: the map never needs room for old and new at once.
        for k in &plan.deletes {
            if let Err(e) = sys::map_delete(plan.fd.as_fd(), k) {
                failure = Some(failed(format!("updating {} in place: {e}", plan.name)));
                break 'apply;
            }
            changed += 1;
        }
        for (k, v) in &plan.updates {
            if let Err(e) = sys::map_update(plan.fd.as_fd(), k, v, UpdateFlags::Any) {
                failure = Some(failed(format!("updating {} in place: {e}", plan.name)));
                break 'apply;
            }
            changed += 1;
        }
    }
    // Then each program whose own maps changed moves to its spare copy, in one step.
    let mut meta = old.clone();
    let flips: BTreeSet<(usize, u8)> = plans.iter().filter_map(|p| p.owner).collect();
    let mut flipped: Vec<(u32, usize, u8)> = Vec::new();
    for &(i, spare) in &flips {
        if failure.is_some() {
            break;
        }
        let Some(m) = meta.programs.get_mut(i) else { continue };
        let switch = bpffs::get_pinned(&dir.join(own_prog_pin(i, spare)))
            .map_err(DataplaneError::from)
            .and_then(|fd| fd.ok_or_else(|| failed(format!("{}: spare copy not pinned", m.label))))
            .and_then(|fd| Ok(sys::prog_array_set(rt.jump.as_fd(), m.slot, fd.as_fd())?));
        match switch {
            Ok(()) => {
                flipped.push((m.slot, i, 1 - spare));
                m.live_copy = Some(spare);
            }
            Err(e) => failure = Some(e),
        }
    }
    let mut frontends_switched = Saved::new();
    if failure.is_none() {
        failure = switch_frontends(rt, &nat.services, Some(old), &mut frontends_switched).err();
    }
    meta.services = nat.services.clone();
    for (m, p) in meta.programs.iter_mut().zip(&desired.programs) {
        m.listing = p.listing.clone();
    }
    if failure.is_none() {
        failure = write_meta(&dir, &meta).err();
    }
    if let Some(e) = failure {
        // Programs back on the copies they ran, every shared map back as it was, then the
        // frontends (spare copies are not seen by anything: left as they are).
        for &(slot, i, copy) in &flipped {
            if let Ok(Some(fd)) = bpffs::get_pinned(&dir.join(own_prog_pin(i, copy))) {
                let _ = sys::prog_array_set(rt.jump.as_fd(), slot, fd.as_fd());
            }
        }
        for plan in plans.iter().filter(|p| p.owner.is_none()) {
            for (k, _) in plan.updates.iter().filter(|(k, _)| !plan.current.contains_key(k)) {
                let _ = sys::map_delete(plan.fd.as_fd(), k);
            }
            for (k, v) in &plan.current {
                let _ = sys::map_update(plan.fd.as_fd(), k, v, UpdateFlags::Any);
            }
        }
        restore(rt.nat_fe.as_fd(), &frontends_switched);
        remove_backends(rt, &nat.written);
        let _ = write_meta(&dir, old);
        return Err(e);
    }
    remove_stale_backends(rt, old, &meta);
    let endpoints = endpoint_reports(&meta);
    Ok(Some(AttachReport {
        generation: old.generation,
        runtime_loaded: false,
        programs_loaded: 0,
        endpoints,
        interfaces_attached: Vec::new(),
        interfaces_detached: Vec::new(),
        slots_freed: 0,
        services: meta.services.len(),
        services_changed: nat.written.len(),
        in_place: true,
        map_entries_changed: changed,
        elapsed_us: started.elapsed().as_micros(),
    }))
}

/// Service frontends as they will be after the switch, and the backends written for them.
struct NatPlan {
    services: Vec<MetaService>,
    /// (service id, backend count) written by this attach: removed again if it fails.
    written: Vec<(u32, u32)>,
}

/// Keeps unchanged frontends as they are; writes the backends of new or changed ones under
/// service ids no installed frontend uses.
fn prepare_services(desired: &Desired, old: Option<&Meta>, rt: &RuntimeFds) -> Result<NatPlan> {
    let old_services = old.map(|m| m.services.as_slice()).unwrap_or_default();
    let mut used: BTreeSet<u32> = old_services.iter().map(|s| s.service_id).collect();
    let mut next_id = 1u32;
    let mut plan = NatPlan { services: Vec::new(), written: Vec::new() };
    for svc in &desired.services {
        let count = u32::try_from(svc.backends.len())
            .map_err(|_| invalid(format!("{}: too many backends", svc.label)))?;
        let key = svc.frontend.to_bytes().to_vec();
        let backends: Vec<Vec<u8>> = svc.backends.iter().map(|b| b.to_bytes().to_vec()).collect();
        let value_with = |service_id: u32| {
            NatService {
                service_id,
                backend_count: count,
                flags: if svc.affinity_timeout_s.is_some() {
                    nat_flags::AFFINITY_CLIENT_IP
                } else {
                    0
                },
                affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
            }
            .to_bytes()
            .to_vec()
        };
        let same = old_services.iter().find(|o| {
            o.key == key && o.backends == backends && o.value == value_with(o.service_id)
        });
        if let Some(o) = same {
            plan.services.push(MetaService { label: svc.label.clone(), ..o.clone() });
            continue;
        }
        while used.contains(&next_id) {
            next_id = next_id.checked_add(1).ok_or_else(|| failed("service ids exhausted"))?;
        }
        let service_id = next_id;
        used.insert(service_id);
        plan.written.push((service_id, count));
        for (ordinal, b) in (0u32..).zip(&backends) {
            let k = NatBackendKey { service_id, ordinal }.to_bytes();
            if let Err(e) = sys::map_update(rt.nat_be.as_fd(), &k, b, UpdateFlags::Any) {
                remove_backends(rt, &plan.written);
                return Err(failed(format!("{}: writing backend {ordinal}: {e}", svc.label)));
            }
        }
        plan.services.push(MetaService {
            label: svc.label.clone(),
            key,
            service_id,
            value: value_with(service_id),
            backends,
        });
    }
    Ok(plan)
}

/// Points every new or changed frontend at its backends (one update each) and removes the
/// frontends that are gone, recording each key's previous value for a rollback.
fn switch_frontends(
    rt: &RuntimeFds,
    services: &[MetaService],
    old: Option<&Meta>,
    done: &mut Saved,
) -> Result<()> {
    let old_services = old.map(|m| m.services.as_slice()).unwrap_or_default();
    for s in services {
        // Same key and value (incl. the service id): an unchanged service, left alone.
        if old_services.iter().any(|o| o.key == s.key && o.value == s.value) {
            continue;
        }
        set_saved(rt.nat_fe.as_fd(), &s.key, Some(&s.value), done)
            .map_err(|e| failed(format!("{}: {e}", s.label)))?;
    }
    for o in old_services.iter().filter(|o| !services.iter().any(|s| s.key == o.key)) {
        set_saved(rt.nat_fe.as_fd(), &o.key, None, done)?;
    }
    Ok(())
}

/// What map entries held before a switch changed them (`None`: absent), in change order.
type Saved = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Sets (or, for `None`, deletes) `map[key]`, recording in `saved` what it held before.
fn set_saved(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: Option<&[u8]>,
    saved: &mut Saved,
) -> std::result::Result<(), BpfError> {
    let before = sys::map_lookup(map, key)?;
    match value {
        Some(v) => sys::map_update(map, key, v, UpdateFlags::Any)?,
        None => drop(sys::map_delete(map, key)?),
    }
    saved.push((key.to_vec(), before));
    Ok(())
}

/// Puts back what `saved` recorded, newest first (best effort: on the way out of a failure).
fn restore(map: BorrowedFd<'_>, saved: &Saved) {
    for (key, before) in saved.iter().rev() {
        let _ = match before {
            Some(v) => sys::map_update(map, key, v, UpdateFlags::Any),
            None => sys::map_delete(map, key).map(drop),
        };
    }
}

/// The report line of every endpoint in `meta`.
fn endpoint_reports(meta: &Meta) -> Vec<EndpointReport> {
    (meta.endpoints.iter())
        .map(|e| EndpointReport {
            name: e.name.clone(),
            ifname: e.ifname.clone(),
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            ingress_slot: slot_of(meta, e.ingress),
            egress_slot: slot_of(meta, e.egress),
            ingress_slot_v6: slot_of(meta, e.ingress_v6),
            egress_slot_v6: slot_of(meta, e.egress_v6),
            addresses: e.addresses.clone(),
        })
        .collect()
}

/// After a switch: the backends of services `old` had and `now` does not (replaced or
/// removed): no frontend points at them any more.
fn remove_stale_backends(rt: &RuntimeFds, old: &Meta, now: &Meta) {
    let live: BTreeSet<u32> = now.services.iter().map(|s| s.service_id).collect();
    let stale: Vec<(u32, u32)> = (old.services.iter())
        .filter(|s| !live.contains(&s.service_id))
        .map(|s| (s.service_id, s.backends.len() as u32))
        .collect();
    remove_backends(rt, &stale);
}

/// Deletes backends `0..count` of each service id (best effort: used to clean up).
fn remove_backends(rt: &RuntimeFds, ids: &[(u32, u32)]) {
    for &(service_id, count) in ids {
        for ordinal in 0..count {
            let k = NatBackendKey { service_id, ordinal }.to_bytes();
            let _ = sys::map_delete(rt.nat_be.as_fd(), &k);
        }
    }
}

fn validate(d: &Desired) -> Result<()> {
    let mut names = BTreeSet::new();
    for m in &d.maps {
        let ok = !m.name.is_empty()
            && m.name.len() <= 15
            && m.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && m.name != META_PIN
            && !m.name.starts_with("parts_")
            && !m.name.starts_with(OWN_COPY_PREFIX)
            && !m.name.starts_with(OWN_PROG_PREFIX);
        if !ok || !names.insert(m.name.as_str()) {
            return Err(invalid(format!("map name `{}` is invalid or repeated", m.name)));
        }
    }
    for (i, p) in d.programs.iter().enumerate() {
        if p.parts.is_empty() {
            return Err(invalid(format!("program {i} ({}) has no instructions", p.label)));
        }
        for (h, b) in &p.maps {
            if let MapBinding::Shared(k) | MapBinding::Own(k) = b {
                if *k >= d.maps.len() {
                    return Err(invalid(format!("program {i} binds handle {h} to no map")));
                }
            }
            if let MapBinding::Own(k) = b {
                if p.parts.len() > 1 {
                    return Err(invalid(format!("program {i} has parts and own tables")));
                }
                let others = (d.programs.iter().enumerate()).any(|(j, q)| {
                    j != i
                        && q.maps.iter().any(|(_, b)| {
                            matches!(b, MapBinding::Own(x) | MapBinding::Shared(x) if x == k)
                        })
                });
                if others {
                    return Err(invalid(format!("program {i}'s own map {k} is bound elsewhere")));
                }
            }
        }
        if p.counters.is_some_and(|k| k >= d.maps.len()) {
            return Err(invalid(format!("program {i} names a counters map that does not exist")));
        }
    }
    let mut ifnames = BTreeSet::new();
    let mut pod_ifname = BTreeMap::new();
    for e in &d.endpoints {
        if e.programs().iter().any(|(_, _, p)| p.is_some_and(|i| i >= d.programs.len())) {
            return Err(invalid(format!("endpoint {} refers to a missing program", e.name)));
        }
        // A family is enforced in both directions or not at all, and some family is.
        if e.ingress.is_some() != e.egress.is_some()
            || e.ingress_v6.is_some() != e.egress_v6.is_some()
            || (e.ingress.is_none() && e.ingress_v6.is_none())
        {
            return Err(invalid(format!(
                "endpoint {} needs an ingress and an egress program for each family it has, \
                 and at least one family",
                e.name
            )));
        }
        // The runtime keeps one own address per family (Kubernetes podIPs has at most one).
        for (fam, has_programs) in [(4, e.ingress.is_some()), (6, e.ingress_v6.is_some())] {
            let n = e.addresses.iter().filter(|a| a.is_ipv4() == (fam == 4)).count();
            if n > 1 {
                return Err(invalid(format!(
                    "endpoint {} has {n} IPv{fam} addresses; at most one per family",
                    e.name
                )));
            }
            if has_programs && n == 0 {
                return Err(invalid(format!(
                    "endpoint {} has IPv{fam} programs but no IPv{fam} address",
                    e.name
                )));
            }
        }
        if !ifnames.insert(e.ifname.as_str()) {
            return Err(invalid(format!("interface `{}` is named by two endpoints", e.ifname)));
        }
        // One pod behind two interfaces would put its policy and its address check on the
        // other interface too, dropping that pod's traffic as spoofed.
        if let Some(first) = pod_ifname.insert(e.name.as_str(), e.ifname.as_str()) {
            return Err(invalid(format!(
                "endpoint {} is given two interfaces (`{first}` and `{}`)",
                e.name, e.ifname
            )));
        }
    }
    let slots = (SLOT_EPILOGUE - SLOT_FIRST_POLICY) as usize;
    if d.programs.len() > slots / 2 {
        // Half the slots: the old generation stays loaded until the switch.
        return Err(invalid(format!(
            "{} programs exceed the {} a swap can hold (POLC_JUMP has {JUMP_ENTRIES} slots)",
            d.programs.len(),
            slots / 2
        )));
    }
    let mut frontends = BTreeSet::new();
    for svc in &d.services {
        if !frontends.insert(svc.frontend.to_bytes()) {
            return Err(invalid(format!("{}: the frontend is described twice", svc.label)));
        }
    }
    if d.services.len() > NAT_FE_ENTRIES as usize {
        return Err(invalid(format!(
            "{} service frontends exceed the {NAT_FE_ENTRIES} POLC_NAT_FE holds",
            d.services.len()
        )));
    }
    let backends: usize = d.services.iter().map(|s| s.backends.len()).sum();
    if backends > NAT_BE_ENTRIES as usize / 2 {
        // Half: a changed service's old backends stay until the switch.
        return Err(invalid(format!(
            "{backends} service backends exceed the {} a swap can hold (POLC_NAT_BE has \
             {NAT_BE_ENTRIES} entries)",
            NAT_BE_ENTRIES / 2
        )));
    }
    Ok(())
}

struct Built {
    programs: Vec<MetaProgram>,
    slots: Vec<u32>,
}

/// Whether map `k` of the description is bound [`MapBinding::Own`] by some program.
fn is_own(desired: &Desired, k: usize) -> bool {
    (desired.programs.iter().flat_map(|p| &p.maps)).any(|(_, b)| *b == MapBinding::Own(k))
}

/// Pin name of copy `copy` (0 or 1) of an own map (bpffs names have no dots).
fn own_map_pin(name: &str, copy: u8) -> String {
    if copy == 0 {
        name.to_string()
    } else {
        format!("{OWN_COPY_PREFIX}{name}")
    }
}

/// Pin name of copy `copy` of program `i` (programs with own maps only).
fn own_prog_pin(i: usize, copy: u8) -> String {
    format!("{OWN_PROG_PREFIX}{i}_{}", if copy == 0 { 'a' } else { 'b' })
}

/// Creates a map of the description, fills it and pins it under `pin_name`.
fn create_map(m: &MapDef, dir: &Path, pin_name: &str) -> Result<Fd> {
    let fd = sys::map_create(&MapSpec {
        kind: m.kind,
        name: &m.name,
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: m.max_entries,
    })?;
    for (k, v) in &m.entries {
        sys::map_update(fd.as_fd(), k, v, UpdateFlags::Any)
            .map_err(|e| failed(format!("filling {}: {e}", m.name)))?;
    }
    bpffs::pin(fd.as_fd(), &dir.join(pin_name))?;
    Ok(fd)
}

/// Creates and pins generation maps (own maps twice), loads every program into a free slot
/// (a program with own maps also once more, bound to the second copies, and pins both).
fn build_generation(desired: &Desired, rt: &RuntimeFds, dir: &Path) -> Result<Built> {
    let mut maps = Vec::new();
    let mut second: Vec<Option<Fd>> = Vec::new();
    for (k, m) in desired.maps.iter().enumerate() {
        maps.push(create_map(m, dir, &m.name)?);
        let own = is_own(desired, k);
        second.push(if own { Some(create_map(m, dir, &own_map_pin(&m.name, 1))?) } else { None });
    }
    let mut free = free_slots(rt)?.into_iter();
    let mut out = Built { programs: Vec::new(), slots: Vec::new() };
    for (i, p) in desired.programs.iter().enumerate() {
        let parts_map = if p.parts.len() > 1 {
            let n = u32::try_from(p.parts.len()).map_err(|_| failed("too many parts"))?;
            let fd = sys::map_create(&MapSpec {
                kind: MapKind::ProgArray,
                name: "polc_parts",
                key_size: 4,
                value_size: 4,
                max_entries: n,
            })?;
            // Pinned: a prog array is emptied when its last user reference goes.
            bpffs::pin(fd.as_fd(), &dir.join(format!("parts_{i}")))?;
            Some(fd)
        } else {
            None
        };
        let has_own = p.maps.iter().any(|(_, b)| matches!(b, MapBinding::Own(_)));
        let mut first = None;
        for copy in 0..=u8::from(has_own) {
            for (k, insns) in p.parts.iter().enumerate() {
                let patched = patch_handles(insns, |h| {
                    let b = p.maps.iter().find(|(hh, _)| *hh == h).map(|(_, b)| *b)?;
                    let fd = match b {
                        MapBinding::RuntimeState => &rt.state,
                        MapBinding::RuntimeJump => &rt.jump,
                        MapBinding::Shared(s) => maps.get(s)?,
                        MapBinding::Own(s) if copy == 0 => maps.get(s)?,
                        MapBinding::Own(s) => second.get(s)?.as_ref()?,
                        MapBinding::OwnParts => parts_map.as_ref()?,
                    };
                    Some(fd.raw() as u32)
                })
                .map_err(|e| failed(format!("{}: {e}", p.label)))?;
                let name = format!("polc_p{i}_{k}");
                let name = if name.len() > 15 { "polc_policy".to_string() } else { name };
                let fd = sys::prog_load(&name, &patched)
                    .map_err(|e| failed(format!("loading {} part {k}: {e}", p.label)))?;
                if let Some(pm) = &parts_map {
                    sys::prog_array_set(pm.as_fd(), k as u32, fd.as_fd())?;
                }
                if has_own {
                    bpffs::pin(fd.as_fd(), &dir.join(own_prog_pin(i, copy)))?;
                }
                if k == 0 && copy == 0 {
                    first = Some(fd);
                }
            }
        }
        let first = first.ok_or_else(|| failed(format!("{} has no part 0", p.label)))?;
        let slot = free.next().ok_or_else(|| failed("no free POLC_JUMP slot"))?;
        sys::prog_array_set(rt.jump.as_fd(), slot, first.as_fd())?;
        out.slots.push(slot);
        out.programs.push(MetaProgram {
            label: p.label.clone(),
            slot,
            insns: p.insns,
            parts: p.parts.len(),
            listing: p.listing.clone(),
            counters: p.counters.and_then(|c| desired.maps.get(c)).map(|m| m.name.clone()),
            live_copy: has_own.then_some(0),
        });
    }
    Ok(out)
}

/// Empty policy slots of `POLC_JUMP` (a userspace lookup of a prog array returns the
/// program id, or ENOENT for an empty slot).
fn free_slots(rt: &RuntimeFds) -> Result<Vec<u32>> {
    let mut free = Vec::new();
    for slot in SLOT_FIRST_POLICY..SLOT_EPILOGUE {
        if sys::map_lookup(rt.jump.as_fd(), &slot.to_ne_bytes())?.is_none() {
            free.push(slot);
        }
    }
    Ok(free)
}

/// Replaces the handle in each LD_IMM64 with src_reg 1 (BPF_PSEUDO_MAP_FD) or 2
/// (BPF_PSEUDO_MAP_VALUE: the second half's offset stays) by its fd.
pub fn patch_handles(
    insns: &[u8],
    mut fd_of: impl FnMut(u32) -> Option<u32>,
) -> std::result::Result<Vec<u8>, String> {
    if !insns.len().is_multiple_of(8) {
        return Err(format!("{} bytes is not a whole number of instructions", insns.len()));
    }
    let mut out = insns.to_vec();
    let mut i = 0usize;
    while let Some(insn) = out.get(i * 8..i * 8 + 8) {
        let (opcode, regs) = (insn[0], insn[1]);
        if opcode == 0x18 {
            if regs >> 4 == 1 || regs >> 4 == 2 {
                let imm = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                let fd = fd_of(imm).ok_or_else(|| {
                    format!("instruction {i} refers to map handle {imm}, which has no map")
                })?;
                out[i * 8 + 4..i * 8 + 8].copy_from_slice(&fd.to_le_bytes());
            }
            if out.len() < (i + 2) * 8 {
                return Err(format!("instruction {i}: LD_IMM64 without its second half"));
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Clears `slots` (when given) and unpins everything in a generation directory.
fn remove_generation(dir: &Path, rt: &RuntimeFds, slots: Option<&[u32]>) {
    for &slot in slots.unwrap_or_default() {
        let _ = sys::prog_array_clear(rt.jump.as_fd(), slot);
    }
    let _ = remove_pin_dir(dir);
}

fn remove_pin_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(format!("reading {}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        bpffs::unpin(&entry.path())?;
    }
    std::fs::remove_dir(dir).map_err(|e| failed(format!("removing {}: {e}", dir.display())))
}

/// Generations other than the live one are leftovers of an interrupted attach: free their
/// slots (unless the live generation uses them) and unpin them.
fn remove_stale_generations(
    pin: &Path,
    rt: &RuntimeFds,
    current: Option<u64>,
    live: Option<&Meta>,
) -> Result<()> {
    let mut live_slots: BTreeSet<u32> =
        live.iter().flat_map(|m| m.programs.iter().map(|p| p.slot)).collect();
    // Whatever POLC_EP points at stays loaded, whichever record claims it.
    let mut prev: Option<Vec<u8>> = None;
    while let Some(k) = sys::map_next_key(rt.ep.as_fd(), prev.as_deref())? {
        if let Some(v) = sys::map_lookup(rt.ep.as_fd(), &k)? {
            if let Ok(b) = <[u8; ENDPOINT_SIZE]>::try_from(v.as_slice()) {
                let e = Endpoint::from_bytes(&b);
                for s in [e.ingress_slot, e.egress_slot, e.ingress_slot_v6, e.egress_slot_v6] {
                    if s != SLOT_NONE {
                        live_slots.insert(s);
                    }
                }
            }
        }
        prev = Some(k);
    }
    for g in generation_dirs(pin)? {
        if Some(g) == current {
            continue;
        }
        let dir = gen_dir(pin, g);
        let slots: Vec<u32> = read_meta(&dir)
            .ok()
            .flatten()
            .map(|m| {
                m.programs.iter().map(|p| p.slot).filter(|s| !live_slots.contains(s)).collect()
            })
            .unwrap_or_default();
        remove_generation(&dir, rt, Some(&slots));
    }
    Ok(())
}

fn generation_dirs(pin: &Path) -> Result<Vec<u64>> {
    let entries =
        std::fs::read_dir(pin).map_err(|e| failed(format!("reading {}: {e}", pin.display())))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('g')?.parse().ok())
        .collect())
}

fn link_pin_name(ifindex: u32, hook: TcHook) -> String {
    format!("link_{ifindex}_{}", hook.pin_suffix())
}

/// Whether a recorded link is still in place: for TCX, the pin exists and the runtime
/// classifier is on the hook (a deleted interface's link is defunct); for legacy filters,
/// the interface name still means the same interface.
fn live(pin: &Path, rt: &RuntimeFds, l: &MetaLink) -> bool {
    match (l.kind, &l.pin) {
        (LinkKind::Tcx, Some(name)) => {
            let prog = match l.hook {
                TcHook::Ingress => &rt.from_ep,
                TcHook::Egress => &rt.to_ep,
            };
            let Ok(want) = bpffs::prog_summary(prog.as_fd()) else { return false };
            bpffs::get_pinned(&pin.join(name)).ok().flatten().is_some()
                && bpffs::tcx_query(l.ifindex, l.hook.tcx_type())
                    .is_ok_and(|ids| ids.contains(&want.id))
        }
        (LinkKind::Tcx, None) => false,
        (LinkKind::Legacy, _) => bpffs::ifindex(&l.ifname).is_ok_and(|i| i == l.ifindex),
    }
}

fn attach_hook(
    pin: &Path,
    rt: &RuntimeFds,
    ifname: &str,
    ifindex: u32,
    hook: TcHook,
    mode: TcMode,
) -> Result<MetaLink> {
    let prog = match hook {
        TcHook::Ingress => &rt.from_ep,
        TcHook::Egress => &rt.to_ep,
    };
    if mode != TcMode::Legacy {
        match bpffs::tcx_attach(prog.as_fd(), ifindex, hook.tcx_type()) {
            Ok(link) => {
                let name = link_pin_name(ifindex, hook);
                let path = pin.join(&name);
                // A stale pin of a deleted interface's link may hold the name.
                let _ = bpffs::unpin(&path);
                if let Err(e) = bpffs::pin(link.as_fd(), &path) {
                    let _ = bpffs::link_detach(link.as_fd());
                    return Err(e.into());
                }
                return Ok(MetaLink {
                    ifname: ifname.to_string(),
                    ifindex,
                    hook,
                    kind: LinkKind::Tcx,
                    pin: Some(name),
                    added_clsact: false,
                });
            }
            Err(e) if mode == TcMode::Tcx || e.errno() != Some(libc::EINVAL) => {
                return Err(failed(format!("attaching to {ifname} tc {}: {e}", hook.as_str())))
            }
            Err(_) => {} // No TCX in this kernel: fall back.
        }
    }
    let mut cls = SchedClassifier::from_pin(pin.join(hook.program()))
        .map_err(|e| failed(format!("opening {}: {e}", hook.program())))?;
    let added_clsact = match tc::qdisc_add_clsact(ifname) {
        Ok(()) => true,
        // EEXIST: the qdisc is already there (ours or someone else's); keep it.
        Err(tc::TcError::NetlinkError(n)) if n.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(failed(format!("adding clsact to {ifname}: {e}"))),
    };
    let id = cls
        .attach_with_options(
            ifname,
            hook.aya_type(),
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|e| failed(format!("attaching to {ifname} tc {}: {e}", hook.as_str())))?;
    let link = cls.take_link(id).map_err(|e| failed(format!("{ifname}: {e}")))?;
    // The filter stays after this process; dropping the handle would remove it.
    std::mem::forget(link);
    Ok(MetaLink {
        ifname: ifname.to_string(),
        ifindex,
        hook,
        kind: LinkKind::Legacy,
        pin: None,
        added_clsact,
    })
}

/// Detaches `links`, then removes each clsact qdisc one of them added, if no filter (ours or
/// anyone else's) is left on it and the interface is still the one it was.
fn detach_links(pin: &Path, links: &[MetaLink]) -> Result<()> {
    for l in links {
        detach_link(pin, l)?;
    }
    let added: BTreeSet<(u32, &str)> = (links.iter())
        .filter(|l| l.kind == LinkKind::Legacy && l.added_clsact)
        .map(|l| (l.ifindex, l.ifname.as_str()))
        .collect();
    for (ifindex, ifname) in added {
        if !bpffs::ifindex(ifname).is_ok_and(|i| i == ifindex) {
            continue;
        }
        let filters = netlink::clsact_filters(ifindex)
            .map_err(|e| failed(format!("listing tc filters of {ifname}: {e}")))?;
        if filters == 0 {
            netlink::delete_clsact(ifindex)
                .map_err(|e| failed(format!("deleting the clsact qdisc of {ifname}: {e}")))?;
        }
    }
    Ok(())
}

fn detach_link(pin: &Path, l: &MetaLink) -> Result<()> {
    match (l.kind, &l.pin) {
        (LinkKind::Tcx, Some(name)) => {
            let path = pin.join(name);
            if let Some(fd) = bpffs::get_pinned(&path)? {
                bpffs::link_detach(fd.as_fd())?;
            }
            bpffs::unpin(&path)?;
        }
        (LinkKind::Tcx, None) => {}
        (LinkKind::Legacy, _) => {
            // Only if the name still means the same interface.
            if bpffs::ifindex(&l.ifname).is_ok_and(|i| i == l.ifindex) {
                match tc::qdisc_detach_program(&l.ifname, l.hook.aya_type(), l.hook.program()) {
                    Ok(()) => {}
                    Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(failed(format!(
                            "detaching {} from {} tc {}: {e}",
                            l.hook.program(),
                            l.ifname,
                            l.hook.as_str()
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ detach

/// What [`detach`] removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetachReport {
    /// tc hooks detached, as `ifname/ingress|egress`.
    pub hooks: Vec<String>,
    /// Policy slots cleared.
    pub slots: usize,
    /// Pins removed.
    pub pins: usize,
}

/// Removes every tc link/filter, program slot and pin polc made under `pin_path`, and
/// nothing else; the pin directory itself is removed when it ends up empty.
pub fn detach(pin_path: &Path) -> Result<DetachReport> {
    if !pin_path.is_dir() {
        return Err(DataplaneError::NotAttached(pin_path.display().to_string()));
    }
    let _lock = PinLock::acquire(pin_path, true)?;
    let mut report = DetachReport::default();
    let rt = open_runtime(pin_path)?;
    let current = read_current(pin_path)?;
    let meta = match current {
        Some(g) => read_meta(&gen_dir(pin_path, g))?,
        None => None,
    };
    if let Some(meta) = &meta {
        detach_links(pin_path, &meta.links)?;
        for l in &meta.links {
            report.hooks.push(format!("{}/{}", l.ifname, l.hook.as_str()));
        }
    }
    // Links pinned by an attach that died before recording them.
    for entry in std::fs::read_dir(pin_path)
        .map_err(|e| failed(format!("reading {}: {e}", pin_path.display())))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_") {
            if let Some(fd) = bpffs::get_pinned(&entry.path())? {
                bpffs::link_detach(fd.as_fd())?;
            }
            report.pins += usize::from(bpffs::unpin(&entry.path())?);
        }
    }
    if let Some(rt) = &rt {
        for g in generation_dirs(pin_path)? {
            let dir = gen_dir(pin_path, g);
            if let Ok(Some(m)) = read_meta(&dir) {
                for p in &m.programs {
                    report.slots += usize::from(sys::prog_array_clear(rt.jump.as_fd(), p.slot)?);
                }
                for ep in &m.endpoints {
                    sys::map_delete(rt.ep.as_fd(), &ep.ifindex.to_ne_bytes())?;
                }
            }
            report.pins += count_entries(&dir);
            remove_pin_dir(&dir)?;
        }
    }
    for name in RUNTIME_PINS.iter().chain([&CURRENT_PIN]) {
        report.pins += usize::from(bpffs::unpin(&pin_path.join(name))?);
    }
    // Remove the directory only if nothing foreign is left in it.
    let _ = std::fs::remove_dir(pin_path);
    Ok(report)
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |e| e.count())
}

// ------------------------------------------------------------------ status and dump

/// `polc status`: what is attached and how it is doing.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The pin path.
    pub pin_path: String,
    /// The live generation (attach count since the runtime was loaded).
    pub generation: u64,
    /// The runtime's classifiers.
    pub runtime: Vec<ProgSummary>,
    /// Enforced endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Conntrack fill level.
    pub conntrack: ConntrackStatus,
    /// Drop counters summed over CPUs, by reason name (reasons without a name are
    /// `reason_N`); zero counters included.
    pub drops: BTreeMap<String, u64>,
    /// Installed service frontends.
    pub services: Vec<ServiceStatus>,
}

/// One service frontend in [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    /// e.g. `service shop/web 10.96.0.10:80/TCP`.
    pub name: String,
    /// Its id in the NAT maps (changes when its backends change).
    pub service_id: u32,
    /// Number of backends (0: packets to it are dropped as `no_backend`).
    pub backends: usize,
}

/// One endpoint in [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    /// `namespace/pod`.
    pub name: String,
    /// Host-side interface.
    pub ifname: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// Id in `FlowState::endpoint_id`.
    pub endpoint_id: u32,
    /// The tc hooks of the interface and how they are attached.
    pub tc: Vec<HookStatus>,
    /// IPv4 ingress policy (traffic to the pod); `None`: the pod has no IPv4 program.
    pub ingress: Option<PolicyStatus>,
    /// IPv4 egress policy (traffic from the pod).
    pub egress: Option<PolicyStatus>,
    /// IPv6 ingress policy; `None`: the pod has no IPv6 program.
    pub ingress_v6: Option<PolicyStatus>,
    /// IPv6 egress policy.
    pub egress_v6: Option<PolicyStatus>,
    /// Its own addresses (anti-spoofing).
    pub addresses: Vec<IpAddr>,
}

/// One tc hook in [`EndpointStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    /// `ingress` or `egress` (tc's view: ingress = from the pod).
    pub hook: TcHook,
    /// TCX link or legacy filter.
    pub kind: LinkKind,
    /// For TCX: whether the runtime classifier is among the hook's programs now.
    pub attached: Option<bool>,
}

/// One policy program in [`EndpointStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    /// What it is (direction, family, endpoints sharing it).
    pub label: String,
    /// Its `POLC_JUMP` slot.
    pub slot: u32,
    /// Instructions as compiled (all parts).
    pub insns: usize,
    /// Number of parts.
    pub parts: usize,
    /// The kernel's view of part 0 (id, name, sizes); `None` if the slot is empty.
    pub kernel: Option<ProgSummary>,
    /// Programs with own tables ([`MapBinding::Own`]): the copy loaded for the spare
    /// tables, which the next in-place update switches the slot to.
    pub spare: Option<ProgSummary>,
}

/// Conntrack fill level in [`Status`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ConntrackStatus {
    /// Entries in `POLC_CT` (expired ones included until evicted).
    pub entries: u64,
    /// Capacity.
    pub max_entries: u32,
}

/// Reports what is attached under `pin_path`.
pub fn status(pin_path: &Path) -> Result<Status> {
    if !pin_path.is_dir() {
        return Err(DataplaneError::NotAttached(pin_path.display().to_string()));
    }
    let _lock = PinLock::acquire(pin_path, false)?;
    let not_attached = || DataplaneError::NotAttached(pin_path.display().to_string());
    let rt = open_runtime(pin_path)?.ok_or_else(not_attached)?;
    let generation = read_current(pin_path)?.ok_or_else(not_attached)?;
    let meta = read_meta(&gen_dir(pin_path, generation))?.ok_or_else(not_attached)?;

    let mut runtime = Vec::new();
    for fd in [&rt.from_ep, &rt.to_ep] {
        runtime.push(bpffs::prog_summary(fd.as_fd())?);
    }
    if let Some(epi) = bpffs::get_pinned(&pin_path.join(PROG_EPILOGUE))? {
        runtime.push(bpffs::prog_summary(epi.as_fd())?);
    }
    let from_id = runtime.first().map(|p| p.id);
    let to_id = runtime.get(1).map(|p| p.id);

    let policy = |idx: usize| -> Result<PolicyStatus> {
        let p = meta.programs.get(idx).ok_or_else(|| failed("record: bad program index"))?;
        let kernel = match sys::map_lookup(rt.jump.as_fd(), &p.slot.to_ne_bytes())? {
            Some(v) => {
                let id = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_ne_bytes).unwrap_or(0);
                match bpffs::prog_by_id(id)? {
                    Some(fd) => Some(bpffs::prog_summary(fd.as_fd())?),
                    None => None,
                }
            }
            None => None,
        };
        let spare = match p.live_copy {
            Some(live) => {
                let pin = gen_dir(pin_path, generation).join(own_prog_pin(idx, 1 - live.min(1)));
                match bpffs::get_pinned(&pin)? {
                    Some(fd) => Some(bpffs::prog_summary(fd.as_fd())?),
                    None => None,
                }
            }
            None => None,
        };
        Ok(PolicyStatus {
            label: p.label.clone(),
            slot: p.slot,
            insns: p.insns,
            parts: p.parts,
            kernel,
            spare,
        })
    };
    let mut endpoints = Vec::new();
    for ep in &meta.endpoints {
        let mut tc = Vec::new();
        for l in meta.links.iter().filter(|l| l.ifindex == ep.ifindex) {
            let want = if l.hook == TcHook::Ingress { from_id } else { to_id };
            let attached = match l.kind {
                LinkKind::Tcx => Some(
                    bpffs::tcx_query(l.ifindex, l.hook.tcx_type())
                        .is_ok_and(|ids| want.is_some_and(|w| ids.contains(&w))),
                ),
                LinkKind::Legacy => None,
            };
            tc.push(HookStatus { hook: l.hook, kind: l.kind, attached });
        }
        endpoints.push(EndpointStatus {
            name: ep.name.clone(),
            ifname: ep.ifname.clone(),
            ifindex: ep.ifindex,
            endpoint_id: ep.endpoint_id,
            tc,
            ingress: ep.ingress.map(&policy).transpose()?,
            egress: ep.egress.map(&policy).transpose()?,
            ingress_v6: ep.ingress_v6.map(&policy).transpose()?,
            egress_v6: ep.egress_v6.map(&policy).transpose()?,
            addresses: ep.addresses.clone(),
        });
    }

    let entries = sys::map_count(rt.ct.as_fd())?;
    let ct_info = sys::map_info(rt.ct.as_fd())?;
    let mut drops = BTreeMap::new();
    for reason in 0..drop_reason::COUNT {
        let name = drop_reason::NAMES
            .get(reason as usize)
            .map_or_else(|| format!("reason_{reason}"), |n| n.to_string());
        let sum = percpu_u64_sum(rt.drops.as_fd(), reason)?;
        if reason < drop_reason::NAMES.len() as u32 || sum > 0 {
            drops.insert(name, sum);
        }
    }
    Ok(Status {
        pin_path: pin_path.display().to_string(),
        generation,
        runtime,
        endpoints,
        conntrack: ConntrackStatus { entries, max_entries: ct_info.max_entries },
        drops,
        services: (meta.services.iter())
            .map(|s| ServiceStatus {
                name: s.label.clone(),
                service_id: s.service_id,
                backends: s.backends.len(),
            })
            .collect(),
    })
}

fn percpu_u64_sum(map: BorrowedFd<'_>, key: u32) -> Result<u64> {
    let per_cpu = sys::map_lookup_percpu(map, &key.to_ne_bytes())?.unwrap_or_default();
    Ok(per_cpu
        .iter()
        .filter_map(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_ne_bytes)
        .fold(0u64, u64::wrapping_add))
}

/// Which policy of an endpoint `dump` shows (seen from the pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyDirection {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

/// `polc dump`: one attached program's listing annotated with rule hits.
#[derive(Clone, Debug, Serialize)]
pub struct Dump {
    /// `namespace/pod`.
    pub endpoint: String,
    /// `ingress` or `egress` (policy direction).
    pub direction: String,
    /// The slot of its first program (IPv4 if the pod has IPv4).
    pub slot: u32,
    /// Hits by rule id (summed over CPUs) for the rules the listing names, with their
    /// descriptions, in rule-id order.
    pub rules: Vec<RuleHits>,
    /// The listing; each line naming `rule id N` ends with `[hits: X]`.
    pub listing: String,
}

/// One rule's hit count in a [`Dump`].
#[derive(Clone, Debug, Serialize)]
pub struct RuleHits {
    /// Rule id.
    pub id: u32,
    /// Packets (flows' first packets) this rule decided, summed over CPUs. Rules are
    /// shared between programs, so this counts every endpoint the rule applies to.
    pub hits: u64,
    /// What the rule is.
    pub description: String,
}

/// The annotated listing of the program enforcing `direction` on interface `ifname`.
pub fn dump(pin_path: &Path, ifname: &str, direction: PolicyDirection) -> Result<Dump> {
    if !pin_path.is_dir() {
        return Err(DataplaneError::NotAttached(pin_path.display().to_string()));
    }
    let _lock = PinLock::acquire(pin_path, false)?;
    let not_attached = || DataplaneError::NotAttached(pin_path.display().to_string());
    let generation = read_current(pin_path)?.ok_or_else(not_attached)?;
    let dir = gen_dir(pin_path, generation);
    let meta = read_meta(&dir)?.ok_or_else(not_attached)?;
    let ep = meta
        .endpoints
        .iter()
        .find(|e| e.ifname == ifname)
        .ok_or_else(|| invalid(format!("interface `{ifname}` is not a polc endpoint")))?;
    // One program per family the pod has; a dual-stack pod's listings follow each other.
    let idxs: Vec<usize> = match direction {
        PolicyDirection::Ingress => [ep.ingress, ep.ingress_v6],
        PolicyDirection::Egress => [ep.egress, ep.egress_v6],
    }
    .into_iter()
    .flatten()
    .collect();
    let mut programs = Vec::new();
    for idx in idxs {
        programs.push(meta.programs.get(idx).ok_or_else(|| failed("record: bad program index"))?);
    }
    let first = programs.first().ok_or_else(|| failed("record: endpoint without programs"))?;
    let counters = match &first.counters {
        Some(name) => bpffs::get_pinned(&dir.join(name))?,
        None => None,
    };
    let mut hits: BTreeMap<u32, u64> = BTreeMap::new();
    let mut listing = String::new();
    let lines = programs.iter().flat_map(|p| p.listing.lines());
    for line in lines {
        listing.push_str(line);
        if let Some(id) = rule_id_in(line) {
            let n = match (&counters, hits.get(&id)) {
                (_, Some(&n)) => n,
                (Some(fd), None) => percpu_u64_sum(fd.as_fd(), id).unwrap_or(0),
                (None, None) => 0,
            };
            hits.insert(id, n);
            listing.push_str(&format!("  [hits: {n}]"));
        }
        listing.push('\n');
    }
    let rules = hits
        .into_iter()
        .map(|(id, hits)| RuleHits {
            id,
            hits,
            description: meta.rules.get(id as usize).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(Dump {
        endpoint: ep.name.clone(),
        direction: match direction {
            PolicyDirection::Ingress => "ingress".into(),
            PolicyDirection::Egress => "egress".into(),
        },
        slot: first.slot,
        rules,
        listing,
    })
}

/// The `POLC_JUMP` slot of program `idx` of the record, `None` without a program.
fn slot_of(meta: &Meta, idx: Option<usize>) -> Option<u32> {
    idx.and_then(|i| meta.programs.get(i)).map(|p| p.slot)
}

/// The `POLC_EP` value of an endpoint: its slots by family ([`SLOT_NONE`] for a family it
/// does not have); `None` if the record names a program it does not hold.
fn endpoint_value(meta: &Meta, ep: &MetaEndpoint) -> Option<Endpoint> {
    let slot = |idx: Option<usize>| match idx {
        None => Some(SLOT_NONE),
        Some(i) => meta.programs.get(i).map(|p| p.slot),
    };
    let a = ep;
    let mut value = Endpoint {
        endpoint_id: ep.endpoint_id,
        ingress_slot: slot(a.ingress)?,
        egress_slot: slot(a.egress)?,
        flags: 0,
        ingress_slot_v6: slot(a.ingress_v6)?,
        egress_slot_v6: slot(a.egress_v6)?,
        ..Endpoint::default()
    };
    for &addr in &ep.addresses {
        value.set_address(addr);
    }
    Some(value)
}

/// The N of `rule id N` in a listing comment line.
fn rule_id_in(line: &str) -> Option<u32> {
    if !line.starts_with(';') {
        return None;
    }
    let rest = line.split("rule id ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The value stored in `POLC_EP` for an interface, if any (for tests and tools).
pub fn endpoint_entry(pin_path: &Path, ifindex: u32) -> Result<Option<Endpoint>> {
    let rt = open_runtime(pin_path)?
        .ok_or_else(|| DataplaneError::NotAttached(pin_path.display().to_string()))?;
    let Some(v) = sys::map_lookup(rt.ep.as_fd(), &ifindex.to_ne_bytes())? else {
        return Ok(None);
    };
    let b = <[u8; ENDPOINT_SIZE]>::try_from(v.as_slice())
        .map_err(|_| failed("POLC_EP value has the wrong size"))?;
    Ok(Some(Endpoint::from_bytes(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld_map(dst: u8, handle: u32) -> [u8; 16] {
        let mut w = [0u8; 16];
        w[0] = 0x18;
        w[1] = (1 << 4) | dst;
        w[4..8].copy_from_slice(&handle.to_le_bytes());
        w
    }

    #[test]
    fn handles_become_fds_only_in_map_loads() {
        let mut prog = Vec::new();
        prog.extend_from_slice(&ld_map(1, 4));
        // LD_IMM64 with src 0 (a plain constant 4) must stay.
        prog.extend_from_slice(&[0x18, 0x02, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        prog.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        // A map value address (src 2): handle 4 at offset 0x40; the offset stays.
        let mut value = ld_map(3, 4);
        value[1] = (2 << 4) | 3;
        value[12..16].copy_from_slice(&0x40u32.to_le_bytes());
        prog.extend_from_slice(&value);
        let out = patch_handles(&prog, |h| (h == 4).then_some(77)).unwrap();
        assert_eq!(&out[4..8], &77u32.to_le_bytes());
        assert_eq!(&out[20..24], &4u32.to_le_bytes());
        assert_eq!(&out[32..40], &prog[32..40]);
        assert_eq!(&out[44..48], &77u32.to_le_bytes());
        assert_eq!(&out[52..56], &0x40u32.to_le_bytes());
    }

    #[test]
    fn unknown_handles_and_cut_instructions_are_errors() {
        let e = patch_handles(&ld_map(1, 9), |_| None).unwrap_err();
        assert!(e.contains("map handle 9"), "{e}");
        let e = patch_handles(&ld_map(1, 9)[..8], |_| Some(3)).unwrap_err();
        assert!(e.contains("second half"), "{e}");
        assert!(patch_handles(&[0u8; 12], |_| Some(3)).is_err());
    }

    #[test]
    fn rule_ids_are_read_from_comment_lines_only() {
        assert_eq!(
            rule_id_in("; tier t / p / ingress rule 0: allow (rule id 12; f.yaml)"),
            Some(12)
        );
        assert_eq!(rule_id_in("; tier default: deny (rule id 1)"), Some(1));
        assert_eq!(rule_id_in("      7:\tr0 = 0x2 rule id 3"), None);
        assert_eq!(rule_id_in("; no id here"), None);
    }

    #[test]
    fn descriptions_are_validated() {
        let prog = PolicyProgram {
            label: "p".into(),
            parts: vec![vec![0x95, 0, 0, 0, 0, 0, 0, 0]],
            maps: vec![(2, MapBinding::Shared(0))],
            counters: None,
            listing: String::new(),
            insns: 1,
        };
        let ep = EndpointAttach {
            name: "a/b".into(),
            ifname: "x".into(),
            ingress: Some(0),
            egress: Some(0),
            ingress_v6: None,
            egress_v6: None,
            addresses: vec![IpAddr::from([10, 0, 0, 1])],
        };
        let d = Desired {
            maps: vec![],
            programs: vec![prog],
            endpoints: vec![ep.clone()],
            rules: vec![],
            services: vec![],
        };
        assert!(validate(&d).unwrap_err().to_string().contains("handle 2"));
        let mut d2 = d.clone();
        d2.programs[0].maps.clear();
        d2.endpoints.push(ep);
        assert!(validate(&d2).unwrap_err().to_string().contains("named by two"));
        let mut d3 = d2.clone();
        d3.endpoints[1].ifname = "other0".into();
        let e = validate(&d3).unwrap_err().to_string();
        assert!(e.contains("a/b is given two interfaces (`x` and `other0`)"), "{e}");
        let bad_map = MapDef {
            name: "a.b".into(),
            kind: MapKind::Hash,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            entries: vec![],
        };
        let mut d4 = d.clone();
        d4.programs[0].maps.clear();
        d4.endpoints[0].egress_v6 = Some(0);
        assert!(validate(&d4).unwrap_err().to_string().contains("each family"));
        d4.endpoints[0].ingress_v6 = Some(0);
        let e = validate(&d4).unwrap_err().to_string();
        assert!(e.contains("IPv6 programs but no IPv6 address"), "{e}");
        d4.endpoints[0].addresses.push("fd77::1".parse().unwrap());
        assert!(validate(&d4).is_ok());
        d4.endpoints[0].addresses.push(IpAddr::from([10, 0, 0, 2]));
        let e = validate(&d4).unwrap_err().to_string();
        assert!(e.contains("has 2 IPv4 addresses; at most one per family"), "{e}");
        d4.endpoints[0].addresses.truncate(2);
        d4.endpoints[0].ingress_v6 = Some(1);
        assert!(validate(&d4).unwrap_err().to_string().contains("missing program"));
        let d3 = Desired { maps: vec![bad_map.clone()], ..Desired::default() };
        assert!(validate(&d3).unwrap_err().to_string().contains("`a.b`"));
        // Own maps: one program, one part; their copies' pin names are reserved.
        let table = MapDef { name: "classes_0".into(), ..bad_map.clone() };
        let mut d5 = Desired { maps: vec![table], ..d.clone() };
        d5.programs[0].maps = vec![(2, MapBinding::Own(0))];
        assert!(validate(&d5).is_ok());
        let mut two = d5.clone();
        let other =
            PolicyProgram { maps: vec![(3, MapBinding::Shared(0))], ..d5.programs[0].clone() };
        two.programs.push(other);
        assert!(validate(&two).unwrap_err().to_string().contains("bound elsewhere"));
        let mut parts = d5.clone();
        parts.programs[0].parts.push(vec![0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert!(validate(&parts).unwrap_err().to_string().contains("has parts and own tables"));
        for reserved in ["copyb_x", "prog_1_a"] {
            let m = MapDef { name: reserved.into(), ..bad_map.clone() };
            let d6 = Desired { maps: vec![m], ..Desired::default() };
            assert!(validate(&d6).unwrap_err().to_string().contains(reserved), "{reserved}");
        }
        let svc = ServiceDef {
            label: "service a/b 10.96.0.1:80/TCP".into(),
            frontend: NatFrontendKey {
                addr: [10, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                port: 80,
                protocol: 6,
                family: 4,
            },
            affinity_timeout_s: None,
            backends: vec![],
        };
        let d5 = Desired { services: vec![svc.clone(), svc], ..Desired::default() };
        assert!(validate(&d5).unwrap_err().to_string().contains("described twice"));
    }
}
