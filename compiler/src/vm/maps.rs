//! The vm engine's model of BPF maps: kernel update/lookup/delete semantics over value storage
//! that a running program can point into.
//!
//! Every map keeps its values in one preallocated, zeroed slab (`max_entries` slots, like a
//! preallocated kernel map), so a pointer handed to a program by `bpf_map_lookup_elem` stays
//! valid for the whole run and the program's writes through it land in the map itself.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The map types the vm engine models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    Hash,
    Array,
    PerCpuArray,
    LpmTrie,
    ProgArray,
}

/// A map's shape, as it would be given to `BPF_MAP_CREATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: replace only.
pub const BPF_EXIST: u64 = 2;

/// Largest slab (all slots of one map) the engine agrees to allocate.
const MAX_SLAB_BYTES: u64 = 256 << 20;
/// Most CPUs a per-CPU map can model.
const MAX_CPUS: u32 = 1024;
/// Bytes after each slab that are allocated but never handed out: rbpf checks only the first
/// byte of an access against registered memory, so an 8-byte access that starts in the slab
/// must still stay inside our allocation.
pub(crate) const SLAB_PADDING: usize = 8;

/// A failed map operation; [`MapError::errno`] gives what the kernel helper would return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    UnknownMap(u32),
    DuplicateHandle(u32),
    InvalidDef {
        name: String,
        reason: String,
    },
    KeySize {
        map: String,
        expected: u32,
        got: usize,
    },
    ValueSize {
        map: String,
        expected: u32,
        got: usize,
    },
    /// A new key in a map that already holds `max_entries` keys.
    Full {
        map: String,
        max_entries: u32,
    },
    /// An array or prog-array index at or beyond `max_entries`.
    IndexOutOfRange {
        map: String,
        index: u32,
        max_entries: u32,
    },
    /// `BPF_NOEXIST` on a key that exists (always the case for arrays).
    Exists {
        map: String,
    },
    /// `BPF_EXIST` update or delete of a key that does not exist.
    NotFound {
        map: String,
    },
    BadFlags {
        map: String,
        flags: u64,
    },
    /// Deleting from an array: array elements always exist.
    DeleteFromArray {
        map: String,
    },
    /// An LPM key whose prefix length exceeds its data bits.
    BadPrefixLen {
        map: String,
        prefixlen: u32,
        max: u32,
    },
    /// A per-CPU update with the wrong number of values.
    CpuCount {
        map: String,
        expected: u32,
        got: usize,
    },
}

impl MapError {
    /// The (positive) errno the kernel reports for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            MapError::UnknownMap(_) => libc::EBADF,
            MapError::Full { .. } | MapError::IndexOutOfRange { .. } => libc::E2BIG,
            MapError::Exists { .. } | MapError::DuplicateHandle(_) => libc::EEXIST,
            MapError::NotFound { .. } => libc::ENOENT,
            MapError::InvalidDef { .. }
            | MapError::KeySize { .. }
            | MapError::ValueSize { .. }
            | MapError::BadFlags { .. }
            | MapError::DeleteFromArray { .. }
            | MapError::BadPrefixLen { .. }
            | MapError::CpuCount { .. } => libc::EINVAL,
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::UnknownMap(h) => write!(f, "no map with handle {h}"),
            MapError::DuplicateHandle(h) => write!(f, "a map with handle {h} already exists"),
            MapError::InvalidDef { name, reason } => write!(f, "map {name}: {reason}"),
            MapError::KeySize { map, expected, got } => {
                write!(f, "map {map}: key is {got} bytes, expected {expected}")
            }
            MapError::ValueSize { map, expected, got } => {
                write!(f, "map {map}: value is {got} bytes, expected {expected}")
            }
            MapError::Full { map, max_entries } => {
                write!(f, "map {map} is full ({max_entries} entries)")
            }
            MapError::IndexOutOfRange { map, index, max_entries } => {
                write!(f, "map {map}: index {index} out of range (max_entries {max_entries})")
            }
            MapError::Exists { map } => write!(f, "map {map}: key already exists"),
            MapError::NotFound { map } => write!(f, "map {map}: no such key"),
            MapError::BadFlags { map, flags } => write!(f, "map {map}: invalid flags {flags:#x}"),
            MapError::DeleteFromArray { map } => {
                write!(f, "map {map}: array elements cannot be deleted")
            }
            MapError::BadPrefixLen { map, prefixlen, max } => {
                write!(f, "map {map}: prefix length {prefixlen} exceeds {max}")
            }
            MapError::CpuCount { map, expected, got } => {
                write!(f, "map {map}: {got} per-CPU values given, expected {expected}")
            }
        }
    }
}

impl std::error::Error for MapError {}

/// Builds an LPM-trie key: `prefixlen` (host-endian u32) followed by the data bytes.
pub fn lpm_key(prefixlen: u32, data: &[u8]) -> Vec<u8> {
    let mut key = prefixlen.to_ne_bytes().to_vec();
    key.extend_from_slice(data);
    key
}

/// Which slots of a keyed map are in use.
#[derive(Debug, Clone, Default)]
struct KeyIndex {
    slots: BTreeMap<Vec<u8>, usize>,
    free: Vec<usize>,
    next_unused: usize,
    /// LPM only: how many entries have each prefix length, so a lookup probes only the
    /// prefix lengths present, longest first.
    prefix_lens: BTreeMap<u32, usize>,
}

impl KeyIndex {
    fn insert(&mut self, key: Vec<u8>, slot: usize, lpm: bool) {
        if lpm {
            *self.prefix_lens.entry(lpm_prefixlen(&key)).or_default() += 1;
        }
        self.slots.insert(key, slot);
    }

    fn remove(&mut self, key: &[u8], lpm: bool) -> Option<usize> {
        let slot = self.slots.remove(key)?;
        if lpm {
            let len = lpm_prefixlen(key);
            if let Some(count) = self.prefix_lens.get_mut(&len) {
                *count -= 1;
                if *count == 0 {
                    self.prefix_lens.remove(&len);
                }
            }
        }
        self.free.push(slot);
        Some(slot)
    }
}

fn lpm_prefixlen(key: &[u8]) -> u32 {
    key.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes)
}

/// One map: its definition and its value slab.
pub(crate) struct MapStore {
    pub(crate) def: MapDef,
    /// Values per slot: the CPU count for per-CPU maps, else 1.
    copies: usize,
    /// `max_entries * copies * value_size` bytes of values, then [`SLAB_PADDING`].
    slab: Vec<u8>,
    /// `None` for arrays (slot = index, always present).
    /// Shared between clones until one of them changes its keys (values are never shared).
    index: Option<Arc<KeyIndex>>,
}

impl MapStore {
    fn value_size(&self) -> usize {
        self.def.value_size as usize
    }

    fn stride(&self) -> usize {
        self.value_size() * self.copies
    }

    /// Byte offset of CPU `cpu`'s value in `slot`.
    pub(crate) fn value_offset(&self, slot: usize, cpu: usize) -> usize {
        slot * self.stride() + cpu * self.value_size()
    }

    /// The slab's value bytes (padding excluded).
    pub(crate) fn data_len(&self) -> usize {
        self.slab.len().saturating_sub(SLAB_PADDING)
    }

    pub(crate) fn slab_ptr(&self) -> *const u8 {
        self.slab.as_ptr()
    }

    pub(crate) fn slab_mut_ptr(&mut self) -> *mut u8 {
        self.slab.as_mut_ptr()
    }

    pub(crate) fn slab_bytes(&self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        if end > self.data_len() {
            return None;
        }
        self.slab.get(start..end)
    }

    pub(crate) fn slab_bytes_mut(&mut self, start: usize, len: usize) -> Option<&mut [u8]> {
        let end = start.checked_add(len)?;
        if end > self.data_len() {
            return None;
        }
        self.slab.get_mut(start..end)
    }

    fn value(&self, slot: usize, cpu: usize) -> Vec<u8> {
        self.slab_bytes(self.value_offset(slot, cpu), self.value_size())
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn set_value(&mut self, slot: usize, cpu: usize, value: &[u8]) {
        let offset = self.value_offset(slot, cpu);
        if let Some(dst) = self.slab_bytes_mut(offset, value.len()) {
            dst.copy_from_slice(value);
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), MapError> {
        if key.len() != self.def.key_size as usize {
            return Err(MapError::KeySize {
                map: self.def.name.clone(),
                expected: self.def.key_size,
                got: key.len(),
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), MapError> {
        if value.len() != self.value_size() {
            return Err(MapError::ValueSize {
                map: self.def.name.clone(),
                expected: self.def.value_size,
                got: value.len(),
            });
        }
        Ok(())
    }

    fn array_index(&self, key: &[u8]) -> Result<u32, MapError> {
        self.check_key(key)?;
        let bytes: [u8; 4] = key.try_into().map_err(|_| MapError::KeySize {
            map: self.def.name.clone(),
            expected: 4,
            got: key.len(),
        })?;
        Ok(u32::from_ne_bytes(bytes))
    }

    /// Splits an LPM key into prefix length and data, and checks the prefix length.
    fn lpm_parts<'k>(&self, key: &'k [u8]) -> Result<(u32, &'k [u8]), MapError> {
        self.check_key(key)?;
        let (len_bytes, data) = key.split_at(4.min(key.len()));
        let prefixlen = u32::from_ne_bytes(len_bytes.try_into().unwrap_or([0; 4]));
        let max = (data.len() * 8) as u32;
        if prefixlen > max {
            return Err(MapError::BadPrefixLen { map: self.def.name.clone(), prefixlen, max });
        }
        Ok((prefixlen, data))
    }

    /// The stored form of an LPM key: data bits beyond the prefix cleared, so that two keys
    /// naming the same prefix are the same entry (as in the kernel's trie).
    fn lpm_canonical(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        let (prefixlen, data) = self.lpm_parts(key)?;
        let mut out = lpm_key(prefixlen, data);
        for (i, byte) in out.iter_mut().skip(4).enumerate() {
            let bit = (i * 8) as u32;
            if bit >= prefixlen {
                *byte = 0;
            } else if prefixlen - bit < 8 {
                *byte &= 0xffu8 << (8 - (prefixlen - bit));
            }
        }
        Ok(out)
    }

    /// The slot a program or userspace lookup of `key` finds, if any (LPM: longest prefix).
    pub(crate) fn find_slot(&self, key: &[u8]) -> Result<Option<usize>, MapError> {
        match self.def.kind {
            MapKind::Array | MapKind::PerCpuArray => {
                let index = self.array_index(key)?;
                Ok((index < self.def.max_entries).then_some(index as usize))
            }
            MapKind::Hash | MapKind::ProgArray => {
                self.check_key(key)?;
                Ok(self.index.as_ref().and_then(|ix| ix.slots.get(key).copied()))
            }
            MapKind::LpmTrie => {
                let (prefixlen, data) = self.lpm_parts(key)?;
                let Some(index) = &self.index else { return Ok(None) };
                // Longest first: the first stored prefix equal to the key cut to that length.
                for &len in index.prefix_lens.range(..=prefixlen).rev().map(|(len, _)| len) {
                    let probe = self.lpm_canonical(&lpm_key(len, data))?;
                    if let Some(&slot) = index.slots.get(&probe) {
                        return Ok(Some(slot));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Creates or replaces the entry for `key` and returns its slot; values are written by the
    /// caller. Implements the kernel's flag, capacity and index rules.
    fn upsert_slot(&mut self, key: &[u8], flags: u64) -> Result<usize, MapError> {
        let name = || self.def.name.clone();
        if flags > BPF_EXIST {
            return Err(MapError::BadFlags { map: name(), flags });
        }
        match self.def.kind {
            MapKind::Array | MapKind::PerCpuArray => {
                let index = self.array_index(key)?;
                if index >= self.def.max_entries {
                    return Err(MapError::IndexOutOfRange {
                        map: name(),
                        index,
                        max_entries: self.def.max_entries,
                    });
                }
                if flags == BPF_NOEXIST {
                    return Err(MapError::Exists { map: name() });
                }
                Ok(index as usize)
            }
            MapKind::Hash | MapKind::LpmTrie | MapKind::ProgArray => {
                let stored_key = match self.def.kind {
                    MapKind::LpmTrie => self.lpm_canonical(key)?,
                    MapKind::ProgArray => {
                        let index = self.array_index(key)?;
                        if index >= self.def.max_entries {
                            return Err(MapError::IndexOutOfRange {
                                map: name(),
                                index,
                                max_entries: self.def.max_entries,
                            });
                        }
                        key.to_vec()
                    }
                    _ => {
                        self.check_key(key)?;
                        key.to_vec()
                    }
                };
                let max_entries = self.def.max_entries;
                let full_error = MapError::Full { map: name(), max_entries };
                let exists_error = MapError::Exists { map: name() };
                let missing_error = MapError::NotFound { map: name() };
                let index = Arc::make_mut(self.index.get_or_insert_with(Default::default));
                if let Some(&slot) = index.slots.get(&stored_key) {
                    if flags == BPF_NOEXIST {
                        return Err(exists_error);
                    }
                    return Ok(slot);
                }
                if flags == BPF_EXIST {
                    return Err(missing_error);
                }
                let slot = if let Some(slot) = index.free.pop() {
                    slot
                } else if index.next_unused < max_entries as usize {
                    index.next_unused += 1;
                    index.next_unused - 1
                } else {
                    return Err(full_error);
                };
                index.insert(stored_key, slot, self.def.kind == MapKind::LpmTrie);
                Ok(slot)
            }
        }
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        let stored_key = match self.def.kind {
            MapKind::Array | MapKind::PerCpuArray => {
                return Err(MapError::DeleteFromArray { map: self.def.name.clone() });
            }
            MapKind::LpmTrie => self.lpm_canonical(key)?,
            MapKind::Hash | MapKind::ProgArray => {
                self.check_key(key)?;
                key.to_vec()
            }
        };
        let missing = MapError::NotFound { map: self.def.name.clone() };
        let index = self.index.as_mut().map(Arc::make_mut).ok_or(missing.clone())?;
        index.remove(&stored_key, self.def.kind == MapKind::LpmTrie).ok_or(missing)?;
        Ok(())
    }

    /// Updates the value a program on CPU 0 sees (the kernel updates the running CPU's copy).
    pub(crate) fn update_from_program(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u64,
    ) -> Result<(), MapError> {
        self.check_value(value)?;
        let slot = self.upsert_slot(key, flags)?;
        self.set_value(slot, 0, value);
        Ok(())
    }

    pub(crate) fn delete_from_program(&mut self, key: &[u8]) -> Result<(), MapError> {
        self.delete(key)
    }
}

impl fmt::Debug for MapStore {
    /// The definition and entry count: the slab can be megabytes of zeroes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries =
            self.index.as_ref().map_or(self.def.max_entries as usize, |ix| ix.slots.len());
        f.debug_struct("MapStore").field("def", &self.def).field("entries", &entries).finish()
    }
}

/// Slabs up to this size are cloned with one memcpy; bigger keyed ones slot by slot.
const CLONE_BY_COPY_BYTES: usize = 1 << 20;

impl Clone for MapStore {
    /// Copies only the slots in use of a big keyed map, so cloning a large, sparsely filled
    /// hash map does not touch its whole (lazily zeroed) slab.
    fn clone(&self) -> Self {
        let slab = match &self.index {
            Some(index) if self.slab.len() > CLONE_BY_COPY_BYTES => {
                let mut slab = vec![0u8; self.slab.len()];
                let stride = self.stride();
                for &slot in index.slots.values() {
                    let start = slot * stride;
                    if let (Some(dst), Some(src)) =
                        (slab.get_mut(start..start + stride), self.slab_bytes(start, stride))
                    {
                        dst.copy_from_slice(src);
                    }
                }
                slab
            }
            _ => self.slab.clone(),
        };
        MapStore { def: self.def.clone(), copies: self.copies, slab, index: self.index.clone() }
    }
}

/// The contents of every map a program can use, keyed by handle (the imm of the program's
/// `LD_IMM64 src=BPF_PSEUDO_MAP_FD` instruction).
#[derive(Debug, Clone)]
pub struct Maps {
    maps: BTreeMap<u32, MapStore>,
    ncpus: u32,
}

impl Default for Maps {
    fn default() -> Self {
        Maps::new()
    }
}

impl Maps {
    /// No maps, one CPU.
    pub fn new() -> Self {
        Maps { maps: BTreeMap::new(), ncpus: 1 }
    }

    /// No maps, `ncpus` CPUs for per-CPU maps (programs always run on CPU 0).
    pub fn with_cpus(ncpus: u32) -> Result<Self, MapError> {
        if ncpus == 0 || ncpus > MAX_CPUS {
            return Err(MapError::InvalidDef {
                name: "<cpus>".into(),
                reason: format!("CPU count {ncpus} not in 1..={MAX_CPUS}"),
            });
        }
        Ok(Maps { maps: BTreeMap::new(), ncpus })
    }

    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    /// Defines a map under `handle`. Arrays start with every value zeroed.
    pub fn add(&mut self, handle: u32, def: MapDef) -> Result<(), MapError> {
        if self.maps.contains_key(&handle) {
            return Err(MapError::DuplicateHandle(handle));
        }
        validate_def(&def)?;
        let copies = if def.kind == MapKind::PerCpuArray { self.ncpus as usize } else { 1 };
        let bytes = u64::from(def.max_entries) * u64::from(def.value_size) * copies as u64;
        if bytes > MAX_SLAB_BYTES {
            return Err(MapError::InvalidDef {
                name: def.name.clone(),
                reason: format!("{bytes} bytes of values exceed the vm limit of {MAX_SLAB_BYTES}"),
            });
        }
        let index = match def.kind {
            MapKind::Array | MapKind::PerCpuArray => None,
            _ => Some(Arc::default()),
        };
        // vec! of zeroes is calloc: untouched pages of a big hash slab cost nothing.
        let slab = vec![0u8; bytes as usize + SLAB_PADDING];
        self.maps.insert(handle, MapStore { def, copies, slab, index });
        Ok(())
    }

    pub fn def(&self, handle: u32) -> Option<&MapDef> {
        self.maps.get(&handle).map(|m| &m.def)
    }

    /// Handles of all defined maps, ascending.
    pub fn handles(&self) -> Vec<u32> {
        self.maps.keys().copied().collect()
    }

    pub(crate) fn store(&self, handle: u32) -> Option<&MapStore> {
        self.maps.get(&handle)
    }

    pub(crate) fn store_mut(&mut self, handle: u32) -> Option<&mut MapStore> {
        self.maps.get_mut(&handle)
    }

    pub(crate) fn stores_mut(&mut self) -> impl Iterator<Item = (&u32, &mut MapStore)> {
        self.maps.iter_mut()
    }

    pub(crate) fn stores(&self) -> impl Iterator<Item = (&u32, &MapStore)> {
        self.maps.iter()
    }

    fn get(&self, handle: u32) -> Result<&MapStore, MapError> {
        self.maps.get(&handle).ok_or(MapError::UnknownMap(handle))
    }

    fn get_mut(&mut self, handle: u32) -> Result<&mut MapStore, MapError> {
        self.maps.get_mut(&handle).ok_or(MapError::UnknownMap(handle))
    }

    /// `update` with `BPF_ANY`.
    pub fn update(&mut self, handle: u32, key: &[u8], value: &[u8]) -> Result<(), MapError> {
        self.update_with_flags(handle, key, value, BPF_ANY)
    }

    /// Userspace update: per-CPU maps get `value` on every CPU.
    pub fn update_with_flags(
        &mut self,
        handle: u32,
        key: &[u8],
        value: &[u8],
        flags: u64,
    ) -> Result<(), MapError> {
        let map = self.get_mut(handle)?;
        map.check_value(value)?;
        let slot = map.upsert_slot(key, flags)?;
        for cpu in 0..map.copies {
            map.set_value(slot, cpu, value);
        }
        Ok(())
    }

    /// Userspace update of a per-CPU map with one value per CPU.
    pub fn update_percpu(
        &mut self,
        handle: u32,
        key: &[u8],
        values: &[Vec<u8>],
    ) -> Result<(), MapError> {
        let map = self.get_mut(handle)?;
        if values.len() != map.copies {
            return Err(MapError::CpuCount {
                map: map.def.name.clone(),
                expected: map.copies as u32,
                got: values.len(),
            });
        }
        for value in values {
            map.check_value(value)?;
        }
        let slot = map.upsert_slot(key, BPF_ANY)?;
        for (cpu, value) in values.iter().enumerate() {
            map.set_value(slot, cpu, value);
        }
        Ok(())
    }

    /// The value a program on CPU 0 would find for `key` (LPM: longest matching prefix; prog
    /// array: the program id). `None` for a missing key, a bad key or an unknown handle.
    pub fn lookup(&self, handle: u32, key: &[u8]) -> Option<Vec<u8>> {
        let map = self.maps.get(&handle)?;
        let slot = map.find_slot(key).ok()??;
        Some(map.value(slot, 0))
    }

    /// Every CPU's value for `key` (one element for maps that are not per-CPU).
    pub fn lookup_percpu(&self, handle: u32, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        let map = self.maps.get(&handle)?;
        let slot = map.find_slot(key).ok()??;
        Some((0..map.copies).map(|cpu| map.value(slot, cpu)).collect())
    }

    pub fn delete(&mut self, handle: u32, key: &[u8]) -> Result<(), MapError> {
        self.get_mut(handle)?.delete(key)
    }

    /// All entries, CPU 0's value for per-CPU maps. Arrays are listed in index order (every
    /// index), keyed maps in key byte order (LPM keys with bits past the prefix cleared).
    pub fn entries(&self, handle: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Ok(map) = self.get(handle) else { return Vec::new() };
        match &map.index {
            None => (0..map.def.max_entries)
                .map(|i| (i.to_ne_bytes().to_vec(), map.value(i as usize, 0)))
                .collect(),
            Some(index) => {
                index.slots.iter().map(|(key, &slot)| (key.clone(), map.value(slot, 0))).collect()
            }
        }
    }

    /// The program id in slot `index` of a prog array.
    pub fn prog_at(&self, handle: u32, index: u32) -> Option<u32> {
        let map = self.maps.get(&handle)?;
        if map.def.kind != MapKind::ProgArray {
            return None;
        }
        let value = self.lookup(handle, &index.to_ne_bytes())?;
        Some(u32::from_ne_bytes(value.try_into().ok()?))
    }
}

fn validate_def(def: &MapDef) -> Result<(), MapError> {
    let invalid = |reason: String| Err(MapError::InvalidDef { name: def.name.clone(), reason });
    if def.key_size == 0 || def.value_size == 0 || def.max_entries == 0 {
        return invalid("key_size, value_size and max_entries must be non-zero".into());
    }
    match def.kind {
        MapKind::Array | MapKind::PerCpuArray | MapKind::ProgArray if def.key_size != 4 => {
            invalid(format!("array key_size must be 4, not {}", def.key_size))
        }
        MapKind::ProgArray if def.value_size != 4 => {
            invalid(format!("prog array value_size must be 4, not {}", def.value_size))
        }
        MapKind::LpmTrie if !(5..=260).contains(&def.key_size) => invalid(format!(
            "LPM key_size must be 4 (prefix length) + 1..=256 data bytes, not {}",
            def.key_size
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapDef {
        MapDef { name: "m".into(), kind, key_size, value_size, max_entries }
    }

    #[test]
    fn array_is_prezeroed_and_cannot_delete() {
        let mut maps = Maps::new();
        maps.add(1, def(MapKind::Array, 4, 8, 3)).unwrap();
        assert_eq!(maps.lookup(1, &2u32.to_ne_bytes()), Some(vec![0; 8]));
        assert_eq!(maps.lookup(1, &3u32.to_ne_bytes()), None);
        assert_eq!(maps.entries(1).len(), 3);
        let err = maps.delete(1, &0u32.to_ne_bytes()).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let err = maps.update_with_flags(1, &0u32.to_ne_bytes(), &[1; 8], BPF_NOEXIST);
        assert_eq!(err.unwrap_err().errno(), libc::EEXIST);
        let err = maps.update(1, &7u32.to_ne_bytes(), &[1; 8]).unwrap_err();
        assert_eq!(err.errno(), libc::E2BIG);
    }

    #[test]
    fn hash_flags_capacity_and_slot_reuse() {
        let mut maps = Maps::new();
        maps.add(5, def(MapKind::Hash, 2, 1, 2)).unwrap();
        assert_eq!(maps.update_with_flags(5, b"aa", &[1], BPF_EXIST).unwrap_err().errno(), 2);
        maps.update_with_flags(5, b"aa", &[1], BPF_NOEXIST).unwrap();
        assert_eq!(maps.update_with_flags(5, b"aa", &[2], BPF_NOEXIST).unwrap_err().errno(), 17);
        maps.update_with_flags(5, b"aa", &[3], BPF_EXIST).unwrap();
        maps.update(5, b"bb", &[4]).unwrap();
        let full = maps.update(5, b"cc", &[5]).unwrap_err();
        assert!(matches!(full, MapError::Full { .. }), "{full}");
        assert_eq!(full.errno(), libc::E2BIG);
        // Replacing an existing key in a full map is fine.
        maps.update(5, b"bb", &[6]).unwrap();
        maps.delete(5, b"aa").unwrap();
        assert_eq!(maps.delete(5, b"aa").unwrap_err().errno(), libc::ENOENT);
        maps.update(5, b"cc", &[7]).unwrap();
        assert_eq!(maps.entries(5), vec![(b"bb".to_vec(), vec![6]), (b"cc".to_vec(), vec![7])]);
        assert_eq!(maps.update(5, b"toolong", &[1]).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(maps.update(5, b"bb", &[1, 2]).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(maps.update_with_flags(5, b"bb", &[1], 4).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(maps.update(9, b"bb", &[1]), Err(MapError::UnknownMap(9)));
        assert_eq!(maps.lookup(9, b"bb"), None);
    }

    #[test]
    fn percpu_values_are_separate() {
        let mut maps = Maps::with_cpus(3).unwrap();
        maps.add(1, def(MapKind::PerCpuArray, 4, 4, 2)).unwrap();
        let key = 1u32.to_ne_bytes();
        maps.update_percpu(1, &key, &[vec![1; 4], vec![2; 4], vec![3; 4]]).unwrap();
        assert_eq!(maps.lookup(1, &key), Some(vec![1; 4]));
        assert_eq!(maps.lookup_percpu(1, &key), Some(vec![vec![1; 4], vec![2; 4], vec![3; 4]]));
        assert!(maps.update_percpu(1, &key, &[vec![1; 4]]).is_err());
        maps.update(1, &key, &[9; 4]).unwrap();
        assert_eq!(maps.lookup_percpu(1, &key), Some(vec![vec![9; 4]; 3]));
        assert!(Maps::with_cpus(0).is_err());
    }

    #[test]
    fn lpm_longest_prefix_wins() {
        let mut maps = Maps::new();
        maps.add(1, def(MapKind::LpmTrie, 8, 1, 16)).unwrap();
        maps.update(1, &lpm_key(0, &[0, 0, 0, 0]), &[0]).unwrap();
        maps.update(1, &lpm_key(8, &[10, 0, 0, 0]), &[8]).unwrap();
        maps.update(1, &lpm_key(24, &[10, 1, 2, 0]), &[24]).unwrap();
        maps.update(1, &lpm_key(32, &[10, 1, 2, 3]), &[32]).unwrap();
        // Same /8 prefix with different host bits is the same entry.
        maps.update(1, &lpm_key(8, &[10, 9, 9, 9]), &[88]).unwrap();
        assert_eq!(maps.entries(1).len(), 4);
        let find = |addr: [u8; 4]| maps.lookup(1, &lpm_key(32, &addr));
        assert_eq!(find([10, 1, 2, 3]), Some(vec![32]));
        assert_eq!(find([10, 1, 2, 4]), Some(vec![24]));
        assert_eq!(find([10, 7, 2, 4]), Some(vec![88]));
        assert_eq!(find([11, 1, 2, 3]), Some(vec![0]));
        // A shorter lookup prefix only sees entries no longer than itself.
        assert_eq!(maps.lookup(1, &lpm_key(16, &[10, 1, 2, 3])), Some(vec![88]));
        assert_eq!(maps.update(1, &lpm_key(33, &[0; 4]), &[1]).unwrap_err().errno(), 22);
        maps.delete(1, &lpm_key(0, &[1, 2, 3, 4])).unwrap();
        assert_eq!(maps.lookup(1, &lpm_key(32, &[11, 1, 2, 3])), None);
    }

    /// Whether the first `bits` bits of `a` and `b` are equal.
    fn prefix_matches(a: &[u8], b: &[u8], bits: u32) -> bool {
        let full = (bits / 8) as usize;
        let rest = bits % 8;
        if a.get(..full) != b.get(..full) {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rest);
        match (a.get(full), b.get(full)) {
            (Some(x), Some(y)) => x & mask == y & mask,
            _ => false,
        }
    }

    #[test]
    fn lpm_lookup_agrees_with_brute_force() {
        // Deterministic pseudo-random prefixes over 3 data bytes, then probes.
        let mut seed = 0x1234_5678_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut maps = Maps::new();
        maps.add(1, def(MapKind::LpmTrie, 7, 4, 512)).unwrap();
        let mut stored: Vec<(u32, [u8; 3], u32)> = Vec::new();
        for i in 0..300u32 {
            let r = next();
            let len = (r % 25) as u32;
            let data = [(r >> 8) as u8 & 0xc3, (r >> 16) as u8, (r >> 24) as u8];
            maps.update(1, &lpm_key(len, &data), &i.to_ne_bytes()).unwrap();
            stored.retain(|(l, d, _)| !(*l == len && prefix_matches(d, &data, len)));
            stored.push((len, data, i));
        }
        assert_eq!(maps.entries(1).len(), stored.len());
        for _ in 0..2000 {
            let r = next();
            let len = (r % 25) as u32;
            let data = [(r >> 8) as u8 & 0xc3, (r >> 16) as u8, (r >> 24) as u8];
            let want = stored
                .iter()
                .filter(|(l, d, _)| *l <= len && prefix_matches(d, &data, *l))
                .max_by_key(|(l, _, _)| *l)
                .map(|(_, _, v)| v.to_ne_bytes().to_vec());
            assert_eq!(maps.lookup(1, &lpm_key(len, &data)), want, "/{len} {data:?}");
        }
        // Deleting every entry leaves nothing to match, even /0 lookups.
        for (len, data, _) in &stored {
            maps.delete(1, &lpm_key(*len, data)).unwrap();
        }
        assert_eq!(maps.lookup(1, &lpm_key(0, &[0; 3])), None);
    }

    #[test]
    fn prefix_match_partial_bytes() {
        assert!(prefix_matches(&[0b1010_0000], &[0b1011_1111], 3));
        assert!(!prefix_matches(&[0b1010_0000], &[0b1011_1111], 4));
        assert!(prefix_matches(&[1, 2], &[9, 9], 0));
    }

    #[test]
    fn invalid_defs_are_errors() {
        let mut maps = Maps::new();
        assert!(maps.add(1, def(MapKind::Array, 8, 4, 1)).is_err());
        assert!(maps.add(1, def(MapKind::ProgArray, 4, 8, 1)).is_err());
        assert!(maps.add(1, def(MapKind::LpmTrie, 4, 1, 1)).is_err());
        assert!(maps.add(1, def(MapKind::Hash, 4, 0, 1)).is_err());
        assert!(maps.add(1, def(MapKind::Hash, 4, 1 << 20, 1 << 20)).is_err());
        maps.add(1, def(MapKind::Hash, 4, 4, 1)).unwrap();
        assert_eq!(maps.add(1, def(MapKind::Hash, 4, 4, 1)), Err(MapError::DuplicateHandle(1)));
    }

    #[test]
    fn big_sparse_clone_is_independent_of_the_original() {
        let mut maps = Maps::new();
        // 20000 * 64 bytes: above CLONE_BY_COPY_BYTES, so only used slots are copied.
        maps.add(1, def(MapKind::Hash, 4, 64, 20_000)).unwrap();
        for i in 0..10u32 {
            maps.update(1, &i.to_ne_bytes(), &[i as u8; 64]).unwrap();
        }
        maps.delete(1, &3u32.to_ne_bytes()).unwrap();
        let mut copy = maps.clone();
        assert_eq!(copy.entries(1), maps.entries(1));
        copy.update(1, &100u32.to_ne_bytes(), &[7; 64]).unwrap();
        copy.update(1, &4u32.to_ne_bytes(), &[8; 64]).unwrap();
        copy.delete(1, &5u32.to_ne_bytes()).unwrap();
        assert_eq!(maps.entries(1).len(), 9);
        assert_eq!(maps.lookup(1, &4u32.to_ne_bytes()), Some(vec![4; 64]));
        assert_eq!(maps.lookup(1, &5u32.to_ne_bytes()), Some(vec![5; 64]));
        assert_eq!(maps.lookup(1, &100u32.to_ne_bytes()), None);
        assert_eq!(copy.entries(1).len(), 9);
    }

    #[test]
    fn clone_copies_used_slots_only_but_all_values() {
        let mut maps = Maps::new();
        maps.add(1, def(MapKind::Hash, 4, 4, 1000)).unwrap();
        maps.update(1, &[1, 0, 0, 0], &[5; 4]).unwrap();
        maps.update(1, &[2, 0, 0, 0], &[6; 4]).unwrap();
        maps.delete(1, &[1, 0, 0, 0]).unwrap();
        let copy = maps.clone();
        assert_eq!(copy.entries(1), maps.entries(1));
        assert_eq!(copy.lookup(1, &[2, 0, 0, 0]), Some(vec![6; 4]));
    }
}
