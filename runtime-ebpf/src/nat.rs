//! Service NAT (kube-proxy replacement, IPv4 and IPv6, TCP, UDP and SCTP): the frontend
//! lookup and backend choice on a flow's first packet at the client's from-endpoint hook, the
//! conntrack entries that carry the translation, and the in-place rewrites (destination to
//! the backend, source of replies back to the service) with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    btf_maps::{HashMap, LruHashMap},
    macros::btf_map,
    programs::TcContext,
};
use polc_abi::{
    crc32c, ct_nat, drop_reason, family, nat_flags, CtEntry, CtKey, NatAffinity, NatAffinityKey,
    NatBackend, NatBackendKey, NatFrontendKey, NatService, NAT_AFF_ENTRIES, NAT_BE_ENTRIES,
    NAT_FE_ENTRIES, RULE_ID_NONE,
};

use crate::conntrack::{self, Ends, KeyBuf};
use crate::parse::{Flow, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use crate::POLC_CT;

#[btf_map]
static POLC_NAT_FE: HashMap<NatFrontendKey, NatService, { NAT_FE_ENTRIES as usize }> =
    HashMap::new();

#[btf_map]
static POLC_NAT_BE: HashMap<NatBackendKey, NatBackend, { NAT_BE_ENTRIES as usize }> =
    HashMap::new();

#[btf_map]
static POLC_NAT_AFF: LruHashMap<NatAffinityKey, NatAffinity, { NAT_AFF_ENTRIES as usize }> =
    LruHashMap::new();

const ETH_HLEN: usize = 14;
/// Offsets in the IPv4 header.
const IP_TOTAL_LEN: usize = ETH_HLEN + 2;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
/// Offsets in the IPv6 header.
const IP6_PAYLOAD_LEN: usize = ETH_HLEN + 4;
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
/// The CRC32c field in the SCTP common header.
const SCTP_CSUM: usize = 8;

/// Tables for the SCTP checksum update (read-only data, see `polc_abi::crc32c`).
static SCTP_X8N_LO: [u32; 256] = crc32c::X8N_LO;
static SCTP_X8N_HI: [u32; 256] = crc32c::X8N_HI;

/// A frontend key on the stack, 8-aligned so the address is written in u64 words.
#[repr(C, align(8))]
struct FrontendBuf(NatFrontendKey);

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// On a conntrack miss at the client's from-endpoint hook: if the packet goes to a service
/// frontend, pick a backend, rewrite the packet's destination to it, update `f` (so policy
/// sees the backend) and record the translation in conntrack. `Err(reason)` = drop.
#[inline(always)]
pub fn translate(ctx: &TcContext, f: &mut Flow, now: u64) -> Result<(), u32> {
    // The parser found the L4 header (IPv6 extension headers walked) or stopped before here.
    if !matches!(f.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return Ok(());
    }
    let mut fe = FrontendBuf(NatFrontendKey::default());
    let w = (&mut fe as *mut FrontendBuf).cast::<u64>();
    // SAFETY: FrontendBuf is 8-aligned and 24 bytes: words 0 and 1 are the address, word 2
    // the port, protocol and family (little-endian) and 4 bytes of padding.
    unsafe {
        w.write(f.dst[0]);
        w.add(1).write(f.dst[1]);
        w.add(2)
            .write(u64::from(f.dst_port) | u64::from(f.protocol) << 16 | u64::from(f.family) << 24);
    }
    let Some(svc) = POLC_NAT_FE.get_ptr(&fe.0) else { return Ok(()) };
    // SAFETY: a live map value.
    let svc = unsafe { *svc };
    let (be_addr, be_port) = pick_backend(f, &svc, now).ok_or(drop_reason::NO_BACKEND)?;
    rewrite(ctx, f, End::Dst, be_addr, be_port).map_err(|_| drop_reason::TRUNCATED)?;
    let (vip, vport) = (f.dst, f.dst_port);
    f.dst = be_addr;
    f.dst_port = be_port;
    f.ct_dst_port = be_port;
    record(f, vip, vport, now);
    Ok(())
}

/// The backend for a new flow, as a [`Flow`] address and a port: the client's affinity entry
/// when the service has ClientIP affinity and it is fresh, else a hash of the flow (stable:
/// a re-translated flow whose entries were evicted lands on the same backend while the
/// backend set is unchanged).
#[inline(always)]
fn pick_backend(f: &Flow, svc: &NatService, now: u64) -> Option<([u64; 2], u16)> {
    let count = svc.backend_count;
    if count == 0 {
        return None;
    }
    let affinity = svc.flags & nat_flags::AFFINITY_CLIENT_IP != 0;
    let mut aff_key = NatAffinityKey { client: [0; 16], service_id: svc.service_id };
    let mut ordinal = u32::MAX;
    if affinity {
        // SAFETY: [u64; 2] and [u8; 16] have the same size; any bytes are valid.
        aff_key.client = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(f.src) };
        if let Some(a) = POLC_NAT_AFF.get_ptr_mut(&aff_key) {
            // SAFETY: a live map value.
            let a = unsafe { &mut *a };
            let timeout = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
            if a.ordinal < count && now.wrapping_sub(a.last_seen_ns) < timeout {
                ordinal = a.ordinal;
                a.last_seen_ns = now;
            }
        }
    }
    if ordinal == u32::MAX {
        ordinal = flow_hash(f) % count;
        if affinity {
            let a = NatAffinity { ordinal, _pad: 0, last_seen_ns: now };
            let _ = POLC_NAT_AFF.insert(&aff_key, &a, 0);
        }
    }
    let key = NatBackendKey { service_id: svc.service_id, ordinal };
    let b = POLC_NAT_BE.get_ptr(&key)?;
    // SAFETY: a live map value (8-aligned): the address is its first 16 bytes.
    let (addr, port) = unsafe { (flow_addr(f.family, b.cast::<u64>()), (*b).port) };
    Some((addr, port))
}

/// The 16-byte address at `w` as a [`Flow`] address of family `fam` (IPv4: the first 4
/// bytes, the rest zero whatever the map holds).
///
/// # Safety
/// `w` must point to 16 readable, 8-aligned bytes (a map value field at an 8-aligned
/// offset).
#[inline(always)]
unsafe fn flow_addr(fam: u8, w: *const u64) -> [u64; 2] {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if fam == family::IPV4 {
            [u64::from(w.cast::<u32>().read()), 0]
        } else {
            [w.read(), w.add(1).read()]
        }
    }
}

/// A mix of the client's address and port (the service end is the same for every flow of
/// a frontend). The result is the product's HIGH half: low bits of a product depend only on
/// low bits of its input, so `% 2` of the low half ignored the port and sent every flow of a
/// client to one backend.
#[inline(always)]
fn flow_hash(f: &Flow) -> u32 {
    let mut x = f.src[0] ^ f.src[1].rotate_left(17) ^ u64::from(f.src_port) << 32;
    x ^= x >> 31;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x >> 32) as u32
}

/// The two conntrack entries of a translated flow, not yet approved (the epilogue sets the
/// bits when the policy allows): the post-NAT tuple (client, backend) that replies and the
/// backend's hooks see, remembering the service for the reverse rewrite; and the pre-NAT
/// tuple (client, service) the client's later packets carry, remembering the backend.
#[inline(always)]
fn record(f: &Flow, vip: [u64; 2], vport: u16, now: u64) {
    let mut key = KeyBuf(CtKey::default());
    let src_is_lo = conntrack::fill_key(&mut key, f.family, f.protocol, &f.ends());
    let mut e = CtEntry {
        last_seen_ns: now,
        state: conntrack::initial_state(f.protocol, f.tcp_flags),
        orig_is_lo: src_is_lo as u8,
        approved: 0,
        _pad: 0,
        orig_rule: RULE_ID_NONE,
        resp_rule: RULE_ID_NONE,
        orig_ifindex: 0,
        // SAFETY: same size, any bytes valid.
        nat_addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(vip) },
        nat_port: vport,
        nat_flags: ct_nat::REV_NAT,
        _pad3: 0,
        resp_ifindex: 0,
    };
    let _ = POLC_CT.insert(&key.0, &e, 0);
    let pre = Ends {
        src: (f.src[0], f.src[1]),
        src_port: f.ct_src_port,
        dst: (vip[0], vip[1]),
        dst_port: vport,
    };
    e.orig_is_lo = conntrack::fill_key(&mut key, f.family, f.protocol, &pre) as u8;
    // SAFETY: same size, any bytes valid.
    e.nat_addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(f.dst) };
    e.nat_port = f.dst_port;
    e.nat_flags = ct_nat::DNAT;
    let _ = POLC_CT.insert(&key.0, &e, 0);
}

/// The fast path of a translated flow (an approved, usable entry with NAT bits): the
/// client's packets get the backend as destination, replies at the client's to-endpoint
/// hook get the service as source. Anything else passes unchanged.
#[inline(always)]
pub fn fast_path(ctx: &TcContext, f: &Flow, e: &CtEntry, to_ep: bool, forward: bool) -> bool {
    // SAFETY: the entry's address field sits at offset 24 of an 8-aligned map value.
    let addr = unsafe { flow_addr(f.family, core::ptr::addr_of!(e.nat_addr).cast::<u64>()) };
    if !to_ep && forward && e.nat_flags & ct_nat::DNAT != 0 {
        return rewrite(ctx, f, End::Dst, addr, e.nat_port).is_ok();
    }
    if to_ep && !forward && e.nat_flags & ct_nat::REV_NAT != 0 {
        return rewrite(ctx, f, End::Src, addr, e.nat_port).is_ok();
    }
    true
}

/// Rewrites one end (address and L4 port) of the TCP/UDP/SCTP packet `f` was parsed from,
/// fixing its checksums in place. `addr` is the new address as a [`Flow`] address, `port`
/// the new port in host order.
///
/// IPv4 has a header checksum (`bpf_l3_csum_replace`); IPv6 has none. TCP and UDP checksums
/// cover the addresses through the pseudo-header (`BPF_F_PSEUDO_HDR`, which also keeps a
/// `CHECKSUM_PARTIAL` skb's pseudo-header sum right); a UDP checksum of 0 (none, IPv4 only)
/// stays 0. SCTP's CRC32c covers only the SCTP packet: see [`sctp_ports`].
#[inline(always)]
fn rewrite(ctx: &TcContext, f: &Flow, end: End, addr: [u64; 2], port: u16) -> Result<(), i64> {
    let l4 = f.l4_off as usize;
    let v6 = f.family == family::IPV6;
    let (old_addr, old_port, port_off) = match end {
        End::Src => (f.src, f.src_port, l4),
        End::Dst => (f.dst, f.dst_port, l4 + 2),
    };
    let addr_off = match (v6, end) {
        (false, End::Src) => IP_SRC,
        (false, End::Dst) => IP_DST,
        (true, End::Src) => IP6_SRC,
        (true, End::Dst) => IP6_DST,
    };
    if f.protocol == IPPROTO_SCTP {
        return sctp_ports(ctx, f, port_off, old_port, port, |csum_flags| {
            store_addr(ctx, v6, addr_off, old_addr, addr, csum_flags)
        });
    }
    let (csum_off, mangled) = if f.protocol == IPPROTO_TCP {
        (l4 + 16, 0)
    } else {
        (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    if v6 {
        let (mut from, mut to) = (old_addr, addr);
        // SAFETY: two 16-byte buffers on the stack, sizes multiples of 4 as required.
        let diff = unsafe {
            aya_ebpf::helpers::bpf_csum_diff(
                from.as_mut_ptr().cast(),
                16,
                to.as_mut_ptr().cast(),
                16,
                0,
            )
        };
        if diff < 0 {
            return Err(diff);
        }
        // Size 0: `to` is a checksum difference.
        ctx.l4_csum_replace(csum_off, 0, diff as u64, pseudo | mangled)?;
    } else {
        let (from, to) = (u64::from(old_addr[0] as u32), u64::from(addr[0] as u32));
        ctx.l4_csum_replace(csum_off, from, to, pseudo | mangled | 4)?;
    }
    let (old_port, port) = (old_port.to_be(), port.to_be());
    ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port), mangled | 2)?;
    store_addr(ctx, v6, addr_off, old_addr, addr, 0)?;
    ctx.store(port_off, &port, 0)?;
    Ok(())
}

/// Writes the new address at `addr_off`: IPv4 with its header checksum fixed, IPv6 as 16
/// bytes. `flags` go to the store (`BPF_F_RECOMPUTE_CSUM` when no checksum field
/// compensates the change in a `CHECKSUM_COMPLETE` skb's sum).
#[inline(always)]
fn store_addr(
    ctx: &TcContext,
    v6: bool,
    addr_off: usize,
    old: [u64; 2],
    new: [u64; 2],
    flags: u64,
) -> Result<(), i64> {
    if v6 {
        ctx.store(addr_off, &new, flags)
    } else {
        let (from, to) = (old[0] as u32, new[0] as u32);
        ctx.l3_csum_replace(IP_CSUM, u64::from(from), u64::from(to), 4)?;
        // The header checksum compensates the address: the packet's sum is unchanged.
        ctx.store(addr_off, &to, 0)
    }
}

/// The SCTP rewrite: the address (through `store_addr`; no SCTP checksum covers it) and
/// the port, whose change goes into the CRC32c by linearity (`polc_abi::crc32c`): two
/// table reads and two carry-less multiplications instead of a pass over the packet.
///
/// A `CHECKSUM_PARTIAL` skb (SCTP over a veth with CRC offload: the CRC is computed later,
/// over the bytes as they are then) gets a meaningless update of a field the kernel
/// overwrites; any other skb carries a real CRC, which stays valid. Stores recompute a
/// `CHECKSUM_COMPLETE` skb's sum (nothing compensates them).
#[inline(always)]
fn sctp_ports(
    ctx: &TcContext,
    f: &Flow,
    port_off: usize,
    old_port: u16,
    port: u16,
    store_addr: impl FnOnce(u64) -> Result<(), i64>,
) -> Result<(), i64> {
    let l4 = f.l4_off as usize;
    let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
    // The SCTP packet's length from the IP header (the skb may carry link-layer padding).
    let ip_end = if f.family == family::IPV6 {
        ETH_HLEN + 40 + usize::from(u16::from_be(ctx.load::<u16>(IP6_PAYLOAD_LEN)?))
    } else {
        ETH_HLEN + usize::from(u16::from_be(ctx.load::<u16>(IP_TOTAL_LEN)?))
    };
    let len = ip_end.wrapping_sub(l4) as u32 & 0xffff;
    let (old_be, new_be) = (old_port.to_be(), port.to_be());
    // The first 4 bytes are the source and destination ports.
    let d = u32::from(old_be ^ new_be) << ((port_off - l4) * 8);
    let crc: u32 = ctx.load(l4 + SCTP_CSUM)?;
    let crc = crc ^ crc32c::head_change(len, d, &SCTP_X8N_LO, &SCTP_X8N_HI);
    store_addr(recompute)?;
    ctx.store(port_off, &new_be, recompute)?;
    ctx.store(l4 + SCTP_CSUM, &crc, recompute)?;
    Ok(())
}

/// Called by the epilogue after the client's egress policy approved the post-NAT entry `e`
/// of the flow in `st`: approves the pre-NAT (client, service) entry too, so the client's
/// next packets take the fast path with one lookup. `e` is a map value (8-aligned).
#[inline(always)]
pub fn approve_pre_nat(
    st_src: (u64, u64),
    src_port: u16,
    fam: u8,
    protocol: u8,
    e: &CtEntry,
    bit: u8,
    ifindex: u32,
) {
    // SAFETY: the nat address sits at offset 24 of an 8-aligned map value.
    let vip = unsafe {
        let w = core::ptr::addr_of!(e.nat_addr).cast::<u64>();
        (w.read(), w.add(1).read())
    };
    let pre = Ends { src: st_src, src_port, dst: vip, dst_port: e.nat_port };
    let mut key = KeyBuf(CtKey::default());
    conntrack::fill_key(&mut key, fam, protocol, &pre);
    if let Some(d) = POLC_CT.get_ptr_mut(&key.0) {
        // SAFETY: a live map value.
        let d = unsafe { &mut *d };
        if d.nat_flags & ct_nat::DNAT != 0 {
            d.approved |= bit;
            conntrack::set_approver(d, bit, ifindex);
        }
    }
}
