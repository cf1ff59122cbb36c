//! Packet parsing: Ethernet, IPv4/IPv6 (with extension headers) and the L4 fields policy
//! and conntrack need, into a [`Flow`] on the stack. Reads use direct packet access
//! (`data`/`data_end`, bounds-checked against the verifier's packet range) and fall back to
//! `bpf_skb_load_bytes` only for bytes outside the skb's linear head (rare: paged skbs).

use aya_ebpf::programs::TcContext;
use polc_abi::{drop_reason, family, IPV6_MAX_EXT_HEADERS};

use crate::conntrack::Ends;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// IPv6 extension headers the parser walks over.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// The flow fields of one packet, parsed on the stack. Copied into the per-CPU
/// `FlowState` only on a conntrack miss.
#[repr(C, align(8))]
pub struct Flow {
    /// Source address as two native-endian words of the network-order bytes (IPv4: the
    /// low 4 bytes of word 0, the rest zero).
    pub src: [u64; 2],
    /// Destination address, like `src`.
    pub dst: [u64; 2],
    /// L4 ports, host order (0 for protocols without ports).
    pub src_port: u16,
    pub dst_port: u16,
    /// The conntrack "ports": L4 ports or the ICMP echo identifier.
    pub ct_src_port: u16,
    pub ct_dst_port: u16,
    pub family: u8,
    pub protocol: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    /// Offset of the L4 header from the start of the packet.
    pub l4_off: u16,
    /// An ICMP error (destination unreachable, time exceeded, ...): its payload quotes
    /// the offending packet's IP header at `l4_off + 8`.
    pub icmp_error: bool,
}

impl Flow {
    /// The conntrack view of the flow.
    #[inline(always)]
    pub fn ends(&self) -> Ends {
        Ends {
            src: (self.src[0], self.src[1]),
            src_port: self.ct_src_port,
            dst: (self.dst[0], self.dst[1]),
            dst_port: self.ct_dst_port,
        }
    }
}

/// Why parsing stopped before the flow fields were complete.
pub enum Stop {
    /// Not for policy: ARP and IPv6 neighbour discovery pass untouched.
    Pass,
    /// Drop, counted under this [`drop_reason`].
    Drop(u32),
}

const TRUNC: Stop = Stop::Drop(drop_reason::TRUNCATED);

/// Reads a `T` at packet offset `off`: directly from the linear head when it is there,
/// else through `bpf_skb_load_bytes` (which fails beyond the packet's end). `T` is at
/// least 2 bytes: for one byte LLVM turns the bounds check into `data + off < data_end`,
/// from which the verifier derives no range.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Stop> {
    const { assert!(core::mem::size_of::<T>() >= 2) };
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie inside the packet's linear data (checked just above, which
        // is also what the verifier checks); packet headers need not be aligned.
        Ok(unsafe { ((start + off) as *const T).read_unaligned() })
    } else {
        ctx.load::<T>(off).map_err(|_| TRUNC)
    }
}

#[inline(always)]
fn be16(x: u16) -> u16 {
    u16::from_be(x)
}

/// Parses the packet in `ctx` from its Ethernet header into `f` (every field). Callers try
/// [`parse_common_ipv4`] first; this handles every packet, that one included.
#[inline(always)]
pub fn parse(ctx: &TcContext, f: &mut Flow) -> Result<(), Stop> {
    let eth_type: u16 = read(ctx, 12)?;
    f.icmp_type = 0;
    f.icmp_code = 0;
    f.tcp_flags = 0;
    f.icmp_error = false;
    match be16(eth_type) {
        ETH_P_IP => parse_ipv4(ctx, f)?,
        ETH_P_IPV6 => parse_ipv6(ctx, f)?,
        ETH_P_ARP => return Err(Stop::Pass),
        _ => return Err(Stop::Drop(drop_reason::ETHERTYPE)),
    }
    parse_l4(ctx, f)
}

/// Ethernet, an IPv4 header without options and the first 16 bytes of the L4 header (TCP
/// flags are byte 13): what [`parse_common_ipv4`] reads after its one bounds check.
const COMMON_LEN: usize = ETH_HLEN + 20 + 16;

/// The common packet in one bounds check instead of one per field: IPv4 without options,
/// not a fragment, TCP/UDP/SCTP, all of it in the linear head. Writes `f` and returns true
/// only for such a packet; anything else (including every malformed one) is left to the
/// general parser, which decides exactly as before.
#[inline(always)]
pub fn parse_common_ipv4(ctx: &TcContext, f: &mut Flow) -> bool {
    let start = ctx.data();
    if start + COMMON_LEN > ctx.data_end() {
        return false;
    }
    let p = start as *const u8;
    // SAFETY: every read below ends within COMMON_LEN bytes of `start`, which lie inside
    // the packet's linear data (checked above); headers need not be aligned.
    let at16 = |off: usize| unsafe { p.add(off).cast::<u16>().read_unaligned() };
    // SAFETY: as above.
    let at32 = |off: usize| unsafe { p.add(off).cast::<u32>().read_unaligned() };
    // Multi-byte fields are read in network order: compare against `to_be` constants.
    if at16(12) != ETH_P_IP.to_be() {
        return false;
    }
    // Byte 14: version 4, IHL 5 (the low byte of a little-endian u16 read).
    if at16(ETH_HLEN) & 0xff != 0x45 {
        return false;
    }
    let total = be16(at16(ETH_HLEN + 2)) as usize;
    if total < 20 || ETH_HLEN + total > ctx.len() as usize {
        return false;
    }
    if be16(at16(ETH_HLEN + 6)) & 0x1fff != 0 {
        return false;
    }
    let protocol = (at16(ETH_HLEN + 8) >> 8) as u8;
    if !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return false;
    }
    let l4 = ETH_HLEN + 20;
    let ports = at32(l4);
    let (sport, dport) = (be16(ports as u16), be16((ports >> 16) as u16));
    f.family = family::IPV4;
    f.protocol = protocol;
    f.src = [u64::from(at32(ETH_HLEN + 12)), 0];
    f.dst = [u64::from(at32(ETH_HLEN + 16)), 0];
    f.l4_off = l4 as u16;
    f.src_port = sport;
    f.dst_port = dport;
    f.ct_src_port = sport;
    f.ct_dst_port = dport;
    f.icmp_type = 0;
    f.icmp_code = 0;
    f.icmp_error = false;
    f.tcp_flags = if protocol == IPPROTO_TCP { (at16(l4 + 12) >> 8) as u8 } else { 0 };
    true
}

/// IPv4 header: version, IHL (options skipped), total length, fragment offset, addresses.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, f: &mut Flow) -> Result<(), Stop> {
    let vihl = read::<[u8; 2]>(ctx, ETH_HLEN)?[0];
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    let total = be16(read(ctx, ETH_HLEN + 2)?) as usize;
    if total < ihl {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    if ETH_HLEN + total > ctx.len() as usize {
        return Err(TRUNC);
    }
    // A non-first fragment carries no L4 header (see docs/runtime.md, "Fragments").
    if be16(read(ctx, ETH_HLEN + 6)?) & 0x1fff != 0 {
        return Err(Stop::Drop(drop_reason::FRAGMENT));
    }
    f.family = family::IPV4;
    f.protocol = read::<[u8; 2]>(ctx, ETH_HLEN + 8)?[1];
    let src: u32 = read(ctx, ETH_HLEN + 12)?;
    let dst: u32 = read(ctx, ETH_HLEN + 16)?;
    f.src = [u64::from(src), 0];
    f.dst = [u64::from(dst), 0];
    f.l4_off = (ETH_HLEN + ihl) as u16;
    Ok(())
}

/// IPv6 header plus a bounded walk over hop-by-hop, routing, fragment, AH and destination
/// options headers.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, f: &mut Flow) -> Result<(), Stop> {
    let ver = read::<[u8; 2]>(ctx, ETH_HLEN)?[0];
    if ver >> 4 != 6 {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    let payload = be16(read(ctx, ETH_HLEN + 4)?) as usize;
    if ETH_HLEN + 40 + payload > ctx.len() as usize {
        return Err(TRUNC);
    }
    f.family = family::IPV6;
    f.src = [read(ctx, ETH_HLEN + 8)?, read(ctx, ETH_HLEN + 16)?];
    f.dst = [read(ctx, ETH_HLEN + 24)?, read(ctx, ETH_HLEN + 32)?];
    let mut next = read::<[u8; 2]>(ctx, ETH_HLEN + 6)?[0];
    let mut off = ETH_HLEN + 40;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                // Extension headers are a rare, slow path: the helper keeps the verifier
                // away from variable packet offsets.
                let e: [u8; 2] = ctx.load(off).map_err(|_| TRUNC)?;
                let len = if next == NEXTHDR_AUTH {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                };
                next = e[0];
                off += len;
            }
            NEXTHDR_FRAGMENT => {
                let e: [u8; 4] = ctx.load(off).map_err(|_| TRUNC)?;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return Err(Stop::Drop(drop_reason::FRAGMENT));
                }
                next = e[0];
                off += 8;
            }
            _ => {
                f.protocol = next;
                f.l4_off = off as u16;
                return Ok(());
            }
        }
    }
    Err(Stop::Drop(drop_reason::IPV6_EXT_LIMIT))
}

/// ICMP types that carry the offending packet's header (errors).
#[inline(always)]
fn icmp_is_error(fam: u8, ty: u8) -> bool {
    if fam == family::IPV4 {
        // destination unreachable, source quench, redirect, time exceeded, parameter problem
        matches!(ty, 3 | 4 | 5 | 11 | 12)
    } else {
        // destination unreachable, packet too big, time exceeded, parameter problem
        matches!(ty, 1..=4)
    }
}

/// Ports, TCP flags, ICMP type/code/echo id, by protocol. Unknown protocols get ports 0.
#[inline(always)]
fn parse_l4(ctx: &TcContext, f: &mut Flow) -> Result<(), Stop> {
    // Bounded for the verifier (variable packet offsets must stay far below 64 KiB); an L4
    // header further in (only after huge IPv6 extension headers) is read by the helper.
    let off = f.l4_off as usize & 0x3fff;
    if off != f.l4_off as usize {
        return Err(Stop::Drop(drop_reason::IPV6_EXT_LIMIT));
    }
    let (mut sport, mut dport) = (0u16, 0u16);
    match f.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            // The ports are the first 4 bytes of all three; TCP flags at byte 13.
            let ports: u32 = read(ctx, off)?;
            sport = be16(ports as u16);
            dport = be16((ports >> 16) as u16);
            if f.protocol == IPPROTO_TCP {
                f.tcp_flags = read::<[u8; 2]>(ctx, off + 12)?[1];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6
            if (f.protocol == IPPROTO_ICMP) == (f.family == family::IPV4) =>
        {
            let tc: [u8; 2] = read(ctx, off)?;
            let id = be16(read(ctx, off + 4)?);
            f.icmp_type = tc[0];
            f.icmp_code = tc[1];
            f.src_port = 0;
            f.dst_port = 0;
            let echo = if f.family == family::IPV4 {
                matches!(tc[0], 0 | 8)
            } else {
                matches!(tc[0], 128 | 129)
            };
            if echo {
                f.ct_src_port = id;
                f.ct_dst_port = id;
                return Ok(());
            }
            // Neighbour discovery (router/neighbour solicitation/advertisement, redirect)
            // is link plumbing every pod needs: it bypasses policy.
            if f.family == family::IPV6 && matches!(tc[0], 133..=137) {
                return Err(Stop::Pass);
            }
            f.ct_src_port = 0;
            f.ct_dst_port = 0;
            f.icmp_error = icmp_is_error(f.family, tc[0]);
            return Ok(());
        }
        _ => {}
    }
    f.src_port = sport;
    f.dst_port = dport;
    f.ct_src_port = sport;
    f.ct_dst_port = dport;
    Ok(())
}

/// The ends of the packet an ICMP error quotes, seen in the direction of the error (the
/// quoted packet's destination is our source), and its protocol. `None` if the quoted
/// header is cut short or not of the outer family. A slow path: helper reads only.
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, f: &Flow) -> Option<(u8, Ends)> {
    let off = f.l4_off as usize + 8;
    let protocol;
    let (src, dst, l4_off);
    if f.family == family::IPV4 {
        let h: [u8; 20] = ctx.load(off).ok()?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        protocol = h[9];
        let a = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
        src = (a(16), 0);
        dst = (a(12), 0);
        l4_off = off + ihl;
    } else {
        let h: [u8; 8] = ctx.load(off).ok()?;
        if h[0] >> 4 != 6 {
            return None;
        }
        protocol = h[6];
        let w = |o: usize| ctx.load::<u64>(off + o).ok();
        src = (w(24)?, w(32)?);
        dst = (w(8)?, w(16)?);
        l4_off = off + 40;
    }
    let (src_port, dst_port) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let t: [u8; 4] = ctx.load(l4_off).ok()?;
            (u16::from_be_bytes([t[2], t[3]]), u16::from_be_bytes([t[0], t[1]]))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let t: [u8; 8] = ctx.load(l4_off).ok()?;
            let id = u16::from_be_bytes([t[4], t[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some((protocol, Ends { src, src_port, dst, dst_port }))
}
