//! Running compiled policy programs on a flow, the way the dataplane would: the `kernel`
//! engine (real verifier, `BPF_PROG_TEST_RUN`) and the `vm` engine (rbpf). Both fill the
//! per-CPU `FlowState` as the runtime does, run the program, and read back the verdict and
//! rule id it wrote before tail-calling the epilogue.

use crate::asm::{Insn, Pseudo};
use crate::codegen::RuleKey;
use crate::codegen::{map, MapKind, MapSpec};
use crate::compile::{Compiled, Part};
use crate::error::{Error, Result};
use polc_abi::{self as abi, FlowState};
use polc_ir::{Direction, Family, Flow, TraceStep, Verdict};
use polc_loader::sys::{self, Fd, TestRun, UpdateFlags};
use std::net::IpAddr;
use std::os::fd::AsFd;

/// What a compiled program decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub rule_id: u32,
}

/// The `FlowState` the runtime would fill for `flow` seen at an endpoint's `direction` hook.
pub fn flow_state(flow: &Flow, direction: Direction) -> FlowState {
    let addr = |a: &IpAddr| {
        let mut b = [0u8; 16];
        match a {
            IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => b.copy_from_slice(&v.octets()),
        }
        b
    };
    FlowState {
        family: if flow.src.is_ipv4() { abi::family::IPV4 } else { abi::family::IPV6 },
        protocol: flow.protocol,
        icmp_type: flow.icmp_type.unwrap_or(0),
        icmp_code: flow.icmp_code.unwrap_or(0),
        direction: match direction {
            Direction::Ingress => abi::direction::INGRESS,
            Direction::Egress => abi::direction::EGRESS,
        },
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        src_addr: addr(&flow.src),
        dst_addr: addr(&flow.dst),
        verdict: abi::verdict::UNSET,
        rule_id: abi::RULE_ID_NONE,
        ..FlowState::default()
    }
}

fn outcome(state: &FlowState) -> Result<Outcome> {
    let verdict = match state.verdict {
        abi::verdict::ALLOW => Verdict::Allow,
        abi::verdict::DENY => Verdict::Deny,
        v => return Err(Error::other(format!("program left verdict {v} (expected 1 or 2)"))),
    };
    Ok(Outcome { verdict, rule_id: state.rule_id })
}

/// Replace each map handle in LD_IMM64 instructions (map fd or map value references: the
/// handle is the first slot's immediate) by what `fd_of` returns for it.
pub fn patch_map_handles(p: &Part, mut fd_of: impl FnMut(u32) -> Option<u32>) -> Result<Vec<u8>> {
    let mut bytes = p.bytes.clone();
    let mut slot = 0usize;
    for insn in &p.program.insns {
        if let Insn::LdImm64 { pseudo: Pseudo::MapFd | Pseudo::MapValue, imm, .. } = insn {
            let handle = *imm as u32;
            let fd = fd_of(handle)
                .ok_or_else(|| Error::other(format!("program uses unknown map handle {handle}")))?;
            bytes[slot * 8 + 4..slot * 8 + 8].copy_from_slice(&fd.to_le_bytes());
        }
        slot += insn.slots();
    }
    Ok(bytes)
}

/// A family's maps created in the kernel and filled with the compile's contents, and every
/// program of that family loaded against them. Everything is closed when dropped.
pub struct KernelEngine {
    maps: Vec<(MapSpec, Fd)>,
    /// Loaded programs, by index in `Compiled::programs` (None for other families).
    programs: Vec<Option<LoadedProgram>>,
    _epilogue: Fd,
}

/// A program's parts in the kernel: part 0 first, the prog array holding them all, and the
/// program's own maps.
struct LoadedProgram {
    parts: Vec<Fd>,
    _parts_map: Option<Fd>,
    _local_maps: Vec<Fd>,
}

fn create_map(spec: &MapSpec) -> Result<Fd> {
    sys::map_create(&sys::MapSpec {
        kind: spec.kind,
        name: &spec.name,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
    })
    .map_err(bpf_err)
}

fn bpf_err(e: sys::BpfError) -> Error {
    Error::other(e.to_string())
}

impl KernelEngine {
    /// Create and fill the maps of `family`, load its programs (verifier errors carry the
    /// verifier log) and an epilogue that returns TC_ACT_OK.
    pub fn new(compiled: &Compiled, family: Family) -> Result<KernelEngine> {
        let mut maps = Vec::new();
        for spec in compiled.map_specs(family) {
            let fd = create_map(&spec)?;
            maps.push((spec, fd));
        }
        let fd_of = |h: u32| maps.iter().find(|(s, _)| s.handle == h).map(|(_, fd)| fd);
        let ipsets = fd_of(map::IPSETS).ok_or_else(|| Error::other("no IP-set map"))?;
        for (k, v) in compiled.ipset_entries.get(&family.number()).into_iter().flatten() {
            sys::map_update(ipsets.as_fd(), k, v, UpdateFlags::Any).map_err(bpf_err)?;
        }
        let named = fd_of(map::NAMED_PORTS).ok_or_else(|| Error::other("no named-port map"))?;
        for (k, v) in &compiled.named_port_entries {
            sys::map_update(named.as_fd(), k, v, UpdateFlags::Any).map_err(bpf_err)?;
        }
        let epilogue = sys::prog_load(
            "polc_epilogue",
            &crate::asm::encode_program(&[Insn::mov64(crate::asm::Reg::R0, 0), Insn::exit()])
                .map_err(Error::other)?,
        )
        .map_err(bpf_err)?;
        let jump = fd_of(map::JUMP).ok_or_else(|| Error::other("no prog array"))?;
        sys::prog_array_set(jump.as_fd(), abi::SLOT_EPILOGUE, epilogue.as_fd()).map_err(bpf_err)?;

        let mut programs = Vec::new();
        for p in &compiled.programs {
            if p.family != family {
                programs.push(None);
                continue;
            }
            let what = || {
                format!("{} {} IPv{}", p.endpoints.join(","), p.direction.as_str(), family.number())
            };
            let parts_map = if p.parts.len() > 1 {
                Some(create_map(&crate::codegen::parts_map_spec(p.parts.len()))?)
            } else {
                None
            };
            let mut local = Vec::new();
            for m in &p.local_maps {
                let fd = create_map(&m.spec)?;
                for (k, v) in &m.entries {
                    sys::map_update(fd.as_fd(), k, v, UpdateFlags::Any).map_err(bpf_err)?;
                }
                local.push((m.spec.handle, fd));
            }
            let mut parts = Vec::new();
            for (k, part) in p.parts.iter().enumerate() {
                let bytes = patch_map_handles(part, |h| {
                    if h == map::PARTS {
                        parts_map.as_ref().map(|fd| fd.raw() as u32)
                    } else if let Some((_, fd)) = local.iter().find(|(lh, _)| *lh == h) {
                        Some(fd.raw() as u32)
                    } else {
                        fd_of(h).map(|fd| fd.raw() as u32)
                    }
                })?;
                let name = if k == 0 { "polc_policy".to_string() } else { format!("polc_part{k}") };
                let fd = sys::prog_load(&name, &bytes)
                    .map_err(|e| Error::other(format!("{} part {k}: {e}", what())))?;
                if let Some(m) = &parts_map {
                    sys::prog_array_set(m.as_fd(), k as u32, fd.as_fd()).map_err(bpf_err)?;
                }
                parts.push(fd);
            }
            programs.push(Some(LoadedProgram {
                parts,
                _parts_map: parts_map,
                _local_maps: local.into_iter().map(|(_, fd)| fd).collect(),
            }));
        }
        Ok(KernelEngine { maps, programs, _epilogue: epilogue })
    }

    fn map(&self, handle: u32) -> Result<&Fd> {
        self.maps
            .iter()
            .find(|(s, _)| s.handle == handle)
            .map(|(_, fd)| fd)
            .ok_or_else(|| Error::other(format!("no map {handle}")))
    }

    /// Fill every CPU's `FlowState` as the runtime would for `flow`, then run part 0 of
    /// program `index` `repeat` times with `BPF_PROG_TEST_RUN`.
    fn test_run(
        &self,
        compiled: &Compiled,
        index: usize,
        flow: &Flow,
        repeat: u32,
    ) -> Result<sys::TestRunOutput> {
        let p = compiled.programs.get(index).ok_or_else(|| Error::other("no such program"))?;
        let prog = self
            .programs
            .get(index)
            .and_then(Option::as_ref)
            .and_then(|p| p.parts.first())
            .ok_or_else(|| Error::other("program not loaded for this family"))?;
        let state_map = self.map(map::STATE)?;
        let cpus = sys::possible_cpus().map_err(bpf_err)?;
        let one = flow_state(flow, p.direction).to_bytes();
        let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * cpus).collect();
        let key = abi::STATE_KEY.to_ne_bytes();
        sys::map_update(state_map.as_fd(), &key, &all, UpdateFlags::Any).map_err(bpf_err)?;
        let packet = [0u8; 64];
        sys::prog_test_run(prog.as_fd(), &TestRun { data: &packet, ctx: None, repeat })
            .map_err(bpf_err)
    }

    /// Mean kernel time in ns of program `index` on `flow` over `repeat` runs
    /// (`BPF_PROG_TEST_RUN`; includes the tail call into the trivial epilogue).
    pub fn time_ns(
        &self,
        compiled: &Compiled,
        index: usize,
        flow: &Flow,
        repeat: u32,
    ) -> Result<u32> {
        Ok(self.test_run(compiled, index, flow, repeat)?.duration_ns)
    }

    /// Run program `index` of the compile on `flow` (seen at that program's direction).
    pub fn run(&self, compiled: &Compiled, index: usize, flow: &Flow) -> Result<Outcome> {
        let out = self.test_run(compiled, index, flow, 1)?;
        let state_map = self.map(map::STATE)?;
        let key = abi::STATE_KEY.to_ne_bytes();
        if out.retval != abi::TC_ACT_OK as u32 {
            return Err(Error::other(format!(
                "program returned {} instead of tail-calling the epilogue",
                out.retval
            )));
        }
        let values = sys::map_lookup_percpu(state_map.as_fd(), &key)
            .map_err(bpf_err)?
            .ok_or_else(|| Error::other("flow state entry missing"))?;
        // The run happened on one CPU: the one whose state now carries a verdict.
        let decided: Vec<FlowState> = values
            .iter()
            .filter_map(|v| <&[u8; abi::FLOW_STATE_SIZE]>::try_from(v.as_slice()).ok())
            .map(FlowState::from_bytes)
            .filter(|s| s.verdict != abi::verdict::UNSET)
            .collect();
        match decided.as_slice() {
            [one] => outcome(one),
            other => Err(Error::other(format!("{} CPUs carry a verdict, expected 1", other.len()))),
        }
    }
}

/// The decision of the compiled program of `endpoint` x `direction` for `flow`, run by
/// `engine` (kernel or vm), with the trace the program can show: its deciding step (rule,
/// tier default or profile). Log and Pass steps leave no trace in the program's output.
pub fn explain_compiled(
    compiled: &Compiled,
    endpoint: &str,
    direction: Direction,
    flow: &Flow,
    engine: crate::explain::Engine,
) -> Result<crate::explain::DirectionResult> {
    let family = Family::of(&flow.src);
    let index = compiled.program_index(endpoint, direction, family).ok_or_else(|| {
        Error::other(format!(
            "no IPv{} {} program for {endpoint}",
            family.number(),
            direction.as_str()
        ))
    })?;
    let outcome = match engine {
        crate::explain::Engine::Kernel => {
            KernelEngine::new(compiled, family)?.run(compiled, index, flow)?
        }
        crate::explain::Engine::Vm => crate::engine::vm_run(compiled, index, flow)?,
        crate::explain::Engine::Ir => {
            return Err(Error::other("the ir engine does not run compiled programs"))
        }
    };
    let ep = compiled
        .ir
        .endpoint(endpoint, direction)
        .ok_or_else(|| Error::other(format!("{endpoint}: no IR")))?;
    let step = match compiled.rules.key(outcome.rule_id) {
        Some(RuleKey::Rule { tier, policy, kind, index, .. }) => {
            let pol = ep
                .tiers
                .iter()
                .filter(|t| &t.name == tier)
                .flat_map(|t| &t.policies)
                .find(|p| &p.source.qualified_name() == policy && &p.source.kind == kind);
            let rule = pol.and_then(|p| p.rules.iter().find(|r| r.index == *index));
            let hit = polc_ir::RuleHit {
                tier: tier.clone(),
                policy: policy.clone(),
                kind: kind.clone(),
                file: pol.map(|p| p.source.file.clone()).unwrap_or_default(),
                doc: pol.map_or(0, |p| p.source.doc),
                item: pol.and_then(|p| p.source.item),
                rule_index: *index,
                action: rule.map_or(polc_ir::Action::Deny, |r| r.action),
            };
            TraceStep::Rule(hit)
        }
        Some(RuleKey::TierDefault { tier, .. }) => {
            TraceStep::TierDefault { tier: tier.clone(), action: polc_ir::TierDefault::Deny }
        }
        Some(RuleKey::Profile { passed: false, .. }) => TraceStep::NoPolicy,
        Some(RuleKey::Profile { passed: true, .. }) => TraceStep::ProfileAfterPass,
        None => {
            return Err(Error::other(format!(
                "program reported unknown rule id {}",
                outcome.rule_id
            )))
        }
    };
    Ok(crate::explain::DirectionResult {
        endpoint: endpoint.to_string(),
        decision: polc_ir::Decision { verdict: outcome.verdict, trace: vec![step] },
    })
}

/// Run program `index` of the compile on `flow` under rbpf (the `vm` engine), with the maps
/// filled as the loader would and the state as the runtime would.
pub fn vm_run(compiled: &Compiled, index: usize, flow: &Flow) -> Result<Outcome> {
    use crate::vm::{self, Exit, MapDef, Maps, VmInput};
    let p = compiled.programs.get(index).ok_or_else(|| Error::other("no such program"))?;
    let vm_err = |e: &dyn std::fmt::Display| Error::other(format!("vm: {e}"));
    let mut maps = Maps::new();
    for spec in compiled.program_map_specs(p) {
        let kind = match spec.kind {
            MapKind::Hash => vm::MapKind::Hash,
            MapKind::Array => vm::MapKind::Array,
            MapKind::PerCpuArray => vm::MapKind::PerCpuArray,
            MapKind::LpmTrie => vm::MapKind::LpmTrie,
            MapKind::ProgArray => vm::MapKind::ProgArray,
        };
        let def = MapDef {
            name: spec.name.clone(),
            kind,
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        };
        maps.add(spec.handle, def).map_err(|e| vm_err(&e))?;
    }
    for (k, v) in compiled.ipset_entries.get(&p.family.number()).into_iter().flatten() {
        maps.update(map::IPSETS, k, v).map_err(|e| vm_err(&e))?;
    }
    for (k, v) in &compiled.named_port_entries {
        maps.update(map::NAMED_PORTS, k, v).map_err(|e| vm_err(&e))?;
    }
    for m in &p.local_maps {
        for (k, v) in &m.entries {
            maps.update(m.spec.handle, k, v).map_err(|e| vm_err(&e))?;
        }
    }
    // Program ids in the prog arrays: the epilogue is 1 (a tail call to it ends the run),
    // part k is 2 + k.
    const EPILOGUE_ID: u32 = 1;
    maps.update(map::JUMP, &abi::SLOT_EPILOGUE.to_ne_bytes(), &EPILOGUE_ID.to_ne_bytes())
        .map_err(|e| vm_err(&e))?;
    if p.parts.len() > 1 {
        for k in 0..p.parts.len() as u32 {
            maps.update(map::PARTS, &k.to_ne_bytes(), &(2 + k).to_ne_bytes())
                .map_err(|e| vm_err(&e))?;
        }
    }
    let key = abi::STATE_KEY.to_ne_bytes();
    maps.update(map::STATE, &key, &flow_state(flow, p.direction).to_bytes())
        .map_err(|e| vm_err(&e))?;
    let mut part = 0usize;
    // Like the kernel's tail-call limit, bound the chain (parts only go forward anyway).
    let out = loop {
        let bytes = &p.parts.get(part).ok_or_else(|| Error::other("vm: no such part"))?.bytes;
        let out = vm::run(VmInput::new(bytes), maps).map_err(|e| vm_err(&e))?;
        match out.exit {
            Exit::TailCall { map: m, prog_id, .. } if m == map::PARTS && prog_id >= 2 => {
                let next = (prog_id - 2) as usize;
                if next <= part {
                    return Err(Error::other(format!("vm: part {part} tail-calls part {next}")));
                }
                part = next;
                maps = out.maps;
            }
            Exit::TailCall { map: m, prog_id: EPILOGUE_ID, .. } if m == map::JUMP => break out,
            other => {
                return Err(Error::other(format!(
                    "vm: part {part} ended with {other:?}, not the epilogue"
                )))
            }
        }
    };
    let bytes = out.maps.lookup(map::STATE, &key).ok_or_else(|| Error::other("vm: no state"))?;
    let state = <&[u8; abi::FLOW_STATE_SIZE]>::try_from(bytes.as_slice())
        .map_err(|_| Error::other("vm: state has the wrong size"))?;
    outcome(&FlowState::from_bytes(state))
}
