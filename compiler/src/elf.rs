//! ELF writer: one generated program per object, loadable by bpftool/libbpf.
//!
//! The object is ET_REL / EM_BPF, little endian, 64-bit, and holds the program section, a
//! `license` section and, when the program uses maps, BTF-defined maps: a `.maps` section of
//! zeroed map-definition structs, one GLOBAL OBJECT symbol per map, a `.BTF` section that
//! describes each definition the way libbpf expects (`__uint(field, value)` members, i.e.
//! `int (*field)[value]`), and `R_BPF_64_64` relocations from each map-loading `LD_IMM64` to
//! its map's symbol. libbpf 1.x refuses the legacy `maps` section, hence the BTF.
//!
//! Maps the program addresses directly (`BPF_PSEUDO_MAP_VALUE`: single-entry arrays read
//! without a lookup) are global variables instead: one GLOBAL OBJECT symbol each in `.bss`,
//! which libbpf turns into one array map with every variable at its offset, and an
//! `R_BPF_64_64` relocation whose first-slot immediate is the offset into the variable.

use std::collections::{HashMap, HashSet};

use object::write::{Object, Relocation, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};

/// `BPF_MAP_TYPE_HASH`.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PROG_ARRAY`.
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LPM_TRIE`.
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// `BPF_F_NO_PREALLOC`: required by the kernel for LPM tries.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Opcode of the first slot of a 64-bit immediate load (`BPF_LD | BPF_IMM | BPF_DW`).
const LD_IMM64: u8 = 0x18;
/// Size of one eBPF instruction slot in bytes.
const INSN_SIZE: usize = 8;
/// `R_BPF_64_64`: the relocation libbpf resolves to a map fd in an `LD_IMM64`.
const R_BPF_64_64: u32 = 1;
/// Section names this writer creates itself, so the program may not use them.
const RESERVED_SECTIONS: [&str; 4] = ["license", ".maps", ".BTF", ".bss"];
/// `BPF_PSEUDO_MAP_VALUE`: the `src_reg` of an `LD_IMM64` that addresses a map's value.
const PSEUDO_MAP_VALUE: u8 = 2;

/// One map the program references, described as a BTF-defined map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfMap {
    /// Map name: symbol and BTF variable name, so a C identifier.
    pub name: String,
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*`; only emitted in the definition when non-zero.
    pub map_flags: u32,
    /// The program addresses the map's one value directly: written as a `.bss` variable of
    /// `value_size` bytes, not as a `.maps` definition (an array with one entry only).
    pub direct: bool,
}

/// A map reference: the `LD_IMM64` at `insn_index` loads the fd of `maps[map]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapReloc {
    /// Index of the LD_IMM64's first slot, in 8-byte instruction units.
    pub insn_index: usize,
    /// Index into [`ElfProgram::maps`].
    pub map: usize,
}

/// Everything that goes into one object.
#[derive(Debug, Clone, Copy)]
pub struct ElfProgram<'a> {
    /// Symbol name of the program (libbpf's program name).
    pub name: &'a str,
    /// Program section, e.g. "tc" or "classifier".
    pub section: &'a str,
    /// Raw little-endian instruction bytes.
    pub insns: &'a [u8],
    /// License string, e.g. "GPL" (GPL-only helpers need a GPL-compatible one).
    pub license: &'a str,
    pub maps: &'a [ElfMap],
    pub relocs: &'a [MapReloc],
}

/// Why an object could not be written or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ELF object: {message}")]
pub struct ElfError {
    pub message: String,
}

impl ElfError {
    fn new(message: impl Into<String>) -> Self {
        ElfError { message: message.into() }
    }
}

impl From<ElfError> for crate::error::Error {
    fn from(e: ElfError) -> Self {
        crate::error::Error::other(e.to_string())
    }
}

/// Writes `p` as a relocatable eBPF ELF object.
pub fn write_object(p: &ElfProgram) -> Result<Vec<u8>, ElfError> {
    validate(p)?;

    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);

    let text = obj.add_section(Vec::new(), p.section.as_bytes().to_vec(), SectionKind::Text);
    obj.append_section_data(text, p.insns, 8);
    obj.add_symbol(Symbol {
        name: p.name.as_bytes().to_vec(),
        value: 0,
        size: p.insns.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });

    let license = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    let mut license_bytes = p.license.as_bytes().to_vec();
    license_bytes.push(0);
    obj.append_section_data(license, &license_bytes, 1);

    if p.maps.is_empty() {
        return obj.write().map_err(|e| ElfError::new(format!("cannot write: {e}")));
    }

    // Directly addressed maps: `.bss` variables, 8-byte aligned, in map order.
    let mut symbol_of = vec![None; p.maps.len()];
    if p.maps.iter().any(|m| m.direct) {
        let bss = obj.add_section(Vec::new(), b".bss".to_vec(), SectionKind::UninitializedData);
        for (i, map) in p.maps.iter().enumerate().filter(|(_, m)| m.direct) {
            let size = u64::from(map.value_size);
            let offset = obj.append_section_bss(bss, size.next_multiple_of(8), 8);
            symbol_of[i] = Some(obj.add_symbol(global_object(&map.name, bss, offset, size)));
        }
    }
    let defined: Vec<(usize, &ElfMap)> =
        p.maps.iter().enumerate().filter(|(_, m)| !m.direct).collect();
    if !defined.is_empty() {
        let defs: Vec<MapDef> = defined.iter().map(|(_, m)| MapDef::new(m)).collect();
        let mut offsets = Vec::with_capacity(defs.len());
        let mut maps_len = 0u32;
        for def in &defs {
            offsets.push(maps_len);
            maps_len = maps_len
                .checked_add(def.size())
                .ok_or_else(|| ElfError::new("too many maps for one .maps section"))?;
        }
        let maps_section = obj.add_section(Vec::new(), b".maps".to_vec(), SectionKind::Data);
        obj.append_section_data(maps_section, &vec![0u8; maps_len as usize], 8);
        for ((def, &offset), &(i, _)) in defs.iter().zip(&offsets).zip(&defined) {
            let symbol = global_object(def.name, maps_section, offset.into(), def.size().into());
            symbol_of[i] = Some(obj.add_symbol(symbol));
        }
        let btf = obj.add_section(
            Vec::new(),
            b".BTF".to_vec(),
            SectionKind::Elf(object::elf::SHT_PROGBITS),
        );
        obj.append_section_data(btf, &maps_btf(&defs, &offsets)?, 4);
    }

    for reloc in p.relocs {
        let symbol = symbol_of
            .get(reloc.map)
            .copied()
            .flatten()
            .ok_or_else(|| ElfError::new(format!("relocation to missing map {}", reloc.map)))?;
        obj.add_relocation(
            text,
            Relocation {
                offset: (reloc.insn_index * INSN_SIZE) as u64,
                symbol,
                addend: 0,
                flags: RelocationFlags::Elf { r_type: R_BPF_64_64 },
            },
        )
        .map_err(|e| ElfError::new(format!("cannot add relocation: {e}")))?;
    }

    obj.write().map_err(|e| ElfError::new(format!("cannot write: {e}")))
}

/// A GLOBAL OBJECT symbol: how libbpf finds a map definition in `.maps` or a variable in
/// `.bss`.
fn global_object(name: &str, section: object::write::SectionId, value: u64, size: u64) -> Symbol {
    Symbol {
        name: name.as_bytes().to_vec(),
        value,
        size,
        kind: SymbolKind::Data,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(section),
        flags: SymbolFlags::None,
    }
}

/// Reads back the single program section of an object: its name and instruction bytes.
pub fn read_program(obj: &[u8]) -> Result<(String, Vec<u8>), ElfError> {
    use object::{Object as _, ObjectSection as _};

    let file = object::File::parse(obj).map_err(|e| ElfError::new(format!("not ELF: {e}")))?;
    if file.format() != BinaryFormat::Elf || file.architecture() != Architecture::Bpf {
        return Err(ElfError::new("not an eBPF ELF object"));
    }
    let mut found = None;
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        if found.is_some() {
            return Err(ElfError::new("more than one program section"));
        }
        let name = section.name().map_err(|e| ElfError::new(format!("bad section name: {e}")))?;
        let data = section.data().map_err(|e| ElfError::new(format!("bad section {name}: {e}")))?;
        found = Some((name.to_string(), data.to_vec()));
    }
    found.ok_or_else(|| ElfError::new("no program section"))
}

fn validate(p: &ElfProgram) -> Result<(), ElfError> {
    check_name("program name", p.name)?;
    check_name("section name", p.section)?;
    if RESERVED_SECTIONS.contains(&p.section) || p.section.starts_with(".rel") {
        return Err(ElfError::new(format!("section name {:?} is reserved", p.section)));
    }
    if p.license.contains('\0') {
        return Err(ElfError::new("license contains a NUL byte"));
    }
    if p.insns.is_empty() || !p.insns.len().is_multiple_of(INSN_SIZE) {
        return Err(ElfError::new(format!(
            "program is {} bytes, not a non-empty multiple of {INSN_SIZE}",
            p.insns.len()
        )));
    }

    let mut names = HashSet::from([p.name]);
    for map in p.maps {
        check_identifier("map name", &map.name)?;
        if !names.insert(&map.name) {
            return Err(ElfError::new(format!("duplicate symbol name {:?}", map.name)));
        }
        if map.map_type == 0 {
            return Err(ElfError::new(format!("map {:?} has no map type", map.name)));
        }
        if map.direct
            && (map.map_type != BPF_MAP_TYPE_ARRAY || map.key_size != 4 || map.max_entries != 1)
        {
            return Err(ElfError::new(format!(
                "map {:?} is addressed directly, so it must be an array with one entry",
                map.name
            )));
        }
        for (field, value) in MapDef::new(map).fields {
            if value > MAX_FIELD_VALUE {
                return Err(ElfError::new(format!(
                    "map {:?}: {field} {value} exceeds {MAX_FIELD_VALUE} (BTF array size)",
                    map.name
                )));
            }
        }
    }

    let slots = p.insns.len() / INSN_SIZE;
    let mut seen = HashSet::new();
    for reloc in p.relocs {
        let i = reloc.insn_index;
        if reloc.map >= p.maps.len() {
            return Err(ElfError::new(format!(
                "relocation at insn {i} names map {} but there are {} maps",
                reloc.map,
                p.maps.len()
            )));
        }
        if i.checked_add(1).is_none_or(|next| next >= slots) {
            return Err(ElfError::new(format!(
                "relocation at insn {i} is out of range for a 2-slot LD_IMM64 ({slots} slots)"
            )));
        }
        let opcode = p.insns.get(i * INSN_SIZE).copied();
        if opcode != Some(LD_IMM64) {
            return Err(ElfError::new(format!(
                "relocation at insn {i}: opcode {:#04x} is not LD_IMM64 (0x18)",
                opcode.unwrap_or(0)
            )));
        }
        if !seen.insert(i) {
            return Err(ElfError::new(format!("two relocations at insn {i}")));
        }
        // A directly addressed map needs a value address, any other map its fd.
        let src = p.insns.get(i * INSN_SIZE + 1).map_or(0, |b| b >> 4);
        if (src == PSEUDO_MAP_VALUE) != p.maps[reloc.map].direct {
            return Err(ElfError::new(format!(
                "relocation at insn {i}: LD_IMM64 src_reg {src} does not match map {:?}",
                p.maps[reloc.map].name
            )));
        }
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), ElfError> {
    if name.is_empty() {
        return Err(ElfError::new(format!("{what} is empty")));
    }
    if name.contains('\0') {
        return Err(ElfError::new(format!("{what} {name:?} contains a NUL byte")));
    }
    Ok(())
}

/// Map names become BTF VAR names. Kernel 6.18 accepts a '.' there, but older kernels' BTF
/// checkers require C identifiers, and a rejected .BTF would make libbpf silently drop it.
fn check_identifier(what: &str, name: &str) -> Result<(), ElfError> {
    check_name(what, name)?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ElfError::new(format!("{what} {name:?} is not a C identifier")));
    }
    Ok(())
}

/// Largest `__uint` value: the kernel rejects an `int[N]` whose byte size overflows u32.
const MAX_FIELD_VALUE: u32 = u32::MAX / 4;

/// A map definition as libbpf reads it: named `__uint` fields, each an 8-byte pointer member.
struct MapDef<'a> {
    name: &'a str,
    fields: Vec<(&'static str, u32)>,
}

impl<'a> MapDef<'a> {
    fn new(map: &'a ElfMap) -> Self {
        let mut fields = vec![
            ("type", map.map_type),
            ("key_size", map.key_size),
            ("value_size", map.value_size),
            ("max_entries", map.max_entries),
        ];
        if map.map_flags != 0 {
            fields.push(("map_flags", map.map_flags));
        }
        MapDef { name: &map.name, fields }
    }

    /// Byte size of the struct: one pointer per field.
    fn size(&self) -> u32 {
        8 * self.fields.len() as u32
    }
}

/// Builds the `.BTF` section for the map definitions placed at `offsets` in `.maps`.
fn maps_btf(defs: &[MapDef], offsets: &[u32]) -> Result<Vec<u8>, ElfError> {
    let mut btf = BtfBuilder::default();
    let int = btf.int("int", 4);
    // One `int (*)[N]` per distinct value N.
    let mut ptr_to_array: HashMap<u32, u32> = HashMap::new();
    let mut vars = Vec::with_capacity(defs.len());
    for def in defs {
        let mut members = Vec::with_capacity(def.fields.len());
        for &(field, value) in &def.fields {
            let ptr = match ptr_to_array.get(&value) {
                Some(&ptr) => ptr,
                None => {
                    let array = btf.array(int, int, value);
                    let ptr = btf.ptr(array);
                    ptr_to_array.insert(value, ptr);
                    ptr
                }
            };
            members.push((field, ptr));
        }
        let def_struct = btf.pointer_struct(&members)?;
        vars.push(btf.global_var(def.name, def_struct));
    }
    let entries: Vec<(u32, u32, u32)> = vars
        .iter()
        .zip(defs)
        .zip(offsets)
        .map(|((&var, def), &offset)| (var, offset, def.size()))
        .collect();
    btf.datasec(".maps", &entries)?;
    Ok(btf.finish())
}

// BTF kinds and constants, from the kernel's include/uapi/linux/btf.h.
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
const BTF_HEADER_LEN: u32 = 24;
const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_INT_SIGNED: u32 = 1;
const BTF_VAR_GLOBAL_ALLOCATED: u32 = 1;
const BTF_MAX_VLEN: usize = 0xffff;

/// Appends BTF type records (ids from 1; 0 is void) and a deduplicated string table.
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    string_offsets: HashMap<String, u32>,
    next_id: u32,
}

impl Default for BtfBuilder {
    fn default() -> Self {
        // Offset 0 of the string table is the empty string, used by anonymous types.
        BtfBuilder {
            types: Vec::new(),
            strings: vec![0],
            string_offsets: HashMap::new(),
            next_id: 1,
        }
    }
}

impl BtfBuilder {
    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&off) = self.string_offsets.get(s) {
            return off;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        self.string_offsets.insert(s.to_string(), off);
        off
    }

    fn push_u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes the common `btf_type` head and returns the new type id.
    fn head(&mut self, name: &str, kind: u32, vlen: usize, size_or_type: u32) -> u32 {
        let name_off = self.string(name);
        self.push_u32(name_off);
        self.push_u32((kind << 24) | (vlen as u32 & 0xffff));
        self.push_u32(size_or_type);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A signed integer of `size` bytes.
    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.head(name, BTF_KIND_INT, 0, size);
        self.push_u32((BTF_INT_SIGNED << 24) | (size * 8));
        id
    }

    fn ptr(&mut self, target: u32) -> u32 {
        self.head("", BTF_KIND_PTR, 0, target)
    }

    fn array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
        let id = self.head("", BTF_KIND_ARRAY, 0, 0);
        self.push_u32(elem);
        self.push_u32(index);
        self.push_u32(nelems);
        id
    }

    /// An anonymous struct of 8-byte members laid out back to back.
    fn pointer_struct(&mut self, members: &[(&str, u32)]) -> Result<u32, ElfError> {
        if members.len() > BTF_MAX_VLEN {
            return Err(ElfError::new("too many struct members for BTF"));
        }
        let id = self.head("", BTF_KIND_STRUCT, members.len(), 8 * members.len() as u32);
        for (i, &(name, ty)) in members.iter().enumerate() {
            let name_off = self.string(name);
            self.push_u32(name_off);
            self.push_u32(ty);
            self.push_u32(i as u32 * 64); // bit offset
        }
        Ok(id)
    }

    fn global_var(&mut self, name: &str, ty: u32) -> u32 {
        let id = self.head(name, BTF_KIND_VAR, 0, ty);
        self.push_u32(BTF_VAR_GLOBAL_ALLOCATED);
        id
    }

    /// A section of variables: `(var type id, offset, size)` in offset order.
    fn datasec(&mut self, name: &str, vars: &[(u32, u32, u32)]) -> Result<u32, ElfError> {
        if vars.len() > BTF_MAX_VLEN {
            return Err(ElfError::new("too many maps for one BTF DATASEC"));
        }
        let size = vars.last().map_or(0, |&(_, off, size)| off + size);
        let id = self.head(name, BTF_KIND_DATASEC, vars.len(), size);
        for &(var, offset, size) in vars {
            self.push_u32(var);
            self.push_u32(offset);
            self.push_u32(size);
        }
        Ok(id)
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(BTF_VERSION);
        out.push(0); // flags
        out.extend_from_slice(&BTF_HEADER_LEN.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.types.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// A decoded BTF type: kind, name, vlen, size/type, and the extra words that follow it.
    #[derive(Debug)]
    struct Ty {
        kind: u32,
        name: String,
        size_or_type: u32,
        extra: Vec<u32>,
    }

    fn str_at(strings: &[u8], off: u32) -> String {
        let s = &strings[off as usize..];
        String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
    }

    /// Decodes the subset of BTF this writer emits, the way a reader (libbpf, kernel) walks it.
    /// Returns the types (index = type id, 0 = void) and the string table.
    fn decode_btf(b: &[u8]) -> (Vec<Ty>, Vec<u8>) {
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0xeb9f);
        assert_eq!(b[2], 1);
        let hdr = u32_at(b, 4) as usize;
        let (type_off, type_len) = (u32_at(b, 8) as usize, u32_at(b, 12) as usize);
        let (str_off, str_len) = (u32_at(b, 16) as usize, u32_at(b, 20) as usize);
        assert_eq!(hdr + str_off + str_len, b.len());
        let types = &b[hdr + type_off..hdr + type_off + type_len];
        let strings = b[hdr + str_off..hdr + str_off + str_len].to_vec();
        assert_eq!(strings.first(), Some(&0));
        assert_eq!(strings.last(), Some(&0));
        let mut out = vec![Ty { kind: 0, name: String::new(), size_or_type: 0, extra: Vec::new() }];
        let mut pos = 0;
        while pos < types.len() {
            let info = u32_at(types, pos + 4);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra_words = match kind {
                BTF_KIND_INT | BTF_KIND_VAR => 1,
                BTF_KIND_PTR => 0,
                BTF_KIND_ARRAY => 3,
                BTF_KIND_STRUCT | BTF_KIND_DATASEC => 3 * vlen,
                other => panic!("unexpected kind {other}"),
            };
            let extra = (0..extra_words).map(|i| u32_at(types, pos + 12 + 4 * i)).collect();
            out.push(Ty {
                kind,
                name: str_at(&strings, u32_at(types, pos)),
                size_or_type: u32_at(types, pos + 8),
                extra,
            });
            pos += 12 + 4 * extra_words;
        }
        assert_eq!(pos, types.len());
        (out, strings)
    }

    /// Reads a map definition as libbpf does: each member is PTR -> ARRAY, value = nelems.
    fn map_fields(types: &[Ty], strings: &[u8], var: u32) -> (String, Vec<(String, u32)>) {
        let var = &types[var as usize];
        assert_eq!(var.kind, BTF_KIND_VAR);
        assert_eq!(var.extra, vec![BTF_VAR_GLOBAL_ALLOCATED]);
        let def = &types[var.size_or_type as usize];
        assert_eq!(def.kind, BTF_KIND_STRUCT);
        assert_eq!(def.size_or_type as usize, 8 * def.extra.len() / 3);
        let mut fields = Vec::new();
        for (i, m) in def.extra.chunks(3).enumerate() {
            assert_eq!(m[2], i as u32 * 64, "member bit offset");
            let ptr = &types[m[1] as usize];
            assert_eq!(ptr.kind, BTF_KIND_PTR);
            let array = &types[ptr.size_or_type as usize];
            assert_eq!(array.kind, BTF_KIND_ARRAY);
            let elem = &types[array.extra[0] as usize];
            assert_eq!(
                (elem.kind, elem.name.as_str(), elem.size_or_type),
                (BTF_KIND_INT, "int", 4)
            );
            fields.push((str_at(strings, m[0]), array.extra[2]));
        }
        (var.name.clone(), fields)
    }

    fn sample_maps() -> Vec<ElfMap> {
        vec![
            ElfMap {
                name: "hash_map".into(),
                map_type: BPF_MAP_TYPE_HASH,
                key_size: 4,
                value_size: 8,
                max_entries: 16,
                map_flags: 0,
                direct: false,
            },
            ElfMap {
                name: "lpm".into(),
                map_type: BPF_MAP_TYPE_LPM_TRIE,
                key_size: 8,
                value_size: 4,
                max_entries: 64,
                map_flags: BPF_F_NO_PREALLOC,
                direct: false,
            },
        ]
    }

    /// r1 = map 0; r1 = map 1; r0 = 0; exit
    fn sample_insns() -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..2 {
            b.extend_from_slice(&[0x18, 0x11, 0, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&[0; 8]);
        }
        b.extend_from_slice(&[0xb7, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn btf_describes_each_map_as_libbpf_reads_it() {
        let maps = sample_maps();
        let insns = sample_insns();
        let relocs = [MapReloc { insn_index: 0, map: 1 }, MapReloc { insn_index: 2, map: 0 }];
        let p = ElfProgram {
            name: "prog",
            section: "tc",
            insns: &insns,
            license: "GPL",
            maps: &maps,
            relocs: &relocs,
        };
        let obj = write_object(&p).unwrap();
        let file = object::File::parse(&*obj).unwrap();
        let btf = file.section_by_name(".BTF").unwrap().data().unwrap().to_vec();
        let (types, strings) = decode_btf(&btf);

        let datasec = types.iter().find(|t| t.kind == BTF_KIND_DATASEC).unwrap();
        assert_eq!(datasec.name, ".maps");
        let maps_section = file.section_by_name(".maps").unwrap();
        assert_eq!(u64::from(datasec.size_or_type), maps_section.size());
        assert!(maps_section.data().unwrap().iter().all(|&b| b == 0));

        let mut decoded = Vec::new();
        for entry in datasec.extra.chunks(3) {
            let (name, fields) = map_fields(&types, &strings, entry[0]);
            // The symbol of the same name sits at the DATASEC offset and has its size.
            let sym = file.symbols().find(|s| s.name() == Ok(name.as_str())).unwrap();
            assert_eq!(sym.address(), u64::from(entry[1]));
            assert_eq!(sym.size(), u64::from(entry[2]));
            assert!(sym.is_global());
            assert_eq!(sym.kind(), object::SymbolKind::Data);
            decoded.push((name, fields));
        }
        let expect = |n: &str, f: &[(&str, u32)]| {
            (n.to_string(), f.iter().map(|&(k, v)| (k.to_string(), v)).collect::<Vec<_>>())
        };
        assert_eq!(
            decoded,
            vec![
                expect(
                    "hash_map",
                    &[("type", 1), ("key_size", 4), ("value_size", 8), ("max_entries", 16)]
                ),
                expect(
                    "lpm",
                    &[
                        ("type", 11),
                        ("key_size", 8),
                        ("value_size", 4),
                        ("max_entries", 64),
                        ("map_flags", 1)
                    ]
                ),
            ]
        );
    }

    #[test]
    fn relocations_point_at_ld_imm64_and_map_symbols() {
        let maps = sample_maps();
        let insns = sample_insns();
        let relocs = [MapReloc { insn_index: 0, map: 1 }, MapReloc { insn_index: 2, map: 0 }];
        let p = ElfProgram {
            name: "prog",
            section: "tc",
            insns: &insns,
            license: "GPL",
            maps: &maps,
            relocs: &relocs,
        };
        let obj = write_object(&p).unwrap();
        let file = object::File::parse(&*obj).unwrap();
        assert_eq!(file.architecture(), object::Architecture::Bpf);
        assert!(file.is_little_endian() && file.is_64());
        let text = file.section_by_name("tc").unwrap();
        assert_eq!(text.align(), 8);
        let mut got = Vec::new();
        for (offset, reloc) in text.relocations() {
            assert_eq!(reloc.flags(), RelocationFlags::Elf { r_type: R_BPF_64_64 });
            assert_eq!(reloc.addend(), 0);
            let object::RelocationTarget::Symbol(idx) = reloc.target() else {
                panic!("relocation target is not a symbol")
            };
            let name = file.symbol_by_index(idx).unwrap().name().unwrap().to_string();
            got.push((offset, name));
        }
        assert_eq!(got, vec![(0, "lpm".to_string()), (16, "hash_map".to_string())]);
        let prog = file.symbols().find(|s| s.name() == Ok("prog")).unwrap();
        assert_eq!(prog.kind(), object::SymbolKind::Text);
        assert!(prog.is_global());
        assert_eq!(prog.size(), insns.len() as u64);
        let license = file.section_by_name("license").unwrap();
        assert_eq!(license.data().unwrap(), b"GPL\0");
        assert_eq!(read_program(&obj).unwrap(), ("tc".to_string(), insns));
    }

    #[test]
    fn no_maps_means_no_btf_sections() {
        let insns = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let p = ElfProgram {
            name: "prog",
            section: "classifier",
            insns: &insns,
            license: "GPL",
            maps: &[],
            relocs: &[],
        };
        let obj = write_object(&p).unwrap();
        let file = object::File::parse(&*obj).unwrap();
        assert!(file.section_by_name(".BTF").is_none());
        assert!(file.section_by_name(".maps").is_none());
        assert_eq!(read_program(&obj).unwrap(), ("classifier".to_string(), insns.to_vec()));
    }

    #[test]
    fn oversized_field_and_missing_type_are_errors() {
        let insns = sample_insns();
        let mut maps = sample_maps();
        maps[0].max_entries = u32::MAX;
        let p = ElfProgram {
            name: "prog",
            section: "tc",
            insns: &insns,
            license: "GPL",
            maps: &maps,
            relocs: &[],
        };
        assert!(write_object(&p).unwrap_err().message.contains("max_entries"));
        let mut maps = sample_maps();
        maps[1].map_type = 0;
        let p = ElfProgram { maps: &maps, ..p };
        assert!(write_object(&p).unwrap_err().message.contains("no map type"));
        let p = ElfProgram { license: "GP\0L", maps: &[], ..p };
        assert!(write_object(&p).unwrap_err().message.contains("license"));
    }

    #[test]
    fn read_program_rejects_objects_without_exactly_one_program() {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
        let none = obj.write().unwrap();
        assert!(read_program(&none).unwrap_err().message.contains("no program section"));
        for name in ["a", "b"] {
            let s = obj.add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Text);
            obj.append_section_data(s, &[0x95, 0, 0, 0, 0, 0, 0, 0], 8);
        }
        let two = obj.write().unwrap();
        assert!(read_program(&two).unwrap_err().message.contains("more than one"));
        let x86 = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        assert!(read_program(&x86.write().unwrap()).unwrap_err().message.contains("not an eBPF"));
    }
}
