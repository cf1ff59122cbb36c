//! `polc compile`: policy in, one program per endpoint x direction x family (after dedupe)
//! out, as annotated listings and ELF objects, with worst-case costs from the CFG.

use crate::asm::Program;
use crate::cfg::{worst_case_with, WorstCase};
use crate::codegen::{self, RuleTable};
use crate::elf::{write_object, ElfMap, ElfProgram, MapReloc};
use crate::error::{print_stdout, Error, Result};
use crate::frontend;
use polc_ir::{Direction, EndpointPolicy, Family, Ir};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Output format of `compile` and `explain`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Flags of `polc compile` (docs/cli.md).
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Write listings (`.txt`) and ELF objects (`.o`) of every program into this directory.
    #[arg(short = 'o', long = "output-dir")]
    pub output_dir: Option<PathBuf>,
    /// `text` prints the annotated listings; `json` prints a summary object.
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Optimisation level: 0 = linear evaluation (the baseline), 1 = linear with the peer's
    /// set memberships from one lookup, 2 = class tables whose per-packet cost does not grow
    /// with the rule count (falls back to 1, else 0, per program where it does not apply;
    /// see docs/performance.md).
    #[arg(short = 'O', long = "opt-level", default_value_t = 2,
          value_parser = clap::builder::TypedValueParser::map(
              clap::builder::PossibleValuesParser::new(["0", "1", "2"]),
              |s: String| s.parse::<u8>().unwrap_or(2)))]
    pub opt_level: u8,
    /// Split a program into tail-called parts of at most about this many instructions.
    #[arg(long = "max-part-insns", default_value_t = codegen::Limits::default().part_insns as u64,
          value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_part_insns: u64,
}

/// One part of a program (most programs have one; see [`codegen::Generated`]).
#[derive(Debug, Clone)]
pub struct Part {
    pub program: Program,
    pub bytes: Vec<u8>,
}

/// One unique program and the endpoints that share it.
#[derive(Debug, Clone)]
pub struct CompiledProgram {
    pub endpoints: Vec<String>,
    pub direction: Direction,
    pub family: Family,
    /// Part 0 is the entry; later parts are tail-called through the program's own prog
    /// array ([`codegen::map::PARTS`]).
    pub parts: Vec<Part>,
    /// Longest path from part 0's entry to the epilogue (or a drop), across parts.
    pub worst_case: WorstCase,
    /// 0, 1 or 2: the level this program was generated at.
    pub opt_level: u8,
    /// Why an -O2 compile left this program at a lower level.
    pub fallback: Option<String>,
    /// Maps of this program alone (the -O2 address classes), with their contents.
    pub local_maps: Vec<LocalMap>,
}

/// A map only one program uses, and what the loader puts into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalMap {
    pub spec: codegen::MapSpec,
    pub entries: MapEntries,
}

impl CompiledProgram {
    /// Instruction slots over all parts.
    pub fn insns(&self) -> usize {
        self.parts.iter().map(|p| p.program.slot_count()).sum()
    }
}

/// Map contents for the loader: (key, value) pairs.
pub type MapEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Everything a compile produces.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ir: Ir,
    pub programs: Vec<CompiledProgram>,
    pub rules: RuleTable,
    /// Per family: LPM IP-set entries (key, value) for the loader.
    pub ipset_entries: BTreeMap<u8, MapEntries>,
    pub named_port_entries: MapEntries,
}

impl Compiled {
    /// The index of the program serving `endpoint` in `direction` for `family`.
    pub fn program_index(
        &self,
        endpoint: &str,
        direction: Direction,
        family: Family,
    ) -> Option<usize> {
        self.programs.iter().position(|p| {
            p.direction == direction
                && p.family == family
                && p.endpoints.iter().any(|e| e == endpoint)
        })
    }

    /// The map definitions every program of `family` refers to, sized for this compile.
    pub fn map_specs(&self, family: Family) -> Vec<codegen::MapSpec> {
        let ipsets = self.ipset_entries.get(&family.number()).map_or(0, Vec::len);
        codegen::map_specs(family, ipsets, self.named_port_entries.len(), self.rules.len())
    }

    /// The maps program `p` refers to: its family's, plus its own parts array if split.
    pub fn program_map_specs(&self, p: &CompiledProgram) -> Vec<codegen::MapSpec> {
        let mut specs = self.map_specs(p.family);
        if p.parts.len() > 1 {
            specs.push(codegen::parts_map_spec(p.parts.len()));
        }
        specs.extend(p.local_maps.iter().map(|m| m.spec.clone()));
        specs
    }
}

/// Compile options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub limits: codegen::Limits,
    /// 0: linear evaluation (the baseline); 1: linear with a peer-set bitmap
    /// (`codegen::generate_peer_bits`); 2: class tables (`crate::opt`).
    pub opt_level: u8,
    pub tuning: crate::opt::Tuning,
    /// Generate once per policy shape and re-target replicas (see `ShapeMemo`); tests turn
    /// it off to check that it changes nothing.
    pub share_shapes: bool,
    /// Threads generating programs (0: one per available core). Any number gives the same
    /// output byte for byte (see `Ahead`); tests compare 1 with more.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            limits: codegen::Limits::default(),
            opt_level: 2,
            tuning: crate::opt::Tuning::default(),
            share_shapes: true,
            threads: 0,
        }
    }
}

fn families(ep: &EndpointPolicy) -> Vec<Family> {
    let mut f: Vec<Family> = ep.addresses.iter().map(Family::of).collect();
    f.sort_by_key(|f| f.number());
    f.dedup();
    f
}

/// Generate programs (at the default level, -O2) for every endpoint x direction x family of
/// `ir`, deduplicated.
pub fn compile_ir(ir: Ir) -> Result<Compiled> {
    compile_ir_with(ir, Options::default())
}

/// [`compile_ir`] with explicit options.
pub fn compile_ir_with(ir: Ir, options: Options) -> Result<Compiled> {
    // Which (endpoint, family) pairs will be generated: the first of each shape.
    let mut shapes: Vec<Vec<(Family, Option<Shape>)>> = Vec::with_capacity(ir.endpoints.len());
    let mut jobs: Vec<Job> = Vec::new();
    let mut memo = ShapeMemo::default();
    for (ep_index, ep) in ir.endpoints.iter().enumerate() {
        let mut mine = Vec::new();
        for family in families(ep) {
            let shape = options.share_shapes.then(|| Shape::of(ep, family));
            if let Some(shape) = &shape {
                if memo.find(&ir.endpoints, ep, shape).is_none() {
                    memo.insert(ep_index, Some(shape.clone()), jobs.len());
                    jobs.push((ep_index, family));
                }
            } else {
                jobs.push((ep_index, family));
            }
            mine.push((family, shape));
        }
        shapes.push(mine);
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let helpers = threads.saturating_sub(1).min(jobs.len().saturating_sub(1));
    let ahead = Ahead::new(jobs, &ir.endpoints, helpers);
    let (programs, rules) = std::thread::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|| ahead.help(&options));
        }
        let out = sequential(&ir, shapes, &options, &ahead);
        ahead.finish();
        out
    })?;
    let ip_sets: Vec<&polc_ir::IpSet> = ir.ip_sets.iter().map(|s| &**s).collect();
    let port_sets: Vec<&polc_ir::PortSet> = ir.port_sets.iter().map(|s| &**s).collect();
    let mut ipset_entries = BTreeMap::new();
    for family in [Family::V4, Family::V6] {
        ipset_entries.insert(family.number(), codegen::ipset_entries(&ip_sets, family));
    }
    let named_port_entries = codegen::named_port_entries(&port_sets);
    Ok(Compiled { ir, programs, rules, ipset_entries, named_port_entries })
}

/// The compile loop, in endpoint order: share a program by shape, else take the generated
/// one (from `ahead`, or generate it here) and deduplicate it by content.
fn sequential(
    ir: &Ir,
    shapes: Vec<Vec<(Family, Option<Shape>)>>,
    options: &Options,
    ahead: &Ahead,
) -> Result<(Vec<CompiledProgram>, RuleTable)> {
    let mut rules = RuleTable::default();
    let mut programs: Vec<CompiledProgram> = Vec::new();
    // Programs equal in code and local maps are one program. The key holds the maps' hash
    // (their entries can be large); equal keys are compared in full.
    type DedupeKey = (Direction, u8, Vec<Vec<u8>>, u64);
    let mut by_bytes: BTreeMap<DedupeKey, Vec<usize>> = BTreeMap::new();
    let mut memo = ShapeMemo::default();
    for ((ep_index, ep), ep_shapes) in ir.endpoints.iter().enumerate().zip(shapes) {
        for (family, shape) in ep_shapes {
            // An endpoint whose policy has the shape of one already compiled (a replica)
            // shares that program: nothing is generated.
            if let Some(i) = shape.as_ref().and_then(|sh| memo.find(&ir.endpoints, ep, sh)) {
                if let Some(p) = programs.get_mut(i) {
                    p.endpoints.push(ep.endpoint.clone());
                    continue;
                }
            }
            let built = match ahead.take(ep_index, family, &mut rules) {
                Some(b) => b,
                None => {
                    let b = build(ep, family, &mut rules, options)?;
                    ahead.publish(&rules);
                    b
                }
            };
            let Built { parts, next_parts, local_maps, opt_level, fallback, maps_hash } = built;
            let key = (
                ep.direction,
                family.number(),
                parts.iter().map(|p| p.bytes.clone()).collect(),
                maps_hash,
            );
            let same = by_bytes.get(&key).into_iter().flatten().copied();
            if let Some(i) = same.clone().find(|&i| programs[i].local_maps == local_maps) {
                programs[i].endpoints.push(ep.endpoint.clone());
                memo.insert(ep_index, shape, i);
                continue;
            }
            let inlined: Vec<u32> = codegen::map_specs(family, 0, 0, 0)
                .into_iter()
                .chain(local_maps.iter().map(|m| m.spec.clone()))
                .filter(|m| {
                    matches!(m.kind, codegen::MapKind::Array | codegen::MapKind::PerCpuArray)
                })
                .map(|m| m.handle)
                .collect();
            let worst_case = chained_worst_case(&parts, &next_parts, &inlined)
                .map_err(|e| Error::other(format!("{}: CFG analysis: {e}", what(ep, family))))?;
            by_bytes.entry(key).or_default().push(programs.len());
            memo.insert(ep_index, shape, programs.len());
            programs.push(CompiledProgram {
                endpoints: vec![ep.endpoint.clone()],
                direction: ep.direction,
                family,
                parts,
                worst_case,
                opt_level,
                fallback,
                local_maps,
            });
        }
    }
    Ok((programs, rules))
}

fn what(ep: &EndpointPolicy, family: Family) -> String {
    format!("endpoint {} {} IPv{}", ep.endpoint, ep.direction.as_str(), family.number())
}

/// One endpoint's program as generated, before deduplication.
struct Built {
    parts: Vec<Part>,
    next_parts: Vec<Vec<usize>>,
    local_maps: Vec<LocalMap>,
    opt_level: u8,
    fallback: Option<String>,
    /// Hash of `local_maps` (for the deduplication key).
    maps_hash: u64,
}

/// Generates `ep`'s program for `family`, taking rule ids from (and adding them to) `rules`.
fn build(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    options: &Options,
) -> Result<Built> {
    let (generated, local_maps, opt_level, fallback) =
        generate_one(ep, family, rules, options, &|| what(ep, family))?;
    let mut parts = Vec::new();
    for program in generated.parts {
        let bytes = program.try_to_bytes().map_err(Error::other)?;
        parts.push(Part { program, bytes });
    }
    let maps_hash = {
        use std::hash::{Hash, Hasher};
        // A quick hash (equal keys are compared in full, so a collision costs time only):
        // SipHash over the megabytes of a program's tables took longer than building them.
        let mut h = crate::opt::IdHasher::default();
        local_maps.hash(&mut h);
        h.finish()
    };
    Ok(Built {
        parts,
        next_parts: generated.next_parts,
        local_maps,
        opt_level,
        fallback,
        maps_hash,
    })
}

/// A program to generate: an endpoint (index into `Ir::endpoints`) and a family.
type Job = (usize, Family);

/// Programs generated ahead of the compile loop by helper threads.
///
/// Rule ids are numbered in first-use order and are part of the code, so a program generated
/// ahead is used only if it is exactly what the loop would generate now. Helpers start from a
/// snapshot of the loop's table, which only grows; the program is the loop's if it added no
/// rule id (every id it used is unchanged since), or if the loop's table has not grown since
/// the snapshot (the helper's table is then the loop's next table). Else the loop generates
/// it again. The output is the same for any number of threads and any timing.
///
/// Which job a helper starts is only a guess at what will be used (see [`Ahead::pick`]).
struct Ahead<'a> {
    jobs: Vec<Job>,
    endpoints: &'a [EndpointPolicy],
    /// Per job: its rule count, for the cost of generating it.
    cost: Vec<usize>,
    /// Helper threads (none: everything is generated by the loop).
    helpers: usize,
    /// (endpoint index, family number) -> index into `jobs`.
    index: HashMap<(usize, u8), usize>,
    /// At most this many programs wait to be taken (bounds the memory held ahead).
    max_waiting: usize,
    state: Mutex<AheadState>,
    changed: Condvar,
}

struct AheadState {
    /// The loop's rule table as of its last change.
    table: Arc<RuleTable>,
    /// What the rule ids in `table` number.
    known: std::collections::HashSet<Numbered>,
    /// Per job: started by a helper or the loop.
    claimed: Vec<bool>,
    /// Per job: all it numbers is known (so it will add no rule id).
    safe: Vec<bool>,
    /// Per job: what it will number, roughly ([`numbered`]); worked out when first needed.
    numbers: Vec<Option<Vec<Numbered>>>,
    /// The job the loop is at; earlier programs are no longer wanted.
    taken: usize,
    /// Jobs being generated by a helper, with the length of the table it started from.
    running: HashMap<usize, usize>,
    /// Jobs generated ahead, waiting for the loop.
    waiting: HashMap<usize, Speculated>,
    finished: bool,
}

/// What a rule id numbers, without the rule index: a policy's rules, a tier default, a
/// profile. Only for guessing whether a job will add rule ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Numbered {
    Policy { direction: Direction, tier: String, policy: String, kind: String },
    TierDefault { direction: Direction, tier: String },
    Profile { direction: Direction, passed: bool },
}

impl Numbered {
    fn of(key: &codegen::RuleKey) -> Numbered {
        match key {
            codegen::RuleKey::Rule { direction, tier, policy, kind, .. } => Numbered::Policy {
                direction: *direction,
                tier: tier.clone(),
                policy: policy.clone(),
                kind: kind.clone(),
            },
            codegen::RuleKey::TierDefault { direction, tier } => {
                Numbered::TierDefault { direction: *direction, tier: tier.clone() }
            }
            codegen::RuleKey::Profile { direction, passed } => {
                Numbered::Profile { direction: *direction, passed: *passed }
            }
        }
    }
}

/// What generating `ep`'s program will number (as code generation does: every policy with
/// rules, the tiers that end in Deny, the profile).
fn numbered(ep: &EndpointPolicy) -> Vec<Numbered> {
    let direction = ep.direction;
    if ep.tiers.is_empty() {
        return vec![Numbered::Profile { direction, passed: false }];
    }
    let mut out = Vec::new();
    for tier in ep.tiers.iter() {
        for p in tier.policies.iter().filter(|p| !p.rules.is_empty()) {
            out.push(Numbered::Policy {
                direction,
                tier: tier.name.clone(),
                policy: p.source.qualified_name(),
                kind: p.source.kind.clone(),
            });
        }
        if tier.default_action == polc_ir::TierDefault::Deny {
            out.push(Numbered::TierDefault { direction, tier: tier.name.clone() });
        }
    }
    out.push(Numbered::Profile { direction, passed: true });
    out
}

/// How far past the loop's job a helper looks for one to start.
const PICK_WINDOW: usize = 256;

/// A program generated ahead and how its rule table changed.
struct Speculated {
    base_len: usize,
    /// The helper's table after generating, if it grew.
    grown: Option<RuleTable>,
    built: Result<Built>,
}

impl<'a> Ahead<'a> {
    fn new(jobs: Vec<Job>, endpoints: &'a [EndpointPolicy], helpers: usize) -> Ahead<'a> {
        let index = jobs.iter().enumerate().map(|(i, (e, f))| ((*e, f.number()), i)).collect();
        let ep = |&(e, _): &Job| endpoints.get(e);
        let rules = |ep: &EndpointPolicy| {
            ep.tiers.iter().flat_map(|t| &t.policies).map(|p| p.rules.len()).sum()
        };
        let cost = match helpers {
            0 => Vec::new(),
            _ => jobs.iter().map(|j| ep(j).map_or(0, rules)).collect(),
        };
        let state = AheadState {
            table: Arc::new(RuleTable::default()),
            known: Default::default(),
            claimed: vec![false; jobs.len()],
            safe: vec![false; jobs.len()],
            numbers: vec![None; jobs.len()],
            taken: 0,
            running: HashMap::new(),
            waiting: HashMap::new(),
            finished: false,
        };
        let (state, changed) = (Mutex::new(state), Condvar::new());
        Ahead { jobs, endpoints, cost, helpers, index, max_waiting: helpers + 1, state, changed }
    }

    fn lock(&self) -> MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, AheadState>) -> MutexGuard<'g, AheadState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// The next job for a helper: one likely to be used as generated. A job that adds no
    /// rule id always is; one that adds some only if no job before it adds any. Of those,
    /// the largest (so that it does not end up last, alone). `None`: nothing likely now.
    fn pick(&self, st: &mut AheadState) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut earlier_safe = true;
        for j in st.taken..self.jobs.len().min(st.taken + PICK_WINDOW) {
            if !st.safe[j] {
                let ep = self.jobs.get(j).and_then(|&(e, _)| self.endpoints.get(e));
                let numbers =
                    st.numbers[j].get_or_insert_with(|| ep.map(numbered).unwrap_or_default());
                st.safe[j] = numbers.iter().all(|x| st.known.contains(x));
            }
            let likely = st.safe[j] || earlier_safe;
            earlier_safe &= st.safe[j];
            if likely && !st.claimed[j] && best.is_none_or(|b| self.cost[j] > self.cost[b]) {
                best = Some(j);
            }
        }
        best
    }

    /// A helper thread: generates jobs from the loop's latest table until finished.
    fn help(&self, options: &Options) {
        loop {
            let (job, base) = {
                let mut st = self.lock();
                let job = loop {
                    if st.finished || st.taken >= self.jobs.len() {
                        return;
                    }
                    if st.waiting.len() < self.max_waiting {
                        if let Some(job) = self.pick(&mut st) {
                            break job;
                        }
                    }
                    st = self.wait(st);
                };
                st.claimed[job] = true;
                let base_len = st.table.len();
                st.running.insert(job, base_len);
                (job, Arc::clone(&st.table))
            };
            let mut table = RuleTable::clone(&base);
            drop(base);
            let base_len = table.len();
            let ep = self.jobs.get(job).and_then(|&(e, f)| Some((self.endpoints.get(e)?, f)));
            let built = match ep {
                Some((ep, family)) => build(ep, family, &mut table, options),
                None => Err(Error::other(format!("no job {job}"))),
            };
            let grown = (table.len() > base_len).then_some(table);
            let mut st = self.lock();
            st.running.remove(&job);
            if job >= st.taken {
                st.waiting.insert(job, Speculated { base_len, grown, built });
            }
            self.changed.notify_all();
        }
    }

    /// The program of `ep_index` in `family` if one generated ahead is exactly what the loop
    /// would generate with `rules` (which then becomes the table after it); waits for it if
    /// a helper is generating it from the current table. `None`: generate it.
    fn take(&self, ep_index: usize, family: Family, rules: &mut RuleTable) -> Option<Built> {
        if self.helpers == 0 {
            return None;
        }
        let &job = self.index.get(&(ep_index, family.number()))?;
        let mut st = self.lock();
        st.taken = job;
        st.waiting.retain(|&k, _| k >= job);
        // The jobs before are done: helpers may now find more to do.
        self.changed.notify_all();
        let spec = loop {
            if let Some(s) = st.waiting.remove(&job) {
                break s;
            }
            match st.running.get(&job) {
                Some(&base_len) if base_len == rules.len() => st = self.wait(st),
                _ => {
                    if let Some(c) = st.claimed.get_mut(job) {
                        *c = true;
                    }
                    return None;
                }
            }
        };
        self.changed.notify_all();
        drop(st);
        let built = spec.built.ok()?;
        match spec.grown {
            None => Some(built),
            Some(table) if spec.base_len == rules.len() => {
                *rules = table;
                self.publish(rules);
                Some(built)
            }
            Some(_) => None,
        }
    }

    /// Tells helpers the loop's table changed (if it did).
    fn publish(&self, rules: &RuleTable) {
        if self.helpers == 0 {
            return;
        }
        let old = self.lock().table.len();
        if old == rules.len() {
            return;
        }
        let table = Arc::new(rules.clone());
        let new: Vec<Numbered> =
            (old..rules.len()).filter_map(|id| rules.key(id as u32)).map(Numbered::of).collect();
        let mut st = self.lock();
        st.table = table;
        st.known.extend(new);
        self.changed.notify_all();
    }

    /// Stops the helpers (they finish the job in hand).
    fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }
}

/// One endpoint's program before deduplication: code, its own maps, level, fallback reason.
type OneProgram = (codegen::Generated, Vec<LocalMap>, u8, Option<String>);

/// Generates `ep`'s program for `family` at the requested level (-O2 falling back to -O1,
/// -O1 to -O0 when the policy has no peer-side set or too many).
fn generate_one(
    ep: &EndpointPolicy,
    family: Family,
    rules: &mut RuleTable,
    options: &Options,
    what: &dyn Fn() -> String,
) -> Result<OneProgram> {
    let mut fallback = None;
    let mut optimised = None;
    if options.opt_level >= 2 {
        match crate::opt::generate(ep, family, rules, options.tuning)
            .map_err(|e| Error::other(format!("{}: {e}", what())))?
        {
            Ok(o) => optimised = Some(o),
            Err(crate::opt::Fallback(why)) => fallback = Some(why),
        }
    }
    Ok(match optimised {
        Some(o) => {
            let local_maps = o
                .classes
                .into_iter()
                .chain(o.pairs)
                .chain(o.port_maps)
                .map(|(spec, entries)| LocalMap { spec, entries })
                .collect();
            let g = codegen::Generated { parts: vec![o.program], next_parts: vec![vec![]] };
            (g, local_maps, 2, fallback)
        }
        None => {
            let err = |e: codegen::CodegenError| Error::other(format!("{}: {e}", what()));
            let with_bits = if options.opt_level >= 1 {
                codegen::generate_peer_bits(ep, family, rules, options.limits).map_err(err)?
            } else {
                None
            };
            match with_bits {
                Some((g, spec, entries)) => (g, vec![LocalMap { spec, entries }], 1, fallback),
                None => {
                    let g = codegen::generate(ep, family, rules, options.limits).map_err(err)?;
                    (g, Vec::new(), 0, fallback)
                }
            }
        }
    })
}

/// Programs already generated, by the shape of their endpoint's policy: endpoints with equal
/// rules and sets, and the same relation of their own address to those sets (the only use
/// -O2 makes of the own address; -O0 makes none), get the same code. Replicas of one
/// workload compile once and share one program.
#[derive(Default)]
struct ShapeMemo {
    by_hash: std::collections::HashMap<u64, Vec<Shaped>>,
}

/// What an endpoint's program depends on besides its rules and sets: the family, how many
/// own addresses it has and their relation to the sets; with a hash over all of it.
#[derive(Clone)]
struct Shape {
    family: Family,
    own: usize,
    relation: Vec<u8>,
    hash: u64,
}

impl Shape {
    fn of(ep: &EndpointPolicy, family: Family) -> Shape {
        let (own, relation) = own_relation(ep, family);
        let hash = shape_hash(ep, family, own, &relation);
        Shape { family, own, relation, hash }
    }
}

struct Shaped {
    /// Index of the endpoint it was generated for, in `Ir::endpoints`.
    ep_index: usize,
    shape: Shape,
    /// Index into the compiled programs.
    program: usize,
}

/// The own addresses of `family`, and how they relate to the policy's sets: membership in
/// every IP set a rule tests on the endpoint's own side (the only sets whose tests fold to
/// constants; peer-side tests look the peer up whoever the endpoint is), and the named
/// ports they carry in every port set.
fn own_relation(ep: &EndpointPolicy, family: Family) -> (usize, Vec<u8>) {
    let own: Vec<std::net::IpAddr> =
        ep.addresses.iter().copied().filter(|a| Family::of(a) == family).collect();
    let mut own_side = std::collections::BTreeSet::new();
    for rule in ep.tiers.iter().flat_map(|t| &t.policies).flat_map(|p| &p.rules) {
        let end = match ep.direction {
            Direction::Ingress => &rule.matches.dst,
            Direction::Egress => &rule.matches.src,
        };
        own_side.extend(end.in_sets.iter().chain(&end.not_in_sets).copied());
    }
    let mut rel = Vec::new();
    for a in &own {
        rel.extend(
            (ep.ip_sets.iter())
                .filter(|s| own_side.contains(&s.id))
                .map(|s| u8::from(s.contains(a))),
        );
        for ps in &ep.port_sets {
            for m in ps.members.iter().filter(|m| m.addr == *a) {
                rel.push(2);
                rel.push(m.protocol);
                rel.extend(m.port.to_le_bytes());
            }
            rel.push(3);
        }
    }
    (own.len(), rel)
}

/// A cheap summary of the policy; equal shapes are then confirmed field by field.
fn shape_hash(ep: &EndpointPolicy, family: Family, own: usize, relation: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ep.direction.as_str(), family.number(), own, relation).hash(&mut h);
    for t in ep.tiers.iter() {
        t.name.hash(&mut h);
        for p in &t.policies {
            (p.source.qualified_name(), &p.source.kind, p.rules.len()).hash(&mut h);
        }
    }
    for s in &ep.ip_sets {
        s.id.hash(&mut h);
    }
    for s in &ep.port_sets {
        s.id.hash(&mut h);
    }
    h.finish()
}

impl ShapeMemo {
    fn find(
        &self,
        endpoints: &[EndpointPolicy],
        ep: &EndpointPolicy,
        shape: &Shape,
    ) -> Option<usize> {
        let found = self.by_hash.get(&shape.hash)?.iter().find(|s| {
            let rep = endpoints.get(s.ep_index);
            s.shape.family == shape.family
                && s.shape.relation == shape.relation
                && s.shape.own == shape.own
                && rep.is_some_and(|r| {
                    r.direction == ep.direction
                        && (Arc::ptr_eq(&r.tiers, &ep.tiers) || r.tiers == ep.tiers)
                        && r.ip_sets == ep.ip_sets
                        && r.port_sets == ep.port_sets
                })
        })?;
        Some(found.program)
    }

    /// Records `program` for the endpoint's shape (`None`: sharing is off).
    fn insert(&mut self, ep_index: usize, shape: Option<Shape>, program: usize) {
        let Some(shape) = shape else { return };
        let shapes = self.by_hash.entry(shape.hash).or_default();
        // One representative per shape is enough.
        if !shapes.iter().any(|s| s.program == program && s.shape.relation == shape.relation) {
            shapes.push(Shaped { ep_index, shape, program });
        }
    }
}

/// Worst case over a chain of parts: part `j`'s longest path plus the worst of the parts
/// it tail-calls. An upper bound: the longest path inside a part need not be the one that
/// reaches its tail call.
fn chained_worst_case(
    parts: &[Part],
    next_parts: &[Vec<usize>],
    inlined: &[u32],
) -> Result<WorstCase> {
    let own: Vec<WorstCase> = parts
        .iter()
        .map(|p| worst_case_with(&p.program.insns, |h| inlined.iter().any(|&i| i as u64 == h)))
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::other)?;
    let mut total = own.clone();
    for j in (0..parts.len()).rev() {
        let mut best = WorstCase::default();
        for &k in next_parts.get(j).into_iter().flatten() {
            if k <= j || k >= parts.len() {
                return Err(Error::other(format!("part {j} tail-calls part {k}")));
            }
            best.insns = best.insns.max(total[k].insns);
            best.map_lookups = best.map_lookups.max(total[k].map_lookups);
            best.helper_lookups = best.helper_lookups.max(total[k].helper_lookups);
        }
        total[j].insns = own[j].insns + best.insns;
        total[j].map_lookups = own[j].map_lookups + best.map_lookups;
        total[j].helper_lookups = own[j].helper_lookups + best.helper_lookups;
    }
    Ok(total.first().copied().unwrap_or_default())
}

/// Load, lower and compile the given files.
pub fn compile_files(files: &[PathBuf]) -> Result<Compiled> {
    compile_files_with(files, Options::default())
}

/// [`compile_files`] with explicit options.
pub fn compile_files_with(files: &[PathBuf], options: Options) -> Result<Compiled> {
    let cluster = frontend::load_reporting(files)?;
    let ir = crate::lower::lower(&cluster);
    // The IR holds all compiling needs: free the model before the peak.
    drop(cluster);
    compile_ir_with(ir, options)
}

/// A stable file name for a program: `ingress-v4-shop-web` (+ `-N` for more endpoints).
fn program_file_name(p: &CompiledProgram) -> String {
    let first = p.endpoints.first().map_or("none".to_string(), |e| e.replace('/', "-"));
    let more = if p.endpoints.len() > 1 {
        format!("-and-{}-more", p.endpoints.len() - 1)
    } else {
        String::new()
    };
    format!("{}-v{}-{first}{more}", p.direction.as_str(), p.family.number())
}

/// The ELF object of part `part` of a program: its maps as BTF-defined maps, relocations
/// at each map-loading instruction.
pub fn elf_object(compiled: &Compiled, p: &CompiledProgram, part: usize) -> Result<Vec<u8>> {
    let specs = compiled.program_map_specs(p);
    let the_part = p.parts.get(part).ok_or_else(|| Error::other(format!("no part {part}")))?;
    use crate::asm::{Insn, Pseudo};
    // The relocations supply the maps. A map fd's immediates are zero in the object; a map
    // value's first immediate is the offset into the variable (libbpf adds the variable's
    // offset in `.bss` and moves the sum to the second). Maps the part addresses directly
    // become `.bss` variables (see `elf`).
    let mut bytes = the_part.bytes.clone();
    let mut relocs = Vec::new();
    let mut direct = vec![false; specs.len()];
    let mut slot = 0usize;
    for insn in &the_part.program.insns {
        if let Insn::LdImm64 { pseudo: pseudo @ (Pseudo::MapFd | Pseudo::MapValue), imm, .. } = insn
        {
            let handle = *imm as u32;
            let map = specs.iter().position(|m| m.handle == handle).ok_or_else(|| {
                Error::other(format!("instruction {slot} refers to unknown map {handle}"))
            })?;
            relocs.push(MapReloc { insn_index: slot, map });
            let first = if *pseudo == Pseudo::MapValue {
                direct[map] = true;
                (*imm >> 32) as u32
            } else {
                0
            };
            bytes[slot * 8 + 4..slot * 8 + 8].copy_from_slice(&first.to_le_bytes());
            bytes[slot * 8 + 12..slot * 8 + 16].copy_from_slice(&[0; 4]);
        }
        slot += insn.slots();
    }
    let maps: Vec<ElfMap> = (specs.iter().zip(direct))
        .map(|(m, direct)| ElfMap {
            name: m.name.to_lowercase(),
            map_type: m.kind.type_id(),
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            map_flags: m.flags,
            direct,
        })
        .collect();
    let name = if part == 0 { "polc_policy".to_string() } else { format!("polc_part{part}") };
    let prog = ElfProgram {
        name: &name,
        section: "tc",
        insns: &bytes,
        license: "GPL",
        maps: &maps,
        relocs: &relocs,
    };
    write_object(&prog).map_err(|e| Error::other(e.to_string()))
}

/// The annotated listing of one program, with a header naming its endpoints.
pub fn listing(compiled: &Compiled, p: &CompiledProgram) -> String {
    let specs = compiled.program_map_specs(p);
    let names = |h: u64| specs.iter().find(|m| m.handle as u64 == h).map(|m| m.name.clone());
    let mut out = format!(
        "; {} IPv{} policy for {}\n; {} instructions, worst case {} executed, {} map lookups\n",
        p.direction.as_str(),
        p.family.number(),
        p.endpoints.join(", "),
        p.insns(),
        p.worst_case.insns,
        p.worst_case.map_lookups,
    );
    for (k, part) in p.parts.iter().enumerate() {
        if p.parts.len() > 1 {
            out.push_str(&format!(
                "; part {k} of {} ({} instructions)\n",
                p.parts.len(),
                part.program.slot_count()
            ));
        }
        out.push_str(&part.program.listing(Some(&names)));
    }
    out
}

/// The `--output json` summary (the CLI contract's fields, plus a few more).
pub fn summary_json(compiled: &Compiled, compile_ms: u128) -> serde_json::Value {
    let programs: Vec<_> = compiled
        .programs
        .iter()
        .map(|p| {
            json!({
                "endpoints": p.endpoints,
                "direction": p.direction.as_str(),
                "family": p.family.number(),
                "insns": p.insns(),
                "parts": p.parts.len(),
                "opt_level": p.opt_level,
                "fallback": p.fallback,
                "worst_case_insns": p.worst_case.insns,
                "worst_case_map_lookups": p.worst_case.map_lookups,
                "worst_case_helper_lookups": p.worst_case.helper_lookups,
                "file": program_file_name(p),
            })
        })
        .collect();
    json!({
        "programs": programs,
        "unique_programs": compiled.programs.len(),
        "endpoint_programs": compiled.programs.iter().map(|p| p.endpoints.len()).sum::<usize>(),
        "rules": compiled.rules.len(),
        "ipset_entries": compiled.ipset_entries.values().map(Vec::len).sum::<usize>(),
        "named_port_entries": compiled.named_port_entries.len(),
        "opt_level": compiled.programs.iter().map(|p| p.opt_level).max().unwrap_or(0),
        "compile_ms": compile_ms,
    })
}

/// Whether `name` is one of polc's output files: `{ingress|egress}-v{4|6}-*.txt`, `.o` or
/// `.partN.o` (see `program_file_name`).
fn is_output_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("ingress-").or_else(|| name.strip_prefix("egress-")) else {
        return false;
    };
    (rest.starts_with("v4-") || rest.starts_with("v6-"))
        && (name.ends_with(".txt") || name.ends_with(".o"))
}

/// Write every listing and object into `dir`, all or nothing: files go to a fresh sibling
/// directory first, which then replaces `dir`'s polc files.
fn write_outputs(compiled: &Compiled, dir: &Path) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::other(format!("{what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let staging = dir.join(format!(".polc-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| io("cannot create", &staging, e))?;
    let result = (|| {
        let mut files = Vec::new();
        for p in &compiled.programs {
            let name = program_file_name(p);
            let txt = staging.join(format!("{name}.txt"));
            std::fs::write(&txt, listing(compiled, p)).map_err(|e| io("cannot write", &txt, e))?;
            files.push(format!("{name}.txt"));
            for k in 0..p.parts.len() {
                let file = if k == 0 { format!("{name}.o") } else { format!("{name}.part{k}.o") };
                let obj = staging.join(&file);
                std::fs::write(&obj, elf_object(compiled, p, k)?)
                    .map_err(|e| io("cannot write", &obj, e))?;
                files.push(file);
            }
        }
        for f in &files {
            let (from, to) = (staging.join(f), dir.join(f));
            std::fs::rename(&from, &to).map_err(|e| io("cannot move into place", &to, e))?;
        }
        // Outputs of an earlier compile that this one did not write would be taken for
        // current policy by whatever loads DIR/*.o: remove them (only files named the way
        // polc names its outputs).
        let current: std::collections::HashSet<&str> = files.iter().map(String::as_str).collect();
        let entries = std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_output_name(name) && !current.contains(name) {
                let stale = dir.join(name);
                std::fs::remove_file(&stale).map_err(|e| io("cannot remove", &stale, e))?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// `polc compile`. For the CLI only: the compile result is not freed (the process exits next).
pub fn run(args: &CompileArgs) -> Result<()> {
    let start = Instant::now();
    let limits =
        codegen::Limits { part_insns: args.max_part_insns as usize, ..codegen::Limits::default() };
    let compiled = compile_files_with(
        &args.files,
        Options { limits, opt_level: args.opt_level, ..Options::default() },
    )?;
    let compile_ms = start.elapsed().as_millis();
    if let Some(dir) = &args.output_dir {
        write_outputs(&compiled, dir)?;
    }
    match args.output {
        OutputFormat::Json => {
            print_stdout(&format!("{}\n", summary_json(&compiled, compile_ms)))?;
        }
        OutputFormat::Text => {
            let mut text = String::new();
            for p in &compiled.programs {
                text.push_str(&listing(&compiled, p));
                text.push('\n');
            }
            text.push_str(&format!(
                "; {} unique programs for {} endpoint programs, {} rule ids, compiled in {} ms\n",
                compiled.programs.len(),
                compiled.programs.iter().map(|p| p.endpoints.len()).sum::<usize>(),
                compiled.rules.len(),
                compile_ms
            ));
            print_stdout(&text)?;
        }
    }
    // The process ends right after: freeing every program and map one by one would only
    // add time (about a tenth of a second at 10k rules).
    std::mem::forget(compiled);
    Ok(())
}
