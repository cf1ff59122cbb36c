//! Mocked kernel helpers. rbpf helpers are plain `fn`s, so the state of the current run lives
//! in a thread-local [`RunState`] that `vm::run` installs before executing and takes back
//! afterwards.
//!
//! A successful tail call, or a helper misuse the kernel verifier would have rejected, stops
//! the program right there: the helper records why in the state and unwinds with
//! [`StopRun`], which `vm::run` catches (`resume_unwind` does not run the panic hook).

use std::cell::RefCell;

use super::maps::{MapKind, Maps};
use super::prepare::STACK_PROBE_HELPER;

pub const BPF_MAP_LOOKUP_ELEM: u32 = 1;
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub const BPF_MAP_DELETE_ELEM: u32 = 3;
pub const BPF_KTIME_GET_NS: u32 = 5;
pub const BPF_GET_PRANDOM_U32: u32 = 7;
pub const BPF_GET_SMP_PROCESSOR_ID: u32 = 8;
pub const BPF_TAIL_CALL: u32 = 12;
pub const BPF_SKB_LOAD_BYTES: u32 = 26;

/// The helpers a program may call.
pub const SUPPORTED_HELPERS: [u32; 8] = [
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    BPF_MAP_DELETE_ELEM,
    BPF_KTIME_GET_NS,
    BPF_GET_PRANDOM_U32,
    BPF_GET_SMP_PROCESSOR_ID,
    BPF_TAIL_CALL,
    BPF_SKB_LOAD_BYTES,
];

type Helper = fn(u64, u64, u64, u64, u64) -> u64;

/// Every helper function to register with rbpf, by id (including the prologue's probe).
pub(crate) fn registrations() -> [(u32, Helper); 9] {
    [
        (STACK_PROBE_HELPER, stack_probe),
        (BPF_MAP_LOOKUP_ELEM, map_lookup_elem),
        (BPF_MAP_UPDATE_ELEM, map_update_elem),
        (BPF_MAP_DELETE_ELEM, map_delete_elem),
        (BPF_KTIME_GET_NS, ktime_get_ns),
        (BPF_GET_PRANDOM_U32, get_prandom_u32),
        (BPF_GET_SMP_PROCESSOR_ID, get_smp_processor_id),
        (BPF_TAIL_CALL, tail_call),
        (BPF_SKB_LOAD_BYTES, skb_load_bytes),
    ]
}

/// Why a run stopped before the program exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    TailCall { map: u32, index: u32, prog_id: u32 },
    Fault { helper: u32, message: String },
}

/// The unwind payload a helper uses to stop the program.
pub(crate) struct StopRun;

/// Everything the helpers of one run read and change.
pub(crate) struct RunState {
    pub maps: Maps,
    /// `[start, end)` of rbpf's stack, learnt from the prologue.
    pub stack: Option<(u64, u64)>,
    /// Address and length of the packet buffer.
    pub packet: (u64, usize),
    pub ktime_ns: u64,
    pub rng: u64,
    pub calls: Vec<(u32, [u64; 5])>,
    pub stop: Option<Stop>,
}

thread_local! {
    static RUN: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

/// Installs the state for a run on this thread; returns any state left behind.
pub(crate) fn install(state: RunState) -> Option<RunState> {
    RUN.with(|cell| cell.replace(Some(state)))
}

/// Takes the state of the run back.
pub(crate) fn take() -> Option<RunState> {
    RUN.with(|cell| cell.take())
}

/// Runs `body` on the installed state, records the call, and turns a [`Stop`] into an unwind.
fn with_state(
    id: u32,
    args: [u64; 5],
    body: impl FnOnce(&mut RunState) -> Result<u64, Stop>,
) -> u64 {
    let outcome = RUN.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else { return None };
        let state = guard.as_mut()?;
        if id != STACK_PROBE_HELPER {
            state.calls.push((id, args));
        }
        match body(state) {
            Ok(value) => Some(value),
            Err(stop) => {
                state.stop = Some(stop);
                None
            }
        }
    });
    match outcome {
        Some(value) => value,
        None => std::panic::resume_unwind(Box::new(StopRun)),
    }
}

fn errno(e: i32) -> u64 {
    (-i64::from(e)) as u64
}

/// Where a pointer passed to a helper points.
enum Region {
    Stack,
    Packet,
    MapValue { handle: u32, offset: usize },
}

impl RunState {
    fn fault(helper: u32, message: String) -> Stop {
        Stop::Fault { helper, message }
    }

    fn region(&self, addr: u64, len: usize) -> Option<Region> {
        let end = addr.checked_add(len as u64)?;
        let inside = |start: u64, size: usize| addr >= start && end <= start + size as u64;
        if let Some((lo, hi)) = self.stack {
            if inside(lo, (hi - lo) as usize) {
                return Some(Region::Stack);
            }
        }
        if inside(self.packet.0, self.packet.1) {
            return Some(Region::Packet);
        }
        self.maps.stores().find_map(|(&handle, store)| {
            let start = store.slab_ptr() as u64;
            (store.def.kind != MapKind::ProgArray && inside(start, store.data_len()))
                .then(|| Region::MapValue { handle, offset: (addr - start) as usize })
        })
    }

    /// Copies `len` bytes a program pointed a helper at (stack, packet or map value).
    fn read(&self, helper: u32, what: &str, addr: u64, len: usize) -> Result<Vec<u8>, Stop> {
        match self.region(addr, len) {
            Some(Region::Stack | Region::Packet) => {
                // SAFETY: region() checked that [addr, addr+len) lies inside rbpf's stack or
                // the packet buffer, both alive for the whole run.
                Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
            }
            Some(Region::MapValue { handle, offset }) => self
                .maps
                .store(handle)
                .and_then(|s| s.slab_bytes(offset, len))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Self::fault(helper, format!("{what} pointer moved"))),
            None => Err(Self::fault(
                helper,
                format!(
                    "{what} pointer {addr:#x} (+{len}) is not in the stack, packet or a map value"
                ),
            )),
        }
    }

    /// Writes helper output to program memory (stack or map value).
    fn write(&mut self, helper: u32, what: &str, addr: u64, bytes: &[u8]) -> Result<(), Stop> {
        match self.region(addr, bytes.len()) {
            Some(Region::Stack) => {
                // SAFETY: region() checked the range lies inside rbpf's live stack.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len())
                };
                Ok(())
            }
            Some(Region::MapValue { handle, offset }) => {
                let dst =
                    self.maps.store_mut(handle).and_then(|s| s.slab_bytes_mut(offset, bytes.len()));
                dst.map(|d| d.copy_from_slice(bytes))
                    .ok_or_else(|| Self::fault(helper, format!("{what} pointer moved")))
            }
            _ => Err(Self::fault(
                helper,
                format!(
                    "{what} pointer {addr:#x} (+{}) is not in the stack or a map value",
                    bytes.len()
                ),
            )),
        }
    }

    /// The map a program passed as `r1`, which must not be a prog array for map helpers.
    fn map_arg(&self, helper: u32, handle: u64) -> Result<(u32, MapKind, usize, usize), Stop> {
        let store = u32::try_from(handle).ok().and_then(|h| self.maps.store(h));
        let Some(store) = store else {
            return Err(Self::fault(helper, format!("{handle:#x} is not a map handle")));
        };
        let kind = store.def.kind;
        Ok((handle as u32, kind, store.def.key_size as usize, store.def.value_size as usize))
    }

    fn data_map_arg(&self, helper: u32, handle: u64) -> Result<(u32, usize, usize), Stop> {
        let (h, kind, key_size, value_size) = self.map_arg(helper, handle)?;
        if kind == MapKind::ProgArray {
            return Err(Self::fault(
                helper,
                "prog arrays are only usable with bpf_tail_call (the verifier rejects this)".into(),
            ));
        }
        Ok((h, key_size, value_size))
    }
}

fn stack_probe(_: u64, r10: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(STACK_PROBE_HELPER, [0; 5], |state| {
        state.stack = Some((r10.saturating_sub(rbpf::ebpf::STACK_SIZE as u64), r10));
        Ok(0)
    })
}

fn map_lookup_elem(map: u64, key: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    let id = BPF_MAP_LOOKUP_ELEM;
    with_state(id, [map, key, a3, a4, a5], |state| {
        let (handle, key_size, _) = state.data_map_arg(id, map)?;
        let key = state.read(id, "key", key, key_size)?;
        let Some(store) = state.maps.store_mut(handle) else { return Ok(0) };
        match store.find_slot(&key) {
            Ok(Some(slot)) => {
                let offset = store.value_offset(slot, 0);
                Ok(store.slab_mut_ptr() as u64 + offset as u64)
            }
            _ => Ok(0),
        }
    })
}

fn map_update_elem(map: u64, key: u64, value: u64, flags: u64, a5: u64) -> u64 {
    let id = BPF_MAP_UPDATE_ELEM;
    with_state(id, [map, key, value, flags, a5], |state| {
        let (handle, key_size, value_size) = state.data_map_arg(id, map)?;
        let key = state.read(id, "key", key, key_size)?;
        let value = state.read(id, "value", value, value_size)?;
        let Some(store) = state.maps.store_mut(handle) else { return Ok(errno(libc::EBADF)) };
        Ok(match store.update_from_program(&key, &value, flags) {
            Ok(()) => 0,
            Err(e) => errno(e.errno()),
        })
    })
}

fn map_delete_elem(map: u64, key: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    let id = BPF_MAP_DELETE_ELEM;
    with_state(id, [map, key, a3, a4, a5], |state| {
        let (handle, key_size, _) = state.data_map_arg(id, map)?;
        let key = state.read(id, "key", key, key_size)?;
        let Some(store) = state.maps.store_mut(handle) else { return Ok(errno(libc::EBADF)) };
        Ok(match store.delete_from_program(&key) {
            Ok(()) => 0,
            Err(e) => errno(e.errno()),
        })
    })
}

fn ktime_get_ns(a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    with_state(BPF_KTIME_GET_NS, [a1, a2, a3, a4, a5], |state| Ok(state.ktime_ns))
}

/// splitmix64: deterministic for a given seed, good enough spread for tests.
fn get_prandom_u32(a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    with_state(BPF_GET_PRANDOM_U32, [a1, a2, a3, a4, a5], |state| {
        state.rng = state.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok((z ^ (z >> 31)) >> 32)
    })
}

fn get_smp_processor_id(a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    with_state(BPF_GET_SMP_PROCESSOR_ID, [a1, a2, a3, a4, a5], |_| Ok(0))
}

fn tail_call(ctx: u64, map: u64, index: u64, a4: u64, a5: u64) -> u64 {
    let id = BPF_TAIL_CALL;
    with_state(id, [ctx, map, index, a4, a5], |state| {
        let (handle, kind, _, _) = state.map_arg(id, map)?;
        if kind != MapKind::ProgArray {
            return Err(RunState::fault(id, format!("map {handle} is not a prog array")));
        }
        // The kernel takes the index as u32.
        let index = index as u32;
        match state.maps.prog_at(handle, index) {
            Some(prog_id) => Err(Stop::TailCall { map: handle, index, prog_id }),
            None => Ok(errno(libc::ENOENT)),
        }
    })
}

fn skb_load_bytes(ctx: u64, offset: u64, to: u64, len: u64, a5: u64) -> u64 {
    let id = BPF_SKB_LOAD_BYTES;
    with_state(id, [ctx, offset, to, len, a5], |state| {
        let len = len as u32 as usize;
        if len == 0 {
            return Err(RunState::fault(id, "length 0 (the verifier requires > 0)".into()));
        }
        let (start, packet_len) = state.packet;
        let offset = offset as u32 as usize;
        let Some(bytes) = offset
            .checked_add(len)
            .filter(|&end| end <= packet_len)
            .map(|_| state.read(id, "packet", start + offset as u64, len))
        else {
            // Like the kernel: zero the destination and fail with -EFAULT.
            state.write(id, "destination", to, &vec![0; len])?;
            return Ok(errno(libc::EFAULT));
        };
        state.write(id, "destination", to, &bytes?)?;
        Ok(0)
    })
}
