//! polc's tc fast path: fills the per-CPU scratch state and tail-calls the policy program.
//!
//! This first version parses nothing: it resets the scratch record, marks the stage, and
//! tail-calls the first policy slot. If the slot is empty (or the tail call fails for any
//! other reason) the packet is dropped: the fast path fails closed.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{PerCpuArray, ProgramArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use polc_abi::{FlowState, JUMP_ENTRIES, RULE_ID_NONE, SLOT_FIRST_POLICY, STATE_KEY};

// The static names are the map names userspace looks up (polc_abi::MAP_JUMP / MAP_STATE).
#[btf_map]
static POLC_JUMP: ProgramArray<{ JUMP_ENTRIES as usize }> = ProgramArray::new();

#[btf_map]
static POLC_STATE: PerCpuArray<FlowState, { polc_abi::STATE_ENTRIES as usize }> =
    PerCpuArray::new();

#[classifier]
pub fn polc_tc(ctx: TcContext) -> i32 {
    if let Some(state) = POLC_STATE.get_ptr_mut(STATE_KEY) {
        // SAFETY: the pointer comes from a successful map lookup of this CPU's slot, which
        // is valid, 8-byte aligned and exclusively ours while the program runs.
        unsafe { reset_state(state) };
        // SAFETY: on success the tail call does not return; on failure we fall through.
        unsafe { POLC_JUMP.tail_call(&ctx, SLOT_FIRST_POLICY) };
    }
    polc_abi::TC_ACT_SHOT
}

/// Clears the scratch record and marks it as filled by the runtime, with no verdict yet.
///
/// Volatile word stores keep LLVM from turning the clear into a `memset` call (a BPF
/// subprogram call we do not want in the fast path).
///
/// # Safety
/// `state` must point to a valid, 8-byte aligned `FlowState`.
#[inline(always)]
unsafe fn reset_state(state: *mut FlowState) {
    let words = state.cast::<u64>();
    let mut i = 0;
    while i < polc_abi::FLOW_STATE_SIZE / 8 {
        // SAFETY: `i * 8 < FLOW_STATE_SIZE`, inside the record.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: fields of the valid record.
    unsafe {
        (*state).verdict = polc_abi::verdict::UNSET;
        (*state).rule_id = RULE_ID_NONE;
        (*state).stage = polc_abi::stage::RUNTIME;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
