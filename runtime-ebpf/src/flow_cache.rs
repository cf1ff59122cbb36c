//! The per-CPU flow cache in front of conntrack: a direct-mapped array of recent fast-path
//! verdicts whose lookup the verifier inlines (no call), so an established packet that
//! hits it skips the `POLC_CT` hash lookup. Soft state: conntrack stays the truth; a slot
//! only speaks for at most [`refresh_ns`] (see docs/runtime.md, "Flow cache").

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use polc_abi::{
    flow_cache_index, flow_cache_tag, tcp_flags, FlowCacheSlot, FLOW_CACHE_DEFAULT_NS,
    FLOW_CACHE_SLOTS,
};

use crate::conntrack::{Hook, KeyBuf};
use crate::parse::{Flow, IPPROTO_TCP};

#[btf_map]
static POLC_FLOW_CACHE: PerCpuArray<FlowCacheSlot, { FLOW_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// How long a filled slot may be used, in ns; 0 disables the cache. Read-only data the
/// loader may set ([`polc_abi::GLOBAL_FLOW_CACHE_NS`]); the verifier then sees a constant
/// and drops the cache code entirely when it is 0.
#[no_mangle]
static POLC_FLOW_CACHE_NS: u64 = FLOW_CACHE_DEFAULT_NS;

/// The refresh interval REFRESH (ns) the loader set; 0 = the cache is off.
#[inline(always)]
pub fn refresh_ns() -> u64 {
    // SAFETY: a valid static; volatile so LLVM keeps the load (the loader rewrites it).
    unsafe { core::ptr::addr_of!(POLC_FLOW_CACHE_NS).read_volatile() }
}

/// The key's five u64 words.
#[inline(always)]
fn words(key: &KeyBuf) -> [u64; 5] {
    let w = (key as *const KeyBuf).cast::<u64>();
    // SAFETY: KeyBuf is 8-aligned and 40 bytes.
    unsafe { [w.read(), w.add(1).read(), w.add(2).read(), w.add(3).read(), w.add(4).read()] }
}

/// A packet's view of its flow: the key's words and the tag of its hook and direction.
pub struct View {
    w: [u64; 5],
    tag: u32,
    ifindex: u32,
}

impl View {
    #[inline(always)]
    pub fn new(key: &KeyBuf, hook: Hook, src_is_lo: bool, ifindex: u32) -> View {
        View { w: words(key), tag: flow_cache_tag::of(hook == Hook::ToEp, src_is_lo), ifindex }
    }
}

/// This CPU's slot for the packet's view, or None when the cache is off.
#[inline(always)]
pub fn slot(v: &View) -> Option<*mut FlowCacheSlot> {
    if refresh_ns() == 0 {
        return None;
    }
    POLC_FLOW_CACHE.get_ptr_mut(flow_cache_index(&v.w, v.tag))
}

/// Whether a packet may be answered from the cache at all: never an ICMP error (it is
/// about another flow), never a TCP packet that conntrack's state machine must see.
#[inline(always)]
pub fn cacheable(f: &Flow) -> bool {
    !f.icmp_error
        && (f.protocol != IPPROTO_TCP
            || f.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0)
}

/// The slot as u64 words: 0..5 the key, 5 ifindex | tag << 32, 6 expires_ns.
#[inline(always)]
fn slot_words(s: *mut FlowCacheSlot) -> *mut u64 {
    s.cast::<u64>()
}

#[inline(always)]
fn id_word(v: &View) -> u64 {
    u64::from(v.ifindex) | u64::from(v.tag) << 32
}

/// Whether the slot holds the packet's view (key, interface, hook, direction) unexpired.
///
/// # Safety
/// `s` must be a live slot of this CPU (a map value, 8-aligned).
#[inline(always)]
pub unsafe fn hit(s: *mut FlowCacheSlot, v: &View, now: u64) -> bool {
    let p = slot_words(s);
    // SAFETY: words 0..7 of a 56-byte, 8-aligned map value.
    unsafe {
        p.add(5).read() == id_word(v)
            && p.read() == v.w[0]
            && p.add(1).read() == v.w[1]
            && p.add(2).read() == v.w[2]
            && p.add(3).read() == v.w[3]
            && p.add(4).read() == v.w[4]
            && now < p.add(6).read()
    }
}

/// Empties the slot if it holds the packet's key (any view; a slot holds another view only
/// on an index collision): the packet is about to take the conntrack path, which may
/// change what the slot claims.
///
/// # Safety
/// As for [`hit`].
#[inline(always)]
pub unsafe fn clear_if_key(s: *mut FlowCacheSlot, v: &View) {
    let p = slot_words(s);
    // SAFETY: as in `hit`.
    unsafe {
        if p.read() == v.w[0]
            && p.add(1).read() == v.w[1]
            && p.add(2).read() == v.w[2]
            && p.add(3).read() == v.w[3]
            && p.add(4).read() == v.w[4]
            && p.add(6).read() != 0
        {
            p.add(6).write_volatile(0);
            p.add(5).write_volatile(0);
        }
    }
}

/// Empties this CPU's slots of the flow's other three views (the other hook, the other
/// direction) that hold its key: a FIN or RST changes the conntrack state every view
/// relies on, so none of them may keep answering on this CPU.
#[inline(always)]
pub fn clear_other_views(v: &View) {
    let lo = v.tag & flow_cache_tag::SRC_IS_LO != 0;
    let to_ep = v.tag & flow_cache_tag::TO_EP != 0;
    for (t, l) in [(!to_ep, lo), (to_ep, !lo), (!to_ep, !lo)] {
        let other = View { w: v.w, tag: flow_cache_tag::of(t, l), ifindex: v.ifindex };
        if let Some(s) = POLC_FLOW_CACHE.get_ptr_mut(flow_cache_index(&other.w, other.tag)) {
            // SAFETY: this CPU's slot, a live map value.
            unsafe { clear_if_key(s, &other) };
        }
    }
}

/// Fills the slot with the packet's view until `expires_ns`: the expiry is zeroed first and
/// written last, so a reader never sees a half-written slot as valid.
///
/// # Safety
/// As for [`hit`].
#[inline(always)]
pub unsafe fn fill(s: *mut FlowCacheSlot, v: &View, expires_ns: u64) {
    let p = slot_words(s);
    // SAFETY: as in `hit`; volatile keeps the stores and their order.
    unsafe {
        p.add(6).write_volatile(0);
        p.write_volatile(v.w[0]);
        p.add(1).write_volatile(v.w[1]);
        p.add(2).write_volatile(v.w[2]);
        p.add(3).write_volatile(v.w[3]);
        p.add(4).write_volatile(v.w[4]);
        p.add(5).write_volatile(id_word(v));
        p.add(6).write_volatile(expires_ns);
    }
}
