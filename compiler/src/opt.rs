//! -O2 code generation: a policy program whose per-packet cost does not grow with the
//! number of rules.
//!
//! The decision for one endpoint, direction and family is a function of the peer address
//! and of the "port side" of the flow (protocol, ports, ICMP type and code); the endpoint's
//! own address is a constant. Every rule is one of:
//! - address-only (or match-all): which rule of each tier matches first depends on the
//!   peer address alone — the value `F[tier]` stored per address class (the longest
//!   matching prefix *is* the class, because every prefix the policy mentions is one),
//!   found by a walk of the IPv4 class trie (a node per address byte) or, for IPv6, one
//!   LPM map lookup;
//! - port-only: `G[tier]`, written by the leaves of a decision tree over protocol, ports and
//!   ICMP compiled to branches (logarithmic depth);
//! - both: `H[tier]`, a sparse table of (address class, port class) pairs compiled to a
//!   second branch tree.
//!
//! A tier's first matching rule is `min(F, G, H)` with each value `rank << 32 | rule id << 2
//! | action`, ranks following evaluation order; Pass moves to the next tier, a tier with no
//! match applies its default. Which rule matches which class is decided by evaluating the
//! IR's own `rule_matches` on a representative flow of each class, so the tables follow the
//! spec by construction. Log rules do not change verdicts and are not counted at -O2.
//!
//! Every table (class trie, class values, port array and rows, pair grid) is a
//! single-entry array map whose one value holds all rows: the program computes a row's
//! address from the map's value address (`BPF_PSEUDO_MAP_VALUE`) after a bounds check,
//! with no lookup at all. An IPv4 decision makes two map lookups whatever the policy: this
//! CPU's FlowState and the rule-hit counter, both per-CPU.
//!
//! Programs this scheme does not fit (an endpoint with several addresses of one family,
//! more than [`MAX_TIERS`] tiers, or tables over budget) fall back to -O0.

use crate::asm::{helper, AluOp, Asm, Cond, Insn, Label, Program, Reg, Size};
use crate::codegen::{map, room_for, MapKind, MapSpec, RuleKey, RuleTable};
use polc_abi as abi;
use polc_ir::eval::rule_matches;
use polc_ir::{
    proto, Action, Direction, EndMatch, EndpointPolicy, Family, Flow, IpSetId, Match, Prefix,
    TierDefault,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most tiers an -O2 program handles (their values live on the 512-byte stack).
pub const MAX_TIERS: usize = 20;
/// Most (address class, port class) pairs of the both-constrained table compiled to code;
/// a larger table goes into a hash map (one more lookup).
pub const MAX_CODE_PAIRS: usize = 8_000;
/// Most port classes searched by a branch tree in code (about 2 instructions per class plus
/// 2 per port-only tier); past it the destination port indexes an array map.
pub const MAX_CODE_PORT_LEAVES: usize = 2_000;
/// Most cells of the pair grid in use (distinct pair rows x port pair classes, 4 bytes
/// each: 4 MiB; the table has room for more rows on top, and is twice in the kernel for
/// in-place updates). Past it the pairs go to a hash map, one helper call more per
/// decision.
pub const MAX_PAIR_CELLS: usize = 1 << 20;
/// Most pairs in the hash map (each entry costs about 50 bytes plus 8 per tier of kernel
/// memory).
pub const MAX_PAIRS: usize = 300_000;
/// Most instruction slots of an -O2 program. It is never split, and below 32k every jump
/// keeps a 16-bit offset (the vm engine cannot run `gotol`).
pub const MAX_SLOTS: usize = 30_000;
/// Most instructions the verifier may walk through a pair table in code: it walks the
/// whole table once per port leaf (each leaf leaves different constants behind, so no
/// state prunes another), and stops at 1M processed instructions for the program.
pub const MAX_CODE_PAIR_WALK: usize = 400_000;

/// An -O2 program and the contents of its own maps.
#[derive(Debug, Clone)]
pub struct Optimised {
    /// The port array and its rows (programs with too many port classes for code).
    pub port_maps: Vec<(MapSpec, crate::compile::MapEntries)>,
    pub program: Program,
    /// The address classes, if the program has them: the LPM map (`map::CLASSES`), or the
    /// IPv4 class trie and the class values (`map::CLASS_TRIE`, `map::CLASS_VALUES`).
    pub classes: Vec<(MapSpec, crate::compile::MapEntries)>,
    /// The hash map of address x port pairs (`map::PAIRS`), if too many for code.
    pub pairs: Option<(MapSpec, crate::compile::MapEntries)>,
}

/// Why a program was left at -O0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback(pub String);

const END_RANK: u64 = 0x7fff_ffff;
const END: u64 = END_RANK << 32;
const ACT_ALLOW: u64 = 0;
const ACT_DENY: u64 = 1;
const ACT_PASS: u64 = 2;

// Stack layout (offsets from r10).
const STACK_U32_KEY: i16 = -4;
// -32..-12: the peer's LPM key (prefixlen u32, then up to 16 address bytes), written by
// codegen::emit_peer_lpm_lookup.
const STACK_VALUES: i16 = -40; // G[t] at -40 - 8t, H[t] at -40 - 8 (MAX_TIERS + t)
const STACK_PAIR_KEY: i16 = -40 - 8 * (2 * MAX_TIERS as i16) - 8; // pair class u32, port pair class u32

fn g_slot(t: usize) -> i16 {
    STACK_VALUES - 8 * t as i16
}
fn h_slot(t: usize) -> i16 {
    STACK_VALUES - 8 * (MAX_TIERS + t) as i16
}

const CTX: Reg = Reg::R6;
const STATE: Reg = Reg::R7;
const VERDICT: Reg = Reg::R8;
const RULE_ID: Reg = Reg::R9;
/// The class map value pointer, until the decision.
const CLASS: Reg = Reg::R9;
/// The port class id, between the port tree and the pair tree.
const QREG: Reg = Reg::R8;

/// One rule as the optimiser sees it.
struct FlatRule {
    tier: usize,
    value: u64,
    /// The rule with the endpoint's own-address conditions folded away.
    matches: Match,
    /// `matches` without the peer's address sets (decided by the class tables).
    port_match: Match,
    addr_dependent: bool,
    port_dependent: bool,
    /// Named ports on the peer side: membership couples address and port.
    coupled: bool,
    /// For the listing: `rule id N: tier ... / policy ... / rule i: action`.
    about: String,
}

/// Knobs of -O2 code generation (tests use them to force each shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Pair tables up to this size are compiled to code, larger ones go to a hash map.
    pub max_code_pairs: usize,
    /// Port trees up to this many leaves are compiled to code; with more, the port of a
    /// TCP, UDP or SCTP flow finds its row in two array maps (inlined lookups).
    pub max_code_port_leaves: usize,
    /// Pair tables not in code go into two tables (the pair grid) when their grid of
    /// distinct rows x port pair classes has at most this many cells, else a hash map.
    pub max_pair_cells: usize,
    /// IPv4 address classes in a trie table (one load per address byte at most) instead of
    /// an LPM map (a helper call that walks one node per prefix bit).
    pub class_trie: bool,
    /// Largest table (one map value); a class trie (or its class values) past it uses the
    /// LPM layout instead.
    pub max_table_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_code_pairs: MAX_CODE_PAIRS,
            max_code_port_leaves: MAX_CODE_PORT_LEAVES,
            max_pair_cells: MAX_PAIR_CELLS,
            class_trie: true,
            max_table_bytes: MAX_TABLE_BYTES,
        }
    }
}

/// Generate the -O2 program, or say why not. A program too large with its pair table in
/// code is generated again with the table in a hash map.
pub fn generate(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    tuning: Tuning,
) -> Result<Result<Optimised, Fallback>, crate::asm::AsmError> {
    match generate_with(ep, family, rules, tuning)? {
        Err(Fallback(why)) if why.contains(PAIRS_IN_CODE) && tuning.max_code_pairs > 0 => {
            generate(ep, family, rules, Tuning { max_code_pairs: 0, ..tuning })
        }
        Err(Fallback(why)) if why.contains(TRIE_TOO_LARGE) && tuning.class_trie => {
            generate(ep, family, rules, Tuning { class_trie: false, ..tuning })
        }
        other => Ok(other),
    }
}

/// Largest -O2 table (one map value, allocated whole in the kernel, twice for in-place
/// updates; the verifier also bounds variable offsets into a value at 512 MiB).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Marks a class trie (or class values table) over `Tuning::max_table_bytes`: worth one
/// more try with the LPM layout.
const TRIE_TOO_LARGE: &str = "the class trie tables would exceed";

const TOO_MANY_INSNS: &str = "instructions (at most";
/// Marks a too-large program whose pair table was code: worth one more try with the table
/// in a hash map (any other too-large program would be too large again).
const PAIRS_IN_CODE: &str = "with the pair table in code";

fn generate_with(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    tuning: Tuning,
) -> Result<Result<Optimised, Fallback>, crate::asm::AsmError> {
    let fallback = |why: String| Ok(Err(Fallback(why)));
    let own: Vec<IpAddr> =
        ep.addresses.iter().copied().filter(|a| Family::of(a) == family).collect();
    let [own] = own.as_slice() else {
        return fallback(format!("{} addresses of this family", own.len()));
    };
    if ep.tiers.is_empty() {
        return fallback("no tiers: -O0 is already minimal".into());
    }
    if ep.tiers.len() > MAX_TIERS {
        return fallback(format!("{} tiers (at most {MAX_TIERS})", ep.tiers.len()));
    }
    let peer_is_src = ep.direction == Direction::Ingress;
    let mut ctx = Context::new(ep, *own, family, peer_is_src);

    // Flatten the rules in evaluation order, folding the own-address side.
    let mut flat = Vec::new();
    let mut rank: u64 = 0;
    for (t, tier) in ep.tiers.iter().enumerate() {
        for pol in &tier.policies {
            for rule in &pol.rules {
                let key = RuleKey::Rule {
                    direction: ep.direction,
                    tier: tier.name.clone(),
                    policy: pol.source.qualified_name(),
                    kind: pol.source.kind.clone(),
                    index: rule.index,
                };
                let about = format!(
                    "{}: {} ({} document {})",
                    key.describe(),
                    rule.action.as_str(),
                    pol.source.file,
                    pol.source.doc
                );
                let id = rules.id(key) as u64;
                let action = match rule.action {
                    Action::Log => continue,
                    Action::Allow => ACT_ALLOW,
                    Action::Deny => ACT_DENY,
                    Action::Pass => ACT_PASS,
                };
                if rule.matches.ip_version.is_some_and(|v| v != family) {
                    continue;
                }
                let Some(m) = ctx.fold_own(&rule.matches) else { continue };
                let (peer, own_end) = ctx.ends(&m);
                let coupled = peer_named(peer);
                let addr_dependent =
                    !peer.in_sets.is_empty() || !peer.not_in_sets.is_empty() || coupled;
                let port_dependent = m.protocol.is_some()
                    || m.not_protocol.is_some()
                    || m.icmp.is_some()
                    || m.not_icmp.is_some()
                    || peer.ports.is_some()
                    || peer.not_ports.is_some()
                    || own_end.ports.is_some()
                    || own_end.not_ports.is_some();
                if rank >= END_RANK || id >= 1 << 30 {
                    return fallback("too many rules for the value encoding".into());
                }
                let mut port_match = m.clone();
                let peer_end = if peer_is_src { &mut port_match.src } else { &mut port_match.dst };
                peer_end.in_sets.clear();
                peer_end.not_in_sets.clear();
                flat.push(FlatRule {
                    tier: t,
                    value: rank << 32 | id << 2 | action,
                    matches: m,
                    port_match,
                    addr_dependent,
                    port_dependent,
                    coupled,
                    about: format!("rule id {id}: {about}"),
                });
                rank += 1;
            }
        }
    }
    let tiers = ep.tiers.len();

    // Address classes: every prefix of a peer-side set (and the hosts of peer named ports).
    let addr_rules: Vec<&FlatRule> = flat.iter().filter(|r| r.addr_dependent).collect();
    ctx.build_classes(&addr_rules);
    // Port classes: a tree over protocol, ports and ICMP; the pair table uses the coarser
    // partition of the rules constrained on both sides only.
    let port_rules: Vec<&FlatRule> = flat.iter().filter(|r| r.port_dependent).collect();
    let tree = ctx.build_port_tree(&port_rules);
    // Many port classes: TCP, UDP and SCTP find their row through the port array instead
    // (rows with a source-port condition have no array: they stay in code).
    let port_map = tree.leaves.len() > tuning.max_code_port_leaves && tree.sports.len() == 1;
    // The tree's search has a compare per inner node and at least one instruction per
    // leaf: past half the budget it cannot fit, whatever follows (fail before the pairs).
    if tree.leaves.len() > MAX_SLOTS / 2 && !port_map {
        return fallback(format!(
            "{} port classes: the port tree alone exceeds {MAX_SLOTS} instructions",
            tree.leaves.len()
        ));
    }
    let pair_rules: Vec<&FlatRule> =
        flat.iter().filter(|r| r.port_dependent && r.addr_dependent).collect();
    let pair_tree = ctx.build_port_tree(&pair_rules);
    let pair_q: Vec<u32> = tree.leaves.iter().map(|rep| pair_tree.locate(rep) as u32).collect();

    // F: first address-only (or match-all) rule per tier, per address class.
    let nclasses = ctx.classes.len();
    let mut f = vec![vec![END; tiers]; nclasses];
    for r in flat.iter().filter(|r| !r.port_dependent) {
        for c in ctx.class_members(r) {
            let slot = &mut f[c][r.tier];
            if *slot == END {
                *slot = r.value;
            }
        }
    }
    // G: first port-only rule per tier, per port class.
    let mut g = vec![vec![END; tiers]; tree.leaves.len()];
    for r in flat.iter().filter(|r| r.port_dependent && !r.addr_dependent) {
        for q in tree.candidates(&r.port_match) {
            if g[q][r.tier] == END && ctx.port_side_matches(r, &tree.leaves[q], ctx.own) {
                g[q][r.tier] = r.value;
            }
        }
    }
    // H: first both-constrained rule per tier, per (pair class of the address, pair class of
    // the port). Addresses the pair rules cannot tell apart share a pair class.
    let pair_class = ctx.pair_classes(&pair_rules);
    // A pair rule decides a cell only where it precedes its tier's address-only rule (F) and
    // port-only rule (G) for every address and port of the cell: bound both by their latest
    // value over the cell's members, and store no cell a pair rule cannot decide. Cells no
    // port leaf reaches keep a bound of 0 (nothing is stored for them).
    let npairclasses = pair_class.iter().map(|&pc| pc as usize + 1).max().unwrap_or(0);
    let mut f_latest = vec![vec![0u64; tiers]; npairclasses];
    for (c, row) in f.iter().enumerate() {
        for (latest, &v) in f_latest[pair_class[c] as usize].iter_mut().zip(row) {
            *latest = (*latest).max(v);
        }
    }
    let mut g_latest = vec![vec![0u64; tiers]; pair_tree.leaves.len()];
    for (q, &hq) in pair_q.iter().enumerate() {
        for (latest, &v) in g_latest[hq as usize].iter_mut().zip(&g[q]) {
            *latest = (*latest).max(v);
        }
    }
    // One pass in rule order: a cell's first rule per tier is its value. The running
    // estimate (an upper bound on the table) stops a hopeless table early.
    let mut h = PairTable::new(tiers, npairclasses);
    // Pair classes already among a rule's targets.
    let mut pc_seen = vec![false; npairclasses];
    let mut estimate = 0usize;
    for r in &pair_rules {
        let t = r.tier;
        let before_f = |c: usize| r.value < f_latest[pair_class[c] as usize][t];
        let qs: Vec<usize> = (pair_tree.candidates(&r.port_match).into_iter())
            .filter(|&hq| r.value < g_latest[hq][t])
            .filter(|&hq| r.coupled || ctx.port_side_matches(r, &pair_tree.leaves[hq], ctx.own))
            .collect();
        if qs.is_empty() {
            continue;
        }
        let members = ctx.class_members(r).into_iter().filter(|&c| before_f(c));
        // Coupled rules are checked per address class; the others per pair class (fewer),
        // each once, in order.
        let targets: Vec<u32> = if r.coupled {
            members.map(|c| c as u32).collect()
        } else {
            let mut pcs: Vec<u32> = Vec::new();
            for pc in members.map(|c| pair_class[c]) {
                if let Some(seen) = pc_seen.get_mut(pc as usize).filter(|seen| !**seen) {
                    *seen = true;
                    pcs.push(pc);
                }
            }
            for &pc in &pcs {
                if let Some(seen) = pc_seen.get_mut(pc as usize) {
                    *seen = false;
                }
            }
            pcs.sort_unstable();
            pcs
        };
        estimate += targets.len() * qs.len();
        if estimate > 8 * MAX_PAIRS {
            return fallback(format!("more than {MAX_PAIRS} address x port pairs (estimate)"));
        }
        let mut add = |pc: u32, hq: usize| -> bool {
            if let Some(v) = h.row_mut(pc, hq as u32).get_mut(t) {
                if *v == END {
                    *v = r.value;
                }
            }
            h.len() <= MAX_PAIRS
        };
        for &target in &targets {
            for &hq in &qs {
                let added = if r.coupled {
                    let c = target as usize;
                    let Some(rep) = ctx.classes[c].rep else { break };
                    !ctx.port_side_matches(r, &pair_tree.leaves[hq], rep) || add(pair_class[c], hq)
                } else {
                    add(target, hq)
                };
                if !added {
                    return fallback(format!("more than {MAX_PAIRS} address x port pairs"));
                }
            }
        }
    }
    let tier_has_g: Vec<bool> = (0..tiers).map(|t| g.iter().any(|row| row[t] != END)).collect();
    let tier_has_h: Vec<bool> = (0..tiers).map(|t| h.rows().any(|row| row[t] != END)).collect();
    // The cells in (pair class, port pair class) order: the order every use below needs.
    let h_sorted = h.sorted();
    let tier_has_f: Vec<bool> = (0..tiers).map(|t| f.iter().any(|row| row[t] != END)).collect();
    // Without pairs, one class row (no prefixes, or no address-only rules) is a constant.
    let use_classes = !h.is_empty() || (nclasses > 1 && tier_has_f.iter().any(|&b| b));

    // Tier defaults and the profile.
    let mut defaults = Vec::new();
    for tier in ep.tiers.iter() {
        defaults.push(match tier.default_action {
            TierDefault::Deny => Some(
                rules.id(RuleKey::TierDefault { direction: ep.direction, tier: tier.name.clone() }),
            ),
            TierDefault::Pass => None,
        });
    }
    let profile = rules.id(RuleKey::Profile { direction: ep.direction, passed: true });

    // ---- emit ----
    let mut a = Asm::new();
    let fail = a.label();
    let decide = a.label();
    a.comment(format!(
        "-O2 class tables: {} rules in {} tiers, {} address classes, \
         {} port classes, {} address x port pairs",
        flat.len(),
        tiers,
        nclasses,
        tree.leaves.len(),
        h.len()
    ));
    // The rules in evaluation order: where each lives, so a reader (and `polc dump`, which
    // annotates lines naming a rule id) can find it.
    for r in &flat {
        let table = match (r.addr_dependent, r.port_dependent) {
            (false, false) => "matches everything: in the class map (F)",
            (true, false) => "address only: in the class map (F)",
            (false, true) => "port only: stored by the port tree (G)",
            (true, true) => "address and port: stored by the pair tree (H)",
        };
        a.comment(format!("{} [{table}, value {:#x}]", r.about, r.value));
    }
    a.comment("prologue: r7 = this CPU's FlowState (drop if missing)");
    crate::codegen::emit_state_lookup(&mut a, CTX, STATE, fail);

    let peer_off = if peer_is_src { abi::FLOW_SRC_ADDR as i16 } else { abi::FLOW_DST_ADDR as i16 };
    // The runtime drops flows whose endpoint side is not the endpoint's address before any
    // policy, so the tables below fold that side to `own` (docs/semantics.md).
    let trie = (use_classes && tuning.class_trie && family == Family::V4).then(|| {
        ClassTrie::new(ctx.classes.iter().enumerate().filter_map(|(c, class)| {
            let p = class.prefix?;
            let IpAddr::V4(v) = p.addr() else { return None };
            Some((u32::from(v), p.len(), c as u32))
        }))
    });
    // Table capacities (room to grow, so churn keeps their shape): nodes, class values.
    let trie_rows = room_for(trie.as_ref().map_or(0, |t| t.nodes.len()));
    let class_rows = room_for(nclasses);
    if let Some(trie) = &trie {
        let nodes = u64::from(trie_rows) * u64::from(4 * TRIE_FANOUT);
        let values = u64::from(class_rows) * u64::from(tier_row_size(tiers));
        if nodes.max(values) > tuning.max_table_bytes {
            return fallback(format!(
                "{} nodes and {nclasses} address classes: {TRIE_TOO_LARGE} {} bytes",
                trie.nodes.len(),
                tuning.max_table_bytes
            ));
        }
        let n = trie.nodes.len();
        a.comment(format!(
            "address class of the peer: walk the class trie ({n} node{}), a node per address byte",
            if n == 1 { "" } else { "s" }
        ));
        emit_trie_walk(&mut a, peer_off, trie_rows, fail);
        a.comment("the class's value (r9): pair row, then F per tier");
        emit_row_address(
            &mut a,
            Reg::R1,
            map::CLASS_VALUES,
            tier_row_size(tiers),
            class_rows,
            fail,
        );
        a.push(Insn::mov64(CLASS, Reg::R0));
    } else if use_classes {
        a.comment("address class of the peer: one LPM lookup (r9 = class value)");
        crate::codegen::emit_peer_lpm_lookup(&mut a, family, STATE, peer_off, map::CLASSES, fail);
        a.push(Insn::mov64(CLASS, Reg::R0));
    }

    let any_g = tier_has_g.iter().any(|&b| b);
    let any_h = tier_has_h.iter().any(|&b| b);
    let mut port_leaves = 0usize;
    let port_rows = (port_map && (any_g || any_h)).then(|| {
        PortRows::new(&tree, |q| {
            let mut row = (if any_h { pair_q[q] } else { 0 } as u64).to_ne_bytes().to_vec();
            row.extend(g[q].iter().flat_map(|v| v.to_ne_bytes()));
            row
        })
    });
    if any_g || any_h {
        a.comment("no port-only or pair rule matched yet");
        a.push(Insn::ld_imm64(Reg::R1, END));
        for t in 0..tiers {
            if tier_has_g[t] {
                a.push(Insn::stx(Size::DW, Reg::R10, g_slot(t), Reg::R1));
            }
            if tier_has_h[t] {
                a.push(Insn::stx(Size::DW, Reg::R10, h_slot(t), Reg::R1));
            }
        }
        let done = a.label();
        a.comment("port class: protocol, ports, ICMP type and code (binary search)");
        let content = |q: usize| {
            let mut c = g[q].clone();
            if any_h {
                c.push(pair_q[q] as u64);
            }
            c
        };
        if let Some(pm) = &port_rows {
            // Every leaf, in code or in the port array, names its row; the row holds G and
            // the pair port class.
            let mut search = |a: &mut Asm, p: usize| {
                let slot = pm.protocols.iter().position(|&mp| mp == p).unwrap_or(0) as i32;
                a.comment(format!("protocol {}: port row from the port array", tree.kind(p)));
                a.push(Insn::ldx(Size::H, Reg::R2, STATE, abi::FLOW_DST_PORT as i16));
                if slot > 0 {
                    a.push(Insn::alu64(AluOp::Add, Reg::R2, slot << 16));
                }
                emit_row_address(a, Reg::R2, map::PORTS, 4, pm.port_entries(), fail);
                a.push(Insn::ldx(Size::W, QREG, Reg::R0, 0));
            };
            tree.emit(&mut a, done, &content, Some(&mut search), &mut |a, q| {
                port_leaves += 1;
                a.push(Insn::mov64(QREG, pm.row_of[q] as i32));
            });
            // Rows leave nothing the verifier knows: one walk of what follows.
            port_leaves = 1;
            a.bind(done);
            a.comment("the port row: G per tier, then the pair port class");
            let rows = pm.rows.len() as u32;
            emit_row_address(&mut a, QREG, map::PORT_ROWS, tier_row_size(tiers), rows, fail);
            for t in (0..tiers).filter(|&t| tier_has_g[t]) {
                a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 8 + 8 * t as i16));
                a.push(Insn::stx(Size::DW, Reg::R10, g_slot(t), Reg::R1));
            }
            if any_h {
                a.push(Insn::ldx(Size::W, QREG, Reg::R0, 0));
            }
        } else {
            tree.emit(&mut a, done, &content, None, &mut |a, q| {
                port_leaves += 1;
                for (t, &v) in g[q].iter().enumerate() {
                    if v != END {
                        a.comment(format!("G[{t}] = rule id {}", v >> 2 & 0x3fff_ffff));
                        store_value(a, g_slot(t), v);
                    }
                }
                if any_h {
                    a.push(Insn::mov64(QREG, pair_q[q] as i32));
                }
            });
            a.bind(done);
        }
    }
    let pairs_in_map = h.len() > tuning.max_code_pairs;
    let grid = (any_h && pairs_in_map)
        .then(|| PairGrid::new(&h_sorted, npairclasses, pair_tree.leaves.len(), tiers, tuning))
        .flatten();
    if let Some(grid) = &grid {
        a.comment(format!(
            "address x port pairs: first rule constrained on both ({} pairs in {} rows: \
             cell = row of the address's pair class x {} + port pair class; two arrays)",
            h.len(),
            grid.cells.len() / grid.npq.max(1),
            grid.npq
        ));
        a.push(Insn::ldx(Size::W, Reg::R1, CLASS, 0));
        a.push(Insn::alu64(AluOp::Mul, Reg::R1, grid.npq as i32));
        a.push(Insn::alu64(AluOp::Add, Reg::R1, QREG));
        emit_row_address(&mut a, Reg::R1, map::PAIR_CELLS, 4, grid.cell_capacity(), fail);
        a.push(Insn::ldx(Size::W, Reg::R1, Reg::R0, 0));
        let rows = grid.value_capacity();
        emit_row_address(&mut a, Reg::R1, map::PAIR_VALUES, 8 * tiers as u32, rows, fail);
        for (t, _) in tier_has_h.iter().enumerate().filter(|(_, &has)| has) {
            a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 8 * t as i16));
            a.push(Insn::stx(Size::DW, Reg::R10, h_slot(t), Reg::R1));
        }
    } else if any_h && pairs_in_map {
        let done = a.label();
        a.comment(format!(
            "address x port pairs: first rule constrained on both ({} pairs: hash lookup)",
            h.len()
        ));
        a.push(Insn::ldx(Size::W, Reg::R1, CLASS, 0));
        a.push(Insn::stx(Size::W, Reg::R10, STACK_PAIR_KEY, Reg::R1));
        a.push(Insn::stx(Size::W, Reg::R10, STACK_PAIR_KEY + 4, QREG));
        a.push(Insn::mov64(Reg::R2, Reg::R10));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_PAIR_KEY as i32));
        a.push(Insn::ld_map_fd(Reg::R1, map::PAIRS));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.jump_if(Cond::Eq, Reg::R0, 0, done);
        for (t, _) in tier_has_h.iter().enumerate().filter(|(_, &has)| has) {
            a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 8 * t as i16));
            a.push(Insn::stx(Size::DW, Reg::R10, h_slot(t), Reg::R1));
        }
        a.bind(done);
    } else if any_h {
        let done = a.label();
        let start = a.slots();
        a.comment("address x port pairs: first rule constrained on both (binary search)");
        a.push(Insn::ldx(Size::W, Reg::R1, CLASS, 0));
        let mut by_class: BTreeMap<u32, Vec<(u32, &[u64])>> = BTreeMap::new();
        for &(c, q, row) in &h_sorted {
            by_class.entry(c).or_default().push((q, row));
        }
        let classes: Vec<u32> = by_class.keys().copied().collect();
        emit_exact(&mut a, Reg::R1, &classes, done, &mut |a, i| {
            let entries = &by_class[&classes[i]];
            let qs: Vec<u32> = entries.iter().map(|(q, _)| *q).collect();
            emit_exact(a, QREG, &qs, done, &mut |a, j| {
                for (t, &v) in entries[j].1.iter().enumerate() {
                    if v != END {
                        a.comment(format!("H[{t}] = rule id {}", v >> 2 & 0x3fff_ffff));
                        store_value(a, h_slot(t), v);
                    }
                }
            });
        });
        a.bind(done);
        let walk = port_leaves.max(1) * (a.slots() - start);
        if walk > MAX_CODE_PAIR_WALK {
            return fallback(format!(
                "the verifier would walk the pair tree {port_leaves} times ({walk} instructions, \
                 at most {MAX_CODE_PAIR_WALK}) {PAIRS_IN_CODE}"
            ));
        }
    }

    for (t, tier) in ep.tiers.iter().enumerate() {
        let next = a.label();
        let default = a.label();
        a.comment(format!(
            "tier {} (default {}): first match = min(F, G, H)",
            tier.name,
            tier.default_action.as_str()
        ));
        if use_classes {
            a.push(Insn::ldx(Size::DW, Reg::R1, CLASS, 8 + 8 * t as i16));
        } else {
            a.push(Insn::ld_imm64(Reg::R1, f[0][t]));
        }
        for (has, slot) in [(tier_has_g[t], g_slot(t)), (tier_has_h[t], h_slot(t))] {
            if has {
                let skip = a.label();
                a.push(Insn::ldx(Size::DW, Reg::R2, Reg::R10, slot));
                a.jump_if(Cond::Le, Reg::R1, Reg::R2, skip);
                a.push(Insn::mov64(Reg::R1, Reg::R2));
                a.bind(skip);
            }
        }
        a.push(Insn::mov64(Reg::R2, Reg::R1));
        a.push(Insn::alu64(AluOp::Rsh, Reg::R2, 32));
        a.jump_if(Cond::Eq, Reg::R2, END_RANK as i32, default);
        a.push(Insn::mov64(Reg::R2, Reg::R1));
        a.push(Insn::alu64(AluOp::And, Reg::R2, 3));
        a.jump_if(Cond::Eq, Reg::R2, ACT_PASS as i32, next);
        a.push(Insn::mov64(RULE_ID, Reg::R1));
        a.push(Insn::alu64(AluOp::Rsh, RULE_ID, 2));
        a.push(Insn::alu64(AluOp::And, RULE_ID, 0x3fff_ffff));
        a.push(Insn::mov64(VERDICT, abi::verdict::ALLOW as i32));
        a.jump_if(Cond::Eq, Reg::R2, ACT_ALLOW as i32, decide);
        a.push(Insn::mov64(VERDICT, abi::verdict::DENY as i32));
        a.jump(decide);
        a.bind(default);
        if let Some(id) = defaults[t] {
            a.comment(format!("tier {}: no rule decided: deny (rule id {id})", tier.name));
            a.push(Insn::mov64(VERDICT, abi::verdict::DENY as i32));
            a.push(Insn::mov64(RULE_ID, id as i32));
            a.jump(decide);
        }
        a.bind(next);
    }
    a.comment(format!("passed out of the last tier: default profile allows (rule id {profile})"));
    a.push(Insn::mov64(VERDICT, abi::verdict::ALLOW as i32));
    a.push(Insn::mov64(RULE_ID, profile as i32));

    a.comment("decided: record verdict and rule id, count the hit, tail-call the epilogue");
    a.bind(decide);
    a.push(Insn::stx(Size::W, STATE, abi::FLOW_VERDICT as i16, VERDICT));
    a.push(Insn::stx(Size::W, STATE, abi::FLOW_RULE_ID as i16, RULE_ID));
    let skip = a.label();
    a.push(Insn::stx(Size::W, Reg::R10, STACK_U32_KEY, RULE_ID));
    a.push(Insn::mov64(Reg::R2, Reg::R10));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, STACK_U32_KEY as i32));
    a.push(Insn::ld_map_fd(Reg::R1, map::COUNTERS));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, skip);
    a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 0));
    a.push(Insn::alu64(AluOp::Add, Reg::R1, 1));
    a.push(Insn::stx(Size::DW, Reg::R0, 0, Reg::R1));
    a.bind(skip);
    a.push(Insn::mov64(Reg::R1, CTX));
    a.push(Insn::ld_map_fd(Reg::R2, map::JUMP));
    a.push(Insn::mov64(Reg::R3, abi::SLOT_EPILOGUE as i32));
    a.push(Insn::call(helper::TAIL_CALL));
    a.comment("no epilogue (or no state, or no class entry): fail closed");
    a.bind(fail);
    a.push(Insn::mov64(Reg::R0, abi::TC_ACT_SHOT));
    a.push(Insn::exit());
    if a.slots() > MAX_SLOTS {
        let how = if any_h && !pairs_in_map { format!(" {PAIRS_IN_CODE}") } else { String::new() };
        return fallback(format!("{} {TOO_MANY_INSNS} {MAX_SLOTS}){how}", a.slots()));
    }
    let program = a.assemble()?;

    // Each class's value: the pair lookups' first word (the pair class, or its row in the
    // pair grid), then F per tier.
    let class_value = |c: usize| {
        let pair = match &grid {
            Some(g) => g.row_of[pair_class[c] as usize],
            None => pair_class[c],
        };
        let mut value = pair.to_ne_bytes().to_vec();
        value.extend_from_slice(&[0; 4]);
        for v in &f[c] {
            value.extend_from_slice(&v.to_ne_bytes());
        }
        value
    };
    let value_size = tier_row_size(tiers);
    let mut classes = Vec::new();
    if let Some(ClassTrie { nodes }) = trie {
        let nodes = nodes.iter().map(|n| n.iter().flat_map(|&e| trie_entry(e).to_ne_bytes()));
        let trie = table_map(map::CLASS_TRIE, "polc_classtrie", 4 * TRIE_FANOUT, nodes, trie_rows);
        classes.push(trie);
        let values = (0..nclasses).map(class_value);
        classes.push(table_map(
            map::CLASS_VALUES,
            "polc_classvals",
            value_size,
            values,
            class_rows,
        ));
    } else if use_classes {
        let mut entries = Vec::new();
        for (c, class) in ctx.classes.iter().enumerate() {
            let Some(prefix) = class.prefix else { continue };
            let mut key = (prefix.len() as u32).to_ne_bytes().to_vec();
            match prefix.addr() {
                IpAddr::V4(v) => key.extend_from_slice(&v.octets()),
                IpAddr::V6(v) => key.extend_from_slice(&v.octets()),
            }
            entries.push((key, class_value(c)));
        }
        let spec = MapSpec {
            handle: map::CLASSES,
            name: "polc_classes".to_string(),
            kind: MapKind::LpmTrie,
            key_size: 4 + family.bits() as u32 / 8,
            value_size,
            max_entries: room_for(entries.len()),
            flags: 1,
        };
        classes.push((spec, entries));
    }
    let pairs = (any_h && pairs_in_map && grid.is_none()).then(|| {
        let entries: crate::compile::MapEntries = (h_sorted.iter())
            .map(|&(c, q, row)| {
                let mut key = Vec::with_capacity(8);
                key.extend_from_slice(&c.to_ne_bytes());
                key.extend_from_slice(&q.to_ne_bytes());
                let mut value = Vec::with_capacity(8 * row.len());
                row.iter().for_each(|v| value.extend_from_slice(&v.to_ne_bytes()));
                (key, value)
            })
            .collect();
        let spec = MapSpec {
            handle: map::PAIRS,
            name: "polc_pairs".to_string(),
            kind: MapKind::Hash,
            key_size: 8,
            value_size: 8 * tiers as u32,
            max_entries: room_for(entries.len()),
            flags: 0,
        };
        (spec, entries)
    });
    let mut port_maps = port_rows.map(|pm| pm.maps(tiers)).unwrap_or_default();
    port_maps.extend(grid.map(|g| g.maps(tiers)).unwrap_or_default());
    Ok(Ok(Optimised { program, classes, pairs, port_maps }))
}

/// The both-constrained table H while it is built: for each (pair class, port pair class)
/// cell a rule reached, the first pair rule per tier (`END`: none).
struct PairTable {
    tiers: usize,
    /// Per pair class: port pair class -> row. One small map per pair class keeps a rule's
    /// run over one pair class's cells in cache (one big map missed it on most cells).
    row_of: Vec<std::collections::HashMap<u32, u32, IdHash>>,
    /// Cells so far.
    len: usize,
    /// The rows, `tiers` values each, in order of creation.
    values: Vec<u64>,
}

impl PairTable {
    fn new(tiers: usize, npc: usize) -> PairTable {
        PairTable { tiers, row_of: vec![Default::default(); npc], len: 0, values: Vec::new() }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The row of cell (`pc`, `hq`), created with no rule in any tier if new.
    fn row_mut(&mut self, pc: u32, hq: u32) -> &mut [u64] {
        if self.row_of.len() <= pc as usize {
            self.row_of.resize(pc as usize + 1, Default::default());
        }
        let next = self.len as u32;
        let row = match self.row_of.get_mut(pc as usize) {
            Some(cells) => *cells.entry(hq).or_insert(next) as usize,
            None => return &mut [],
        };
        if row == next as usize {
            self.len += 1;
            self.values.resize(self.values.len() + self.tiers, END);
        }
        let start = row * self.tiers;
        self.values.get_mut(start..start + self.tiers).unwrap_or_default()
    }

    fn rows(&self) -> impl Iterator<Item = &[u64]> + '_ {
        self.values.chunks(self.tiers.max(1))
    }

    /// Every cell as (pair class, port pair class, row), in cell order.
    fn sorted(&self) -> Vec<(u32, u32, &[u64])> {
        let mut out = Vec::with_capacity(self.len);
        for (pc, cells) in self.row_of.iter().enumerate() {
            let mut hqs: Vec<(u32, u32)> = cells.iter().map(|(&hq, &row)| (hq, row)).collect();
            hqs.sort_unstable();
            for (hq, row) in hqs {
                let start = row as usize * self.tiers;
                let values = self.values.get(start..start + self.tiers).unwrap_or_default();
                out.push((pc as u32, hq, values));
            }
        }
        out
    }
}

/// The pair table as two tables (see [`table_map`]): pair classes with equal rows (the
/// same value for every port pair class) share a row, so the grid is distinct rows x port
/// pair classes; a cell holds an index into the distinct values (0: no pair rule).
struct PairGrid {
    /// The row of each pair class (row 0: no pair rule anywhere).
    row_of: Vec<u32>,
    /// Row-major cells, `npq` per row.
    cells: Vec<u32>,
    npq: usize,
    /// Value index -> first pair rule per tier (index 0: none in any tier).
    values: Vec<Vec<u64>>,
}

impl PairGrid {
    /// The grid of `h` (cells in order), or None when it has more cells than `tuning`
    /// allows. Values and rows are numbered in order of first appearance.
    fn new(
        h: &[(u32, u32, &[u64])],
        npc: usize,
        npq: usize,
        tiers: usize,
        tuning: Tuning,
    ) -> Option<PairGrid> {
        let mut values = vec![vec![END; tiers]];
        let mut value_ids: std::collections::HashMap<&[u64], u32, IdHash> = Default::default();
        // Each pair class's sparse row: (port pair class, value index), in order.
        let mut sparse: Vec<Vec<(u32, u32)>> = vec![Vec::new(); npc];
        for &(pc, hq, row) in h {
            let id = *value_ids.entry(row).or_insert_with(|| {
                values.push(row.to_vec());
                values.len() as u32 - 1
            });
            if let Some(r) = sparse.get_mut(pc as usize) {
                r.push((hq, id));
            }
        }
        let mut row_ids: std::collections::HashMap<&Vec<(u32, u32)>, u32, IdHash> =
            Default::default();
        let empty = Vec::new();
        row_ids.insert(&empty, 0);
        let mut rows: Vec<&Vec<(u32, u32)>> = vec![&empty];
        let row_of: Vec<u32> = (sparse.iter())
            .map(|r| {
                *row_ids.entry(r).or_insert_with(|| {
                    rows.push(r);
                    rows.len() as u32 - 1
                })
            })
            .collect();
        if rows.len().saturating_mul(npq) > tuning.max_pair_cells {
            return None;
        }
        let mut cells = vec![0u32; rows.len() * npq];
        for (id, row) in rows.iter().enumerate() {
            for &(hq, v) in row.iter() {
                if let Some(cell) = cells.get_mut(id * npq + hq as usize) {
                    *cell = v;
                }
            }
        }
        Some(PairGrid { row_of, cells, npq, values })
    }

    /// Cells the table has room for: rows for pod churn to add (a new distinct row is
    /// contents, not a new program), times the port pair classes (policy alone fixes them).
    /// The program's bounds check uses it, so it must not depend on the rows in use.
    fn cell_capacity(&self) -> u32 {
        let rows = self.cells.len() / self.npq.max(1);
        room_for(rows).saturating_mul(self.npq as u32)
    }

    /// Distinct values the table has room for (churn can add some, like rows).
    fn value_capacity(&self) -> u32 {
        room_for(self.values.len())
    }

    fn maps(self, tiers: usize) -> Vec<(MapSpec, crate::compile::MapEntries)> {
        let cells = self.cells.iter().map(|v| v.to_ne_bytes());
        let values = self.values.iter().map(|row| row.iter().flat_map(|v| v.to_ne_bytes()));
        let (ncells, nvalues) = (self.cell_capacity(), self.value_capacity());
        vec![
            table_map(map::PAIR_CELLS, "polc_paircells", 4, cells, ncells),
            table_map(map::PAIR_VALUES, "polc_pairvalues", 8 * tiers as u32, values, nvalues),
        ]
    }
}

/// A table of this program: a single-entry array map whose one value holds `rows` rows of
/// `stride` bytes, `rows` at index 0, 1, ... and zeros after. The program addresses a row
/// directly ([`emit_row_address`]: a bounds check and an address computation, no lookup),
/// so the rows are read with no helper call and no per-lookup cost beyond the loads.
/// `capacity` (at least the number of rows) fixes the map's shape: tables sized with room
/// keep their shape as pod churn changes their contents, so the loader can update them in
/// place.
fn table_map<R: IntoIterator<Item = u8>>(
    handle: u32,
    name: &str,
    stride: u32,
    rows: impl IntoIterator<Item = R>,
    capacity: u32,
) -> (MapSpec, crate::compile::MapEntries) {
    let mut value = Vec::with_capacity(stride as usize * capacity as usize);
    for row in rows {
        let start = value.len();
        value.extend(row);
        value.resize(start + stride as usize, 0);
    }
    let size = (value.len() as u64).max(u64::from(stride) * u64::from(capacity.max(1)));
    value.resize(size as usize, 0);
    let spec = MapSpec {
        handle,
        name: name.to_string(),
        kind: MapKind::Array,
        key_size: 4,
        value_size: size as u32,
        max_entries: 1,
        flags: 0,
    };
    (spec, vec![(0u32.to_ne_bytes().to_vec(), value)])
}

/// `r0 = &table[index]`, the row `index` of a [`table_map`] of `rows` rows of `stride`
/// bytes, or `fail` when `index` is past them; `index` is clobbered. The bounds check is
/// what lets the verifier accept the variable offset.
fn emit_row_address(a: &mut Asm, index: Reg, handle: u32, stride: u32, rows: u32, fail: Label) {
    a.jump_if(Cond::Ge, index, rows as i32, fail);
    if stride.is_power_of_two() {
        if stride > 1 {
            a.push(Insn::alu64(AluOp::Lsh, index, stride.trailing_zeros() as i32));
        }
    } else {
        a.push(Insn::alu64(AluOp::Mul, index, stride as i32));
    }
    a.push(Insn::ld_map_value(Reg::R0, handle, 0));
    a.push(Insn::alu64(AluOp::Add, Reg::R0, index));
}

/// Size of a class value and of a port row: a u32 for the pair lookup (the pair row, or
/// the pair port class), padded to 8, then one value per tier (F, or G).
fn tier_row_size(tiers: usize) -> u32 {
    8 + 8 * tiers as u32
}

/// Entries per class trie node: one per value of an address byte.
const TRIE_FANOUT: u32 = 256;

/// IPv4 address classes as a multibit trie: a node per address byte, 256 entries each, and
/// an entry is either a class (`class << 1 | 1`) or the next byte's node (`node << 1`).
/// Built with leaf pushing (a node starts as copies of the entry it replaces), so a walk
/// stops at the first class it meets: the class of the longest matching prefix. Node 0 is
/// the root. Each step is a load from the trie table; an LPM trie lookup is a call that
/// walks one node per distinguishing prefix bit, and grows slower as prefixes are added.
struct ClassTrie {
    nodes: Vec<Vec<u32>>,
}

impl ClassTrie {
    /// The trie of `(address, prefix length, class)`; addresses outside every prefix get
    /// class 0.
    fn new(prefixes: impl Iterator<Item = (u32, u8, u32)>) -> ClassTrie {
        let mut sorted: Vec<(u32, u8, u32)> = prefixes.collect();
        // Shorter first: a prefix then only ever overwrites leaves (a node below a range it
        // covers could only come from a longer prefix, inserted later).
        sorted.sort_by_key(|&(_, len, _)| len);
        let mut nodes = vec![vec![1u32; TRIE_FANOUT as usize]];
        for (addr, len, class) in sorted {
            let leaf = class << 1 | 1;
            let mut node = 0usize;
            for level in 0..4u32 {
                let byte = (addr >> (24 - 8 * level) & 0xff) as usize;
                let end = 8 * (level + 1);
                if u32::from(len) <= end {
                    let free = end - u32::from(len).min(end);
                    let lo = byte & !((1usize << free) - 1);
                    for e in &mut nodes[node][lo..lo + (1usize << free)] {
                        *e = leaf;
                    }
                    break;
                }
                let entry = nodes[node][byte];
                node = if entry & 1 == 1 {
                    nodes.push(vec![entry; TRIE_FANOUT as usize]);
                    let child = nodes.len() - 1;
                    nodes[node][byte] = (child as u32) << 1;
                    child
                } else {
                    (entry >> 1) as usize
                };
            }
        }
        ClassTrie { nodes }
    }

    /// The class of `addr`, as a walk of [`emit_trie_walk`] finds it.
    #[cfg(test)]
    fn class_of(&self, addr: u32) -> Option<u32> {
        let mut node = 0usize;
        for level in 0..4u32 {
            let entry = *self.nodes.get(node)?.get((addr >> (24 - 8 * level) & 0xff) as usize)?;
            if entry & 1 == 1 {
                return Some(entry >> 1);
            }
            node = (entry >> 1) as usize;
        }
        None
    }
}

/// A trie entry as the program reads it: a class stays `class << 1 | 1`; a node becomes its
/// byte offset in the table (even: nodes are 1 KiB), so a walk adds it without a multiply.
fn trie_entry(e: u32) -> u32 {
    if e & 1 == 1 {
        e
    } else {
        (e >> 1) * 4 * TRIE_FANOUT
    }
}

/// Walks the class trie (a table of `nodes` nodes, see [`trie_entry`]) for the IPv4 peer
/// address at `peer_off` in the FlowState: leaves the class index in r1, or goes to `fail`
/// (a node offset past the table, or no class after the last byte: a trie the compiler did
/// not build).
fn emit_trie_walk(a: &mut Asm, peer_off: i16, nodes: u32, fail: Label) {
    let leaf = a.label();
    let last_node = (nodes.max(1) - 1) * 4 * TRIE_FANOUT;
    for level in 0..4i16 {
        if level == 0 {
            a.comment("byte 0 of the peer address: its entry in the root node");
        } else {
            a.comment(format!(
                "byte {level} of the peer address: its entry in the node at offset r1"
            ));
            a.jump_if(Cond::Gt, Reg::R1, last_node as i32, fail);
        }
        a.push(Insn::ld_map_value(Reg::R0, map::CLASS_TRIE, 0));
        if level > 0 {
            a.push(Insn::alu64(AluOp::Add, Reg::R0, Reg::R1));
        }
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, peer_off + level));
        a.push(Insn::alu64(AluOp::Lsh, Reg::R1, 2));
        a.push(Insn::alu64(AluOp::Add, Reg::R0, Reg::R1));
        a.push(Insn::ldx(Size::W, Reg::R1, Reg::R0, 0));
        a.jump_if(Cond::Set, Reg::R1, 1, leaf);
    }
    a.jump(fail);
    a.bind(leaf);
    a.push(Insn::alu64(AluOp::Rsh, Reg::R1, 1));
}

/// The port array's contents: distinct leaf rows, and for TCP, UDP and SCTP (each a single
/// protocol of the tree with ports, in protocol order: the array's slots) the row of every
/// destination port.
struct PortRows {
    rows: Vec<Vec<u8>>,
    row_of: Vec<u32>,
    /// The protocol intervals of the tree the array serves, in slot order.
    protocols: Vec<usize>,
    /// Per slot, the row of each port.
    slots: Vec<Vec<u32>>,
}

impl PortRows {
    fn new(tree: &PortTree, row: impl Fn(usize) -> Vec<u8>) -> PortRows {
        // Rows numbered in order of first appearance.
        let mut ids: std::collections::HashMap<Vec<u8>, u32, IdHash> = Default::default();
        let mut rows = Vec::new();
        let row_of: Vec<u32> = (0..tree.leaves.len())
            .map(|q| {
                let r = row(q);
                if let Some(&id) = ids.get(&r) {
                    return id;
                }
                let id = rows.len() as u32;
                rows.push(r.clone());
                ids.insert(r, id);
                id
            })
            .collect();
        let protocols: Vec<usize> = (0..tree.protocols.len()).filter(|&p| tree.mapped(p)).collect();
        // Every port of a destination-port interval gets that interval's row.
        let ports = 1 + u16::MAX as usize;
        let slots = (protocols.iter())
            .map(|&p| {
                let mut slot = Vec::with_capacity(ports);
                for (x, &start) in tree.dports.iter().enumerate() {
                    let end = tree.dports.get(x + 1).map_or(ports, |&e| (e as usize).min(ports));
                    let row = tree.leaf_at(p, x, 0).and_then(|q| row_of.get(q)).copied();
                    let n = end.saturating_sub(start as usize);
                    slot.extend(std::iter::repeat_n(row.unwrap_or(0), n));
                }
                slot
            })
            .collect();
        PortRows { rows, row_of, protocols, slots }
    }

    /// Entries of the port array: a row index per port, per protocol slot.
    fn port_entries(&self) -> u32 {
        self.slots.len() as u32 * 65_536
    }

    fn maps(self, tiers: usize) -> Vec<(MapSpec, crate::compile::MapEntries)> {
        let mut out = Vec::new();
        if !self.slots.is_empty() {
            let entries = self.port_entries();
            let ports = self.slots.iter().flatten().map(|row| row.to_ne_bytes());
            out.push(table_map(map::PORTS, "polc_ports", 4, ports, entries));
        }
        let rows = self.rows.len() as u32;
        out.push(table_map(map::PORT_ROWS, "polc_portrows", tier_row_size(tiers), self.rows, rows));
        out
    }
}

/// `*(u64 *)(r10 + slot) = v`, as two 32-bit stores.
fn store_value(a: &mut Asm, slot: i16, v: u64) {
    a.push(Insn::st(Size::W, Reg::R10, slot, v as u32 as i32));
    a.push(Insn::st(Size::W, Reg::R10, slot + 4, (v >> 32) as u32 as i32));
}

/// Whether the peer side uses named ports (their members pair an address with a port).
fn peer_named(peer: &EndMatch) -> bool {
    peer.ports.as_ref().is_some_and(|p| !p.named.is_empty())
        || peer.not_ports.as_ref().is_some_and(|p| !p.named.is_empty())
}

/// Binary search of `reg` over sorted interval starts (`starts[0] == 0`): calls `leaf(i)`
/// for interval `[starts[i], starts[i + 1])`, then jumps to `done`.
fn emit_intervals(
    a: &mut Asm,
    reg: Reg,
    starts: &[u32],
    done: Label,
    leaf: &mut dyn FnMut(&mut Asm, usize),
) {
    fn go(
        a: &mut Asm,
        reg: Reg,
        starts: &[u32],
        lo: usize,
        hi: usize,
        done: Label,
        leaf: &mut dyn FnMut(&mut Asm, usize),
    ) {
        if hi - lo == 1 {
            leaf(a, lo);
            a.jump(done);
            return;
        }
        let mid = (lo + hi) / 2;
        let right = a.label();
        a.jump_if(Cond::Ge, reg, starts[mid] as i32, right);
        go(a, reg, starts, lo, mid, done, leaf);
        a.bind(right);
        go(a, reg, starts, mid, hi, done, leaf);
    }
    if !starts.is_empty() {
        go(a, reg, starts, 0, starts.len(), done, leaf);
    }
}

/// Binary search of `reg` for one of the sorted, distinct `keys`: `leaf(i)` when it equals
/// `keys[i]`, straight to `done` when it equals none.
fn emit_exact(
    a: &mut Asm,
    reg: Reg,
    keys: &[u32],
    done: Label,
    leaf: &mut dyn FnMut(&mut Asm, usize),
) {
    let mut bounds: BTreeSet<u32> = BTreeSet::from([0]);
    for &k in keys {
        bounds.insert(k);
        if k < u32::MAX {
            bounds.insert(k + 1);
        }
    }
    let starts: Vec<u32> = bounds.into_iter().collect();
    emit_intervals(a, reg, &starts, done, &mut |a, j| {
        if let Ok(i) = keys.binary_search(&starts[j]) {
            leaf(a, i);
        }
    });
}

/// An address class: the addresses whose longest matching prefix (among the policy's) is
/// `prefix` (`None`: no prefix matches).
struct Class {
    prefix: Option<Prefix>,
    /// An address of the class, if it has any.
    rep: Option<IpAddr>,
}

/// Indexes of the set bits of a bitset, in increasing order.
fn set_bits(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        std::iter::successors((word != 0).then_some(word), |&rest| {
            let rest = rest & (rest - 1);
            (rest != 0).then_some(rest)
        })
        .map(move |rest| w * 64 + rest.trailing_zeros() as usize)
    })
}

/// Hashing for ids and table rows built from them (not from user text), and for the
/// deduplication key of table contents: one multiplication per word instead of SipHash,
/// which dominated building the tables.
type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits, which a product gets from the
        // key's low bits alone: fold the high half in.
        self.0 ^ self.0 >> 32
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.write_u64(u64::from_ne_bytes(word));
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Emits the code of one leaf (or one protocol's search) of a branch tree.
type LeafFn<'a> = &'a mut dyn FnMut(&mut Asm, usize);

/// The representative of one port class.
#[derive(Debug, Clone, Copy)]
struct PortRep {
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    icmp: Option<(u8, u8)>,
}

/// A decision tree over protocol, then (dst port, src port) or (ICMP type, code).
struct PortTree {
    protocols: Vec<u32>,
    dports: Vec<u32>,
    sports: Vec<u32>,
    types: Vec<u32>,
    codes: Vec<u32>,
    leaves: Vec<PortRep>,
    /// Where each protocol interval's leaves start in `leaves`, and how they are laid out.
    spans: Vec<LeafSpan>,
    /// Ports of each named-port set the rules use.
    named: BTreeMap<polc_ir::PortSetId, Vec<u16>>,
}

/// The leaves of one protocol interval: one leaf, or a grid of `rows` x `cols` leaves
/// (dst port x src port, or ICMP type x code), row-major from `first`.
#[derive(Debug, Clone, Copy)]
struct LeafSpan {
    first: usize,
    rows: usize,
    cols: usize,
}

fn starts_of(boundaries: BTreeSet<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = boundaries.into_iter().collect();
    if v.first() != Some(&0) {
        v.insert(0, 0);
    }
    v
}

/// Index of the interval of sorted `starts` (`starts[0] == 0`) that holds `v`.
fn interval_of(starts: &[u32], v: u32) -> usize {
    starts.partition_point(|&s| s <= v).saturating_sub(1)
}

/// Indexes of the intervals of `starts` that overlap `[lo, hi]`.
fn intervals_overlapping(starts: &[u32], lo: u32, hi: u32) -> std::ops::Range<usize> {
    interval_of(starts, lo)..interval_of(starts, hi) + 1
}

impl PortTree {
    /// The leaf of protocol interval `p` at row `x`, column `y` (a single leaf is (0, 0)).
    fn leaf_at(&self, p: usize, x: usize, y: usize) -> Option<usize> {
        let span = self.spans.get(p)?;
        (x < span.rows && y < span.cols).then_some(span.first + x * span.cols + y)
    }

    fn kind(&self, proto_interval: usize) -> u8 {
        self.protocols[proto_interval] as u8
    }

    fn is_single(&self, p: usize) -> bool {
        self.protocols.get(p + 1) == Some(&(self.protocols[p] + 1))
    }

    /// Whether protocol interval `p` is one protocol with ports searched by destination
    /// port alone: what the port array can stand in for.
    fn mapped(&self, p: usize) -> bool {
        self.is_single(p) && proto::has_ports(self.kind(p)) && self.sports.len() == 1
    }

    /// The leaf whose class holds the flow `rep` stands for (`rep` from a finer tree).
    fn locate(&self, rep: &PortRep) -> usize {
        let p = interval_of(&self.protocols, rep.protocol as u32);
        let key = if self.leaf_at(p, 0, 0).is_some() && !self.is_single(p) {
            (p, 0, 0)
        } else if let Some((t, c)) = rep.icmp {
            (p, interval_of(&self.types, t as u32), interval_of(&self.codes, c as u32))
        } else {
            (
                p,
                interval_of(&self.dports, rep.dst_port as u32),
                interval_of(&self.sports, rep.src_port as u32),
            )
        };
        let (p, x, y) = key;
        self.leaf_at(p, x, y).or_else(|| self.leaf_at(p, 0, 0)).unwrap_or(0)
    }

    /// Leaves a rule with match `m` may match (a superset; the caller checks each exactly).
    fn candidates(&self, m: &Match) -> Vec<usize> {
        let protocols: Vec<usize> = match m.protocol {
            Some(p) => vec![interval_of(&self.protocols, p as u32)],
            None => (0..self.protocols.len()).collect(),
        };
        // Port intervals a port condition can touch; all when there is none.
        let port_candidates = |starts: &[u32], end: &EndMatch| -> Vec<usize> {
            let Some(pm) = &end.ports else { return (0..starts.len()).collect() };
            let mut out = BTreeSet::new();
            for r in &pm.ranges {
                out.extend(intervals_overlapping(starts, r.lo as u32, r.hi as u32));
            }
            for id in &pm.named {
                for member in self.named.get(id).into_iter().flatten() {
                    out.insert(interval_of(starts, *member as u32));
                }
            }
            out.into_iter().collect()
        };
        let dports = port_candidates(&self.dports, &m.dst);
        let sports = port_candidates(&self.sports, &m.src);
        let types: Vec<usize> = match m.icmp {
            Some(i) => vec![interval_of(&self.types, i.icmp_type as u32)],
            None => (0..self.types.len()).collect(),
        };
        let codes: Vec<usize> = match m.icmp.and_then(|i| i.code) {
            Some(c) => vec![interval_of(&self.codes, c as u32)],
            None => (0..self.codes.len()).collect(),
        };
        let mut out = Vec::new();
        for p in protocols {
            if let Some(leaf) = self.leaf_at(p, 0, 0) {
                if !(self.is_single(p)
                    && (proto::has_ports(self.kind(p))
                        || self.kind(p) == proto::ICMP
                        || self.kind(p) == proto::ICMPV6))
                {
                    out.push(leaf);
                    continue;
                }
            }
            let kind = self.kind(p);
            let (xs, ys) =
                if proto::has_ports(kind) { (&dports, &sports) } else { (&types, &codes) };
            for &x in xs {
                for &y in ys {
                    if let Some(leaf) = self.leaf_at(p, x, y) {
                        out.push(leaf);
                    }
                }
            }
        }
        out
    }

    /// Emit the search. Leaves with equal `content` are interchangeable, so adjacent
    /// intervals whose whole subtrees have equal content are searched as one.
    fn emit(
        &self,
        a: &mut Asm,
        done: Label,
        content: &dyn Fn(usize) -> Vec<u64>,
        mut search: Option<LeafFn>,
        leaf: &mut dyn FnMut(&mut Asm, usize),
    ) {
        let port_or_icmp = |p: usize| {
            let k = self.kind(p);
            self.is_single(p) && (proto::has_ports(k) || k == proto::ICMP || k == proto::ICMPV6)
        };
        let inner = |p: usize| -> (&[u32], &[u32]) {
            if proto::has_ports(self.kind(p)) {
                (&self.dports, &self.sports)
            } else {
                (&self.types, &self.codes)
            }
        };
        // The content of every leaf, once: per protocol interval, row-major (x, y).
        let whole: Vec<Vec<Vec<u64>>> = (0..self.protocols.len())
            .map(|p| {
                if !port_or_icmp(p) {
                    return vec![content(self.leaf_at(p, 0, 0).unwrap_or(0))];
                }
                let (xs, ys) = inner(p);
                let mut out = Vec::with_capacity(xs.len() * ys.len());
                for x in 0..xs.len() {
                    for y in 0..ys.len() {
                        out.push(content(self.leaf_at(p, x, y).unwrap_or(0)));
                    }
                }
                out
            })
            .collect();
        // The leaves under protocol interval p, row x (None: all rows).
        let subtree = |p: usize, x: Option<usize>| -> &[Vec<u64>] {
            let all = whole.get(p).map_or(&[][..], Vec::as_slice);
            match x {
                Some(x) if port_or_icmp(p) => {
                    let n = inner(p).1.len();
                    all.get(x * n..(x + 1) * n).unwrap_or_default()
                }
                _ => all,
            }
        };
        // A protocol whose leaves all have the same content needs no inner search.
        let uniform: Vec<bool> = whole.iter().map(|t| t.windows(2).all(|w| w[0] == w[1])).collect();
        let is_uniform = |p: usize| uniform.get(p).copied().unwrap_or(false);
        // (p, 0, 0) is the first leaf under every protocol interval.
        let first_leaf = |p: usize| self.leaf_at(p, 0, 0).unwrap_or(0);
        a.push(Insn::ldx(Size::B, Reg::R1, STATE, abi::FLOW_PROTOCOL as i16));
        let (pstarts, pfirst) = merge_equal(&self.protocols, |p| {
            let t = subtree(p, None);
            // A uniform protocol compares by its one content.
            if is_uniform(p) {
                (true, t.get(..1).unwrap_or_default())
            } else {
                (false, t)
            }
        });
        emit_intervals(a, Reg::R1, &pstarts, done, &mut |a, pi| {
            let p = pfirst[pi];
            if !port_or_icmp(p) || is_uniform(p) {
                leaf(a, first_leaf(p));
                return;
            }
            if let Some(search) = search.as_mut().filter(|_| self.mapped(p)) {
                search(a, p);
                return;
            }
            let (xs, ys) = inner(p);
            let (xoff, yoff) = if proto::has_ports(self.kind(p)) {
                (abi::FLOW_DST_PORT, abi::FLOW_SRC_PORT)
            } else {
                (abi::FLOW_ICMP_TYPE, abi::FLOW_ICMP_CODE)
            };
            let size = if proto::has_ports(self.kind(p)) { Size::H } else { Size::B };
            let (xstarts, xfirst) = merge_equal(xs, |x| subtree(p, Some(x)));
            let multi_y = ys.len() > 1;
            if xstarts.len() > 1 {
                a.push(Insn::ldx(size, Reg::R2, STATE, xoff as i16));
            }
            if multi_y {
                a.push(Insn::ldx(size, Reg::R3, STATE, yoff as i16));
            }
            emit_intervals(a, Reg::R2, &xstarts, done, &mut |a, xi| {
                let x = xfirst[xi];
                let at = |y: usize| self.leaf_at(p, x, y).unwrap_or(0);
                let row = subtree(p, Some(x));
                let (ystarts, yfirst) = merge_equal(ys, |y| row.get(y));
                emit_intervals(a, Reg::R3, &ystarts, done, &mut |a, yi| {
                    leaf(a, at(yfirst[yi]));
                });
            });
        });
    }
}

/// Merge adjacent intervals of `starts` whose `sig` is equal: the merged starts, and for
/// each merged interval the first original interval in it.
fn merge_equal<T: PartialEq>(starts: &[u32], sig: impl Fn(usize) -> T) -> (Vec<u32>, Vec<usize>) {
    let mut out_starts = Vec::new();
    let mut first = Vec::new();
    let mut last: Option<T> = None;
    for (i, &st) in starts.iter().enumerate() {
        let s = sig(i);
        if last.as_ref() != Some(&s) {
            out_starts.push(st);
            first.push(i);
            last = Some(s);
        }
    }
    (out_starts, first)
}

/// What the optimiser knows about one program's endpoint.
struct Context<'a> {
    ep: &'a EndpointPolicy,
    own: IpAddr,
    family: Family,
    peer_is_src: bool,
    /// Set lookups for `rule_matches`, with named-port sets cut to what matters.
    view: EndpointPolicy,
    classes: Vec<Class>,
    /// Per referenced IP set: the classes inside it (bitset).
    set_classes: BTreeMap<IpSetId, Vec<u64>>,
}

impl<'a> Context<'a> {
    fn new(ep: &'a EndpointPolicy, own: IpAddr, family: Family, peer_is_src: bool) -> Self {
        let view = EndpointPolicy {
            endpoint: ep.endpoint.clone(),
            addresses: ep.addresses.clone(),
            direction: ep.direction,
            tiers: Default::default(),
            ip_sets: ep.ip_sets.clone(),
            port_sets: ep.port_sets.clone(),
        };
        Context {
            ep,
            own,
            family,
            peer_is_src,
            view,
            classes: Vec::new(),
            set_classes: BTreeMap::new(),
        }
    }

    /// (peer end, own end) of a match.
    fn ends<'m>(&self, m: &'m Match) -> (&'m EndMatch, &'m EndMatch) {
        if self.peer_is_src {
            (&m.src, &m.dst)
        } else {
            (&m.dst, &m.src)
        }
    }

    /// The match with the own end's address conditions evaluated (None: never matches).
    fn fold_own(&self, m: &Match) -> Option<Match> {
        let mut m = m.clone();
        let own_end = if self.peer_is_src { &mut m.dst } else { &mut m.src };
        let contains = |id: &IpSetId| self.ep.ip_set(*id).is_some_and(|s| s.contains(&self.own));
        if !own_end.in_sets.iter().all(contains) || own_end.not_in_sets.iter().any(contains) {
            return None;
        }
        own_end.in_sets.clear();
        own_end.not_in_sets.clear();
        Some(m)
    }

    /// Address classes from the peer-side sets and named-port hosts of `rules`.
    fn build_classes(&mut self, rules: &[&FlatRule]) {
        let mut prefixes: BTreeSet<Prefix> = BTreeSet::new();
        let mut sets: BTreeSet<IpSetId> = BTreeSet::new();
        for r in rules {
            let (peer, _) = self.ends(&r.matches);
            sets.extend(peer.in_sets.iter().chain(&peer.not_in_sets));
            for pm in peer.ports.iter().chain(&peer.not_ports) {
                for id in &pm.named {
                    if let Some(s) = self.ep.port_set(*id) {
                        for m in &s.members {
                            if Family::of(&m.addr) == self.family {
                                prefixes.insert(Prefix::host(m.addr));
                            }
                        }
                    }
                }
            }
        }
        for id in &sets {
            if let Some(s) = self.ep.ip_set(*id) {
                prefixes.extend(s.members.iter().filter(|p| p.family() == self.family));
            }
        }
        let sorted: Vec<Prefix> = prefixes.into_iter().collect();
        // Pre-order: a prefix's descendants follow it contiguously.
        let bits = self.family.bits() as u32;
        let span = |p: &Prefix| -> (u128, u128) {
            let start = addr_bits(&p.addr());
            let size = if bits - p.len() as u32 >= 128 {
                u128::MAX
            } else {
                (1u128 << (bits - p.len() as u32)) - 1
            };
            (start, start.saturating_add(size))
        };
        let starts: Vec<u128> = sorted.iter().map(|p| span(p).0).collect();
        // Laminar prefixes in (start, length) order: the descendants of prefix i are the
        // run after it that starts inside it.
        let subtree_end: Vec<usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let end = span(p).1;
                (i + 1).max(starts.partition_point(|&s| s <= end))
            })
            .collect();
        // Representatives: a gap between a prefix's children (or the top-level prefixes).
        let max = if bits == 32 { u32::MAX as u128 } else { u128::MAX };
        let gap = |lo: u128, hi: u128, children: &mut dyn Iterator<Item = (u128, u128)>| {
            let mut cursor = lo;
            for (s, e) in children {
                if s > cursor {
                    return Some(cursor);
                }
                if e >= hi {
                    return None;
                }
                cursor = cursor.max(e + 1);
            }
            (cursor <= hi).then_some(cursor)
        };
        let children = |from: usize, to: usize| {
            let mut out = Vec::new();
            let mut k = from;
            while k < to {
                out.push(span(&sorted[k]));
                k = subtree_end[k];
            }
            out
        };
        let mut classes = vec![Class {
            prefix: Some(self.default_prefix()),
            rep: gap(0, max, &mut children(0, sorted.len()).into_iter())
                .map(|b| addr_of(self.family, b)),
        }];
        for (i, p) in sorted.iter().enumerate() {
            let (lo, hi) = span(p);
            let rep = gap(lo, hi, &mut children(i + 1, subtree_end[i]).into_iter());
            if p.len() == 0 {
                // The default entry is this prefix.
                classes[0].rep = rep.map(|b| addr_of(self.family, b));
                continue;
            }
            classes.push(Class { prefix: Some(*p), rep: rep.map(|b| addr_of(self.family, b)) });
        }
        // Class index of each sorted prefix (the /0, if any, is class 0).
        let mut class_of = Vec::with_capacity(sorted.len());
        let mut next = 1;
        for p in &sorted {
            if p.len() == 0 {
                class_of.push(0);
            } else {
                class_of.push(next);
                next += 1;
            }
        }
        let words = classes.len().div_ceil(64);
        for id in sets {
            let mut bitset = vec![0u64; words];
            if let Some(s) = self.ep.ip_set(id) {
                for m in s.members.iter().filter(|p| p.family() == self.family) {
                    if let Ok(i) = sorted.binary_search(m) {
                        for &c in &class_of[i..subtree_end[i]] {
                            bitset[c / 64] |= 1 << (c % 64);
                        }
                        if m.len() == 0 {
                            bitset.iter_mut().for_each(|w| *w = u64::MAX);
                        }
                    }
                }
            }
            self.set_classes.insert(id, bitset);
        }
        self.classes = classes;
    }

    fn default_prefix(&self) -> Prefix {
        let zero = match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Prefix::new(zero, 0).unwrap_or(Prefix::host(zero))
    }

    /// The classes (with a representative) whose addresses satisfy `r`'s peer-address sets.
    fn class_members(&self, r: &FlatRule) -> Vec<usize> {
        let (peer, _) = self.ends(&r.matches);
        let words = self.classes.len().div_ceil(64);
        let mut bits = vec![u64::MAX; words];
        for id in &peer.in_sets {
            match self.set_classes.get(id) {
                Some(s) => bits.iter_mut().zip(s).for_each(|(b, s)| *b &= s),
                None => bits.iter_mut().for_each(|b| *b = 0),
            }
        }
        for id in &peer.not_in_sets {
            if let Some(s) = self.set_classes.get(id) {
                bits.iter_mut().zip(s).for_each(|(b, s)| *b &= !s);
            }
        }
        set_bits(&bits)
            .filter(|&c| self.classes.get(c).is_some_and(|class| class.rep.is_some()))
            .collect()
    }

    /// Whether `r`'s port side (and coupled named ports, with the peer at `peer`) matches
    /// the port class `rep`; its address sets are decided by the class tables.
    fn port_side_matches(&self, r: &FlatRule, rep: &PortRep, peer: IpAddr) -> bool {
        let (src, dst) = if self.peer_is_src { (peer, self.own) } else { (self.own, peer) };
        let flow = Flow {
            src,
            dst,
            protocol: rep.protocol,
            src_port: rep.src_port,
            dst_port: rep.dst_port,
            icmp_type: rep.icmp.map(|(t, _)| t),
            icmp_code: rep.icmp.map(|(_, c)| c),
        };
        rule_matches(&self.view, &r.port_match, &flow)
    }

    /// Pair class of each address class: classes the pair rules' sets (and named-port
    /// hosts) cannot tell apart share one.
    fn pair_classes(&self, rules: &[&FlatRule]) -> Vec<u32> {
        let mut sets: BTreeSet<IpSetId> = BTreeSet::new();
        let mut named_hosts = false;
        for r in rules {
            let (peer, _) = self.ends(&r.matches);
            sets.extend(peer.in_sets.iter().chain(&peer.not_in_sets));
            named_hosts |= r.coupled;
        }
        // Partition refinement: start with the named-port hosts alone (their ports are
        // their own) and everything else together, then split every group by each set.
        // Classes end in one group iff the same sets hold them; the work is one step per
        // membership, the memory one word per class.
        let n = self.classes.len();
        let bits = self.family.bits();
        let mut group: Vec<u32> = vec![0; n];
        let mut next = 1u32;
        for (c, g) in group.iter_mut().enumerate() {
            if named_hosts && self.classes[c].prefix.is_some_and(|p| p.len() == bits) {
                *g = next;
                next += 1;
            }
        }
        // Per group: the last set that split it (its number + 1) and the group its members
        // in that set moved to.
        let mut split: Vec<(u32, u32)> = Vec::new();
        let set_bitsets = sets.iter().filter_map(|id| self.set_classes.get(id));
        for (stamp, set) in (1u32..).zip(set_bitsets) {
            for c in set_bits(set) {
                let Some(g) = group.get_mut(c) else { continue };
                let old = *g as usize;
                if split.len() <= old {
                    split.resize(old + 1, (0, 0));
                }
                if let Some(moved) = split.get_mut(old) {
                    if moved.0 != stamp {
                        *moved = (stamp, next);
                        next += 1;
                    }
                    *g = moved.1;
                }
            }
        }
        // Numbered in order of first appearance.
        let mut ids: std::collections::HashMap<u32, u32, IdHash> = Default::default();
        group
            .into_iter()
            .map(|g| {
                let k = ids.len() as u32;
                *ids.entry(g).or_insert(k)
            })
            .collect()
    }

    /// The port-class tree for `rules`.
    fn build_port_tree(&self, rules: &[&FlatRule]) -> PortTree {
        let mut protos: BTreeSet<u32> = BTreeSet::new();
        let mut dports: BTreeSet<u32> = BTreeSet::new();
        let mut sports: BTreeSet<u32> = BTreeSet::new();
        let mut types: BTreeSet<u32> = BTreeSet::new();
        let mut codes: BTreeSet<u32> = BTreeSet::new();
        let mut any_ports = false;
        let mut any_icmp = false;
        let mut named: BTreeMap<polc_ir::PortSetId, Vec<u16>> = BTreeMap::new();
        let range_bounds = |set: &mut BTreeSet<u32>, lo: u16, hi: u16| {
            set.insert(lo as u32);
            if hi < u16::MAX {
                set.insert(hi as u32 + 1);
            }
        };
        for r in rules {
            let m = &r.matches;
            for p in m.protocol.iter().chain(&m.not_protocol) {
                protos.insert(*p as u32);
            }
            for icmp in m.icmp.iter().chain(&m.not_icmp) {
                any_icmp = true;
                range_bounds(&mut types, icmp.icmp_type as u16, icmp.icmp_type as u16);
                if let Some(c) = icmp.code {
                    range_bounds(&mut codes, c as u16, c as u16);
                }
            }
            for (end, set) in [(&m.src, &mut sports), (&m.dst, &mut dports)] {
                for pm in end.ports.iter().chain(&end.not_ports) {
                    any_ports = true;
                    for range in &pm.ranges {
                        range_bounds(set, range.lo, range.hi);
                    }
                    for id in &pm.named {
                        for member in self.ep.port_set(*id).iter().flat_map(|s| &s.members) {
                            range_bounds(set, member.port, member.port);
                            protos.insert(member.protocol as u32);
                            named.entry(*id).or_default().push(member.port);
                        }
                    }
                }
            }
        }
        if any_ports {
            protos.extend([proto::TCP, proto::UDP, proto::SCTP, proto::UDPLITE].map(u32::from));
        }
        if any_icmp {
            protos.extend([proto::ICMP, proto::ICMPV6].map(u32::from));
        }
        let mut pbounds = BTreeSet::new();
        for p in &protos {
            range_bounds(&mut pbounds, *p as u16, *p as u16);
        }
        let protocols = starts_of(pbounds);
        let dports = starts_of(dports);
        let sports = starts_of(sports);
        let types = starts_of(types);
        let codes = starts_of(codes);
        let mut leaves = Vec::new();
        let mut spans = Vec::with_capacity(protocols.len());
        for (p, &first) in protocols.iter().enumerate() {
            let single = protocols.get(p + 1) == Some(&(first + 1));
            let protocol = first as u8;
            if single && proto::has_ports(protocol) {
                spans.push(LeafSpan {
                    first: leaves.len(),
                    rows: dports.len(),
                    cols: sports.len(),
                });
                for &dp in &dports {
                    for &sp in &sports {
                        leaves.push(PortRep {
                            protocol,
                            src_port: sp as u16,
                            dst_port: dp as u16,
                            icmp: None,
                        });
                    }
                }
            } else if single && (protocol == proto::ICMP || protocol == proto::ICMPV6) {
                spans.push(LeafSpan { first: leaves.len(), rows: types.len(), cols: codes.len() });
                for &tv in &types {
                    for &cv in &codes {
                        leaves.push(PortRep {
                            protocol,
                            src_port: 0,
                            dst_port: 0,
                            icmp: Some((tv as u8, cv as u8)),
                        });
                    }
                }
            } else {
                spans.push(LeafSpan { first: leaves.len(), rows: 1, cols: 1 });
                leaves.push(PortRep { protocol, src_port: 0, dst_port: 0, icmp: None });
            }
        }
        PortTree { protocols, dports, sports, types, codes, leaves, spans, named }
    }
}

fn addr_bits(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(*v) as u128,
        IpAddr::V6(v) => u128::from(*v),
    }
}

fn addr_of(family: Family, bits: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

#[cfg(test)]
mod tests {
    use super::{set_bits, ClassTrie, Family, PairGrid, Tuning, MAX_TABLE_BYTES};
    use proptest::prelude::*;

    /// Longest-prefix match by brute force: the class of the longest prefix holding `addr`.
    fn longest_match(prefixes: &[(u32, u8, u32)], addr: u32) -> u32 {
        let mask = |len: u8| if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        (prefixes.iter())
            .filter(|&&(p, len, _)| (addr ^ p) & mask(len) == 0)
            .max_by_key(|&&(_, len, _)| len)
            .map_or(0, |&(_, _, c)| c)
    }

    proptest! {
        /// The trie walk finds the longest-prefix match for addresses near the prefixes'
        /// edges (first, last, and just outside) and at random.
        #[test]
        fn class_trie_finds_the_longest_matching_prefix(
            raw in prop::collection::vec((any::<u32>(), 0u8..=32), 0..40),
            probes in prop::collection::vec(any::<u32>(), 20),
        ) {
            // Distinct prefixes (address masked to its length), classes 1, 2, ...
            let mut prefixes: Vec<(u32, u8, u32)> = Vec::new();
            for (addr, len) in raw {
                let masked = if len == 0 { 0 } else { addr & u32::MAX << (32 - u32::from(len)) };
                if !prefixes.iter().any(|&(p, l, _)| p == masked && l == len) {
                    let class = prefixes.len() as u32 + 1;
                    prefixes.push((masked, len, class));
                }
            }
            let trie = ClassTrie::new(prefixes.iter().copied());
            let mut addrs = probes;
            for &(p, len, _) in &prefixes {
                let size = if len == 0 { u32::MAX } else { (1u64 << (32 - u32::from(len))) as u32 - 1 };
                addrs.extend([p, p.wrapping_add(size), p.wrapping_sub(1), p.wrapping_add(size).wrapping_add(1)]);
            }
            for addr in addrs {
                prop_assert_eq!(trie.class_of(addr), Some(longest_match(&prefixes, addr)), "{:#x}", addr);
            }
        }
    }

    #[test]
    fn a_class_trie_over_the_table_limit_uses_the_lpm_layout() {
        let demo =
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo"));
        let maps_of = |max_table_bytes| {
            let tuning = Tuning { max_table_bytes, ..Tuning::default() };
            let options = crate::compile::Options { tuning, ..Default::default() };
            let compiled =
                crate::compile::compile_files_with(std::slice::from_ref(&demo), options).unwrap();
            let mut names: Vec<String> = (compiled.programs.iter())
                .filter(|p| p.family == Family::V4 && p.opt_level == 2)
                .flat_map(|p| p.local_maps.iter().map(|m| m.spec.name.clone()))
                .collect();
            names.sort();
            names.dedup();
            names
        };
        assert!(maps_of(MAX_TABLE_BYTES).contains(&"polc_classtrie".to_string()));
        let small = maps_of(1024);
        assert!(small.contains(&"polc_classes".to_string()), "{small:?}");
        assert!(!small.contains(&"polc_classtrie".to_string()), "{small:?}");
    }

    #[test]
    fn a_pair_grid_keeps_its_shape_when_churn_adds_a_row() {
        // Pair classes 0..n, each with its own rule in port pair class 1 of 4: n rows.
        let grid = |n: u32| {
            let values: Vec<[u64; 1]> = (0..n).map(|pc| [u64::from(pc) << 32]).collect();
            let h: Vec<(u32, u32, &[u64])> =
                (0..n).map(|pc| (pc, 1, &values[pc as usize][..])).collect();
            let g = PairGrid::new(&h, n as usize, 4, 1, Tuning::default()).unwrap();
            assert!(g.cell_capacity() as usize >= g.cells.len());
            assert!(g.value_capacity() as usize >= g.values.len());
            (g.cell_capacity(), g.value_capacity())
        };
        // A pod that adds a distinct row (and value) changes contents, not the table's size,
        // which the program's bounds checks are compiled from.
        assert_eq!(grid(5), grid(6));
    }

    #[test]
    fn set_bits_lists_every_set_bit_in_order() {
        let words = [0b1011u64, 0, 1 << 63 | 1];
        assert_eq!(set_bits(&words).collect::<Vec<_>>(), vec![0, 1, 3, 128, 191]);
        assert_eq!(set_bits(&[0, 0]).count(), 0);
        assert_eq!(set_bits(&[u64::MAX]).count(), 64);
    }
}
