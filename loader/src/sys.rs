//! A thin, safe layer over the raw `bpf(2)` syscall: maps, program load, test run, info.
//!
//! aya loads the fixed runtime object; generated policy programs are raw instruction bytes
//! from polc's own assembler, so they go through this module instead. Every file
//! descriptor the kernel hands out is wrapped in [`Fd`] and closed on drop. Errors are
//! values that name the failed command and carry the errno; a rejected program carries the
//! verifier log.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd` values used here (uapi/linux/bpf.h).
mod cmd {
    pub const MAP_CREATE: i64 = 0;
    pub const MAP_LOOKUP_ELEM: i64 = 1;
    pub const MAP_UPDATE_ELEM: i64 = 2;
    pub const MAP_DELETE_ELEM: i64 = 3;
    pub const PROG_LOAD: i64 = 5;
    pub const PROG_TEST_RUN: i64 = 10;
    pub const OBJ_GET_INFO_BY_FD: i64 = 15;
}

/// `BPF_PROG_TYPE_SCHED_CLS`: the tc classifier type. A tail call only works between
/// programs of the same type, so generated programs use the runtime's type.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;

/// `BPF_F_NO_PREALLOC`, required by LPM tries.
const F_NO_PREALLOC: u32 = 1;

/// Map update flags (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateFlags {
    /// Create or replace.
    Any = 0,
    /// Create only; fails with EEXIST if the key exists.
    NoExist = 1,
    /// Replace only; fails with ENOENT if the key is missing.
    Exist = 2,
}

/// The map types polc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`
    Array,
    /// `BPF_MAP_TYPE_PROG_ARRAY` (key and value are u32; values are program fds).
    ProgArray,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`
    PerCpuArray,
    /// `BPF_MAP_TYPE_LPM_TRIE` (key = u32 prefix length + address bytes).
    LpmTrie,
}

impl MapKind {
    /// The `BPF_MAP_TYPE_*` number.
    pub fn type_id(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::ProgArray => 3,
            MapKind::PerCpuArray => 6,
            MapKind::LpmTrie => 11,
        }
    }
}

/// Errors from this module. Each message is one line, except that a verifier rejection
/// appends the verifier log.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A `bpf(2)` command failed.
    #[error("bpf({op}) failed: {source}")]
    Syscall {
        /// The command, e.g. `BPF_MAP_CREATE`.
        op: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// `BPF_PROG_LOAD` failed; `log` is the verifier log of the retry with log_level 1.
    #[error("bpf(BPF_PROG_LOAD) of `{name}` failed: {source}{}", log_suffix(.log))]
    ProgLoad {
        /// The program name given to the kernel.
        name: String,
        /// The errno of the failed load.
        source: io::Error,
        /// The verifier log (may be empty if the kernel refused before verifying).
        log: String,
    },
    /// The caller passed something the kernel would reject (or we cannot represent).
    #[error("invalid bpf request: {0}")]
    Invalid(String),
}

/// The verifier log as it follows the one-line error message (nothing if empty).
fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log:\n{log}")
    }
}

impl BpfError {
    /// The errno behind the error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BpfError::Syscall { source, .. } | BpfError::ProgLoad { source, .. } => {
                source.raw_os_error()
            }
            BpfError::Invalid(_) => None,
        }
    }
}

/// An owned bpf object file descriptor (map, program); closed on drop.
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// The raw descriptor number, e.g. for an LD_IMM64 map reference or a prog-array value.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Gives up the wrapper and returns the owned descriptor.
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

/// Runs one `bpf(2)` command on `attr` and returns the syscall's non-negative result.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout of `cmd`, and every pointer in it must be valid for
/// the reads/writes the kernel does for that command.
unsafe fn bpf<T>(cmd: i64, attr: &mut T) -> io::Result<i64> {
    let size = std::mem::size_of::<T>();
    // SAFETY: guaranteed by the caller; `size` is the size of `attr`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut c_void, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a descriptor the kernel just returned.
fn owned_fd(ret: i64, op: &'static str) -> Result<Fd, BpfError> {
    let raw = RawFd::try_from(ret)
        .map_err(|_| BpfError::Invalid(format!("{op} returned an out-of-range fd {ret}")))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(Fd(unsafe { OwnedFd::from_raw_fd(raw) }))
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Copies an object name into the kernel's 16-byte field, checking the kernel's rules
/// (at most 15 bytes of ASCII letters, digits, '_' and '.').
fn object_name(name: &str) -> Result<[u8; 16], BpfError> {
    let ok = name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !ok {
        return Err(BpfError::Invalid(format!(
            "object name `{name}`: at most 15 characters from [A-Za-z0-9_.]"
        )));
    }
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// `bpf_attr` for `BPF_MAP_CREATE` (the prefix we use).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

/// What to create with [`map_create`].
#[derive(Clone, Copy, Debug)]
pub struct MapSpec<'a> {
    /// The map type.
    pub kind: MapKind,
    /// Kernel-visible name (at most 15 bytes of [A-Za-z0-9_.]; no '.' if it will be pinned).
    pub name: &'a str,
    /// Key size in bytes (4 for arrays; 4 + address bytes for LPM tries).
    pub key_size: u32,
    /// Value size in bytes (4 for prog arrays).
    pub value_size: u32,
    /// Number of entries.
    pub max_entries: u32,
}

/// Creates a map (`BPF_MAP_CREATE`). LPM tries get `BPF_F_NO_PREALLOC`, which they require.
pub fn map_create(spec: &MapSpec<'_>) -> Result<Fd, BpfError> {
    let mut attr = MapCreateAttr {
        map_type: spec.kind.type_id(),
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
        map_flags: if spec.kind == MapKind::LpmTrie { F_NO_PREALLOC } else { 0 },
        map_name: object_name(spec.name)?,
        ..Default::default()
    };
    // SAFETY: MAP_CREATE layout, no pointers.
    let ret = unsafe { bpf(cmd::MAP_CREATE, &mut attr) }
        .map_err(|source| BpfError::Syscall { op: "BPF_MAP_CREATE", source })?;
    owned_fd(ret, "BPF_MAP_CREATE")
}

/// `bpf_attr` for the `BPF_MAP_*_ELEM` commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are non-negative.
    fd.as_raw_fd() as u32
}

/// Inserts or replaces `key` -> `value` (`BPF_MAP_UPDATE_ELEM`). Sizes must match the
/// map's key and value sizes (for per-CPU maps: one rounded-up value per possible CPU,
/// see [`percpu_value_len`]); the kernel reads exactly that many bytes.
pub fn map_update(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: UpdateFlags,
) -> Result<(), BpfError> {
    check_sizes(map, key.len(), value.len())?;
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        key: ptr(key.as_ptr()),
        value: ptr(value.as_ptr()),
        flags: flags as u64,
        ..Default::default()
    };
    // SAFETY: key/value point to buffers of the map's key/value size (checked above).
    unsafe { bpf(cmd::MAP_UPDATE_ELEM, &mut attr) }
        .map(drop)
        .map_err(|source| BpfError::Syscall { op: "BPF_MAP_UPDATE_ELEM", source })
}

/// Looks `key` up (`BPF_MAP_LOOKUP_ELEM`). Returns `None` if the key is absent. For per-CPU
/// maps the value holds every possible CPU's copy (see [`map_lookup_percpu`]).
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
    let info = map_info(map)?;
    let len = match info.map_type {
        5 | 6 | 10 => percpu_value_len(info.value_size)?, // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
        _ => info.value_size as usize,
    };
    if key.len() != info.key_size as usize {
        return Err(size_mismatch("key", key.len(), info.key_size as usize));
    }
    let mut value = vec![0u8; len];
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        key: ptr(key.as_ptr()),
        value: ptr(value.as_mut_ptr()),
        ..Default::default()
    };
    // SAFETY: key has the map's key size; value has room for the full (per-CPU) value.
    match unsafe { bpf(cmd::MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(BpfError::Syscall { op: "BPF_MAP_LOOKUP_ELEM", source }),
    }
}

/// Looks `key` up in a per-CPU map and returns one value per possible CPU (index = CPU).
pub fn map_lookup_percpu(
    map: BorrowedFd<'_>,
    key: &[u8],
) -> Result<Option<Vec<Vec<u8>>>, BpfError> {
    let info = map_info(map)?;
    let Some(all) = map_lookup(map, key)? else { return Ok(None) };
    let stride = round8(info.value_size as usize);
    Ok(Some(
        all.chunks(stride.max(1))
            .map(|c| c.get(..info.value_size as usize).unwrap_or(c).to_vec())
            .collect(),
    ))
}

/// Deletes `key` (`BPF_MAP_DELETE_ELEM`). Returns whether it was present. Arrays cannot
/// delete (EINVAL) except prog arrays, where deleting clears the slot.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> Result<bool, BpfError> {
    let info = map_info(map)?;
    if key.len() != info.key_size as usize {
        return Err(size_mismatch("key", key.len(), info.key_size as usize));
    }
    let mut attr =
        MapElemAttr { map_fd: fd_u32(map), key: ptr(key.as_ptr()), ..Default::default() };
    // SAFETY: key has the map's key size.
    match unsafe { bpf(cmd::MAP_DELETE_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(source) => Err(BpfError::Syscall { op: "BPF_MAP_DELETE_ELEM", source }),
    }
}

fn size_mismatch(what: &str, got: usize, want: usize) -> BpfError {
    BpfError::Invalid(format!("{what} is {got} bytes, the map expects {want}"))
}

fn check_sizes(map: BorrowedFd<'_>, key: usize, value: usize) -> Result<(), BpfError> {
    let info = map_info(map)?;
    if key != info.key_size as usize {
        return Err(size_mismatch("key", key, info.key_size as usize));
    }
    let want = match info.map_type {
        5 | 6 | 10 => percpu_value_len(info.value_size)?,
        _ => info.value_size as usize,
    };
    if value != want {
        return Err(size_mismatch("value", value, want));
    }
    Ok(())
}

fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The number of possible CPUs (the kernel's `num_possible_cpus()`), from
/// /sys/devices/system/cpu/possible (e.g. "0-1" or "0,2-5").
pub fn possible_cpus() -> Result<usize, BpfError> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path)
        .map_err(|e| BpfError::Invalid(format!("cannot read {path}: {e}")))?;
    parse_cpu_list(text.trim())
        .ok_or_else(|| BpfError::Invalid(format!("cannot parse {path}: `{}`", text.trim())))
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        n += hi.checked_sub(lo)? + 1;
    }
    Some(n)
}

/// Size of a per-CPU map value buffer in userspace: the value rounded up to 8 bytes, once
/// per possible CPU.
pub fn percpu_value_len(value_size: u32) -> Result<usize, BpfError> {
    Ok(round8(value_size as usize) * possible_cpus()?)
}

/// `bpf_attr` for `BPF_PROG_LOAD` (the prefix we use).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// First verifier-log buffer size on a failed load; it grows 4x on ENOSPC up to the max.
const LOG_START: usize = 64 * 1024;
const LOG_MAX: usize = 16 * 1024 * 1024;

/// Loads raw eBPF instructions (little-endian 8-byte words, as polc's assembler encodes
/// them) as a `SCHED_CLS` program with license "GPL" (`BPF_PROG_LOAD`).
///
/// The first attempt runs without a log (cheap); if it fails, the load is retried with
/// `log_level 1` and a growing buffer and the error carries the verifier log.
pub fn prog_load(name: &str, insns: &[u8]) -> Result<Fd, BpfError> {
    if insns.is_empty() || !insns.len().is_multiple_of(8) {
        return Err(BpfError::Invalid(format!(
            "program `{name}`: {} bytes of instructions is not a non-empty multiple of 8",
            insns.len()
        )));
    }
    let insn_cnt = u32::try_from(insns.len() / 8)
        .map_err(|_| BpfError::Invalid(format!("program `{name}`: too many instructions")))?;
    let prog_name = object_name(name)?;
    // The kernel reads instructions as u64 words; copy into an aligned buffer.
    let words: Vec<u64> = insns
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect();
    let license = b"GPL\0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: PROG_TYPE_SCHED_CLS,
            insn_cnt,
            insns: ptr(words.as_ptr()),
            license: ptr(license.as_ptr()),
            prog_name,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            attr.log_buf = ptr(buf.as_mut_ptr());
        }
        // SAFETY: insns/license/log_buf point to live buffers of the sizes given.
        unsafe { bpf(cmd::PROG_LOAD, &mut attr) }
    };
    let first = match attempt(None) {
        Ok(ret) => return owned_fd(ret, "BPF_PROG_LOAD"),
        Err(e) => e,
    };
    let mut size = LOG_START;
    loop {
        let mut log = vec![0u8; size];
        match attempt(Some(&mut log)) {
            // Loads with a log can succeed where the silent one failed only if the failure
            // was transient (e.g. EAGAIN); take the program.
            Ok(ret) => return owned_fd(ret, "BPF_PROG_LOAD"),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < LOG_MAX => size *= 4,
            Err(e) => {
                let source = if e.raw_os_error() == Some(libc::ENOSPC) { first } else { e };
                return Err(BpfError::ProgLoad {
                    name: name.to_string(),
                    source,
                    log: log_text(&log),
                });
            }
        }
    }
}

/// The NUL-terminated log text, trimmed.
fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim_end().to_string()
}

/// `bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Input of [`prog_test_run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TestRun<'a> {
    /// The packet (for SCHED_CLS: starting with the Ethernet header, at least 14 bytes).
    pub data: &'a [u8],
    /// Optional context (`struct __sk_buff` for SCHED_CLS).
    pub ctx: Option<&'a [u8]>,
    /// Number of runs (0 and 1 both mean one); `duration_ns` is the mean per run.
    pub repeat: u32,
}

/// Result of [`prog_test_run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (for tc: a `TC_ACT_*` code).
    pub retval: u32,
    /// Mean run time in nanoseconds, as measured by the kernel.
    pub duration_ns: u32,
    /// The packet after the program ran.
    pub data_out: Vec<u8>,
}

/// Headroom for programs that grow the packet during a test run.
const TEST_RUN_DATA_SLACK: usize = 512;

/// Runs a loaded program on a packet in the kernel (`BPF_PROG_TEST_RUN`) on the calling CPU.
pub fn prog_test_run(prog: BorrowedFd<'_>, run: &TestRun<'_>) -> Result<TestRunOutput, BpfError> {
    let too_big = |what| BpfError::Invalid(format!("test run {what} too large"));
    let mut out = vec![0u8; run.data.len() + TEST_RUN_DATA_SLACK];
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: u32::try_from(run.data.len()).map_err(|_| too_big("data"))?,
        data_size_out: u32::try_from(out.len()).map_err(|_| too_big("data"))?,
        data_in: ptr(run.data.as_ptr()),
        data_out: ptr(out.as_mut_ptr()),
        repeat: run.repeat,
        ..Default::default()
    };
    if let Some(ctx) = run.ctx {
        attr.ctx_size_in = u32::try_from(ctx.len()).map_err(|_| too_big("ctx"))?;
        attr.ctx_in = ptr(ctx.as_ptr());
    }
    // SAFETY: data_in/ctx_in are readable for their sizes; data_out is writable for its size;
    // ctx_out is null with size 0 (the kernel skips it).
    unsafe { bpf(cmd::PROG_TEST_RUN, &mut attr) }
        .map_err(|source| BpfError::Syscall { op: "BPF_PROG_TEST_RUN", source })?;
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(TestRunOutput { retval: attr.retval, duration_ns: attr.duration, data_out: out })
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The leading fields of `struct bpf_prog_info`.
#[repr(C)]
#[derive(Default)]
struct ProgInfoRaw {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
}

/// The leading fields of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct MapInfoRaw {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

/// What the kernel reports about a loaded program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    /// `BPF_PROG_TYPE_*`.
    pub prog_type: u32,
    /// The kernel-wide program id (what `bpftool prog show id N` uses).
    pub id: u32,
    /// The kernel's hash of the program's instructions.
    pub tag: [u8; 8],
}

/// What the kernel reports about a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// The kernel-wide map id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Number of entries.
    pub max_entries: u32,
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<(), BpfError> {
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: std::mem::size_of::<T>() as u32,
        info: ptr(info as *mut T),
    };
    // SAFETY: info points to a writable buffer of info_len bytes.
    unsafe { bpf(cmd::OBJ_GET_INFO_BY_FD, &mut attr) }
        .map(drop)
        .map_err(|source| BpfError::Syscall { op: "BPF_OBJ_GET_INFO_BY_FD", source })
}

/// Program type, id and tag of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn prog_info(prog: BorrowedFd<'_>) -> Result<ProgInfo, BpfError> {
    let mut raw = ProgInfoRaw::default();
    obj_info(prog, &mut raw)?;
    Ok(ProgInfo { prog_type: raw.prog_type, id: raw.id, tag: raw.tag })
}

/// Type, id and sizes of a map (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn map_info(map: BorrowedFd<'_>) -> Result<MapInfo, BpfError> {
    let mut raw = MapInfoRaw::default();
    obj_info(map, &mut raw)?;
    Ok(MapInfo {
        map_type: raw.map_type,
        id: raw.id,
        key_size: raw.key_size,
        value_size: raw.value_size,
        max_entries: raw.max_entries,
    })
}

/// Puts `prog` into slot `slot` of a prog array (`BPF_MAP_UPDATE_ELEM`, value = prog fd).
pub fn prog_array_set(
    prog_array: BorrowedFd<'_>,
    slot: u32,
    prog: BorrowedFd<'_>,
) -> Result<(), BpfError> {
    map_update(
        prog_array,
        &slot.to_ne_bytes(),
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
        UpdateFlags::Any,
    )
}

/// Empties slot `slot` of a prog array; a tail call to it then fails. Returns whether the
/// slot held a program.
pub fn prog_array_clear(prog_array: BorrowedFd<'_>, slot: u32) -> Result<bool, BpfError> {
    map_delete(prog_array, &slot.to_ne_bytes())
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` in the map's iteration order, or the first
/// key if `key` is `None`; `None` at the end. Used to list hash maps (e.g. conntrack).
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>) -> Result<Option<Vec<u8>>, BpfError> {
    const MAP_GET_NEXT_KEY: i64 = 4;
    let info = map_info(map)?;
    if let Some(k) = key {
        if k.len() != info.key_size as usize {
            return Err(size_mismatch("key", k.len(), info.key_size as usize));
        }
    }
    let mut next = vec![0u8; info.key_size as usize];
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        key: key.map_or(0, |k| ptr(k.as_ptr())),
        // For this command the union's third field is `next_key`.
        value: ptr(next.as_mut_ptr()),
        ..Default::default()
    };
    // SAFETY: key is null or has the map's key size; next has room for one key.
    match unsafe { bpf(MAP_GET_NEXT_KEY, &mut attr) } {
        Ok(_) => Ok(Some(next)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(BpfError::Syscall { op: "BPF_MAP_GET_NEXT_KEY", source }),
    }
}

/// `bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct MapBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Number of entries in a (non-per-CPU) hash map. `BPF_MAP_LOOKUP_BATCH` reads them 4096
/// at a time (one syscall per batch instead of one per key); maps without batch support
/// are walked with `BPF_MAP_GET_NEXT_KEY`.
pub fn map_count(map: BorrowedFd<'_>) -> Result<u64, BpfError> {
    const MAP_LOOKUP_BATCH: i64 = 24;
    const BATCH: u32 = 4096;
    let info = map_info(map)?;
    let mut keys = vec![0u8; info.key_size as usize * BATCH as usize];
    let mut values = vec![0u8; info.value_size as usize * BATCH as usize];
    // The batch cursor is opaque (a bucket index for hash maps): room for a key is plenty.
    let mut cursor_in = vec![0u8; (info.key_size as usize).max(8)];
    let mut cursor_out = cursor_in.clone();
    let mut total = 0u64;
    let mut first = true;
    loop {
        let mut attr = MapBatchAttr {
            in_batch: if first { 0 } else { ptr(cursor_in.as_ptr()) },
            out_batch: ptr(cursor_out.as_mut_ptr()),
            keys: ptr(keys.as_mut_ptr()),
            values: ptr(values.as_mut_ptr()),
            count: BATCH,
            map_fd: fd_u32(map),
            ..Default::default()
        };
        // SAFETY: the buffers hold `count` keys and values and a cursor each.
        match unsafe { bpf(MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => total += u64::from(attr.count),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(total + u64::from(attr.count))
            }
            Err(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                break;
            }
            Err(source) => return Err(BpfError::Syscall { op: "BPF_MAP_LOOKUP_BATCH", source }),
        }
        first = false;
        std::mem::swap(&mut cursor_in, &mut cursor_out);
    }
    let mut n = 0u64;
    let mut prev: Option<Vec<u8>> = None;
    while let Some(k) = map_next_key(map, prev.as_deref())? {
        n += 1;
        prev = Some(k);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(size_of::<InfoAttr>(), 16);
        assert_eq!(offset_of!(MapInfoRaw, name), 24);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0,2-5"), Some(5));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(object_name("polc_state").is_ok());
        assert!(object_name("a.b").is_ok());
        let long = object_name("sixteen_chars_xx").unwrap_err().to_string();
        assert!(long.contains("at most 15"), "{long}");
        assert!(object_name("bad-name").is_err());
    }

    #[test]
    fn bad_instruction_lengths_are_rejected_before_the_syscall() {
        let e = prog_load("x", &[0u8; 12]).unwrap_err();
        assert!(matches!(e, BpfError::Invalid(_)), "{e}");
        let e = prog_load("x", &[]).unwrap_err();
        assert!(e.to_string().contains("non-empty multiple of 8"), "{e}");
    }

    #[test]
    fn log_text_stops_at_nul() {
        assert_eq!(log_text(b"0: R0 !read_ok\n\0garbage"), "0: R0 !read_ok");
        assert_eq!(log_text(b"no nul"), "no nul");
    }
}
