//! Packet parsing: Ethernet, IPv4/IPv6 (with extension headers) and the L4 fields policy
//! and conntrack need, read with `bpf_skb_load_bytes` (bounds-checked by the kernel) and
//! written straight into the per-CPU [`FlowState`] (the 512-byte stack has no room for
//! copies).

use aya_ebpf::programs::TcContext;
use polc_abi::{drop_reason, family, FlowState, IPV6_MAX_EXT_HEADERS};

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

/// What parsing leaves outside the [`FlowState`].
pub struct L4 {
    /// Offset of the L4 header from the start of the packet.
    pub off: usize,
    /// The packet is an ICMP error (destination unreachable, time exceeded, ...): its
    /// payload quotes the offending packet's IP header at `off + 8`.
    pub icmp_error: bool,
}

/// Why parsing stopped before the flow fields were complete.
pub enum Stop {
    /// Not for policy: ARP and IPv6 neighbour discovery pass untouched.
    Pass,
    /// Drop, counted under this [`drop_reason`].
    Drop(u32),
}

/// Reads 16 address bytes at `off` into `dst` (an 8-aligned field), as two words.
#[inline(always)]
fn load_addr(ctx: &TcContext, off: usize, dst: &mut [u8; 16]) -> Option<()> {
    let w: [u64; 2] = ctx.load(off).ok()?;
    let d = dst.as_mut_ptr().cast::<u64>();
    // SAFETY: the caller's field is 16 bytes and 8-aligned (FlowState in a map value).
    unsafe {
        d.write(w[0]);
        d.add(1).write(w[1]);
    }
    Some(())
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    u16::from_be_bytes([b0, b1])
}

/// Parses the packet in `ctx` from its Ethernet header into the flow fields of `p`
/// (family, protocol, ICMP type/code, ports, addresses, TCP flags, conntrack ports). The
/// caller sets the rest.
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut FlowState) -> Result<L4, Stop> {
    let eth_type: [u8; 2] = ctx.load(12).map_err(|_| Stop::Drop(drop_reason::TRUNCATED))?;
    p.icmp_type = 0;
    p.icmp_code = 0;
    p.tcp_flags = 0;
    p.src_port = 0;
    p.dst_port = 0;
    p.ct_src_port = 0;
    p.ct_dst_port = 0;
    // SAFETY: the four address words of the (8-aligned) record. Volatile: LLVM would
    // merge plain stores into a memset call.
    unsafe {
        let w = p.src_addr.as_mut_ptr().cast::<u64>();
        w.write_volatile(0);
        w.add(1).write_volatile(0);
        let w = p.dst_addr.as_mut_ptr().cast::<u64>();
        w.write_volatile(0);
        w.add(1).write_volatile(0);
    }
    let off = match be16(eth_type[0], eth_type[1]) {
        ETH_P_IP => parse_ipv4(ctx, p)?,
        ETH_P_IPV6 => parse_ipv6(ctx, p)?,
        ETH_P_ARP => return Err(Stop::Pass),
        _ => return Err(Stop::Drop(drop_reason::ETHERTYPE)),
    };
    let icmp_error = parse_l4(ctx, p, off)?;
    Ok(L4 { off, icmp_error })
}

/// IPv4 header: version, IHL (options skipped), total length, fragment offset, addresses.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, p: &mut FlowState) -> Result<usize, Stop> {
    let h: [u8; 20] = ctx.load(ETH_HLEN).map_err(|_| Stop::Drop(drop_reason::TRUNCATED))?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    let total = be16(h[2], h[3]) as usize;
    if total < ihl {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    if ETH_HLEN + total > ctx.len() as usize {
        return Err(Stop::Drop(drop_reason::TRUNCATED));
    }
    // A non-first fragment carries no L4 header (see docs/runtime.md, "Fragments").
    if be16(h[6], h[7]) & 0x1fff != 0 {
        return Err(Stop::Drop(drop_reason::FRAGMENT));
    }
    p.family = family::IPV4;
    p.protocol = h[9];
    // SAFETY: 4-aligned u32 slots of the record.
    unsafe {
        p.src_addr
            .as_mut_ptr()
            .cast::<u32>()
            .write(u32::from_ne_bytes([h[12], h[13], h[14], h[15]]));
        p.dst_addr
            .as_mut_ptr()
            .cast::<u32>()
            .write(u32::from_ne_bytes([h[16], h[17], h[18], h[19]]));
    }
    Ok(ETH_HLEN + ihl)
}

/// IPv6 header plus a bounded walk over hop-by-hop, routing, fragment, AH and destination
/// options headers.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, p: &mut FlowState) -> Result<usize, Stop> {
    let h: [u8; 8] = ctx.load(ETH_HLEN).map_err(|_| Stop::Drop(drop_reason::TRUNCATED))?;
    if h[0] >> 4 != 6 {
        return Err(Stop::Drop(drop_reason::MALFORMED));
    }
    let payload = be16(h[4], h[5]) as usize;
    if ETH_HLEN + 40 + payload > ctx.len() as usize {
        return Err(Stop::Drop(drop_reason::TRUNCATED));
    }
    p.family = family::IPV6;
    // Straight into the record: the stack is small (512 bytes for everything inlined).
    load_addr(ctx, ETH_HLEN + 8, &mut p.src_addr).ok_or(Stop::Drop(drop_reason::TRUNCATED))?;
    load_addr(ctx, ETH_HLEN + 24, &mut p.dst_addr).ok_or(Stop::Drop(drop_reason::TRUNCATED))?;
    let mut next = h[6];
    let mut off = ETH_HLEN + 40;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let e: [u8; 2] = ctx.load(off).map_err(|_| Stop::Drop(drop_reason::TRUNCATED))?;
                let len = if next == NEXTHDR_AUTH {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                };
                next = e[0];
                off += len;
            }
            NEXTHDR_FRAGMENT => {
                let e: [u8; 4] = ctx.load(off).map_err(|_| Stop::Drop(drop_reason::TRUNCATED))?;
                if be16(e[2], e[3]) & 0xfff8 != 0 {
                    return Err(Stop::Drop(drop_reason::FRAGMENT));
                }
                next = e[0];
                off += 8;
            }
            _ => {
                p.protocol = next;
                return Ok(off);
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
/// Returns whether the packet is an ICMP error.
#[inline(always)]
fn parse_l4(ctx: &TcContext, p: &mut FlowState, off: usize) -> Result<bool, Stop> {
    let truncated = |_| Stop::Drop(drop_reason::TRUNCATED);
    match p.protocol {
        IPPROTO_TCP => {
            let t: [u8; 14] = ctx.load(off).map_err(truncated)?;
            p.src_port = be16(t[0], t[1]);
            p.dst_port = be16(t[2], t[3]);
            p.tcp_flags = t[13];
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let t: [u8; 4] = ctx.load(off).map_err(truncated)?;
            p.src_port = be16(t[0], t[1]);
            p.dst_port = be16(t[2], t[3]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6
            if (p.protocol == IPPROTO_ICMP) == (p.family == family::IPV4) =>
        {
            let t: [u8; 8] = ctx.load(off).map_err(truncated)?;
            p.icmp_type = t[0];
            p.icmp_code = t[1];
            let echo = if p.family == family::IPV4 {
                matches!(t[0], 0 | 8)
            } else {
                matches!(t[0], 128 | 129)
            };
            if echo {
                let id = be16(t[4], t[5]);
                p.ct_src_port = id;
                p.ct_dst_port = id;
                return Ok(false);
            }
            // Neighbour discovery (router/neighbour solicitation/advertisement, redirect)
            // is link plumbing every pod needs: it bypasses policy.
            if p.family == family::IPV6 && matches!(t[0], 133..=137) {
                return Err(Stop::Pass);
            }
            return Ok(icmp_is_error(p.family, t[0]));
        }
        _ => {}
    }
    p.ct_src_port = p.src_port;
    p.ct_dst_port = p.dst_port;
    Ok(false)
}

/// The ends of the packet an ICMP error quotes, seen in the direction of the error (the
/// quoted packet's destination is our source), and its protocol. `None` if the quoted
/// header is cut short or not of the outer family.
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, fam: u8, l4: &L4) -> Option<(u8, Ends)> {
    let off = l4.off + 8;
    let protocol;
    let (src, dst, l4_off);
    if fam == family::IPV4 {
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
            (be16(t[2], t[3]), be16(t[0], t[1]))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let t: [u8; 8] = ctx.load(l4_off).ok()?;
            let id = be16(t[4], t[5]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some((protocol, Ends { src, src_port, dst, dst_port }))
}
