//! The ELF writer against the real toolchain: read-back, bpftool/libbpf 1.x loading (with
//! BTF-defined maps and relocations) and llvm-objdump decoding.

use std::path::{Path, PathBuf};
use std::process::Command;

use polc::elf::{
    read_program, write_object, ElfMap, ElfProgram, MapReloc, BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_PROG_ARRAY,
};

// Minimal instruction encoding: opcode, dst | src << 4, off (i16 LE), imm (i32 LE).
fn insn(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    [opcode, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]]
}

/// Program text being assembled: 8-byte slots plus the map relocations.
#[derive(Default)]
struct Code {
    bytes: Vec<u8>,
    relocs: Vec<MapReloc>,
    /// Instructions as a disassembler counts them (LD_IMM64 is one).
    insn_count: usize,
}

impl Code {
    fn push(&mut self, slot: [u8; 8]) -> &mut Self {
        self.bytes.extend_from_slice(&slot);
        self.insn_count += 1;
        self
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(0xb7, dst, 0, 0, imm))
    }
    fn mov_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.push(insn(0xbf, dst, src, 0, 0))
    }
    fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(0x07, dst, 0, 0, imm))
    }
    /// `*(u32 *)(dst + off) = imm`
    fn store_w(&mut self, dst: u8, off: i16, imm: i32) -> &mut Self {
        self.push(insn(0x62, dst, 0, off, imm))
    }
    /// `dst = map` (LD_IMM64 with src = BPF_PSEUDO_MAP_FD), recording the relocation.
    fn ld_map(&mut self, dst: u8, map: usize) -> &mut Self {
        self.relocs.push(MapReloc { insn_index: self.bytes.len() / 8, map });
        self.bytes.extend_from_slice(&insn(0x18, dst, 1, 0, 0));
        self.bytes.extend_from_slice(&insn(0, 0, 0, 0, 0));
        self.insn_count += 1;
        self
    }
    /// `dst = &map[0] + offset` (LD_IMM64 with src = BPF_PSEUDO_MAP_VALUE; in the object the
    /// first immediate holds the offset), recording the relocation.
    fn ld_map_value(&mut self, dst: u8, map: usize, offset: i32) -> &mut Self {
        self.relocs.push(MapReloc { insn_index: self.bytes.len() / 8, map });
        self.bytes.extend_from_slice(&insn(0x18, dst, 2, 0, offset));
        self.bytes.extend_from_slice(&insn(0, 0, 0, 0, 0));
        self.insn_count += 1;
        self
    }
    /// `dst = *(u32 *)(src + off)`
    fn load_w(&mut self, dst: u8, src: u8, off: i16) -> &mut Self {
        self.push(insn(0x61, dst, src, off, 0))
    }
    fn call(&mut self, helper: i32) -> &mut Self {
        self.push(insn(0x85, 0, 0, 0, helper))
    }
    fn exit(&mut self) -> &mut Self {
        self.push(insn(0x95, 0, 0, 0, 0))
    }
}

fn return_zero() -> Code {
    let mut c = Code::default();
    c.mov_imm(0, 0).exit();
    c
}

fn test_maps() -> Vec<ElfMap> {
    vec![
        ElfMap {
            name: "polc_hash".into(),
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 16,
            map_flags: 0,
            direct: false,
        },
        ElfMap {
            name: "polc_lpm".into(),
            map_type: BPF_MAP_TYPE_LPM_TRIE,
            key_size: 8,
            value_size: 4,
            max_entries: 64,
            map_flags: BPF_F_NO_PREALLOC,
            direct: false,
        },
        ElfMap {
            name: "polc_jump".into(),
            map_type: BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 4,
            map_flags: 0,
            direct: false,
        },
    ]
}

/// Hash lookup, LPM-trie lookup (key = prefixlen 32, 0.0.0.0), tail call, return 0.
fn lookups_and_tail_call() -> Code {
    let mut c = Code::default();
    c.mov_reg(6, 1) // keep ctx
        .store_w(10, -4, 7)
        .mov_reg(2, 10)
        .add_imm(2, -4)
        .ld_map(1, 0)
        .call(1) // bpf_map_lookup_elem
        .store_w(10, -16, 32)
        .store_w(10, -12, 0)
        .mov_reg(2, 10)
        .add_imm(2, -16)
        .ld_map(1, 1)
        .call(1)
        .mov_reg(1, 6)
        .ld_map(2, 2)
        .mov_imm(3, 0)
        .call(12) // bpf_tail_call
        .mov_imm(0, 0)
        .exit();
    c
}

fn program<'a>(code: &'a Code, maps: &'a [ElfMap]) -> ElfProgram<'a> {
    ElfProgram {
        name: "polc_prog",
        section: "tc",
        insns: &code.bytes,
        license: "GPL",
        maps,
        relocs: &code.relocs,
    }
}

fn kernel_required() -> bool {
    std::env::var("POLC_REQUIRE_KERNEL").is_ok_and(|v| v == "1")
}

/// Prints SKIP and returns true, or panics when the kernel is required.
fn skip(reason: &str) -> bool {
    assert!(!kernel_required(), "POLC_REQUIRE_KERNEL=1 but: {reason}");
    eprintln!("SKIP: {reason}");
    true
}

fn find_tool(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Returns bpftool when this process can load programs, after making sure bpffs is mounted.
fn kernel_bpftool() -> Option<PathBuf> {
    let Some(bpftool) = find_tool(&["/usr/sbin/bpftool", "/usr/bin/bpftool"]) else {
        skip("bpftool not installed");
        return None;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root, cannot load BPF programs");
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if !mounted {
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip("/sys/fs/bpf is not a bpf mount and mounting it failed");
            return None;
        }
    }
    Some(bpftool)
}

/// Removes the pin (and thereby the program and its maps) however the test ends.
struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the object to a temp file and pins it with `bpftool prog load`.
fn bpftool_load(bpftool: &Path, obj: &[u8], tag: &str) -> Pin {
    let dir = std::env::temp_dir();
    let obj_path = dir.join(format!("polc_elf_{tag}_{}.o", std::process::id()));
    std::fs::write(&obj_path, obj).unwrap();
    let pin = Pin(PathBuf::from(format!("/sys/fs/bpf/polc_elf_{tag}_{}", std::process::id())));
    let _ = std::fs::remove_file(&pin.0);
    let out = Command::new(bpftool)
        .args(["prog", "load"])
        .arg(&obj_path)
        .arg(&pin.0)
        .args(["type", "classifier"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&obj_path);
    assert!(
        out.status.success(),
        "bpftool prog load failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libbpf only warns when the kernel rejects .BTF ("BTF is optional, ignoring") and the load
    // still succeeds, so a clean stderr is the proof that the kernel accepted our BTF.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.trim().is_empty(), "bpftool prog load succeeded but libbpf complained:\n{log}");
    pin
}

/// Loads `obj` with bpftool: its pin, `prog show` of it, and `map show` of every map it uses.
fn load_and_show(
    bpftool: &Path,
    obj: &[u8],
    tag: &str,
) -> (Pin, serde_json::Value, Vec<serde_json::Value>) {
    let pin = bpftool_load(bpftool, obj, tag);
    let pin_path = pin.0.to_string_lossy().into_owned();
    let info = bpftool_json(bpftool, &["prog", "show", "pinned", &pin_path]);
    let map_ids = info["map_ids"].as_array().expect("map_ids").clone();
    let shown = (map_ids.iter())
        .map(|id| {
            let id = id.as_u64().expect("numeric map id").to_string();
            bpftool_json(bpftool, &["map", "show", "id", &id])
        })
        .collect();
    (pin, info, shown)
}

fn bpftool_json(bpftool: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bpftool).args(args).arg("-j").output().unwrap();
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decoded instruction count from llvm-objdump, or None (with a message) if it is missing.
fn objdump_insn_count(obj: &[u8], tag: &str) -> Option<usize> {
    // LLVM 22 first: Debian's default llvm-objdump (LLVM 14) shows store-immediate (0x62)
    // as <unknown>.
    let Some(objdump) = find_tool(&["/usr/lib/llvm-22/bin/llvm-objdump", "/usr/bin/llvm-objdump"])
    else {
        eprintln!("llvm-objdump not found, skipping the disassembly check");
        return None;
    };
    let path = std::env::temp_dir().join(format!("polc_objdump_{tag}_{}.o", std::process::id()));
    std::fs::write(&path, obj).unwrap();
    let out = Command::new(objdump).arg("-d").arg(&path).output().unwrap();
    if std::env::var_os("POLC_ELF_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
    }
    assert!(out.status.success(), "llvm-objdump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("<unknown>"), "llvm-objdump could not decode:\n{text}");
    // Instruction lines look like "       3:\tbf 12 00 ...\tr2 = r1".
    let count = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.split_once(':').is_some_and(|(addr, rest)| {
                !addr.is_empty()
                    && addr.chars().all(|c| c.is_ascii_hexdigit())
                    && rest.starts_with('\t')
            })
        })
        .count();
    Some(count)
}

#[test]
fn round_trip_without_maps() {
    let code = return_zero();
    let obj = write_object(&program(&code, &[])).unwrap();
    eprintln!("object without maps: {} bytes", obj.len());
    let (section, insns) = read_program(&obj).unwrap();
    assert_eq!(section, "tc");
    assert_eq!(insns, code.bytes);
}

#[test]
fn round_trip_with_maps() {
    let code = lookups_and_tail_call();
    let maps = test_maps();
    let mut p = program(&code, &maps);
    p.section = "classifier";
    let obj = write_object(&p).unwrap();
    eprintln!("object with 3 maps: {} bytes", obj.len());
    let (section, insns) = read_program(&obj).unwrap();
    assert_eq!(section, "classifier");
    assert_eq!(insns, code.bytes);
}

#[test]
fn objdump_decodes_every_instruction() {
    for (tag, code, maps) in
        [("plain", return_zero(), vec![]), ("maps", lookups_and_tail_call(), test_maps())]
    {
        let obj = write_object(&program(&code, &maps)).unwrap();
        if let Some(n) = objdump_insn_count(&obj, tag) {
            assert_eq!(n, code.insn_count, "{tag}: llvm-objdump instruction count");
        }
    }
}

#[test]
fn bpftool_loads_program_without_maps() {
    let Some(bpftool) = kernel_bpftool() else { return };
    let code = return_zero();
    let obj = write_object(&program(&code, &[])).unwrap();
    let pin = bpftool_load(&bpftool, &obj, "plain");
    let pin_path = pin.0.to_string_lossy().into_owned();
    let info = bpftool_json(&bpftool, &["prog", "show", "pinned", &pin_path]);
    assert_eq!(info["type"], "sched_cls", "{info}");
    assert_eq!(info["name"], "polc_prog", "{info}");
    assert_eq!(info["gpl_compatible"], true, "{info}");
    assert!(info.get("map_ids").is_none(), "{info}");
}

#[test]
fn bpftool_loads_program_with_btf_maps() {
    let Some(bpftool) = kernel_bpftool() else { return };
    let code = lookups_and_tail_call();
    let maps = test_maps();
    let obj = write_object(&program(&code, &maps)).unwrap();
    let (_pin, info, shown) = load_and_show(&bpftool, &obj, "maps");
    assert_eq!(info["type"], "sched_cls", "{info}");
    assert_eq!(shown.len(), maps.len(), "{info}");
    for (map, kernel_type) in maps.iter().zip(["hash", "lpm_trie", "prog_array"]) {
        let m = shown
            .iter()
            .find(|m| m["name"] == map.name.as_str())
            .unwrap_or_else(|| panic!("map {} not among {shown:?}", map.name));
        assert_eq!(m["type"], kernel_type, "{m}");
        assert_eq!(m["bytes_key"], map.key_size, "{m}");
        assert_eq!(m["bytes_value"], map.value_size, "{m}");
        assert_eq!(m["max_entries"], map.max_entries, "{m}");
        assert_eq!(m["flags"], map.map_flags, "{m}");
    }
}

/// Two tables the program addresses directly, and the hash map it looks up in.
fn direct_maps() -> Vec<ElfMap> {
    let table = |name: &str, value_size| ElfMap {
        name: name.into(),
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: 0,
        direct: true,
    };
    vec![table("polc_first", 20), test_maps().remove(0), table("polc_second", 4096)]
}

/// Reads a word of each table (the second at a variable offset the verifier must bound),
/// looks up the hash map, returns the sum.
fn direct_reads() -> Code {
    let mut c = Code::default();
    c.ld_map_value(6, 0, 16)
        .load_w(6, 6, 0)
        .mov_reg(1, 6)
        .push(insn(0x57, 1, 0, 0, 0xffc)) // r1 &= 0xffc: inside the 4 KiB table
        .ld_map_value(0, 2, 0)
        .push(insn(0x0f, 0, 1, 0, 0)) // r0 += r1
        .load_w(7, 0, 0)
        .store_w(10, -4, 7)
        .mov_reg(2, 10)
        .add_imm(2, -4)
        .ld_map(1, 1)
        .call(1)
        .mov_reg(0, 6)
        .push(insn(0x0f, 0, 7, 0, 0))
        .exit();
    c
}

#[test]
fn directly_addressed_maps_are_bss_variables() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let code = direct_reads();
    let maps = direct_maps();
    let obj = write_object(&program(&code, &maps)).unwrap();
    let file = object::File::parse(obj.as_slice()).unwrap();
    let bss = file.section_by_name(".bss").expect(".bss");
    assert_eq!(bss.size(), 24 + 4096, "each variable 8-byte aligned");
    let sym = |name: &str| file.symbols().find(|s| s.name() == Ok(name)).expect(name);
    assert_eq!((sym("polc_first").address(), sym("polc_first").size()), (0, 20));
    assert_eq!((sym("polc_second").address(), sym("polc_second").size()), (24, 4096));
    assert_eq!(sym("polc_second").section_index(), Some(bss.index()));
    assert_ne!(sym("polc_hash").section_index(), Some(bss.index()));
}

#[test]
fn bpftool_loads_program_with_directly_addressed_maps() {
    let Some(bpftool) = kernel_bpftool() else { return };
    let code = direct_reads();
    let maps = direct_maps();
    let obj = write_object(&program(&code, &maps)).unwrap();
    let (_pin, info, shown) = load_and_show(&bpftool, &obj, "direct");
    // libbpf makes `.bss` one array map holding both tables.
    assert_eq!(shown.len(), 2, "{info}");
    let bss = shown.iter().find(|m| m["name"].as_str().is_some_and(|n| n.ends_with(".bss")));
    let bss = bss.unwrap_or_else(|| panic!("no .bss map among {shown:?}"));
    assert_eq!((bss["type"].as_str(), bss["max_entries"].as_u64()), (Some("array"), Some(1)));
    assert_eq!(bss["bytes_value"], 24 + 4096, "{bss}");
    assert!(shown.iter().any(|m| m["name"] == "polc_hash"), "{shown:?}");
}

fn write_err(p: &ElfProgram) -> String {
    match write_object(p) {
        Ok(_) => panic!("expected an error for {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_inputs_are_errors() {
    let code = lookups_and_tail_call();
    let maps = test_maps();
    let good = program(&code, &maps);
    assert!(write_object(&good).is_ok());

    // Relocation at the slot after an LD_IMM64 (opcode 0, not 0x18).
    let mut relocs = code.relocs.clone();
    relocs[0].insn_index += 1;
    let msg = write_err(&ElfProgram { relocs: &relocs, ..good });
    assert!(msg.contains("not LD_IMM64"), "{msg}");

    // Relocation past the end.
    let relocs = [MapReloc { insn_index: code.bytes.len() / 8, map: 0 }];
    let msg = write_err(&ElfProgram { relocs: &relocs, ..good });
    assert!(msg.contains("out of range"), "{msg}");

    // LD_IMM64 in the last slot has no second half.
    let mut bytes = code.bytes.clone();
    bytes.extend_from_slice(&insn(0x18, 1, 1, 0, 0));
    let relocs = [MapReloc { insn_index: bytes.len() / 8 - 1, map: 0 }];
    let msg = write_err(&ElfProgram { insns: &bytes, relocs: &relocs, ..good });
    assert!(msg.contains("out of range"), "{msg}");

    // Map index out of range.
    let mut relocs = code.relocs.clone();
    relocs[0].map = maps.len();
    let msg = write_err(&ElfProgram { relocs: &relocs, ..good });
    assert!(msg.contains("map 3 but there are 3 maps"), "{msg}");

    // Names.
    assert!(write_err(&ElfProgram { name: "", ..good }).contains("program name is empty"));
    assert!(write_err(&ElfProgram { name: "a\0b", ..good }).contains("NUL"));
    assert!(write_err(&ElfProgram { section: "", ..good }).contains("section name is empty"));
    assert!(write_err(&ElfProgram { section: ".maps", ..good }).contains("reserved"));
    // A directly addressed map must be a one-entry array, and addressed as a value.
    let (direct_code, direct) = (direct_reads(), direct_maps());
    let direct_good = program(&direct_code, &direct);
    let mut bad = direct.clone();
    bad[2].max_entries = 2;
    let msg = write_err(&ElfProgram { maps: &bad, ..direct_good });
    assert!(msg.contains("array with one entry"), "{msg}");
    let mut bad = direct.clone();
    bad[1].direct = true;
    let msg = write_err(&ElfProgram { maps: &bad, ..direct_good });
    assert!(msg.contains("array with one entry"), "{msg}");
    let mut bad = direct.clone();
    bad[0].direct = false;
    let msg = write_err(&ElfProgram { maps: &bad, ..direct_good });
    assert!(msg.contains("src_reg 2 does not match"), "{msg}");

    let mut bad_maps = maps.clone();
    bad_maps[1].name = "has.dot".into();
    assert!(write_err(&ElfProgram { maps: &bad_maps, ..good }).contains("not a C identifier"));
    let mut bad_maps = maps.clone();
    bad_maps[1].name = bad_maps[0].name.clone();
    assert!(write_err(&ElfProgram { maps: &bad_maps, ..good }).contains("duplicate"));

    // Instruction bytes.
    assert!(write_err(&ElfProgram { insns: &code.bytes[..12], ..good }).contains("multiple of 8"));
    assert!(write_err(&ElfProgram { insns: &[], relocs: &[], ..good }).contains("multiple of 8"));

    // read_program on garbage and on a non-BPF object.
    assert!(read_program(b"not an elf").is_err());
    assert!(read_program(&[]).is_err());
}
