//! The fixed tc runtime (runtime-ebpf), embedded as a prebuilt object and loaded with aya.
//!
//! [`Runtime`] owns the loaded `polc_tc` classifier and its maps, lets callers put raw-loaded
//! policy programs into prog-array slots, reads the per-CPU scratch state, and runs the
//! classifier on a packet with `BPF_PROG_TEST_RUN`.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::Map;
use aya::programs::SchedClassifier;
use aya::Ebpf;
use polc_abi::{FlowState, FLOW_STATE_SIZE, MAP_JUMP, MAP_STATE, PROG_TC, STATE_KEY};

use crate::sys::{self, BpfError, TestRun, TestRunOutput};

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

/// The loaded runtime: the `polc_tc` classifier (loaded, not attached) and its maps.
#[derive(Debug)]
pub struct Runtime {
    ebpf: Ebpf,
}

impl Runtime {
    /// Loads [`RUNTIME_OBJECT`]: creates its maps and loads the classifier into the kernel.
    pub fn load() -> Result<Runtime, RuntimeError> {
        let mut ebpf = Ebpf::load(RUNTIME_OBJECT).map_err(|e| RuntimeError::Load(e.to_string()))?;
        let prog = ebpf
            .program_mut(PROG_TC)
            .ok_or(RuntimeError::Missing { kind: "program", name: PROG_TC })?;
        let cls: &mut SchedClassifier =
            prog.try_into().map_err(|e: aya::programs::ProgramError| {
                RuntimeError::Load(format!("{PROG_TC}: {e}"))
            })?;
        cls.load().map_err(|e| RuntimeError::Load(format!("{PROG_TC}: {e}")))?;
        let rt = Runtime { ebpf };
        // Fail early on a stale object rather than on first use.
        rt.jump_map_fd()?;
        rt.state_map_fd()?;
        Ok(rt)
    }

    /// The loaded classifier's fd (for test runs and tc attach).
    pub fn program_fd(&self) -> Result<BorrowedFd<'_>, RuntimeError> {
        let prog = self
            .ebpf
            .program(PROG_TC)
            .ok_or(RuntimeError::Missing { kind: "program", name: PROG_TC })?;
        let fd = prog.fd().map_err(|e| RuntimeError::Load(format!("{PROG_TC}: {e}")))?;
        Ok(fd.as_fd())
    }

    /// The prog array the classifier tail-calls through ([`polc_abi::MAP_JUMP`]).
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

    /// Puts a (raw-loaded, SCHED_CLS) program into prog-array slot `slot`.
    pub fn set_slot(&self, slot: u32, prog: BorrowedFd<'_>) -> Result<(), RuntimeError> {
        Ok(sys::prog_array_set(self.jump_map_fd()?, slot, prog)?)
    }

    /// Empties prog-array slot `slot`; returns whether it held a program.
    pub fn clear_slot(&self, slot: u32) -> Result<bool, RuntimeError> {
        Ok(sys::prog_array_clear(self.jump_map_fd()?, slot)?)
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

    /// Runs the classifier on `run.data` with `BPF_PROG_TEST_RUN` (on the calling CPU).
    pub fn test_run(&self, run: &TestRun<'_>) -> Result<TestRunOutput, RuntimeError> {
        Ok(sys::prog_test_run(self.program_fd()?, run)?)
    }

    /// The underlying aya object, e.g. to attach the classifier or pin maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
