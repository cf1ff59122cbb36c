//! The two rtnetlink requests aya 0.14 lacks: list an interface's clsact filters and delete
//! its clsact qdisc. Legacy-mode detach uses them to remove a qdisc polc added, once no
//! filter (ours or anyone's) is left on it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;

/// `TC_H_CLSACT` (the clsact qdisc's parent) and its two filter parents.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;

const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;

/// A netlink request: header, tcmsg and attributes.
fn request(kind: u16, flags: u16, ifindex: u32, handle: u32, parent: u32, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + TCMSG + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.extend_from_slice(&[0u8; 4]); // family AF_UNSPEC, padding
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&handle.to_ne_bytes());
    m.extend_from_slice(&parent.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // info
    m.extend_from_slice(attrs);
    m
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned on success.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `msg` and reads replies until an ack/error or the end of a dump; returns the
/// number of messages of type `count_type` seen.
fn exchange(msg: &[u8], count_type: u16) -> io::Result<usize> {
    let sock = socket()?;
    // SAFETY: msg is a valid buffer of its length; the kernel is the default destination.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    let mut counted = 0usize;
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = 0usize;
        let end = n as usize;
        while at + NLMSG_HDR <= end {
            let word = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let len = word(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDR || at + len > end {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink message"));
            }
            match kind {
                NLMSG_DONE => return Ok(counted),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes([
                        buf[at + 16],
                        buf[at + 17],
                        buf[at + 18],
                        buf[at + 19],
                    ]);
                    return if errno == 0 {
                        Ok(counted)
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
                k if k == count_type => counted += 1,
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// Number of tc filter messages on the clsact ingress and egress of `ifindex` (0 when the
/// interface has no clsact qdisc).
pub fn clsact_filters(ifindex: u32) -> io::Result<usize> {
    let mut total = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        let msg = request(RTM_GETTFILTER, NLM_F_DUMP, ifindex, 0, parent, &[]);
        match exchange(&msg, RTM_NEWTFILTER) {
            Ok(n) => total += n,
            // No clsact qdisc at all.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Deletes the clsact qdisc of `ifindex`; `false` if it has none.
pub fn delete_clsact(ifindex: u32) -> io::Result<bool> {
    // TCA_KIND "clsact\0", padded to 4 bytes.
    let kind = b"clsact\0";
    let mut attr = Vec::new();
    attr.extend_from_slice(&((4 + kind.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&TCA_KIND.to_ne_bytes());
    attr.extend_from_slice(kind);
    attr.resize(attr.len().next_multiple_of(4), 0);
    let msg = request(RTM_DELQDISC, NLM_F_ACK, ifindex, CLSACT_HANDLE, TC_H_CLSACT, &attr);
    match exchange(&msg, 0) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}
