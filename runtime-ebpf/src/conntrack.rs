//! Conntrack decisions on plain values: TCP state transitions, timeouts, and which
//! approval bit a packet at a hook needs. The maps live in main.rs.

use polc_abi::{
    ct_approved, ct_state, ct_timeout, tcp_flags, CtEntry, CtKey, FlowState, CT_DEFAULT_TIMEOUTS_NS,
};

const _: () = assert!(ct_timeout::COUNT.is_power_of_two());

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Conntrack timeouts (ns) by [`ct_timeout`] index. Read-only data: userspace may replace
/// it at load time (aya `EbpfLoader::set_global`, name [`polc_abi::GLOBAL_CT_TIMEOUTS`]);
/// reading it is a plain memory load, not a map lookup.
#[no_mangle]
static POLC_CT_TIMEOUTS: [u64; ct_timeout::COUNT] = CT_DEFAULT_TIMEOUTS_NS;

/// Which hook a packet is seen at.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Leaving the pod (the endpoint's egress policy).
    FromEp,
    /// Going to the pod (the endpoint's ingress policy).
    ToEp,
}

/// The timeout (ns) of an entry of `protocol` in `state`.
#[inline(always)]
pub fn timeout_ns(protocol: u8, state: u8) -> u64 {
    let idx = match protocol {
        IPPROTO_TCP => match state {
            ct_state::ESTABLISHED => ct_timeout::TCP_ESTABLISHED,
            ct_state::FIN_WAIT => ct_timeout::TCP_FIN,
            ct_state::CLOSED => ct_timeout::TCP_RST,
            _ => ct_timeout::TCP_SYN,
        },
        IPPROTO_UDP => ct_timeout::UDP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ct_timeout::ICMP,
        _ => ct_timeout::OTHER,
    };
    // The mask proves the index in bounds to the verifier (LLVM turns the match above into
    // arithmetic the verifier cannot bound); COUNT is a power of two.
    let idx = idx & (ct_timeout::COUNT - 1);
    // SAFETY: an in-bounds element of a valid static; volatile so LLVM keeps the load (the
    // loader may rewrite the value before the program is loaded) instead of folding the
    // defaults in.
    unsafe { core::ptr::addr_of!(POLC_CT_TIMEOUTS).cast::<u64>().add(idx).read_volatile() }
}

/// Whether `e` may be used for a packet with `flags` (TCP) at time `now`: not expired, and
/// not a fresh SYN reusing the tuple of a closed connection (that one is a new connection
/// and goes through policy again). An entry as old as its timeout is expired, so a timeout
/// of 0 makes every packet of that state a miss (the clock often reads the same value
/// twice).
#[inline(always)]
pub fn usable(e: &CtEntry, protocol: u8, flags: u8, now: u64) -> bool {
    if now.wrapping_sub(e.last_seen_ns) >= timeout_ns(protocol, e.state) {
        return false;
    }
    let new_syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    !(protocol == IPPROTO_TCP
        && new_syn
        && (e.state == ct_state::FIN_WAIT || e.state == ct_state::CLOSED))
}

/// The approval bit the local endpoint's role needs: at the from-endpoint hook the pod is
/// the sender, so it is the originator iff the packet goes forward; at the to-endpoint
/// hook it is the receiver, the originator iff the packet is a reply.
#[inline(always)]
pub fn role_bit(hook: Hook, forward: bool) -> u8 {
    if (hook == Hook::FromEp) == forward {
        ct_approved::ORIG
    } else {
        ct_approved::RESP
    }
}

/// Whether the approval `bit` of `e` was given at interface `ifindex`: an approval holds
/// only on the interface of the pod that got it, so a pod replaying another pod's 5-tuple
/// misses (and meets the anti-spoofing check) instead of riding that pod's entry.
#[inline(always)]
pub fn approved_at(e: &CtEntry, bit: u8, ifindex: u32) -> bool {
    let at = if bit == ct_approved::ORIG { e.orig_ifindex } else { e.resp_ifindex };
    e.approved & bit != 0 && at == ifindex
}

/// Records that approval `bit` of `e` was given at interface `ifindex`.
#[inline(always)]
pub fn set_approver(e: &mut CtEntry, bit: u8, ifindex: u32) {
    if bit == ct_approved::ORIG {
        e.orig_ifindex = ifindex;
    } else {
        e.resp_ifindex = ifindex;
    }
}

/// The state of a new entry created by a first packet.
#[inline(always)]
pub fn initial_state(protocol: u8, flags: u8) -> u8 {
    if protocol != IPPROTO_TCP {
        return ct_state::OPEN;
    }
    if flags & tcp_flags::RST != 0 {
        ct_state::CLOSED
    } else if flags & tcp_flags::FIN != 0 {
        ct_state::FIN_WAIT
    } else if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        ct_state::SYN_SENT
    } else {
        // Picked up mid-stream (e.g. the entry was evicted): policy allowed it again.
        ct_state::ESTABLISHED
    }
}

/// The TCP state after a packet with `flags` going `forward` (originator to responder).
#[inline(always)]
pub fn next_state(state: u8, flags: u8, forward: bool) -> u8 {
    if flags & tcp_flags::RST != 0 {
        return ct_state::CLOSED;
    }
    if flags & tcp_flags::FIN != 0 {
        return if state == ct_state::CLOSED { state } else { ct_state::FIN_WAIT };
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    match state {
        ct_state::SYN_SENT if !forward && syn && ack => ct_state::SYN_RECV,
        ct_state::SYN_RECV if forward && ack && !syn => ct_state::ESTABLISHED,
        _ => state,
    }
}

/// The TCP state of a service-NAT entry, which sees the packets of one side only at the
/// client's node (the pre-NAT entry the client's, the post-NAT one the backend's): a
/// SYN+ACK completes the first half of the handshake, a plain ACK the whole of it.
#[inline(always)]
pub fn one_sided_next_state(state: u8, flags: u8) -> u8 {
    if flags & tcp_flags::RST != 0 {
        return ct_state::CLOSED;
    }
    if flags & tcp_flags::FIN != 0 {
        return if state == ct_state::CLOSED { state } else { ct_state::FIN_WAIT };
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    match state {
        ct_state::SYN_SENT if syn && ack => ct_state::SYN_RECV,
        ct_state::SYN_SENT | ct_state::SYN_RECV if ack && !syn => ct_state::ESTABLISHED,
        _ => state,
    }
}

/// Length of one jiffy in ns (1e9 / CONFIG_HZ). Read-only data the loader sets at load
/// time (it measures the running kernel's tick; [`polc_abi::GLOBAL_NS_PER_JIFFY`]).
#[no_mangle]
static POLC_NS_PER_JIFFY: u64 = polc_abi::DEFAULT_NS_PER_JIFFY;

/// The conntrack clock in ns, one kernel tick (1-10 ms) of resolution: `jiffies_64` times
/// the tick length. `bpf_jiffies64` is inlined by the JIT (a memory load), while the
/// clock helpers are real calls: `bpf_ktime_get_coarse_ns` cost 16-18 ns per packet here
/// (a fifth of the fast path), `bpf_ktime_get_ns` 34; timeouts are seconds. Every reader
/// and writer of `CtEntry::last_seen_ns` and `NatAffinity::last_seen_ns` uses this one
/// function.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a valid static; volatile so LLVM keeps the load (the loader rewrites the
    // value before the program is loaded; the verifier then sees a constant).
    let ns_per_jiffy = unsafe { core::ptr::addr_of!(POLC_NS_PER_JIFFY).read_volatile() };
    // SAFETY: no preconditions.
    unsafe { aya_ebpf::helpers::bpf_jiffies64() }.wrapping_mul(ns_per_jiffy)
}

/// Records a packet on a usable entry: its time and, for TCP, the next state. Stores only
/// what changed (an unchanged cache line stays clean on the other CPUs).
#[inline(always)]
pub fn touch(e: &mut CtEntry, protocol: u8, flags: u8, forward: bool, now: u64) {
    if e.last_seen_ns != now {
        e.last_seen_ns = now;
    }
    if protocol == IPPROTO_TCP {
        let next = if e.nat_flags != 0 {
            one_sided_next_state(e.state, flags)
        } else {
            next_state(e.state, flags, forward)
        };
        if next != e.state {
            e.state = next;
        }
    }
}

/// A [`CtKey`] on the stack, 8-byte aligned so it can be written in u64 words.
#[repr(C, align(8))]
pub struct KeyBuf(pub CtKey);

/// Reads the 16-byte address at `a` as two u64 words.
///
/// # Safety
/// `a` must be 8-byte aligned (the FlowState address fields are, in a map value).
#[inline(always)]
unsafe fn words(a: *const [u8; 16]) -> (u64, u64) {
    let w = a.cast::<u64>();
    // SAFETY: guaranteed by the caller.
    unsafe { (w.read(), w.add(1).read()) }
}

/// Writes the normalised conntrack key of the flow in `st` into `key`; returns whether the
/// packet's source is the `lo` side.
///
/// # Safety
/// `st` must be 8-byte aligned (a map value).
#[inline(always)]
pub unsafe fn flow_key(key: &mut KeyBuf, st: &FlowState) -> bool {
    // SAFETY: the address fields sit at offsets 16 and 32 of an 8-aligned record.
    let (src, dst) = unsafe { (words(&st.src_addr), words(&st.dst_addr)) };
    let ends = Ends { src, src_port: st.ct_src_port, dst, dst_port: st.ct_dst_port };
    fill_key(key, st.family, st.protocol, &ends)
}

/// Both ends of a flow, addresses as two native-endian u64 words each.
pub struct Ends {
    pub src: (u64, u64),
    pub src_port: u16,
    pub dst: (u64, u64),
    pub dst_port: u16,
}

/// Writes the normalised key word by word (byte copies cost stack slots the 512-byte
/// stack does not have, and zeroing patterns become memset calls); returns whether the
/// source is the `lo` side. Same order as [`CtKey::new`].
#[inline(always)]
pub fn fill_key(key: &mut KeyBuf, family: u8, protocol: u8, e: &Ends) -> bool {
    let ((s0, s1), (d0, d1)) = (e.src, e.dst);
    let src_is_lo = if s0 != d0 {
        s0 < d0
    } else if s1 != d1 {
        s1 < d1
    } else {
        e.src_port <= e.dst_port
    };
    let (lo0, lo1, hi0, hi1, port_lo, port_hi) = if src_is_lo {
        (s0, s1, d0, d1, e.src_port, e.dst_port)
    } else {
        (d0, d1, s0, s1, e.dst_port, e.src_port)
    };
    let tail = u64::from(port_lo)
        | u64::from(port_hi) << 16
        | u64::from(protocol) << 32
        | u64::from(family) << 40;
    let w = (key as *mut KeyBuf).cast::<u64>();
    // SAFETY: KeyBuf is 8-aligned and 40 bytes: words 0..4 are the addresses, word 4 the
    // little-endian ports, protocol, family and zero padding.
    unsafe {
        w.write(lo0);
        w.add(1).write(lo1);
        w.add(2).write(hi0);
        w.add(3).write(hi1);
        w.add(4).write(tail);
    }
    src_is_lo
}
