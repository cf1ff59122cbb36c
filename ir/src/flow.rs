//! The packet/flow model: the first packet of a connection, as policy sees it.

use std::fmt;
use std::net::IpAddr;

use crate::net::proto;

/// The fields policy can match on. Ports are 0 for protocols without ports; ICMP type/code are
/// `Some` only for ICMP/ICMPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
}

impl Flow {
    /// A TCP/UDP/SCTP-style flow.
    pub fn ports(src: IpAddr, dst: IpAddr, protocol: u8, src_port: u16, dst_port: u16) -> Flow {
        Flow { src, dst, protocol, src_port, dst_port, icmp_type: None, icmp_code: None }
    }
    /// An ICMP (v4 or v6, by the address family) flow.
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, icmp_code: u8) -> Flow {
        let protocol = if src.is_ipv6() { proto::ICMPV6 } else { proto::ICMP };
        Flow {
            src,
            dst,
            protocol,
            src_port: 0,
            dst_port: 0,
            icmp_type: Some(icmp_type),
            icmp_code: Some(icmp_code),
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", proto::name(self.protocol), self.src, self.dst)?;
        if proto::has_ports(self.protocol) {
            write!(f, " sport {} dport {}", self.src_port, self.dst_port)?;
        }
        if let Some(t) = self.icmp_type {
            write!(f, " type {t}")?;
        }
        if let Some(c) = self.icmp_code {
            write!(f, " code {c}")?;
        }
        Ok(())
    }
}
