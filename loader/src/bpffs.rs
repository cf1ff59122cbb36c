//! Raw `bpf(2)` for what outlives a process: pins on bpffs, objects by id, TCX links and
//! the tc hook query, plus the bpffs mount check and the pin-path lock.
//!
//! [`crate::sys`] covers maps and program loads; this module adds the commands the
//! dataplane needs to leave programs attached after `polc attach` exits and to find them
//! again from `polc status`/`detach` in another process.

use std::ffi::{c_void, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::sys::{BpfError, Fd};

/// `enum bpf_cmd` values used here.
mod cmd {
    pub const OBJ_PIN: i64 = 6;
    pub const OBJ_GET: i64 = 7;
    pub const PROG_GET_FD_BY_ID: i64 = 13;
    pub const OBJ_GET_INFO_BY_FD: i64 = 15;
    pub const PROG_QUERY: i64 = 16;
    pub const LINK_CREATE: i64 = 28;
    pub const LINK_DETACH: i64 = 34;
}

/// `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS` (`enum bpf_attach_type`).
pub const ATTACH_TCX_INGRESS: u32 = 46;
/// See [`ATTACH_TCX_INGRESS`].
pub const ATTACH_TCX_EGRESS: u32 = 47;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Runs one `bpf(2)` command.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout of `cmd` with valid pointers.
unsafe fn bpf<T>(cmd: i64, attr: &mut T) -> io::Result<i64> {
    let size = std::mem::size_of::<T>();
    // SAFETY: guaranteed by the caller.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut c_void, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: i64, op: &'static str) -> Result<Fd, BpfError> {
    let raw = RawFd::try_from(ret)
        .map_err(|_| BpfError::Invalid(format!("{op} returned an out-of-range fd {ret}")))?;
    // SAFETY: a fresh descriptor the kernel just returned.
    Ok(Fd::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

fn syscall_err(op: &'static str) -> impl FnOnce(io::Error) -> BpfError {
    move |source| BpfError::Syscall { op, source }
}

fn c_path(path: &Path) -> Result<CString, BpfError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| BpfError::Invalid(format!("path {} contains a NUL byte", path.display())))
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Pins `fd` (map, program or link) at `path` on bpffs (`BPF_OBJ_PIN`).
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), BpfError> {
    let p = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: p.as_ptr() as usize as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: pathname is a live NUL-terminated string.
    unsafe { bpf(cmd::OBJ_PIN, &mut attr) }
        .map(drop)
        .map_err(|source| BpfError::Invalid(format!("pinning {}: {source}", path.display())))
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`); `None` if nothing is pinned there.
pub fn get_pinned(path: &Path) -> Result<Option<Fd>, BpfError> {
    let p = c_path(path)?;
    let mut attr = ObjAttr { pathname: p.as_ptr() as usize as u64, ..Default::default() };
    // SAFETY: pathname is a live NUL-terminated string.
    match unsafe { bpf(cmd::OBJ_GET, &mut attr) } {
        Ok(ret) => owned(ret, "BPF_OBJ_GET").map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => {
            Err(BpfError::Invalid(format!("opening pinned {}: {source}", path.display())))
        }
    }
}

/// Removes the pin at `path`; returns whether there was one.
pub fn unpin(path: &Path) -> Result<bool, BpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BpfError::Invalid(format!("removing pin {}: {e}", path.display()))),
    }
}

#[repr(C)]
#[derive(Default)]
struct GetByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Opens the program with kernel id `id` (`BPF_PROG_GET_FD_BY_ID`); `None` if it is gone.
pub fn prog_by_id(id: u32) -> Result<Option<Fd>, BpfError> {
    let mut attr = GetByIdAttr { id, ..Default::default() };
    // SAFETY: no pointers.
    match unsafe { bpf(cmd::PROG_GET_FD_BY_ID, &mut attr) } {
        Ok(ret) => owned(ret, "BPF_PROG_GET_FD_BY_ID").map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(BpfError::Syscall { op: "BPF_PROG_GET_FD_BY_ID", source }),
    }
}

/// The leading fields of `struct bpf_prog_info` up to the name.
#[repr(C)]
#[derive(Default)]
struct ProgInfoRaw {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// What status reports about a loaded program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProgSummary {
    /// Kernel-wide program id.
    pub id: u32,
    /// The kernel's name for it (at most 15 bytes).
    pub name: String,
    /// Instructions after the verifier's rewrite (xlated length / 8).
    pub xlated_insns: u32,
    /// Bytes of JIT-compiled machine code (0 without the JIT).
    pub jited_bytes: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Id, name and sizes of a loaded program.
pub fn prog_summary(prog: BorrowedFd<'_>) -> Result<ProgSummary, BpfError> {
    let mut raw = ProgInfoRaw::default();
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoRaw>() as u32,
        info: &mut raw as *mut ProgInfoRaw as usize as u64,
    };
    // SAFETY: info points to a writable buffer of info_len bytes; the pointer fields in it
    // are zero, so the kernel copies no instructions or map ids.
    unsafe { bpf(cmd::OBJ_GET_INFO_BY_FD, &mut attr) }
        .map_err(syscall_err("BPF_OBJ_GET_INFO_BY_FD"))?;
    let end = raw.name.iter().position(|&b| b == 0).unwrap_or(raw.name.len());
    Ok(ProgSummary {
        id: raw.id,
        name: String::from_utf8_lossy(raw.name.get(..end).unwrap_or_default()).into_owned(),
        xlated_insns: raw.xlated_prog_len / 8,
        jited_bytes: raw.jited_prog_len,
    })
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
    _rest: [u64; 4],
}

/// Attaches `prog` as a TCX link on `ifindex` (`BPF_LINK_CREATE`, appended after the
/// programs already there). The link detaches when its last reference (fd or pin) goes,
/// or when the interface is destroyed.
pub fn tcx_attach(prog: BorrowedFd<'_>, ifindex: u32, attach_type: u32) -> Result<Fd, BpfError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        ..Default::default()
    };
    // SAFETY: no pointers.
    let ret =
        unsafe { bpf(cmd::LINK_CREATE, &mut attr) }.map_err(syscall_err("BPF_LINK_CREATE"))?;
    owned(ret, "BPF_LINK_CREATE")
}

/// Detaches a link from its hook (`BPF_LINK_DETACH`); the link object stays until closed.
pub fn link_detach(link: BorrowedFd<'_>) -> Result<(), BpfError> {
    let mut attr = [link.as_raw_fd() as u32, 0u32];
    // SAFETY: no pointers.
    match unsafe { bpf(cmd::LINK_DETACH, &mut attr) } {
        Ok(_) => Ok(()),
        // Already detached (e.g. the interface went away).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        Err(source) => Err(BpfError::Syscall { op: "BPF_LINK_DETACH", source }),
    }
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The ids of the programs attached through TCX at `attach_type` of `ifindex`, in order
/// (`BPF_PROG_QUERY`). Legacy clsact filters are not listed.
pub fn tcx_query(ifindex: u32, attach_type: u32) -> Result<Vec<u32>, BpfError> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: ids.as_mut_ptr() as usize as u64,
        count: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: prog_ids has room for `count` ids.
    unsafe { bpf(cmd::PROG_QUERY, &mut attr) }.map_err(syscall_err("BPF_PROG_QUERY"))?;
    ids.truncate((attr.count as usize).min(ids.len()));
    Ok(ids)
}

/// The ifindex of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, BpfError> {
    let c = CString::new(ifname)
        .map_err(|_| BpfError::Invalid(format!("interface name {ifname:?} contains NUL")))?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(BpfError::Invalid(format!("no interface named `{ifname}` in this network namespace")))
    } else {
        Ok(idx)
    }
}

/// Whether `dir` lives on a bpffs mount.
pub fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = c_path(dir) else { return false };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and output pointer.
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    ret == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_path` is a directory on bpffs: mounts bpffs at /sys/fs/bpf if the pin
/// path is under it and nothing is mounted there, then creates the directory.
pub fn ensure_pin_dir(pin_path: &Path) -> Result<(), BpfError> {
    let sys_bpf = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(sys_bpf) && !is_bpffs(sys_bpf) {
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: valid C strings; no mount data.
        let ret = unsafe {
            libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
        };
        if ret != 0 {
            return Err(BpfError::Invalid(format!(
                "mounting bpffs at /sys/fs/bpf: {}",
                io::Error::last_os_error()
            )));
        }
    }
    // Refuse before creating anything: the nearest existing ancestor must be on bpffs (a
    // refused attach leaves no directories behind).
    let existing = pin_path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        return Err(BpfError::Invalid(format!(
            "{} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_path.display()
        )));
    }
    std::fs::create_dir_all(pin_path)
        .map_err(|e| BpfError::Invalid(format!("creating {}: {e}", pin_path.display())))?;
    if !is_bpffs(pin_path) {
        return Err(BpfError::Invalid(format!(
            "{} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_path.display()
        )));
    }
    Ok(())
}

/// An exclusive or shared `flock` on the pin directory, released on drop. Serialises
/// concurrent `attach`/`detach` (exclusive) against each other and `status` (shared).
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Blocks until the lock on `pin_path` is held.
    pub fn acquire(pin_path: &Path, exclusive: bool) -> Result<PinLock, BpfError> {
        let dir = File::open(pin_path)
            .map_err(|e| BpfError::Invalid(format!("opening {}: {e}", pin_path.display())))?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        loop {
            // SAFETY: a valid open descriptor.
            if unsafe { libc::flock(dir.as_fd().as_raw_fd(), op) } == 0 {
                return Ok(PinLock { _dir: dir });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(BpfError::Invalid(format!("locking {}: {e}", pin_path.display())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        assert_eq!(offset_of!(ObjAttr, path_fd), 16);
        assert_eq!(offset_of!(ProgInfoRaw, xlated_prog_len), 20);
        assert_eq!(offset_of!(ProgInfoRaw, name), 64);
        assert_eq!(offset_of!(LinkCreateAttr, expected_revision), 24);
        assert_eq!(offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(offset_of!(QueryAttr, revision), 56);
        assert_eq!(size_of::<GetByIdAttr>(), 12);
    }

    #[test]
    fn unknown_interfaces_are_errors() {
        let e = ifindex("polc-no-such-if").unwrap_err().to_string();
        assert!(e.contains("no interface named `polc-no-such-if`"), "{e}");
        assert!(ifindex("a\0b").is_err());
    }

    #[test]
    fn a_regular_directory_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/")));
        assert!(!is_bpffs(Path::new("/no/such/dir")));
    }
}
