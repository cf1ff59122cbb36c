//! Address and port primitives: IP prefixes (either family), prefix set difference, port ranges.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// IP protocol numbers the IR and the evaluator care about (IANA assignments).
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// Protocols that carry 16-bit source/destination ports in their first 4 header bytes.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | SCTP | UDPLITE)
    }

    /// The name polc prints for a protocol number (lowercase), or the number.
    pub fn name(p: u8) -> String {
        match p {
            ICMP => "icmp".into(),
            TCP => "tcp".into(),
            UDP => "udp".into(),
            ICMPV6 => "icmpv6".into(),
            SCTP => "sctp".into(),
            UDPLITE => "udplite".into(),
            n => n.to_string(),
        }
    }
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipv{}", self.number())
    }
}

/// A CIDR prefix. Always normalised: host bits are zero, `len <= family bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

fn to_bits(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_bits(family: Family, bits: u128) -> IpAddr {
    match family {
        // Truncation is intended: a v4 value only ever holds 32 significant bits here.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The mask of the top `len` bits of a `width`-bit address, as a u128.
fn mask(width: u8, len: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let all: u128 = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    let host_bits = u32::from(width - len);
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits).wrapping_sub(1))
    }
}

impl Prefix {
    /// A prefix; host bits are cleared. `None` if `len` exceeds the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let fam = Family::of(&addr);
        if len > fam.bits() {
            return None;
        }
        let bits = to_bits(&addr) & mask(fam.bits(), len);
        Some(Prefix { addr: from_bits(fam, bits), len })
    }
    /// The /32 or /128 of one address.
    pub fn host(addr: IpAddr) -> Prefix {
        let len = Family::of(&addr).bits();
        Prefix { addr, len }
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length in bits (a prefix is never "empty", hence no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
    pub fn contains(&self, addr: &IpAddr) -> bool {
        let fam = self.family();
        if Family::of(addr) != fam {
            return false;
        }
        let m = mask(fam.bits(), self.len);
        to_bits(addr) & m == to_bits(&self.addr)
    }
    /// True if every address of `other` is in `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(&other.addr)
    }
    /// The two halves of this prefix, or `None` for a host prefix.
    fn split(&self) -> Option<(Prefix, Prefix)> {
        let fam = self.family();
        if self.len >= fam.bits() {
            return None;
        }
        let len = self.len + 1;
        let low = to_bits(&self.addr);
        let high = low | (1u128 << (fam.bits() - len));
        Some((
            Prefix { addr: from_bits(fam, low), len },
            Prefix { addr: from_bits(fam, high), len },
        ))
    }

    /// `self` minus every prefix in `holes`, as a sorted list of disjoint prefixes
    /// (Kubernetes ipBlock `cidr` minus `except`).
    pub fn subtract(&self, holes: &[Prefix]) -> Vec<Prefix> {
        let mut out = Vec::new();
        subtract_into(*self, holes, &mut out);
        out.sort();
        out
    }
}

fn subtract_into(p: Prefix, holes: &[Prefix], out: &mut Vec<Prefix>) {
    if holes.iter().any(|h| h.covers(&p)) {
        return;
    }
    let overlapping: Vec<Prefix> = holes.iter().copied().filter(|h| p.covers(h)).collect();
    if overlapping.is_empty() {
        out.push(p);
        return;
    }
    // Some hole is strictly inside p: split p and recurse (depth <= address width).
    if let Some((lo, hi)) = p.split() {
        subtract_into(lo, &overlapping, out);
        subtract_into(hi, &overlapping, out);
    }
}

impl Ord for Prefix {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family(), to_bits(&self.addr), self.len).cmp(&(
            other.family(),
            to_bits(&other.addr),
            other.len,
        ))
    }
}

impl PartialOrd for Prefix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Error from parsing a CIDR or address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixParseError(pub String);

impl fmt::Display for PrefixParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CIDR {:?}", self.0)
    }
}

impl std::error::Error for PrefixParseError {}

impl FromStr for Prefix {
    type Err = PrefixParseError;
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a host prefix). Host bits are cleared,
    /// as Calico does for `nets` (it masks CIDRs) and Kubernetes accepts for ipBlock.
    fn from_str(s: &str) -> Result<Prefix, PrefixParseError> {
        let err = || PrefixParseError(s.to_string());
        match s.split_once('/') {
            None => s.trim().parse::<IpAddr>().map(Prefix::host).map_err(|_| err()),
            Some((a, l)) => {
                let addr: IpAddr = a.trim().parse().map_err(|_| err())?;
                let len: u8 = l.trim().parse().map_err(|_| err())?;
                Prefix::new(addr, len).ok_or_else(err)
            }
        }
    }
}

/// An inclusive port range `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn single(p: u16) -> PortRange {
        PortRange { lo: p, hi: p }
    }
    /// `None` if `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Option<PortRange> {
        (lo <= hi).then_some(PortRange { lo, hi })
    }
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Sort, then merge overlapping or adjacent ranges.
pub fn normalise_ranges(mut v: Vec<PortRange>) -> Vec<PortRange> {
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(r.hi);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parse_normalises_host_bits() {
        assert_eq!(p("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(p("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
    }

    #[test]
    fn contains_respects_family() {
        let v4 = p("10.0.0.0/8");
        assert!(v4.contains(&"10.255.0.1".parse().unwrap()));
        assert!(!v4.contains(&"11.0.0.1".parse().unwrap()));
        assert!(!p("0.0.0.0/0").contains(&"::1".parse().unwrap()));
        assert!(p("::/0").contains(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn subtract_splits_around_holes() {
        let got = p("10.0.0.0/24").subtract(&[p("10.0.0.0/26"), p("10.0.0.128/25")]);
        assert_eq!(got, vec![p("10.0.0.64/26")]);
        let got = p("10.0.0.0/30").subtract(&[p("10.0.0.1/32")]);
        assert_eq!(got, vec![p("10.0.0.0/32"), p("10.0.0.2/31")]);
        assert!(p("10.0.0.0/24").subtract(&[p("10.0.0.0/16")]).is_empty());
        assert_eq!(p("10.0.0.0/24").subtract(&[p("192.168.0.0/16")]), vec![p("10.0.0.0/24")]);
    }

    #[test]
    fn ranges_merge() {
        let r = normalise_ranges(vec![
            PortRange::single(80),
            PortRange::new(81, 90).unwrap(),
            PortRange::single(443),
            PortRange::single(85),
        ]);
        assert_eq!(r, vec![PortRange::new(80, 90).unwrap(), PortRange::single(443)]);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn v4(bits: u32, len: u8) -> Prefix {
            Prefix::new(IpAddr::V4(Ipv4Addr::from(bits)), len).unwrap()
        }

        proptest! {
            /// An address is in `base.subtract(holes)` iff it is in base and in no hole, and
            /// the pieces are disjoint.
            #[test]
            fn subtract_is_set_difference(
                base in (any::<u32>(), 16u8..=32),
                holes in proptest::collection::vec((any::<u32>(), 16u8..=32), 0..4),
                probes in proptest::collection::vec(any::<u16>(), 1..32),
            ) {
                let base = v4(base.0 & 0xffff_0000, base.1);
                // Put the holes near the base so they overlap it often.
                let holes: Vec<Prefix> = holes
                    .iter()
                    .map(|&(b, l)| v4((base_bits(&base) & 0xffff_0000) | (b & 0xffff), l))
                    .collect();
                let pieces = base.subtract(&holes);
                for w in pieces.windows(2) {
                    prop_assert!(!w[0].covers(&w[1]) && !w[1].covers(&w[0]));
                }
                for p in probes {
                    let addr = IpAddr::V4(Ipv4Addr::from((base_bits(&base) & 0xffff_0000) | u32::from(p)));
                    let want = base.contains(&addr) && !holes.iter().any(|h| h.contains(&addr));
                    let got = pieces.iter().filter(|x| x.contains(&addr)).count();
                    prop_assert_eq!(got, usize::from(want));
                }
            }
        }

        fn base_bits(p: &Prefix) -> u32 {
            match p.addr() {
                IpAddr::V4(a) => u32::from(a),
                IpAddr::V6(_) => 0,
            }
        }
    }
}
