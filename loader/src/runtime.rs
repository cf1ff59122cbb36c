//! The fixed tc runtime (runtime-ebpf), embedded as a prebuilt object and loaded with aya.
//!
//! [`Runtime`] owns the loaded classifiers (`polc_from_ep`, `polc_to_ep`, `polc_epilogue`,
//! the latter already placed in [`polc_abi::SLOT_EPILOGUE`]) and their maps. It lets callers
//! register endpoints, put raw-loaded policy programs into prog-array slots, read the
//! per-CPU scratch state, conntrack, the per-CPU flow cache and drop counters, install
//! service NAT frontends and backends ([`Runtime::set_service`]), and run a hook on a packet
//! with `BPF_PROG_TEST_RUN`.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::Map;
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use polc_abi::{
    ct_timeout, drop_reason, CtEntry, CtKey, Endpoint, FlowCacheSlot, FlowState, NatAffinity,
    NatAffinityKey, NatBackend, NatBackendKey, NatFrontendKey, NatService, CT_DEFAULT_ENTRIES,
    CT_DEFAULT_TIMEOUTS_NS, CT_ENTRY_SIZE, CT_KEY_SIZE, FLOW_CACHE_DEFAULT_NS, FLOW_CACHE_SLOTS,
    FLOW_CACHE_SLOT_SIZE, FLOW_STATE_SIZE, GLOBAL_CT_TIMEOUTS, GLOBAL_FLOW_CACHE_NS,
    GLOBAL_NS_PER_JIFFY, MAP_CT, MAP_DROPS, MAP_EP, MAP_FLOW_CACHE, MAP_JUMP, MAP_NAT_AFF,
    MAP_NAT_BE, MAP_NAT_FE, MAP_STATE, NAT_AFFINITY_SIZE, PROG_EPILOGUE, PROG_FROM_EP, PROG_TO_EP,
    SLOT_EPILOGUE, STATE_KEY,
};

use crate::sys::{self, BpfError, TestRun, TestRunOutput, UpdateFlags};

/// The runtime object, built by scripts/build-runtime.sh and committed, so userspace builds
/// never need nightly or bpf-linker (scripts/check-runtime.sh checks it is fresh).
pub static RUNTIME_OBJECT: &[u8] =
    aya::include_bytes_aligned!("../../runtime-ebpf/prebuilt/polc-runtime.o");

/// Errors from loading or driving the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// aya failed to parse or load the object or program.
    #[error("loading the runtime object: {0}")]
    Load(String),
    /// The object lacks a program or map the ABI names (a stale prebuilt object).
    #[error("the runtime object has no {kind} `{name}` (rebuild with scripts/build-runtime.sh)")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// The ABI name.
        name: &'static str,
    },
    /// A raw bpf(2) call failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

/// Which tc hook of a pod's host-side veth a classifier serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of the host veth: packets leaving the pod (its egress policy).
    FromEndpoint,
    /// tc egress of the host veth: packets going to the pod (its ingress policy).
    ToEndpoint,
}

impl Hook {
    /// The classifier's name in the runtime object.
    pub fn program_name(self) -> &'static str {
        match self {
            Hook::FromEndpoint => PROG_FROM_EP,
            Hook::ToEndpoint => PROG_TO_EP,
        }
    }
}

/// Load-time settings of the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Conntrack capacity (LRU: the least recently used entry is evicted when full).
    pub ct_max_entries: u32,
    /// Conntrack timeouts in nanoseconds, indexed by [`polc_abi::ct_timeout`].
    pub ct_timeouts_ns: [u64; ct_timeout::COUNT],
    /// The per-CPU flow cache's refresh interval in nanoseconds (default 1 s): a cached
    /// flow passes without the conntrack lookup for at most this long before conntrack
    /// sees one of its packets again. 0 disables the cache (docs/runtime.md, "Flow cache").
    pub flow_cache_ns: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ct_max_entries: CT_DEFAULT_ENTRIES,
            ct_timeouts_ns: CT_DEFAULT_TIMEOUTS_NS,
            flow_cache_ns: FLOW_CACHE_DEFAULT_NS,
        }
    }
}

/// The loaded runtime: its classifiers (loaded, not attached) and maps.
#[derive(Debug)]
pub struct Runtime {
    ebpf: Ebpf,
}

const PROGRAMS: [&str; 3] = [PROG_FROM_EP, PROG_TO_EP, PROG_EPILOGUE];

impl Runtime {
    /// Loads [`RUNTIME_OBJECT`] with the default [`RuntimeConfig`].
    pub fn load() -> Result<Runtime, RuntimeError> {
        Runtime::load_with(&RuntimeConfig::default())
    }

    /// Loads [`RUNTIME_OBJECT`]: creates its maps (conntrack sized, its timeouts and the flow
    /// cache's refresh interval set from `config`), loads the classifiers into the kernel and puts the epilogue into
    /// [`SLOT_EPILOGUE`].
    pub fn load_with(config: &RuntimeConfig) -> Result<Runtime, RuntimeError> {
        if config.ct_max_entries == 0 {
            return Err(RuntimeError::Load("conntrack max entries must be at least 1".into()));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_CT, config.ct_max_entries)
            .override_global(GLOBAL_CT_TIMEOUTS, &config.ct_timeouts_ns, true)
            .override_global(GLOBAL_NS_PER_JIFFY, &ns_per_jiffy()?, true)
            .override_global(GLOBAL_FLOW_CACHE_NS, &config.flow_cache_ns, true)
            .load(RUNTIME_OBJECT)
            .map_err(|e| RuntimeError::Load(e.to_string()))?;
        for name in PROGRAMS {
            let prog =
                ebpf.program_mut(name).ok_or(RuntimeError::Missing { kind: "program", name })?;
            let cls: &mut SchedClassifier =
                prog.try_into().map_err(|e: aya::programs::ProgramError| {
                    RuntimeError::Load(format!("{name}: {e}"))
                })?;
            cls.load().map_err(|e| RuntimeError::Load(format!("{name}: {e}")))?;
        }
        let rt = Runtime { ebpf };
        // Fail early on a stale object rather than on first use.
        rt.state_map_fd()?;
        rt.ep_map_fd()?;
        rt.ct_map_fd()?;
        rt.drops_map_fd()?;
        rt.flow_cache_map_fd()?;
        rt.nat_map_fd(MAP_NAT_FE)?;
        rt.nat_map_fd(MAP_NAT_BE)?;
        rt.nat_map_fd(MAP_NAT_AFF)?;
        sys::prog_array_set(rt.jump_map_fd()?, SLOT_EPILOGUE, rt.named_fd(PROG_EPILOGUE)?)?;
        Ok(rt)
    }

    fn named_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, RuntimeError> {
        let prog =
            self.ebpf.program(name).ok_or(RuntimeError::Missing { kind: "program", name })?;
        let fd = prog.fd().map_err(|e| RuntimeError::Load(format!("{name}: {e}")))?;
        Ok(fd.as_fd())
    }

    /// The from-endpoint classifier's fd (see [`Runtime::hook_fd`]).
    pub fn program_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        self.hook_fd(Hook::FromEndpoint)
    }

    /// The classifier of `hook` (for test runs and tc attach).
    pub fn hook_fd(&self, hook: Hook) -> Result<BorrowedFd<'_>, RuntimeError> {
        self.named_fd(hook.program_name())
    }

    /// The epilogue classifier (already in [`SLOT_EPILOGUE`]).
    pub fn epilogue_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        self.named_fd(PROG_EPILOGUE)
    }

    /// The prog array the classifiers tail-call through ([`polc_abi::MAP_JUMP`]).
    pub fn jump_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_JUMP) {
            Some(Map::ProgramArray(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_JUMP }),
        }
    }

    /// The per-CPU scratch map ([`polc_abi::MAP_STATE`]). Generated programs reference it
    /// by this fd (LD_IMM64 with src=1) to look up their [`FlowState`].
    pub fn state_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_STATE) {
            Some(Map::PerCpuArray(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_STATE }),
        }
    }

    /// The endpoint map ([`polc_abi::MAP_EP`]: ifindex -> [`Endpoint`]).
    pub fn ep_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_EP) {
            Some(Map::HashMap(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_EP }),
        }
    }

    /// The conntrack map ([`polc_abi::MAP_CT`]: [`CtKey`] -> [`CtEntry`]).
    pub fn ct_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_CT) {
            Some(Map::LruHashMap(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_CT }),
        }
    }

    /// The per-CPU drop counters ([`polc_abi::MAP_DROPS`]).
    pub fn drops_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_DROPS) {
            Some(Map::PerCpuArray(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_DROPS }),
        }
    }

    /// The per-CPU flow cache ([`polc_abi::MAP_FLOW_CACHE`]: slot -> [`FlowCacheSlot`]).
    pub fn flow_cache_map_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(MAP_FLOW_CACHE) {
            Some(Map::PerCpuArray(data)) => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name: MAP_FLOW_CACHE }),
        }
    }

    /// Flow cache slot `index` of every possible CPU (index = CPU number), empty ones
    /// included; `index` is [`polc_abi::flow_cache_index`] of a key and a packet's tag.
    pub fn flow_cache_slot(&self, index: u32) -> Result<Vec<FlowCacheSlot>, RuntimeError> {
        let fd = self.flow_cache_map_fd()?;
        let per_cpu = sys::map_lookup_percpu(fd, &index.to_ne_bytes())?
            .ok_or_else(|| BpfError::Invalid(format!("{MAP_FLOW_CACHE} has no slot {index}")))?;
        per_cpu
            .iter()
            .map(|bytes| {
                let b: &[u8; FLOW_CACHE_SLOT_SIZE] = bytes.as_slice().try_into().map_err(|_| {
                    BpfError::Invalid(format!(
                        "{MAP_FLOW_CACHE} value is {} bytes, expected {FLOW_CACHE_SLOT_SIZE}",
                        bytes.len()
                    ))
                })?;
                Ok(FlowCacheSlot::from_bytes(b))
            })
            .collect()
    }

    /// Every filled flow cache slot as (CPU, slot index, slot), expired ones included
    /// (expiry is the runtime's decision against the conntrack clock).
    pub fn flow_cache_slots(&self) -> Result<Vec<(usize, u32, FlowCacheSlot)>, RuntimeError> {
        let mut out = Vec::new();
        for index in 0..FLOW_CACHE_SLOTS {
            for (cpu, slot) in self.flow_cache_slot(index)?.into_iter().enumerate() {
                if slot.tag != 0 {
                    out.push((cpu, index, slot));
                }
            }
        }
        Ok(out)
    }

    /// A service NAT map by name: [`MAP_NAT_FE`], [`MAP_NAT_BE`] or [`MAP_NAT_AFF`].
    pub fn nat_map_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, RuntimeError> {
        match self.ebpf.map(name) {
            Some(Map::HashMap(data)) if name != MAP_NAT_AFF => Ok(data.fd().as_fd()),
            Some(Map::LruHashMap(data)) if name == MAP_NAT_AFF => Ok(data.fd().as_fd()),
            _ => Err(RuntimeError::Missing { kind: "map", name }),
        }
    }

    /// Installs or replaces a service frontend and its backends (ordinals `0..len`). The
    /// backends are written before the frontend names their count, so a packet never sees
    /// a count larger than the backends present; ordinals beyond the new count left by a
    /// previous, larger set are deleted afterwards. An empty `backends` makes the
    /// frontend drop (counted `no_backend`). `service.backend_count` is set from
    /// `backends`.
    pub fn set_service(
        &self,
        frontend: &NatFrontendKey,
        service: &NatService,
        backends: &[NatBackend],
    ) -> Result<(), RuntimeError> {
        let count = u32::try_from(backends.len())
            .map_err(|_| RuntimeError::Load(format!("{} backends is too many", backends.len())))?;
        let be_fd = self.nat_map_fd(MAP_NAT_BE)?;
        for (ordinal, be) in (0u32..).zip(backends) {
            let key = NatBackendKey { service_id: service.service_id, ordinal };
            sys::map_update(be_fd, &key.to_bytes(), &be.to_bytes(), UpdateFlags::Any)?;
        }
        let old = self.service(frontend)?;
        let svc = NatService { backend_count: count, ..*service };
        let fe_fd = self.nat_map_fd(MAP_NAT_FE)?;
        sys::map_update(fe_fd, &frontend.to_bytes(), &svc.to_bytes(), UpdateFlags::Any)?;
        if let Some(old) = old.filter(|o| o.service_id == service.service_id) {
            for ordinal in count..old.backend_count {
                let key = NatBackendKey { service_id: service.service_id, ordinal };
                sys::map_delete(be_fd, &key.to_bytes())?;
            }
        }
        Ok(())
    }

    /// The frontend's service entry, if installed.
    pub fn service(&self, frontend: &NatFrontendKey) -> Result<Option<NatService>, RuntimeError> {
        let fd = self.nat_map_fd(MAP_NAT_FE)?;
        let Some(v) = sys::map_lookup(fd, &frontend.to_bytes())? else { return Ok(None) };
        let b: [u8; polc_abi::NAT_SERVICE_SIZE] = v
            .as_slice()
            .try_into()
            .map_err(|_| BpfError::Invalid(format!("{MAP_NAT_FE} value is {} bytes", v.len())))?;
        let u = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Ok(Some(NatService {
            service_id: u(0),
            backend_count: u(4),
            flags: u(8),
            affinity_timeout_s: u(12),
        }))
    }

    /// Removes a frontend and its backends; returns whether it existed. Established flows
    /// keep their translation (it lives in conntrack) until they expire.
    pub fn remove_service(&self, frontend: &NatFrontendKey) -> Result<bool, RuntimeError> {
        let Some(old) = self.service(frontend)? else { return Ok(false) };
        sys::map_delete(self.nat_map_fd(MAP_NAT_FE)?, &frontend.to_bytes())?;
        let be_fd = self.nat_map_fd(MAP_NAT_BE)?;
        for ordinal in 0..old.backend_count {
            let key = NatBackendKey { service_id: old.service_id, ordinal };
            sys::map_delete(be_fd, &key.to_bytes())?;
        }
        Ok(true)
    }

    /// The ClientIP affinity entry of `client` for `service_id`, if any.
    pub fn affinity(
        &self,
        client: [u8; 16],
        service_id: u32,
    ) -> Result<Option<NatAffinity>, RuntimeError> {
        let fd = self.nat_map_fd(MAP_NAT_AFF)?;
        let key = NatAffinityKey { client, service_id };
        let Some(v) = sys::map_lookup(fd, &key.to_bytes())? else { return Ok(None) };
        let b: [u8; NAT_AFFINITY_SIZE] = v
            .as_slice()
            .try_into()
            .map_err(|_| BpfError::Invalid(format!("{MAP_NAT_AFF} value is {} bytes", v.len())))?;
        Ok(Some(NatAffinity::from_bytes(&b)))
    }

    /// Puts a (raw-loaded, SCHED_CLS) program into prog-array slot `slot`.
    pub fn set_slot(&self, slot: u32, prog: BorrowedFd<'_>) -> Result<(), RuntimeError> {
        Ok(sys::prog_array_set(self.jump_map_fd()?, slot, prog)?)
    }

    /// Empties prog-array slot `slot`; returns whether it held a program.
    pub fn clear_slot(&self, slot: u32) -> Result<bool, RuntimeError> {
        Ok(sys::prog_array_clear(self.jump_map_fd()?, slot)?)
    }

    /// Makes the interface `ifindex` a polc endpoint (or updates it).
    pub fn set_endpoint(&self, ifindex: u32, ep: &Endpoint) -> Result<(), RuntimeError> {
        let fd = self.ep_map_fd()?;
        Ok(sys::map_update(fd, &ifindex.to_ne_bytes(), &ep.to_bytes(), UpdateFlags::Any)?)
    }

    /// Removes the endpoint on `ifindex`; returns whether there was one.
    pub fn remove_endpoint(&self, ifindex: u32) -> Result<bool, RuntimeError> {
        Ok(sys::map_delete(self.ep_map_fd()?, &ifindex.to_ne_bytes())?)
    }

    /// The conntrack entry of `key`, if any (expired entries included: expiry is decided
    /// by the runtime against the entry's `last_seen_ns`).
    pub fn ct_lookup(&self, key: &CtKey) -> Result<Option<CtEntry>, RuntimeError> {
        let Some(bytes) = sys::map_lookup(self.ct_map_fd()?, &key.to_bytes())? else {
            return Ok(None);
        };
        Ok(Some(CtEntry::from_bytes(&ct_entry_bytes(&bytes)?)))
    }

    /// Creates or replaces a conntrack entry (e.g. to age one in a test).
    pub fn ct_update(&self, key: &CtKey, entry: &CtEntry) -> Result<(), RuntimeError> {
        let fd = self.ct_map_fd()?;
        Ok(sys::map_update(fd, &key.to_bytes(), &entry.to_bytes(), UpdateFlags::Any)?)
    }

    /// Deletes the conntrack entry of `key`; returns whether there was one. (The runtime
    /// never needs this; tests use it to show which packets still reach conntrack.)
    pub fn ct_delete(&self, key: &CtKey) -> Result<bool, RuntimeError> {
        Ok(sys::map_delete(self.ct_map_fd()?, &key.to_bytes())?)
    }

    /// Every conntrack entry, in the map's iteration order.
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, RuntimeError> {
        let fd = self.ct_map_fd()?;
        let mut out = Vec::new();
        let mut prev: Option<Vec<u8>> = None;
        while let Some(k) = sys::map_next_key(fd, prev.as_deref())? {
            let key: [u8; CT_KEY_SIZE] = k.as_slice().try_into().map_err(|_| {
                BpfError::Invalid(format!(
                    "{MAP_CT} key is {} bytes, expected {CT_KEY_SIZE}",
                    k.len()
                ))
            })?;
            // An entry evicted between the two calls is skipped.
            if let Some(v) = sys::map_lookup(fd, &key)? {
                out.push((CtKey::from_bytes(&key), CtEntry::from_bytes(&ct_entry_bytes(&v)?)));
            }
            prev = Some(k);
        }
        Ok(out)
    }

    /// The drop counters summed over CPUs, indexed by [`polc_abi::drop_reason`].
    pub fn drop_counts(&self) -> Result<Vec<u64>, RuntimeError> {
        let fd = self.drops_map_fd()?;
        let mut sums = vec![0u64; drop_reason::COUNT as usize];
        for (reason, sum) in (0u32..).zip(sums.iter_mut()) {
            let per_cpu = sys::map_lookup_percpu(fd, &reason.to_ne_bytes())?.unwrap_or_default();
            for v in per_cpu {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    BpfError::Invalid(format!("{MAP_DROPS} value is {} bytes, expected 8", v.len()))
                })?;
                *sum += u64::from_ne_bytes(b);
            }
        }
        Ok(sums)
    }

    /// The scratch state of every possible CPU (index = CPU number).
    pub fn flow_states(&self) -> Result<Vec<FlowState>, RuntimeError> {
        let per_cpu = sys::map_lookup_percpu(self.state_map_fd()?, &STATE_KEY.to_ne_bytes())?
            .ok_or(BpfError::Invalid(format!("{MAP_STATE} has no entry {STATE_KEY}")))?;
        per_cpu
            .iter()
            .map(|bytes| {
                let arr: &[u8; FLOW_STATE_SIZE] = bytes.as_slice().try_into().map_err(|_| {
                    BpfError::Invalid(format!(
                        "{MAP_STATE} value is {} bytes, expected {FLOW_STATE_SIZE}",
                        bytes.len()
                    ))
                })?;
                Ok(FlowState::from_bytes(arr))
            })
            .collect()
    }

    /// Runs the from-endpoint classifier on `run.data` (see [`Runtime::test_run_hook`]).
    pub fn test_run(&self, run: &TestRun<'_>) -> Result<TestRunOutput, RuntimeError> {
        self.test_run_hook(Hook::FromEndpoint, run)
    }

    /// Runs the classifier of `hook` on `run.data` with `BPF_PROG_TEST_RUN` (on the calling
    /// CPU). Without a context the packet is seen on ifindex 1 (lo).
    pub fn test_run_hook(
        &self,
        hook: Hook,
        run: &TestRun<'_>,
    ) -> Result<TestRunOutput, RuntimeError> {
        Ok(sys::prog_test_run(self.hook_fd(hook)?, run)?)
    }

    /// The underlying aya object, e.g. to attach the classifier or pin maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// The running kernel's tick length in ns (1e9 / CONFIG_HZ), measured once per process:
/// the runtime's conntrack clock counts jiffies (`bpf_jiffies64`, inlined by the JIT, where
/// the clock helpers are calls costing 16-34 ns per packet), and CONFIG_HZ is not exposed
/// to userspace reliably. Takes about 100 ms.
fn ns_per_jiffy() -> Result<u64, RuntimeError> {
    static MEASURED: std::sync::OnceLock<Result<u64, String>> = std::sync::OnceLock::new();
    MEASURED.get_or_init(measure_ns_per_jiffy).clone().map_err(RuntimeError::Load)
}

/// The CONFIG_HZ choices of the kernel's Kconfig.hz (x86, arm64, riscv, powerpc, s390).
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];

fn measure_ns_per_jiffy() -> Result<u64, String> {
    use std::time::{Duration, Instant};
    // r0 = bpf_jiffies64(); exit: the test run's return value is the low 32 bits.
    const PROG: [u8; 16] = [0x85, 0, 0, 0, 118, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let prog = sys::prog_load("polc_jiffies", &PROG).map_err(|e| format!("tick probe: {e}"))?;
    let packet = [0u8; 14];
    let jiffies = || -> Result<u32, String> {
        let run = TestRun { data: &packet, ctx: None, repeat: 1 };
        Ok(sys::prog_test_run(prog.as_fd(), &run).map_err(|e| format!("tick probe: {e}"))?.retval)
    };
    // The moment jiffies next changes (this thread keeps its CPU busy, so the tick runs).
    let edge = || -> Result<(u32, Instant), String> {
        let (start, deadline) = (jiffies()?, Instant::now() + Duration::from_millis(500));
        loop {
            let j = jiffies()?;
            if j != start {
                return Ok((j, Instant::now()));
            }
            if Instant::now() > deadline {
                return Err("tick probe: jiffies did not advance in 500 ms".into());
            }
        }
    };
    let (j0, t0) = edge()?;
    std::thread::sleep(Duration::from_millis(100));
    let (j1, t1) = edge()?;
    let ticks = u128::from(j1.wrapping_sub(j0));
    let elapsed = t1.duration_since(t0).as_nanos().max(1);
    // Ticks arrive late and catch up (idle CPUs, VMs: +-1-2 ticks over 100 ms here), so the
    // rate is only approximate: snap it to the nearest known CONFIG_HZ within 12%.
    let rate = (ticks * 1_000_000_000 + elapsed / 2) / elapsed;
    let rate = u64::try_from(rate).unwrap_or(u64::MAX);
    let hz = KNOWN_HZ
        .into_iter()
        .min_by_key(|&hz| rate.abs_diff(hz).saturating_mul(1000) / hz)
        .filter(|&hz| rate.abs_diff(hz).saturating_mul(100) <= hz * 12)
        .unwrap_or(rate);
    if !(10..=10_000).contains(&hz) {
        return Err(format!(
            "tick probe: implausible CONFIG_HZ {hz} ({ticks} ticks in {elapsed} ns)"
        ));
    }
    Ok((1_000_000_000 + hz / 2) / hz)
}

fn ct_entry_bytes(v: &[u8]) -> Result<[u8; CT_ENTRY_SIZE], BpfError> {
    v.try_into().map_err(|_| {
        BpfError::Invalid(format!("{MAP_CT} value is {} bytes, expected {CT_ENTRY_SIZE}", v.len()))
    })
}
