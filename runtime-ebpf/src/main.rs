//! polc's tc fast path: two classifiers on each pod's host-side veth and an epilogue.
//!
//! - `polc_from_ep` (tc ingress of the host veth: packets leaving the pod) and `polc_to_ep`
//!   (tc egress: packets to the pod) parse the packet, ask this CPU's flow cache
//!   (flow_cache.rs: an inlined array lookup answering recent established flows), then
//!   conntrack. A usable entry approved for the local endpoint's role forwards the packet
//!   (one map lookup) and may fill the cache. On a miss they fill the per-CPU [`FlowState`]
//!   and tail-call the endpoint's policy program.
//! - The policy program writes its verdict and tail-calls `polc_epilogue`, which records
//!   the approval in conntrack and forwards, or drops.
//! - Service NAT (nat.rs): on a miss at `polc_from_ep`, a packet to a service frontend is
//!   rewritten to a backend before policy; conntrack entries carry the translation for
//!   the fast path and the reverse rewrite of replies at `polc_to_ep`.
//!
//! Interfaces without an entry in `POLC_EP` are not polc endpoints: their packets pass.
//! Everything that fails (empty policy slot, malformed packet) drops and is counted.
#![no_std]
#![no_main]
// Keys and values go to map helpers by reference: no copies on the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod conntrack;
mod flow_cache;
mod nat;
mod parse;

use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use polc_abi::{
    ct_approved, ct_nat, ct_state, direction, drop_reason, family, own_addr, stage, tcp_flags,
    verdict, CtEntry, CtKey, Endpoint, FlowState, CT_DEFAULT_ENTRIES, EP_ENTRIES, JUMP_ENTRIES,
    RULE_ID_NONE, SLOT_NONE, STATE_KEY, TC_ACT_OK, TC_ACT_SHOT,
};

use conntrack::{Hook, KeyBuf};
use parse::{Flow, Stop};

// The static names are the map names userspace looks up (polc_abi::MAP_*).
#[btf_map]
static POLC_JUMP: ProgramArray<{ JUMP_ENTRIES as usize }> = ProgramArray::new();

#[btf_map]
static POLC_STATE: PerCpuArray<FlowState, { polc_abi::STATE_ENTRIES as usize }> =
    PerCpuArray::new();

#[btf_map]
static POLC_EP: HashMap<u32, Endpoint, { EP_ENTRIES as usize }> = HashMap::new();

#[btf_map]
static POLC_CT: LruHashMap<CtKey, CtEntry, { CT_DEFAULT_ENTRIES as usize }> = LruHashMap::new();

#[btf_map]
static POLC_DROPS: PerCpuArray<u64, { drop_reason::COUNT as usize }> = PerCpuArray::new();

/// Packets leaving the pod: the endpoint's egress policy.
#[classifier]
pub fn polc_from_ep(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::FromEp)
}

/// Packets going to the pod: the endpoint's ingress policy.
#[classifier]
pub fn polc_to_ep(ctx: TcContext) -> i32 {
    handle(&ctx, Hook::ToEp)
}

/// Counts a drop under `reason` and returns `TC_ACT_SHOT`.
#[inline(always)]
fn drop_packet(reason: u32) -> i32 {
    if let Some(c) = POLC_DROPS.get_ptr_mut(reason) {
        // SAFETY: this CPU's counter, valid while the program runs.
        unsafe { *c += 1 };
    }
    TC_ACT_SHOT
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context is the kernel's __sk_buff for this program.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn endpoint(ctx: &TcContext) -> Option<*const Endpoint> {
    POLC_EP.get_ptr(ifindex(ctx))
}

#[inline(always)]
fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    // Parsed on the stack: the fast path touches no per-CPU record.
    let mut f = Flow {
        src: [0; 2],
        dst: [0; 2],
        src_port: 0,
        dst_port: 0,
        ct_src_port: 0,
        ct_dst_port: 0,
        family: 0,
        protocol: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        l4_off: 0,
        icmp_error: false,
    };
    // The common packet gets its own inlined copy of everything below: straight-line code
    // with IPv4 constants folded in, instead of a merge with the general parser's results
    // (which cost register spills on the fast path).
    if parse::parse_common_ipv4(ctx, &mut f) {
        return decide(ctx, hook, f);
    }
    match parse::parse(ctx, &mut f) {
        Ok(()) => {}
        Err(Stop::Pass) => return TC_ACT_OK,
        // Only polc endpoints enforce anything, bad packets included.
        Err(Stop::Drop(reason)) => {
            return if endpoint(ctx).is_some() { drop_packet(reason) } else { TC_ACT_OK };
        }
    }
    decide(ctx, hook, f)
}

/// Conntrack, then policy on a miss, for a parsed packet.
#[inline(always)]
fn decide(ctx: &TcContext, hook: Hook, mut f: Flow) -> i32 {
    let mut key = KeyBuf(CtKey::default());
    let src_is_lo = conntrack::fill_key(&mut key, f.family, f.protocol, &f.ends());
    let now = conntrack::now_ns();
    // The fastest path: this CPU's flow cache, a lookup the verifier inlines.
    let view = flow_cache::View::new(&key, hook, src_is_lo, ifindex(ctx));
    let slot = flow_cache::slot(&view);
    if let Some(s) = slot {
        // SAFETY: this CPU's slot, a live map value.
        unsafe {
            if flow_cache::cacheable(&f) && flow_cache::hit(s, &view, now) {
                return TC_ACT_OK;
            }
            // Whatever conntrack decides below is the news: the slot must not outlive it.
            flow_cache::clear_if_key(s, &view);
        }
        if f.protocol == parse::IPPROTO_TCP && f.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
        {
            flow_cache::clear_other_views(&view);
        }
    }
    // The fast path: one conntrack lookup.
    if let Some(e) = POLC_CT.get_ptr_mut(&key.0) {
        // SAFETY: a live entry of the map; concurrent updates only race on plain fields.
        let e = unsafe { &mut *e };
        let forward = (e.orig_is_lo != 0) == src_is_lo;
        if conntrack::usable(e, f.protocol, f.tcp_flags, now)
            && conntrack::approved_at(e, conntrack::role_bit(hook, forward), ifindex(ctx))
        {
            conntrack::touch(e, f.protocol, f.tcp_flags, forward, now);
            if e.nat_flags != 0 {
                // NAT'd flows are never cached: every packet must be rewritten.
                if !nat::fast_path(ctx, &f, e, hook == Hook::ToEp, forward) {
                    return drop_packet(drop_reason::TRUNCATED);
                }
                return TC_ACT_OK;
            }
            if let Some(s) = slot {
                if let Some(expires) = cache_until(e, &f, now) {
                    // SAFETY: as above.
                    unsafe { flow_cache::fill(s, &view, expires) };
                }
            }
            return TC_ACT_OK;
        }
    }
    if f.icmp_error && related(ctx, &f, now) {
        return TC_ACT_OK;
    }
    let Some(ep) = endpoint(ctx) else { return TC_ACT_OK };
    // SAFETY: a live map value.
    let ep = unsafe { *ep };
    let v6 = f.family == family::IPV6;
    let (dir, slot) = match hook {
        Hook::FromEp => (direction::EGRESS, if v6 { ep.egress_slot_v6 } else { ep.egress_slot }),
        Hook::ToEp => (direction::INGRESS, if v6 { ep.ingress_slot_v6 } else { ep.ingress_slot }),
    };
    // Never the other family's program: it would read addresses of the wrong size.
    if slot == SLOT_NONE {
        return drop_packet(drop_reason::NO_FAMILY_POLICY);
    }
    // Anti-spoofing, before NAT rewrites anything: the pod's side of a new flow must be the
    // pod's own address, so a policy only ever sees the pod's own traffic.
    let own_side = if hook == Hook::FromEp { &f.src } else { &f.dst };
    if !is_own_address(&ep, v6, own_side) {
        return drop_packet(drop_reason::SPOOFED);
    }
    // Service NAT before policy: the client's egress policy sees the backend.
    if hook == Hook::FromEp {
        if let Err(reason) = nat::translate(ctx, &mut f, now) {
            return drop_packet(reason);
        }
    }
    let Some(state) = POLC_STATE.get_ptr_mut(STATE_KEY) else {
        return drop_packet(drop_reason::NO_STATE);
    };
    // SAFETY: this CPU's scratch record, valid and exclusively ours while the program (and
    // the programs it tail-calls) run; a map value, so 8-aligned.
    unsafe { fill_state(&mut *state, &f, dir, ep.endpoint_id, ifindex(ctx)) };
    // SAFETY: on success the tail call does not return.
    unsafe { POLC_JUMP.tail_call(ctx, slot) };
    drop_packet(drop_reason::NO_POLICY)
}

/// Until when the flow cache may pass the packets of this view of `e` (just touched at
/// `now`, usable and approved), or None if it must not: TCP only once ESTABLISHED (the
/// handshake and teardown belong to conntrack), never ICMP errors; at most the refresh
/// interval, never past the entry's own expiry (a timeout of 0 never caches).
#[inline(always)]
fn cache_until(e: &CtEntry, f: &Flow, now: u64) -> Option<u64> {
    if f.icmp_error || (f.protocol == parse::IPPROTO_TCP && e.state != ct_state::ESTABLISHED) {
        return None;
    }
    let refresh = now.saturating_add(flow_cache::refresh_ns());
    let ct_expiry = e.last_seen_ns.saturating_add(conntrack::timeout_ns(f.protocol, e.state));
    let expires = if refresh < ct_expiry { refresh } else { ct_expiry };
    (now < expires).then_some(expires)
}

/// Whether `addr` (a [`Flow`] address) is the endpoint's own address of its family.
#[inline(always)]
fn is_own_address(ep: &Endpoint, v6: bool, addr: &[u64; 2]) -> bool {
    if v6 {
        // SAFETY: `addr_v6` sits at offset 32 of an 8-aligned record (asserted in the ABI).
        let (w0, w1) = unsafe {
            let w = ep.addr_v6.as_ptr().cast::<u64>();
            (w.read(), w.add(1).read())
        };
        ep.own_addrs & own_addr::V6 != 0 && addr[0] == w0 && addr[1] == w1
    } else {
        // An IPv4 flow address is the low word only (the high word is zero).
        ep.own_addrs & own_addr::V4 != 0 && addr[0] == u64::from(u32::from_ne_bytes(ep.addr_v4))
    }
}

/// Writes the whole scratch record for the policy program: the parsed flow, the hook's
/// direction and endpoint, no verdict yet (a policy program that does not decide denies).
///
/// # Safety
/// `st` must be 8-byte aligned (a map value).
#[inline(always)]
unsafe fn fill_state(st: &mut FlowState, f: &Flow, dir: u8, endpoint_id: u32, ifindex: u32) {
    st.family = f.family;
    st.protocol = f.protocol;
    st.icmp_type = f.icmp_type;
    st.icmp_code = f.icmp_code;
    st.direction = dir;
    // SAFETY: fields of the record; volatile keeps LLVM from a memset call.
    unsafe {
        let pad = core::ptr::addr_of_mut!(st._pad0).cast::<u8>();
        pad.write_volatile(0);
        pad.add(1).write_volatile(0);
        pad.add(2).write_volatile(0);
    }
    st.src_port = f.src_port;
    st.dst_port = f.dst_port;
    st.endpoint_id = endpoint_id;
    // SAFETY: the address fields sit at offsets 16 and 32 of an 8-aligned record.
    unsafe {
        let w = st.src_addr.as_mut_ptr().cast::<u64>();
        w.write(f.src[0]);
        w.add(1).write(f.src[1]);
        let w = st.dst_addr.as_mut_ptr().cast::<u64>();
        w.write(f.dst[0]);
        w.add(1).write(f.dst[1]);
    }
    st.verdict = verdict::UNSET;
    st.rule_id = RULE_ID_NONE;
    st.stage = stage::RUNTIME;
    st.resume = 0;
    st.tcp_flags = f.tcp_flags;
    st._pad1 = 0;
    st.ct_src_port = f.ct_src_port;
    st.ct_dst_port = f.ct_dst_port;
    st._pad2 = 0;
    st.ifindex = ifindex;
    st._pad3 = 0;
}

/// An ICMP error about a tracked, approved, unexpired flow is allowed without policy.
#[inline(always)]
fn related(ctx: &TcContext, f: &Flow, now: u64) -> bool {
    let Some((protocol, ends)) = parse::parse_quoted(ctx, f) else { return false };
    let mut key = KeyBuf(CtKey::default());
    conntrack::fill_key(&mut key, f.family, protocol, &ends);
    match POLC_CT.get_ptr(&key.0) {
        // SAFETY: a live map value.
        Some(e) => unsafe { (*e).approved != 0 && conntrack::usable(&*e, protocol, 0, now) },
        None => false,
    }
}

/// Tail-called by a policy program after it wrote its verdict.
#[classifier]
pub fn polc_epilogue(_ctx: TcContext) -> i32 {
    let Some(state) = POLC_STATE.get_ptr_mut(STATE_KEY) else {
        return drop_packet(drop_reason::NO_STATE);
    };
    // SAFETY: this CPU's scratch record.
    let st = unsafe { &mut *state };
    st.stage = stage::EPILOGUE;
    match st.verdict {
        verdict::ALLOW => {}
        verdict::DENY => return drop_packet(drop_reason::POLICY_DENY),
        _ => return drop_packet(drop_reason::NO_VERDICT),
    }
    let hook = if st.direction == direction::EGRESS { Hook::FromEp } else { Hook::ToEp };
    let mut key = KeyBuf(CtKey::default());
    // SAFETY: `st` is a map value (8-aligned).
    let src_is_lo = unsafe { conntrack::flow_key(&mut key, st) };
    let key = &key.0;
    let now = conntrack::now_ns();
    if let Some(e) = POLC_CT.get_ptr_mut(key) {
        // SAFETY: a live map value.
        let e = unsafe { &mut *e };
        let forward = (e.orig_is_lo != 0) == src_is_lo;
        // Add this side's approval to a live entry of the same orientation (the second
        // hook of a pod-to-pod flow). A reply-direction packet that needed policy starts a
        // new entry in its own orientation instead (below).
        if forward && conntrack::usable(e, st.protocol, st.tcp_flags, now) {
            let bit = conntrack::role_bit(hook, true);
            e.approved |= bit;
            conntrack::set_approver(e, bit, st.ifindex);
            if bit == ct_approved::ORIG {
                e.orig_rule = st.rule_id;
            } else {
                e.resp_rule = st.rule_id;
            }
            conntrack::touch(e, st.protocol, st.tcp_flags, true, now);
            if hook == Hook::FromEp && e.nat_flags & ct_nat::REV_NAT != 0 {
                // SAFETY: the address field sits at offset 16 of an 8-aligned record.
                let src = unsafe {
                    let w = st.src_addr.as_ptr().cast::<u64>();
                    (w.read(), w.add(1).read())
                };
                let (port, ifindex) = (st.ct_src_port, st.ifindex);
                nat::approve_pre_nat(src, port, st.family, st.protocol, e, bit, ifindex);
            }
            return TC_ACT_OK;
        }
    }
    let bit = conntrack::role_bit(hook, true);
    let entry = CtEntry {
        last_seen_ns: now,
        state: conntrack::initial_state(st.protocol, st.tcp_flags),
        orig_is_lo: src_is_lo as u8,
        approved: bit,
        _pad: 0,
        orig_rule: if bit == ct_approved::ORIG { st.rule_id } else { RULE_ID_NONE },
        resp_rule: if bit == ct_approved::RESP { st.rule_id } else { RULE_ID_NONE },
        orig_ifindex: if bit == ct_approved::ORIG { st.ifindex } else { 0 },
        nat_addr: [0; 16],
        nat_port: 0,
        nat_flags: 0,
        _pad3: 0,
        resp_ifindex: if bit == ct_approved::RESP { st.ifindex } else { 0 },
    };
    // A failed insert (cannot happen with an LRU map short of memory pressure) still
    // forwards: the policy allowed the packet; the next one goes through policy again.
    let _ = POLC_CT.insert(key, &entry, 0);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
