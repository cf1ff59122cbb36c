//! The `vm` engine: runs generated tc programs under the rbpf 0.4.1 interpreter with mocked
//! maps and helpers, the way the kernel would run them.
//!
//! - [`maps`]: kernel map semantics over storage the program points into.
//! - [`skb`]: the `__sk_buff` context bytes.
//! - [`prepare`]: static checks (what rbpf would reject or mis-execute), the context-pointer
//!   rewrite for `data`/`data_end`/`data_meta`, and a prologue for the helpers.
//! - [`helpers`]: the mocked helpers and their per-run thread-local state.
//!
//! Differences from the kernel that tests must know about:
//! - Only loop-free programs run (backward jumps and calls are rejected): rbpf has no
//!   instruction limit, so this is what guarantees a run ends.
//! - rbpf is not the kernel verifier: it checks memory accesses when they happen (against the
//!   stack, the context, the packet and map value slabs), so a missing `data_end` bounds
//!   check is only caught if the access is actually out of bounds, and a program may read any
//!   byte of a map's value slab, not only the value it looked up.
//! - Division by zero yields 0 and modulo by zero leaves dst as is, like the kernel, except
//!   that a 32-bit modulo by a zero register does not clear dst's upper 32 bits in rbpf.
//! - A successful tail call stops the program at the call (see [`Exit::TailCall`]).
//! - rbpf gives each bpf-to-bpf call frame 256 of the 512 stack bytes, so only one level of
//!   calls has stack to use.
//! - LPM keys are stored with the bits past their prefix cleared; `Maps::entries` shows them
//!   that way (the kernel keeps the bytes it was given).

pub mod helpers;
pub mod maps;
pub mod prepare;
pub mod skb;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use maps::{lpm_key, MapDef, MapError, MapKind, Maps, BPF_ANY, BPF_EXIST, BPF_NOEXIST};
pub use prepare::{MAX_INSNS, PROLOGUE_INSNS};
pub use skb::{SkBuff, SK_BUFF_SIZE};

use helpers::{RunState, Stop, StopRun};
use prepare::{CTX_BUFFER_SIZE, CTX_DATA, CTX_DATA_END, CTX_DATA_META};

/// Largest packet the engine accepts (the kernel's test_run allows about a page; we are
/// generous).
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// One run's input.
#[derive(Debug, Clone)]
pub struct VmInput<'a> {
    /// Raw little-endian instructions (8 bytes each, LD_IMM64 takes two).
    pub program: &'a [u8],
    pub skb: SkBuff,
    /// The frame from its Ethernet header on; `skb->len` is its length.
    pub packet: Vec<u8>,
    /// What `bpf_ktime_get_ns` returns (the fake clock does not advance during a run).
    pub ktime_ns: u64,
    /// Seed of `bpf_get_prandom_u32`'s sequence.
    pub prandom_seed: u64,
}

impl<'a> VmInput<'a> {
    /// `program` with a default context, an empty packet, clock 0 and seed 0.
    pub fn new(program: &'a [u8]) -> Self {
        VmInput {
            program,
            skb: SkBuff::default(),
            packet: Vec::new(),
            ktime_ns: 0,
            prandom_seed: 0,
        }
    }
}

/// How the program left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit` with this r0.
    Return(u64),
    /// A tail call into populated slot `index` of prog array `map`, holding program `prog_id`.
    /// The program stopped at the call: in the kernel nothing after it runs.
    TailCall { map: u32, index: u32, prog_id: u32 },
}

/// One run's result.
#[derive(Debug, Clone)]
pub struct VmOutput {
    pub exit: Exit,
    /// r0 at exit; 0 after a tail call (the program never returned).
    pub return_value: u64,
    /// The maps when the program exited, or at the moment of the tail call: the state the
    /// tail-called program would see.
    pub maps: Maps,
    /// Every helper call in order, with r1-r5 (pointers are host addresses).
    pub helper_calls: Vec<(u32, [u64; 5])>,
}

/// Why a run failed. All are the program's or the input's fault except `Internal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmError {
    /// Static rejection (by our checks or rbpf's verifier), with the instruction number in
    /// the caller's program when known.
    Rejected { insn: Option<usize>, message: String },
    /// The program names a map handle that `Maps` does not define.
    UnknownMap(u32),
    /// rbpf stopped the program (e.g. out-of-bounds memory access).
    Execution(String),
    /// A helper was called in a way the kernel verifier would have rejected.
    HelperMisuse { helper: u32, message: String },
    /// Bad run input (e.g. packet too large).
    Input(String),
    /// rbpf panicked: a bug in rbpf or in these checks.
    Internal(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Rejected { insn: Some(i), message } => {
                write!(f, "program rejected at insn #{i}: {message}")
            }
            VmError::Rejected { insn: None, message } => write!(f, "program rejected: {message}"),
            VmError::UnknownMap(h) => {
                write!(f, "program uses map handle {h}, which is not defined")
            }
            VmError::Execution(m) => write!(f, "program execution failed: {m}"),
            VmError::HelperMisuse { helper, message } => write!(f, "helper {helper}: {message}"),
            VmError::Input(m) => write!(f, "invalid vm input: {m}"),
            VmError::Internal(m) => write!(f, "internal vm error: {m}"),
        }
    }
}

impl std::error::Error for VmError {}

/// Rewrites rbpf's `insn #N` (counted in the prepared code, `extra` past the instruction)
/// into the caller's numbering, and keeps the message on one line.
fn caller_insn_numbers(message: &str, extra: usize) -> String {
    let message = message.replace('\n', "; ");
    let marker = "insn #";
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(at) = rest.find(marker) {
        let (head, tail) = rest.split_at(at + marker.len());
        out.push_str(head);
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        let (number, after) = tail.split_at(digits);
        match number.parse::<usize>() {
            Ok(n) => out.push_str(&n.saturating_sub(PROLOGUE_INSNS + extra).to_string()),
            Err(_) => out.push_str(number),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    if let Some(dst) = buf.get_mut(at..at + 8) {
        dst.copy_from_slice(&value.to_ne_bytes());
    }
}

/// Turns each map value reference (`LD_IMM64 src=2`: handle, offset) in prepared code into
/// a constant: the host address of that byte of the map's value, which rbpf may access
/// (every slab is registered). The kernel's rules: a single-entry array, an offset inside
/// the value.
fn bind_map_values(code: &mut [u8], maps: &mut Maps) -> Result<(), VmError> {
    let mut at = 0;
    while at + 16 <= code.len() {
        if code[at] != 0x18 {
            at += 8;
            continue;
        }
        if code[at + 1] >> 4 == 2 {
            let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let (handle, offset) = (word(&code[at + 4..]), word(&code[at + 12..]));
            let pc = (at / 8).saturating_sub(PROLOGUE_INSNS);
            let store = maps.store_mut(handle).ok_or(VmError::UnknownMap(handle))?;
            let def = &store.def;
            if def.kind != MapKind::Array || def.max_entries != 1 || offset >= def.value_size {
                return Err(VmError::Rejected {
                    insn: Some(pc),
                    message: format!(
                        "map value reference needs an array map with one entry and an offset \
                         inside its {}-byte value (map {handle} at offset {offset})",
                        def.value_size
                    ),
                });
            }
            let addr =
                store.slab_mut_ptr() as u64 + (store.value_offset(0, 0) + offset as usize) as u64;
            code[at + 1] &= 0x0f;
            code[at + 4..at + 8].copy_from_slice(&(addr as u32).to_le_bytes());
            code[at + 12..at + 16].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
        }
        at += 16;
    }
    Ok(())
}

/// Runs `input.program` against `maps` under the rbpf interpreter.
pub fn run(input: VmInput, maps: Maps) -> Result<VmOutput, VmError> {
    let prepared = prepare::prepare(input.program, &helpers::SUPPORTED_HELPERS)?;
    if let Some(&missing) = prepared.map_handles.iter().find(|&&h| maps.def(h).is_none()) {
        return Err(VmError::UnknownMap(missing));
    }
    let packet = input.packet;
    if packet.len() > MAX_PACKET_BYTES {
        return Err(VmError::Input(format!(
            "packet is {} bytes, more than {MAX_PACKET_BYTES}",
            packet.len()
        )));
    }

    // The context: __sk_buff, then the packet pointers the rewritten loads read.
    let mut ctx = vec![0u8; CTX_BUFFER_SIZE];
    let uapi = input.skb.to_uapi_bytes(packet.len() as u32);
    if let Some(dst) = ctx.get_mut(..SK_BUFF_SIZE) {
        dst.copy_from_slice(&uapi);
    }
    let data = packet.as_ptr() as u64;
    put_u64(&mut ctx, CTX_DATA, data);
    put_u64(&mut ctx, CTX_DATA_END, data + packet.len() as u64);
    put_u64(&mut ctx, CTX_DATA_META, data);

    let mut maps = maps;
    let mut code = prepared.code;
    bind_map_values(&mut code, &mut maps)?;
    let mut vm = rbpf::EbpfVmMbuff::new(Some(&code)).map_err(|e| VmError::Rejected {
        insn: None,
        message: caller_insn_numbers(&e.to_string(), 0),
    })?;
    for (id, helper) in helpers::registrations() {
        vm.register_helper(id, helper)
            .map_err(|e| VmError::Internal(format!("registering helper {id}: {e}")))?;
    }
    for (_, store) in maps.stores_mut() {
        if store.def.kind != MapKind::ProgArray {
            let start = store.slab_mut_ptr() as u64;
            vm.register_allowed_memory(start..start + store.data_len() as u64);
        }
    }

    let state = RunState {
        maps,
        stack: None,
        packet: (data, packet.len()),
        ktime_ns: input.ktime_ns,
        rng: input.prandom_seed,
        calls: Vec::new(),
        stop: None,
    };
    // A state left behind would mean a run on this thread is still going (re-entrancy).
    if helpers::install(state).is_some() {
        helpers::take();
        return Err(VmError::Internal("nested vm::run on one thread".into()));
    }
    let result = catch_unwind(AssertUnwindSafe(|| vm.execute_program(&packet, &ctx)));
    let Some(state) = helpers::take() else {
        return Err(VmError::Internal("run state vanished".into()));
    };

    let (exit, return_value) = match result {
        Ok(Ok(r0)) => (Exit::Return(r0), r0),
        Ok(Err(e)) => return Err(VmError::Execution(caller_insn_numbers(&e.to_string(), 1))),
        Err(payload) if payload.is::<StopRun>() => match state.stop {
            Some(Stop::TailCall { map, index, prog_id }) => {
                (Exit::TailCall { map, index, prog_id }, 0)
            }
            Some(Stop::Fault { helper, message }) => {
                return Err(VmError::HelperMisuse { helper, message });
            }
            None => return Err(VmError::Internal("helper stopped without a reason".into())),
        },
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err(VmError::Internal(format!("rbpf panicked: {text}")));
        }
    };
    Ok(VmOutput { exit, return_value, maps: state.maps, helper_calls: state.calls })
}
