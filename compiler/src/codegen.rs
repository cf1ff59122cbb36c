//! Code generation at -O0: one endpoint x direction x family of IR -> a policy program that
//! evaluates tiers, policies and rules one by one (Calico-style linear evaluation).
//!
//! The program reads the flow from the per-CPU `FlowState` the runtime filled, writes the
//! verdict and the deciding rule's id back, counts a hit for that rule, and tail-calls the
//! epilogue. Address matches are lookups in an LPM-trie IP-set map keyed by (set id,
//! address); named ports on selected peers are lookups in a hash map keyed by (set id,
//! protocol, port, address). Both maps' contents are part of the compile output.
//! This is the baseline the optimiser is measured and cross-checked against.

use crate::asm::{helper, AluOp, Asm, AsmError, Cond, Insn, Label, Program, Reg, Size};
use polc_abi as abi;
use polc_ir::{
    proto, Action, Direction, EndMatch, EndpointPolicy, Family, IcmpMatch, Match, PortMatch,
    Prefix, TierDefault,
};
pub use polc_loader::sys::MapKind;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Map handles: the immediate of each map-loading LD_IMM64 (the loader patches fds in, the
/// ELF writer turns them into relocations, the vm engine uses them as they are).
pub mod map {
    /// Per-CPU `FlowState` shared with the runtime (`POLC_STATE`).
    pub const STATE: u32 = 0;
    /// The prog array the epilogue lives in (`POLC_JUMP`).
    pub const JUMP: u32 = 1;
    /// LPM trie of IP-set members for this program's family.
    pub const IPSETS: u32 = 2;
    /// Hash of (set, protocol, port, address) for named ports on selected peers.
    pub const NAMED_PORTS: u32 = 3;
    /// Per-CPU array of hit counters by rule id.
    pub const COUNTERS: u32 = 4;
    /// The program's own prog array of its parts (only programs split into parts).
    pub const PARTS: u32 = 5;
    /// The program's own LPM map of peer-address classes (-O2 programs).
    pub const CLASSES: u32 = 6;
    /// The program's own hash of address x port pairs (-O2 programs with many).
    pub const PAIRS: u32 = 7;
    /// The program's own LPM map: peer address -> bitmap of the peer-side sets holding it
    /// (-O1 programs).
    pub const PEER_BITS: u32 = 8;
    /// The program's own array: protocol slot x 65536 + destination port -> port row
    /// (-O2 programs with too many port classes for a branch tree).
    pub const PORTS: u32 = 9;
    /// The program's own array: port row -> (pair port class, first port-only rule per tier).
    pub const PORT_ROWS: u32 = 10;
    /// The program's own array: pair row x port pair class -> pair value index (-O2).
    pub const PAIR_CELLS: u32 = 11;
    /// The program's own array: pair value index -> first pair rule per tier (-O2).
    pub const PAIR_VALUES: u32 = 12;
    /// The program's own array of IPv4 class trie nodes: 256 entries, one per address
    /// byte value, each a class or a child node (-O2 programs).
    pub const CLASS_TRIE: u32 = 13;
    /// The program's own array: address class -> (pair row, first address-only rule per
    /// tier), what the LPM map of classes holds per prefix (-O2 programs with a class trie).
    pub const CLASS_VALUES: u32 = 14;
}

/// Shortest run of same-protocol rules worth a protocol guard (the guard costs two
/// instructions; each rule of the run starts with the same protocol test anyway).
const MIN_GUARDED_RUN: usize = 3;

/// A map's (key, value) entries, as bytes.
pub type MapContents = Vec<(Vec<u8>, Vec<u8>)>;

/// Most peer-side sets an -O1 program tests by bitmap (each is one bit of every entry).
pub const MAX_PEER_BITS: usize = 16 * 1024;

/// A map a generated program refers to, by handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapSpec {
    pub handle: u32,
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// LPM key: u32 prefix length (host order), u32 set id (big-endian, so it is the leading
/// 32 bits of the prefix), then the address in network order.
pub fn ipset_key_size(family: Family) -> u32 {
    8 + address_bytes(family)
}

/// Named-port key: u32 set id, u8 protocol, u8 zero, u16 port (host order), 16-byte address
/// (IPv4 in the first 4 bytes, the rest zero, as in `FlowState`).
pub const NAMED_PORT_KEY_SIZE: u32 = 24;

fn address_bytes(family: Family) -> u32 {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

/// The maps of a program of `family`, sized for the given contents.
/// Capacity for a map that holds `n` entries now: room to grow, rounded to a power of two,
/// so that pod churn changes map contents but not map shapes, and the loader can update the
/// live maps in place instead of loading a new generation (docs/loader.md).
pub fn room_for(n: usize) -> u32 {
    let want = n.saturating_add(n / 4).max(64);
    u32::try_from(want.next_power_of_two()).unwrap_or(u32::MAX)
}

pub fn map_specs(
    family: Family,
    ipset_entries: usize,
    named_entries: usize,
    rules: usize,
) -> Vec<MapSpec> {
    let fam = match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    };
    vec![
        MapSpec {
            handle: map::STATE,
            name: abi::MAP_STATE.to_string(),
            kind: MapKind::PerCpuArray,
            key_size: 4,
            value_size: abi::FLOW_STATE_SIZE as u32,
            max_entries: abi::STATE_ENTRIES,
            flags: 0,
        },
        MapSpec {
            handle: map::JUMP,
            name: abi::MAP_JUMP.to_string(),
            kind: MapKind::ProgArray,
            key_size: 4,
            value_size: 4,
            max_entries: abi::JUMP_ENTRIES,
            flags: 0,
        },
        MapSpec {
            handle: map::IPSETS,
            name: format!("polc_ipsets_{fam}"),
            kind: MapKind::LpmTrie,
            key_size: ipset_key_size(family),
            value_size: 4,
            max_entries: room_for(ipset_entries),
            // LPM tries must be created with BPF_F_NO_PREALLOC.
            flags: 1,
        },
        MapSpec {
            handle: map::NAMED_PORTS,
            name: "polc_namedports".to_string(),
            kind: MapKind::Hash,
            key_size: NAMED_PORT_KEY_SIZE,
            value_size: 4,
            max_entries: room_for(named_entries),
            flags: 0,
        },
        MapSpec {
            handle: map::COUNTERS,
            name: "polc_rule_hits".to_string(),
            kind: MapKind::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: rules.max(1) as u32,
            flags: 0,
        },
    ]
}

/// The prog array of a program's parts (created per split program by whoever loads it).
pub fn parts_map_spec(parts: usize) -> MapSpec {
    MapSpec {
        handle: map::PARTS,
        name: "polc_parts".to_string(),
        kind: MapKind::ProgArray,
        key_size: 4,
        value_size: 4,
        max_entries: parts.max(1) as u32,
        flags: 0,
    }
}

/// What a rule id stands for: a rule, a tier's default action, or the default profile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKey {
    Rule {
        direction: Direction,
        tier: String,
        policy: String,
        kind: String,
        index: usize,
    },
    TierDefault {
        direction: Direction,
        tier: String,
    },
    /// No tier selected the endpoint (or traffic passed out of the last tier): allow.
    Profile {
        direction: Direction,
        passed: bool,
    },
}

impl RuleKey {
    /// The comment/label shown in listings and `polc dump`.
    pub fn describe(&self) -> String {
        match self {
            RuleKey::Rule { tier, policy, kind, index, direction } => {
                format!("tier {tier} / {kind} {policy} / {} rule {index}", direction.as_str())
            }
            RuleKey::TierDefault { tier, .. } => {
                format!("tier {tier}: no rule decided, tier default action")
            }
            RuleKey::Profile { passed: false, .. } => {
                "no policy selects this endpoint: default profile allows".to_string()
            }
            RuleKey::Profile { passed: true, .. } => {
                "passed out of the last tier: default profile allows".to_string()
            }
        }
    }
}

/// Interns rule identities into dense ids (the counters map index and `FlowState.rule_id`).
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    ids: BTreeMap<RuleKey, u32>,
    keys: Vec<RuleKey>,
}

impl RuleTable {
    pub fn id(&mut self, key: RuleKey) -> u32 {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key.clone());
        self.ids.insert(key, id);
        id
    }
    pub fn key(&self, id: u32) -> Option<&RuleKey> {
        self.keys.get(id as usize)
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

// Stack layout (offsets from r10).
const STACK_U32_KEY: i16 = -4;
const STACK_LPM_KEY: i16 = -32; // up to 24 bytes: -32..-8
const STACK_NAMED_KEY: i16 = -64; // 24 bytes: -64..-40

// Registers that live across helper calls.
const CTX: Reg = Reg::R6;
const STATE: Reg = Reg::R7;
const VERDICT: Reg = Reg::R8;
const RULE_ID: Reg = Reg::R9;
/// -O1: the peer's set bitmap while rules are evaluated (`RULE_ID` is only written right
/// before jumping to `decide`, and fixed-id hit counting leaves it alone).
const PEER_BITS: Reg = Reg::R9;

/// Size limits of one generated program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A part is closed at the first rule boundary past this many instruction slots. Below
    /// 32k every jump inside a part keeps a 16-bit offset (no `gotol`, which rbpf lacks),
    /// and each part stays far below the verifier's 1M-instruction complexity budget.
    pub part_insns: usize,
    /// Most parts one program may have. The kernel allows 33 tail calls per packet: one
    /// from the runtime into part 0, one per part hop, one into the epilogue, and a margin
    /// for the runtime's own use.
    pub max_parts: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { part_insns: 16_384, max_parts: 28 }
    }
}

/// Why a program could not be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodegenError {
    Asm(AsmError),
    /// Even split into tail-called parts, the program does not fit.
    TooLarge {
        rules: usize,
        parts: usize,
        limits: Limits,
    },
}

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodegenError::Asm(e) => e.fmt(f),
            CodegenError::TooLarge { rules, parts, limits } => write!(
                f,
                "{rules} rules need {parts} tail-called parts of at most {} instructions; \
                 the limit is {} parts (the kernel allows 33 tail calls per packet)",
                limits.part_insns, limits.max_parts
            ),
        }
    }
}

impl From<AsmError> for CodegenError {
    fn from(e: AsmError) -> CodegenError {
        CodegenError::Asm(e)
    }
}

/// A generated program: part 0 is what the runtime tail-calls; a program too large for one
/// part continues in parts 1.. (program-local prog array [`map::PARTS`]), each resuming at
/// the entry point named by `FlowState.resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub parts: Vec<Program>,
    /// For each part, the parts it may tail-call (always later ones).
    pub next_parts: Vec<Vec<usize>>,
}

/// `FlowState.resume` value that enters part `j` where part `j - 1` stopped.
fn resume_part(j: usize) -> i32 {
    j as i32
}

/// `FlowState.resume` value that enters at the start of tier `t` (`t == tiers.len()`: the
/// default profile after the last tier), the target of a Pass in an earlier part.
fn resume_tier(t: usize) -> i32 {
    0x1_0000 + t as i32
}

/// Generate the -O0 policy program for one endpoint, direction and family.
pub fn generate(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    limits: Limits,
) -> Result<Generated, CodegenError> {
    generate_with(ep, family, rules, limits, None)
}

/// -O1: the -O0 program, except that every test of the peer's address against a set is a
/// bit test in one bitmap the part's prologue looks up once (LPM: peer address -> the
/// peer-side sets holding it), instead of one LPM lookup per test. Also returns that map.
/// `None` when the policy has no peer-side set or more than [`MAX_PEER_BITS`].
pub fn generate_peer_bits(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    limits: Limits,
) -> Result<Option<(Generated, MapSpec, MapContents)>, CodegenError> {
    let Some(bits) = PeerBits::of(ep, family) else { return Ok(None) };
    let (spec, entries) = bits.map(ep, family);
    let g = generate_with(ep, family, rules, limits, Some(&bits))?;
    Ok(Some((g, spec, entries)))
}

fn generate_with(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    limits: Limits,
    bits: Option<&PeerBits>,
) -> Result<Generated, CodegenError> {
    // The first pass learns in which part each tier starts; the second emits the tail
    // calls to those parts. Only immediates differ, so the layout is the same.
    let guess = vec![0; ep.tiers.len() + 1];
    let first = emit(ep, family, rules, limits, &guess, bits)?;
    if first.tier_part == guess {
        return Ok(first.generated);
    }
    let second = emit(ep, family, rules, limits, &first.tier_part, bits)?;
    debug_assert_eq!(second.tier_part, first.tier_part);
    Ok(second.generated)
}

/// The peer-side sets of a policy, numbered as bits (-O1).
struct PeerBits {
    /// The peer's address in the state: the source on ingress, the destination on egress.
    peer_off: i16,
    bit: BTreeMap<polc_ir::IpSetId, usize>,
}

impl PeerBits {
    fn of(ep: &EndpointPolicy, family: Family) -> Option<PeerBits> {
        let ingress = ep.direction == Direction::Ingress;
        let mut bit = BTreeMap::new();
        for rule in ep.tiers.iter().flat_map(|t| &t.policies).flat_map(|p| &p.rules) {
            if rule.matches.ip_version.is_some_and(|v| v != family) {
                continue;
            }
            let peer = if ingress { &rule.matches.src } else { &rule.matches.dst };
            for id in peer.in_sets.iter().chain(&peer.not_in_sets) {
                let next = bit.len();
                bit.entry(*id).or_insert(next);
            }
        }
        if bit.is_empty() || bit.len() > MAX_PEER_BITS {
            return None;
        }
        let peer_off = if ingress { abi::FLOW_SRC_ADDR } else { abi::FLOW_DST_ADDR } as i16;
        Some(PeerBits { peer_off, bit })
    }

    /// Bitmap bytes per entry (a multiple of 8).
    fn value_size(&self) -> usize {
        self.bit.len().div_ceil(64) * 8
    }

    /// The LPM map: every member prefix of a peer-side set (and 0/0) -> the sets holding
    /// every address whose longest match it is. Prefixes holding a common address nest, so
    /// those are exactly the sets with a member covering the prefix.
    fn map(&self, ep: &EndpointPolicy, family: Family) -> (MapSpec, MapContents) {
        let mut direct: BTreeMap<Prefix, Vec<usize>> = BTreeMap::new();
        let any = Prefix::new(unspecified(family), 0);
        direct.extend(any.map(|p| (p, Vec::new())));
        for (id, &b) in &self.bit {
            for m in ep.ip_set(*id).into_iter().flat_map(|s| &s.members) {
                if m.family() == family {
                    direct.entry(*m).or_default().push(b);
                }
            }
        }
        let prefixes: Vec<Prefix> = direct.keys().copied().collect();
        let mut entries = Vec::with_capacity(prefixes.len());
        for p in &prefixes {
            let mut value = vec![0u8; self.value_size()];
            // The prefixes covering `p`: `p`'s address cut to each shorter length.
            for len in 0..=p.len() {
                let q = Prefix::new(p.addr(), len);
                for &b in q.and_then(|q| direct.get(&q)).into_iter().flatten() {
                    value[b / 8] |= 1 << (b % 8);
                }
            }
            let mut key = (p.len() as u32).to_ne_bytes().to_vec();
            match p.addr() {
                IpAddr::V4(a) => key.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => key.extend_from_slice(&a.octets()),
            }
            entries.push((key, value));
        }
        let spec = MapSpec {
            handle: map::PEER_BITS,
            name: "polc_peerbits".to_string(),
            kind: MapKind::LpmTrie,
            key_size: 4 + address_bytes(family),
            value_size: self.value_size() as u32,
            max_entries: room_for(entries.len()),
            // LPM tries must be created with BPF_F_NO_PREALLOC.
            flags: 1,
        };
        (spec, entries)
    }
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

struct Emitted {
    generated: Generated,
    tier_part: Vec<usize>,
}

/// One pass of code generation; `tier_part[t]` is the part tier `t` starts in (a guess
/// in the first pass).
fn emit(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    limits: Limits,
    tier_part: &[usize],
    bits: Option<&PeerBits>,
) -> Result<Emitted, CodegenError> {
    let total_rules: usize = ep.tiers.iter().flat_map(|t| &t.policies).map(|p| p.rules.len()).sum();
    let mut a = Asm::new();
    let part = PartState::new(&mut a);
    let mut e = Emitter {
        g: Gen { a, family, bits },
        part,
        parts: Vec::new(),
        next_parts: Vec::new(),
        pending: Vec::new(),
        tier_part: vec![0; ep.tiers.len() + 1],
        targets: tier_part,
        limits,
        guard: None,
    };
    e.open_part();
    // The runtime has already dropped flows whose endpoint side is not the endpoint's own
    // address (anti-spoofing, docs/semantics.md): the program decides only the rest.
    if ep.tiers.is_empty() {
        let key = RuleKey::Profile { direction: ep.direction, passed: false };
        let id = rules.id(key.clone());
        e.g.a.comment(key.describe());
        e.g.set_verdict(abi::verdict::ALLOW, id);
        e.g.a.jump(e.part.decide);
    } else {
        for (t, tier) in ep.tiers.iter().enumerate() {
            if t > 0 {
                e.maybe_split(t - 1, ep, total_rules)?;
            }
            e.start_tier(t);
            e.g.a.comment(format!(
                "tier {} (order {}, default {})",
                tier.name,
                tier.order.map_or("none".to_string(), |o| o.to_string()),
                tier.default_action.as_str()
            ));
            let tier_rules: Vec<(&polc_ir::Policy, &polc_ir::Rule)> =
                tier.policies.iter().flat_map(|p| p.rules.iter().map(move |r| (p, r))).collect();
            for (i, &(pol, rule)) in tier_rules.iter().enumerate() {
                {
                    e.maybe_split(t, ep, total_rules)?;
                    e.protocol_guard(&tier_rules[i..]);
                    let key = RuleKey::Rule {
                        direction: ep.direction,
                        tier: tier.name.clone(),
                        policy: pol.source.qualified_name(),
                        kind: pol.source.kind.clone(),
                        index: rule.index,
                    };
                    let id = rules.id(key.clone());
                    let next = e.g.a.label();
                    e.g.a.comment(format!(
                        "{}: {} (rule id {id}; {} document {})",
                        key.describe(),
                        rule.action.as_str(),
                        pol.source.file,
                        pol.source.doc
                    ));
                    if !e.g.match_rule(&rule.matches, next) {
                        // The rule cannot match in this family: nothing to emit.
                        e.g.a.bind(next);
                        continue;
                    }
                    match rule.action {
                        Action::Log => e.g.count(Reg::R9, Some(id)),
                        Action::Pass => {
                            e.g.count(Reg::R9, Some(id));
                            let end = e.tier_end();
                            e.g.a.jump(end);
                        }
                        Action::Allow | Action::Deny => {
                            let v = if rule.action == Action::Allow {
                                abi::verdict::ALLOW
                            } else {
                                abi::verdict::DENY
                            };
                            e.g.set_verdict(v, id);
                            e.g.a.jump(e.part.decide);
                        }
                    }
                    e.g.a.bind(next);
                }
            }
            e.close_guard();
            if tier.default_action == TierDefault::Deny {
                let key = RuleKey::TierDefault { direction: ep.direction, tier: tier.name.clone() };
                let id = rules.id(key.clone());
                e.g.a.comment(format!("{}: deny (rule id {id})", key.describe()));
                e.g.set_verdict(abi::verdict::DENY, id);
                e.g.a.jump(e.part.decide);
            }
            if let Some(end) = e.part.tier_end.take() {
                e.g.a.bind(end);
            }
        }
        e.maybe_split(ep.tiers.len() - 1, ep, total_rules)?;
        e.start_tier(ep.tiers.len());
        let key = RuleKey::Profile { direction: ep.direction, passed: true };
        let id = rules.id(key.clone());
        e.g.a.comment(format!("{} (rule id {id})", key.describe()));
        e.g.set_verdict(abi::verdict::ALLOW, id);
    }
    e.close_part()?;
    Ok(Emitted {
        generated: Generated { parts: e.parts, next_parts: e.next_parts },
        tier_part: e.tier_part,
    })
}

/// A rough part count for the error message when a program does not fit.
fn estimate_parts(ep: &EndpointPolicy, family: Family, limits: Limits) -> usize {
    let mut g = Gen { a: Asm::new(), family, bits: None };
    for rule in ep.tiers.iter().flat_map(|t| &t.policies).flat_map(|p| &p.rules) {
        let next = g.a.label();
        g.match_rule(&rule.matches, next);
        g.a.bind(next);
    }
    g.a.slots().div_ceil(limits.part_insns.max(1))
}

/// The prologue of every generated program: the context into `ctx`, this CPU's
/// `FlowState` into `state`, to `fail` when the lookup finds none.
pub(crate) fn emit_state_lookup(a: &mut Asm, ctx: Reg, state: Reg, fail: Label) {
    a.push(Insn::mov64(ctx, Reg::R1));
    a.push(Insn::st(Size::W, Reg::R10, STACK_U32_KEY, abi::STATE_KEY as i32));
    a.push(Insn::mov64(Reg::R2, Reg::R10));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_U32_KEY as i32));
    a.push(Insn::ld_map_fd(Reg::R1, map::STATE));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, fail);
    a.push(Insn::mov64(state, Reg::R0));
}

/// `r0` = the value LPM map `handle` holds for the peer's address (read from the
/// `FlowState` in `state` at `peer_off`), to `fail` when it holds none.
pub(crate) fn emit_peer_lpm_lookup(
    a: &mut Asm,
    family: Family,
    state: Reg,
    peer_off: i16,
    handle: u32,
    fail: Label,
) {
    a.push(Insn::st(Size::W, Reg::R10, STACK_LPM_KEY, family.bits() as i32));
    // 32-bit words: the address starts 4 bytes into the key, not 8-aligned.
    let words = match family {
        Family::V4 => 1,
        Family::V6 => 4,
    };
    for w in 0..words {
        a.push(Insn::ldx(Size::W, Reg::R1, state, peer_off + 4 * w));
        a.push(Insn::stx(Size::W, Reg::R10, STACK_LPM_KEY + 4 + 4 * w, Reg::R1));
    }
    a.push(Insn::mov64(Reg::R2, Reg::R10));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_LPM_KEY as i32));
    a.push(Insn::ld_map_fd(Reg::R1, handle));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, fail);
}

/// Labels and entry points of the part being emitted.
struct PartState {
    decide: Label,
    fail: Label,
    /// Where the entry dispatch goes (after the prologue), inserted when the part closes.
    dispatch_at: usize,
    /// Tiers whose start is in this part, with their labels.
    tier_starts: Vec<(usize, Label)>,
    /// Where a Pass in the current tier jumps, in this part (created on first use).
    tier_end: Option<Label>,
}

impl PartState {
    fn new(a: &mut Asm) -> PartState {
        PartState {
            decide: a.label(),
            fail: a.label(),
            dispatch_at: 0,
            tier_starts: Vec::new(),
            tier_end: None,
        }
    }
}

struct Emitter<'t> {
    g: Gen<'t>,
    part: PartState,
    parts: Vec<Program>,
    next_parts: Vec<Vec<usize>>,
    /// Tiers an earlier part tail-calls into (their parts need an entry for them).
    pending: Vec<usize>,
    /// Learned: the part each tier starts in.
    tier_part: Vec<usize>,
    /// The first pass's `tier_part`, used as tail-call targets.
    targets: &'t [usize],
    limits: Limits,
    /// The open protocol run: its protocol and where its guard jumps.
    guard: Option<(u8, Label)>,
}

impl Emitter<'_> {
    fn index(&self) -> usize {
        self.parts.len()
    }

    /// Start a part: the prologue (state pointer), and a place for the entry dispatch.
    fn open_part(&mut self) {
        let a = &mut self.g.a;
        self.part = PartState::new(a);
        let part = self.parts.len();
        if part == 0 {
            // No endpoint name here: identical programs are shared by several endpoints.
            a.comment("prologue: r7 = this CPU's FlowState (drop if missing)");
        } else {
            a.comment(format!("part {part}: r7 = this CPU's FlowState (drop if missing)"));
        }
        emit_state_lookup(a, CTX, STATE, self.part.fail);
        if let Some(bits) = self.g.bits {
            let peer_off = bits.peer_off;
            let a = &mut self.g.a;
            a.comment(format!(
                "r9 = bitmap of the {} peer-side sets holding the peer's address (one LPM lookup)",
                bits.bit.len()
            ));
            emit_peer_lpm_lookup(a, self.g.family, STATE, peer_off, map::PEER_BITS, self.part.fail);
            a.push(Insn::mov64(PEER_BITS, Reg::R0));
        }
        let a = &mut self.g.a;
        self.part.dispatch_at = a.mark();
    }

    /// Before the first of `rules` (the rest of the tier): if it starts a run of rules that
    /// all require one protocol, test the protocol once and skip the run for any other
    /// (those rules cannot match it, so skipping them changes no verdict and no count).
    fn protocol_guard(&mut self, rules: &[(&polc_ir::Policy, &polc_ir::Rule)]) {
        let family = self.g.family;
        let protocol = |r: &polc_ir::Rule| {
            r.matches.ip_version.is_none_or(|v| v == family).then_some(r.matches.protocol)
        };
        let Some(&(_, first)) = rules.first() else { return };
        let want = protocol(first).flatten();
        if let Some((open, _)) = self.guard {
            if want == Some(open) {
                return;
            }
            self.close_guard();
        }
        let Some(p) = want else { return };
        let run = rules.iter().take_while(|(_, r)| protocol(r) == Some(Some(p))).count();
        if run < MIN_GUARDED_RUN {
            return;
        }
        let end = self.g.a.label();
        let a = &mut self.g.a;
        a.comment(format!(
            "the next {run} rules all need protocol {}: skip them for any other",
            proto::name(p)
        ));
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_PROTOCOL as i16));
        a.jump_if(Cond::Ne, Reg::R1, p as i32, end);
        self.guard = Some((p, end));
    }

    /// Ends the open protocol run (its guard jumps here).
    fn close_guard(&mut self) {
        if let Some((_, end)) = self.guard.take() {
            self.g.a.bind(end);
        }
    }

    /// Split before the next rule (or tier) of tier `t` when the part is full.
    fn maybe_split(
        &mut self,
        t: usize,
        ep: &EndpointPolicy,
        total_rules: usize,
    ) -> Result<(), CodegenError> {
        if self.g.a.slots() < self.limits.part_insns {
            return Ok(());
        }
        self.split(t)?;
        if self.parts.len() >= self.limits.max_parts {
            return Err(CodegenError::TooLarge {
                rules: total_rules,
                parts: estimate_parts(ep, self.g.family, self.limits),
                limits: self.limits,
            });
        }
        Ok(())
    }

    fn start_tier(&mut self, t: usize) {
        let l = self.g.a.label();
        self.g.a.bind(l);
        self.part.tier_starts.push((t, l));
        if let Some(slot) = self.tier_part.get_mut(t) {
            *slot = self.parts.len();
        }
    }

    fn tier_end(&mut self) -> Label {
        let a = &mut self.g.a;
        *self.part.tier_end.get_or_insert_with(|| a.label())
    }

    /// Close the current part at a rule boundary inside tier `t` (or at its start) and
    /// continue in a new one.
    fn split(&mut self, t: usize) -> Result<(), AsmError> {
        let next = self.index() + 1;
        // A guard skipping the rest of a protocol run lands here: those rules cannot match,
        // so the flow continues where this part stops.
        self.close_guard();
        // Falling off the end of this part continues where it stopped, in the next part.
        self.g.a.comment(format!("no rule decided in this part: continue in part {next}"));
        self.tail_call_part(resume_part(next), next);
        // Pass rules of tier `t` in this part jump to the next tier, wherever it starts.
        // (Reached only by their jumps: the tail call above ends in `goto fail`.)
        if let Some(end) = self.part.tier_end.take() {
            let target = self.targets.get(t + 1).copied().unwrap_or(next).max(next);
            self.g.a.comment(format!(
                "a Pass leaves tier {t}: continue at tier {} in part {target}",
                t + 1
            ));
            self.g.a.bind(end);
            self.tail_call_part(resume_tier(t + 1), target);
            if !self.pending.contains(&(t + 1)) {
                self.pending.push(t + 1);
            }
        }
        self.close_part()?;
        self.open_part();
        Ok(())
    }

    /// `state.resume = resume; tail_call(parts, part)`; a failed tail call drops.
    fn tail_call_part(&mut self, resume: i32, part: usize) {
        let a = &mut self.g.a;
        a.push(Insn::st(Size::W, STATE, abi::FLOW_RESUME as i16, resume));
        a.push(Insn::mov64(Reg::R1, CTX));
        a.push(Insn::ld_map_fd(Reg::R2, map::PARTS));
        a.push(Insn::mov64(Reg::R3, part as i32));
        a.push(Insn::call(helper::TAIL_CALL));
        a.jump(self.part.fail);
        let here = self.parts.len();
        if self.next_parts.len() <= here {
            self.next_parts.resize(here + 1, Vec::new());
        }
        if !self.next_parts[here].contains(&part) {
            self.next_parts[here].push(part);
        }
    }

    /// Emit the decide and fail blocks and the entry dispatch, and assemble the part.
    fn close_part(&mut self) -> Result<(), AsmError> {
        let part = self.parts.len();
        let (decide, fail) = (self.part.decide, self.part.fail);
        let a = &mut self.g.a;
        a.comment("decided: record verdict and rule id, count the hit, tail-call the epilogue");
        a.bind(decide);
        a.push(Insn::stx(Size::W, STATE, abi::FLOW_VERDICT as i16, VERDICT));
        a.push(Insn::stx(Size::W, STATE, abi::FLOW_RULE_ID as i16, RULE_ID));
        self.g.count(RULE_ID, None);
        let a = &mut self.g.a;
        a.push(Insn::mov64(Reg::R1, CTX));
        a.push(Insn::ld_map_fd(Reg::R2, map::JUMP));
        a.push(Insn::mov64(Reg::R3, abi::SLOT_EPILOGUE as i32));
        a.push(Insn::call(helper::TAIL_CALL));
        a.comment("no epilogue (or no state, or no such part): fail closed");
        a.bind(fail);
        a.push(Insn::mov64(Reg::R0, abi::TC_ACT_SHOT));
        a.push(Insn::exit());
        if part > 0 {
            let entries: Vec<(usize, Label)> = self
                .part
                .tier_starts
                .iter()
                .copied()
                .filter(|(t, _)| self.pending.contains(t))
                .collect();
            let at = self.part.dispatch_at;
            a.insert_at(at, |a| {
                let body = a.label();
                a.comment("entry: where the previous part stopped (FlowState.resume)");
                a.push(Insn::ldx(Size::W, Reg::R1, STATE, abi::FLOW_RESUME as i16));
                a.jump_if(Cond::Eq, Reg::R1, resume_part(part), body);
                for (t, l) in entries {
                    a.jump_if(Cond::Eq, Reg::R1, resume_tier(t), l);
                }
                a.jump(fail);
                a.bind(body);
            });
        }
        let program = std::mem::take(&mut self.g.a).assemble()?;
        self.parts.push(program);
        if self.next_parts.len() < self.parts.len() {
            self.next_parts.resize(self.parts.len(), Vec::new());
        }
        Ok(())
    }
}

struct Gen<'b> {
    a: Asm,
    family: Family,
    /// -O1: peer-side set tests are bit tests on the bitmap in [`PEER_BITS`].
    bits: Option<&'b PeerBits>,
}

impl Gen<'_> {
    fn set_verdict(&mut self, verdict: u32, id: u32) {
        self.a.push(Insn::mov64(VERDICT, verdict as i32));
        self.a.push(Insn::mov64(RULE_ID, id as i32));
    }

    /// `hits[id] += 1` in the per-CPU counters map; the id is `fixed` or in `reg`.
    fn count(&mut self, reg: Reg, fixed: Option<u32>) {
        let a = &mut self.a;
        let skip = a.label();
        match fixed {
            Some(id) => a.push(Insn::st(Size::W, Reg::R10, STACK_U32_KEY, id as i32)),
            None => a.push(Insn::stx(Size::W, Reg::R10, STACK_U32_KEY, reg)),
        }
        a.push(Insn::mov64(Reg::R2, Reg::R10));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_U32_KEY as i32));
        a.push(Insn::ld_map_fd(Reg::R1, map::COUNTERS));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.jump_if(Cond::Eq, Reg::R0, 0, skip);
        a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 0));
        a.push(Insn::alu64(AluOp::Add, Reg::R1, 1));
        a.push(Insn::stx(Size::DW, Reg::R0, 0, Reg::R1));
        a.bind(skip);
    }

    /// Emit the checks of `m`, jumping to `next` when one fails. Returns false (and emits
    /// nothing) when the rule cannot match flows of this program's family.
    fn match_rule(&mut self, m: &Match, next: Label) -> bool {
        if m.ip_version.is_some_and(|v| v != self.family) {
            return false;
        }
        if let Some(p) = m.protocol {
            self.load_protocol(Reg::R1);
            self.a.jump_if(Cond::Ne, Reg::R1, p as i32, next);
        }
        if let Some(p) = m.not_protocol {
            self.load_protocol(Reg::R1);
            self.a.jump_if(Cond::Eq, Reg::R1, p as i32, next);
        }
        if let Some(icmp) = &m.icmp {
            let ok = self.a.label();
            self.icmp(icmp, ok, next);
            self.a.bind(ok);
        }
        if let Some(icmp) = &m.not_icmp {
            let matched = self.a.label();
            let ok = self.a.label();
            self.icmp(icmp, matched, ok);
            self.a.bind(matched);
            self.a.jump(next);
            self.a.bind(ok);
        }
        self.end(&m.src, abi::FLOW_SRC_ADDR as i16, abi::FLOW_SRC_PORT as i16, next);
        self.end(&m.dst, abi::FLOW_DST_ADDR as i16, abi::FLOW_DST_PORT as i16, next);
        true
    }

    fn load_protocol(&mut self, r: Reg) {
        self.a.push(Insn::ldx(Size::B, r, STATE, abi::FLOW_PROTOCOL as i16));
    }

    /// Jump to `yes` when the flow is ICMP/ICMPv6 with the type (and code), else to `no`.
    fn icmp(&mut self, m: &IcmpMatch, yes: Label, no: Label) {
        let a = &mut self.a;
        let is_icmp = a.label();
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_PROTOCOL as i16));
        a.jump_if(Cond::Eq, Reg::R1, proto::ICMP as i32, is_icmp);
        a.jump_if(Cond::Ne, Reg::R1, proto::ICMPV6 as i32, no);
        a.bind(is_icmp);
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_ICMP_TYPE as i16));
        a.jump_if(Cond::Ne, Reg::R1, m.icmp_type as i32, no);
        if let Some(code) = m.code {
            a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_ICMP_CODE as i16));
            a.jump_if(Cond::Ne, Reg::R1, code as i32, no);
        }
        a.jump(yes);
    }

    fn end(&mut self, m: &EndMatch, addr_off: i16, port_off: i16, next: Label) {
        let bits = self.bits.filter(|b| b.peer_off == addr_off);
        let bit_of = |id: &polc_ir::IpSetId| bits.and_then(|b| b.bit.get(id).copied());
        for id in &m.in_sets {
            if let Some(b) = bit_of(id) {
                self.a.push(Insn::ldx(Size::B, Reg::R1, PEER_BITS, (b / 8) as i16));
                self.a.push(Insn::alu64(AluOp::And, Reg::R1, 1 << (b % 8)));
                self.a.jump_if(Cond::Eq, Reg::R1, 0, next);
                continue;
            }
            self.ipset_lookup(id.0, addr_off);
            self.a.jump_if(Cond::Eq, Reg::R0, 0, next);
        }
        for id in &m.not_in_sets {
            if let Some(b) = bit_of(id) {
                self.a.push(Insn::ldx(Size::B, Reg::R1, PEER_BITS, (b / 8) as i16));
                self.a.jump_if(Cond::Set, Reg::R1, 1 << (b % 8), next);
                continue;
            }
            self.ipset_lookup(id.0, addr_off);
            self.a.jump_if(Cond::Ne, Reg::R0, 0, next);
        }
        if let Some(pm) = &m.ports {
            let ok = self.a.label();
            self.require_port_protocol(next);
            self.ports(pm, addr_off, port_off, ok);
            self.a.jump(next);
            self.a.bind(ok);
        }
        if let Some(pm) = &m.not_ports {
            self.require_port_protocol(next);
            self.ports(pm, addr_off, port_off, next);
        }
    }

    /// Ports only match protocols that carry them.
    fn require_port_protocol(&mut self, next: Label) {
        let a = &mut self.a;
        let ok = a.label();
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_PROTOCOL as i16));
        for p in [proto::TCP, proto::UDP, proto::SCTP, proto::UDPLITE] {
            a.jump_if(Cond::Eq, Reg::R1, p as i32, ok);
        }
        a.jump(next);
        a.bind(ok);
    }

    /// Jump to `hit` when the port (or named port on the address) matches; fall through if not.
    fn ports(&mut self, pm: &PortMatch, addr_off: i16, port_off: i16, hit: Label) {
        for r in &pm.ranges {
            let a = &mut self.a;
            a.push(Insn::ldx(Size::H, Reg::R1, STATE, port_off));
            if r.lo == r.hi {
                a.jump_if(Cond::Eq, Reg::R1, r.lo as i32, hit);
            } else {
                let miss = a.label();
                a.jump_if(Cond::Lt, Reg::R1, r.lo as i32, miss);
                a.jump_if(Cond::Le, Reg::R1, r.hi as i32, hit);
                a.bind(miss);
            }
        }
        for id in &pm.named {
            self.named_port_lookup(id.0, addr_off, port_off);
            self.a.jump_if(Cond::Ne, Reg::R0, 0, hit);
        }
    }

    /// r0 = lookup(ipsets, {full prefix, set, address at addr_off}).
    fn ipset_lookup(&mut self, set: u32, addr_off: i16) {
        let bits = 32 + self.family.bits() as i32;
        let a = &mut self.a;
        a.push(Insn::st(Size::W, Reg::R10, STACK_LPM_KEY, bits));
        a.push(Insn::st(Size::W, Reg::R10, STACK_LPM_KEY + 4, set.swap_bytes() as i32));
        self.copy_addr(addr_off, STACK_LPM_KEY + 8, self.family);
        let a = &mut self.a;
        a.push(Insn::mov64(Reg::R2, Reg::R10));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_LPM_KEY as i32));
        a.push(Insn::ld_map_fd(Reg::R1, map::IPSETS));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    }

    /// r0 = lookup(named_ports, {set, protocol, 0, port, address}).
    fn named_port_lookup(&mut self, set: u32, addr_off: i16, port_off: i16) {
        let a = &mut self.a;
        a.push(Insn::st(Size::W, Reg::R10, STACK_NAMED_KEY, set as i32));
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_PROTOCOL as i16));
        a.push(Insn::stx(Size::B, Reg::R10, STACK_NAMED_KEY + 4, Reg::R1));
        a.push(Insn::st(Size::B, Reg::R10, STACK_NAMED_KEY + 5, 0));
        a.push(Insn::ldx(Size::H, Reg::R1, STATE, port_off));
        a.push(Insn::stx(Size::H, Reg::R10, STACK_NAMED_KEY + 6, Reg::R1));
        self.copy_addr(addr_off, STACK_NAMED_KEY + 8, Family::V6);
        let a = &mut self.a;
        a.push(Insn::mov64(Reg::R2, Reg::R10));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_NAMED_KEY as i32));
        a.push(Insn::ld_map_fd(Reg::R1, map::NAMED_PORTS));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    }

    /// Copy the address (4 bytes for IPv4, 16 for `V6`) from the state to the stack.
    fn copy_addr(&mut self, from: i16, to: i16, width: Family) {
        let a = &mut self.a;
        match width {
            Family::V4 => {
                a.push(Insn::ldx(Size::W, Reg::R1, STATE, from));
                a.push(Insn::stx(Size::W, Reg::R10, to, Reg::R1));
            }
            Family::V6 => {
                for half in [0, 8] {
                    a.push(Insn::ldx(Size::DW, Reg::R1, STATE, from + half));
                    a.push(Insn::stx(Size::DW, Reg::R10, to + half, Reg::R1));
                }
            }
        }
    }
}

/// The IP-set LPM entries for `family`: (key, value) with value = set id (for debugging).
pub fn ipset_entries(ep_sets: &[&polc_ir::IpSet], family: Family) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for set in ep_sets {
        for p in &set.members {
            if p.family() != family {
                continue;
            }
            let mut key = Vec::with_capacity(ipset_key_size(family) as usize);
            key.extend_from_slice(&(32 + p.len() as u32).to_ne_bytes());
            key.extend_from_slice(&set.id.0.to_be_bytes());
            match p.addr() {
                IpAddr::V4(a) => key.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => key.extend_from_slice(&a.octets()),
            }
            out.push((key, set.id.0.to_ne_bytes().to_vec()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The named-port hash entries.
pub fn named_port_entries(sets: &[&polc_ir::PortSet]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for set in sets {
        for m in &set.members {
            let mut key = Vec::with_capacity(NAMED_PORT_KEY_SIZE as usize);
            key.extend_from_slice(&set.id.0.to_ne_bytes());
            key.push(m.protocol);
            key.push(0);
            key.extend_from_slice(&m.port.to_ne_bytes());
            let mut addr = [0u8; 16];
            match m.addr {
                IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
            }
            key.extend_from_slice(&addr);
            out.push((key, set.id.0.to_ne_bytes().to_vec()));
        }
    }
    out.sort();
    out.dedup();
    out
}
