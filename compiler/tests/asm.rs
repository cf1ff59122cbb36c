//! The assembler: encode/decode round trips, llvm-objdump agreement on a clang-built object,
//! label resolution and long-jump relaxation, and the annotated listing format.

use polc::asm::*;
use proptest::prelude::*;
use std::path::PathBuf;

fn testdata(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(p)
}

// ---------- random valid instructions ----------

fn reg() -> impl Strategy<Value = Reg> {
    (0u8..=10).prop_map(|n| Reg::new(n).unwrap())
}
fn width() -> impl Strategy<Value = Width> {
    prop_oneof![Just(Width::W32), Just(Width::W64)]
}
fn size() -> impl Strategy<Value = Size> {
    prop_oneof![Just(Size::B), Just(Size::H), Just(Size::W), Just(Size::DW)]
}
fn src() -> impl Strategy<Value = Src> {
    prop_oneof![reg().prop_map(Src::Reg), any::<i32>().prop_map(Src::Imm)]
}
fn alu_op() -> impl Strategy<Value = AluOp> {
    use AluOp::*;
    prop::sample::select(vec![
        Add, Sub, Mul, Div, SDiv, Or, And, Lsh, Rsh, Mod, SMod, Xor, Mov, MovSx8, MovSx16, MovSx32,
        Arsh,
    ])
}
fn cond() -> impl Strategy<Value = Cond> {
    use Cond::*;
    prop::sample::select(vec![Eq, Gt, Ge, Set, Ne, Sgt, Sge, Lt, Le, Slt, Sle])
}
fn atomic_op() -> impl Strategy<Value = AtomicOp> {
    use AtomicOp::*;
    prop::sample::select(vec![
        Add,
        Or,
        And,
        Xor,
        FetchAdd,
        FetchOr,
        FetchAnd,
        FetchXor,
        Xchg,
        CmpXchg,
        LoadAcquire,
        StoreRelease,
    ])
}
fn pseudo() -> impl Strategy<Value = Pseudo> {
    use Pseudo::*;
    prop::sample::select(vec![None, MapFd, MapValue, BtfId, Func, MapIdx, MapIdxValue])
}

fn any_insn() -> impl Strategy<Value = Insn> {
    prop_oneof![
        (width(), alu_op(), reg(), src()).prop_map(|(width, op, dst, src)| Insn::Alu {
            width,
            op,
            dst,
            src
        }),
        (width(), reg()).prop_map(|(width, dst)| Insn::Neg { width, dst }),
        (
            prop::sample::select(vec![Endian::ToLe, Endian::ToBe, Endian::Swap]),
            prop::sample::select(vec![16u8, 32, 64]),
            reg()
        )
            .prop_map(|(kind, bits, dst)| Insn::Endian { kind, bits, dst }),
        any::<i16>().prop_map(|off| Insn::Ja { off }),
        any::<i32>().prop_map(|off| Insn::JaLong { off }),
        any::<i16>().prop_map(|off| Insn::MayGoto { off }),
        (width(), cond(), reg(), src(), any::<i16>())
            .prop_map(|(width, cond, dst, src, off)| Insn::Jmp { width, cond, dst, src, off }),
        any::<i32>().prop_map(|id| Insn::Call(Callee::Helper(id))),
        any::<i32>().prop_map(|off| Insn::Call(Callee::Local(off))),
        (any::<i32>(), any::<i16>())
            .prop_map(|(btf_id, off)| Insn::Call(Callee::Kfunc { btf_id, off })),
        Just(Insn::Exit),
        (reg(), pseudo(), any::<u64>()).prop_map(|(dst, pseudo, imm)| Insn::LdImm64 {
            dst,
            pseudo,
            imm
        }),
        (size(), any::<i32>()).prop_map(|(size, imm)| Insn::LdAbs { size, imm }),
        (size(), reg(), any::<i32>()).prop_map(|(size, src, imm)| Insn::LdInd { size, src, imm }),
        (size(), any::<bool>(), reg(), reg(), any::<i16>())
            .prop_map(|(size, signed, dst, src, off)| Insn::Ldx { size, signed, dst, src, off }),
        (size(), reg(), any::<i16>(), any::<i32>()).prop_map(|(size, dst, off, imm)| Insn::St {
            size,
            dst,
            off,
            imm
        }),
        (size(), reg(), reg(), any::<i16>()).prop_map(|(size, dst, src, off)| Insn::Stx {
            size,
            dst,
            src,
            off
        }),
        (size(), atomic_op(), reg(), reg(), any::<i16>())
            .prop_map(|(size, op, dst, src, off)| Insn::Atomic { size, op, dst, src, off }),
    ]
    // Keep only combinations the instruction set has.
    .prop_filter("valid instruction", |i| i.validate().is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// encode -> decode -> encode is the identity, and decode gives back the same value.
    #[test]
    fn encode_decode_roundtrip(insns in prop::collection::vec(any_insn(), 1..20)) {
        let bytes = encode_program(&insns).unwrap();
        let decoded: Vec<Insn> = decode_program(&bytes).unwrap().into_iter().map(|(_, i)| i).collect();
        prop_assert_eq!(&decoded, &insns);
        prop_assert_eq!(encode_program(&decoded).unwrap(), bytes);
    }

    /// Arbitrary bytes: decoding never panics, and whatever decodes re-encodes byte for byte
    /// (the decoder is strict about reserved fields, like the kernel).
    #[test]
    fn decode_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(insns) = decode_program(&bytes) {
            let insns: Vec<Insn> = insns.into_iter().map(|(_, i)| i).collect();
            prop_assert_eq!(encode_program(&insns).unwrap(), bytes);
            for i in &insns {
                let _ = i.to_string();
            }
        }
    }
}

#[test]
fn invalid_combinations_are_errors_not_encodings() {
    let bad = [
        Insn::Alu { width: Width::W64, op: AluOp::MovSx8, dst: Reg::R1, src: Src::Imm(1) },
        Insn::Alu { width: Width::W32, op: AluOp::MovSx32, dst: Reg::R1, src: Src::Reg(Reg::R2) },
        Insn::Endian { kind: Endian::ToBe, bits: 8, dst: Reg::R1 },
        Insn::Ldx { size: Size::DW, signed: true, dst: Reg::R1, src: Reg::R2, off: 0 },
        Insn::LdAbs { size: Size::DW, imm: 0 },
        Insn::Atomic { size: Size::B, op: AtomicOp::Add, dst: Reg::R1, src: Reg::R2, off: 0 },
    ];
    for insn in bad {
        assert!(insn.encode().is_err(), "{insn:?} should not encode");
    }
    assert!(Reg::new(11).is_none());
    // Truncated 64-bit immediate and a bad opcode decode to errors.
    let ld = encode_program(&[Insn::ld_imm64(Reg::R1, 7)]).unwrap();
    assert!(decode_program(&ld[..8]).is_err());
    assert!(decode_program(&[0xff, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(decode_program(&[0; 7]).is_err());
}

// ---------- agreement with llvm-objdump ----------

/// The `tc` section of the clang-built object.
fn sample_text() -> Vec<u8> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(testdata("bpf/sample.o")).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let section = file.section_by_name("tc").unwrap();
    section.data().unwrap().to_vec()
}

/// `N:\tTEXT` lines of an llvm-objdump -d --no-show-raw-insn listing, target symbols removed.
fn objdump_lines(listing: &str) -> Vec<(usize, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let (n, text) = l.trim_start().split_once(":\t")?;
            let n: usize = n.parse().ok()?;
            // Drop a trailing jump-target symbol such as ` <sample+0x1b0>`.
            let text = match text.rfind(" <") {
                Some(i) if text.ends_with('>') && !text[i + 1..].contains(' ') => &text[..i],
                _ => text,
            };
            Some((n, text.trim_end().to_string()))
        })
        .collect()
}

#[test]
fn disassembly_matches_llvm_objdump() {
    let expected = objdump_lines(&std::fs::read_to_string(testdata("bpf/sample.objdump")).unwrap());
    let ours: Vec<(usize, String)> = decode_program(&sample_text())
        .unwrap()
        .into_iter()
        .map(|(slot, insn)| (slot, insn.to_string()))
        .collect();
    assert!(expected.len() > 80, "the reference listing covers the instruction set");
    assert_eq!(ours.len(), expected.len());
    for (o, e) in ours.iter().zip(&expected) {
        assert_eq!(o, e);
    }
    // Re-encoding the decoded program reproduces clang's bytes exactly.
    let insns: Vec<Insn> =
        decode_program(&sample_text()).unwrap().into_iter().map(|x| x.1).collect();
    assert_eq!(encode_program(&insns).unwrap(), sample_text());
}

/// The committed reference listing is what llvm-objdump prints today (when it is installed).
#[test]
fn committed_objdump_listing_is_current() {
    let tool = PathBuf::from("/usr/lib/llvm-22/bin/llvm-objdump");
    if !tool.exists() {
        eprintln!("SKIP: {} not installed (scripts/setup.sh installs it)", tool.display());
        return;
    }
    let out = std::process::Command::new(&tool)
        .args(["-d", "--no-show-raw-insn"])
        .arg(testdata("bpf/sample.o"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let fresh = objdump_lines(&String::from_utf8_lossy(&out.stdout));
    let committed =
        objdump_lines(&std::fs::read_to_string(testdata("bpf/sample.objdump")).unwrap());
    assert_eq!(fresh, committed);
}

// ---------- builder ----------

/// Follow every jump of an assembled program and return (slot of jump, slot of target).
fn jump_targets(prog: &Program) -> Vec<(usize, i64)> {
    let mut out = vec![];
    let mut slot = 0usize;
    for insn in &prog.insns {
        let off = match *insn {
            Insn::Ja { off } | Insn::Jmp { off, .. } => Some(off as i64),
            Insn::JaLong { off } => Some(off as i64),
            _ => None,
        };
        if let Some(off) = off {
            out.push((slot, slot as i64 + 1 + off));
        }
        slot += insn.slots();
    }
    out
}

#[test]
fn labels_resolve_forward_and_backward() {
    let mut a = Asm::new();
    let top = a.label();
    let end = a.label();
    a.bind(top);
    a.push(Insn::ld_imm64(Reg::R1, 1 << 40)); // two slots
    a.jump_if(Cond::Eq, Reg::R1, 0, end);
    a.push(Insn::alu64(AluOp::Sub, Reg::R1, 1));
    a.jump(top);
    a.bind(end);
    a.push(Insn::exit());
    let prog = a.assemble().unwrap();
    assert_eq!(jump_targets(&prog), vec![(2, 5), (4, 0)]);
    assert_eq!(prog.insns[1].to_string(), "if r1 == 0x0 goto +0x2");
    assert_eq!(prog.insns[3].to_string(), "goto -0x5");
}

#[test]
fn out_of_range_jumps_become_long_and_still_land() {
    for cond in [Some(Cond::Eq), Some(Cond::Set), Some(Cond::Sle), None] {
        let mut a = Asm::new();
        let far = a.label();
        let body = a.label();
        // Keeps the code after an unconditional jump reachable (it would be removed).
        a.jump_if(Cond::Eq, Reg::R9, 7, body);
        match cond {
            Some(c) => a.jump_if(c, Reg::R2, 6, far),
            None => a.jump(far),
        }
        a.bind(body);
        a.push(Insn::mov64(Reg::R0, 1));
        for _ in 0..40_000 {
            a.push(Insn::mov64(Reg::R3, 0));
        }
        a.bind(far);
        a.push(Insn::mov64(Reg::R0, 2));
        a.push(Insn::exit());
        let prog = a.assemble().unwrap();
        let far_slot = prog.slot_count() as i64 - 2;
        let targets = jump_targets(&prog);
        // The taken path reaches `far`; the fall-through reaches `r0 = 1`.
        let fallthrough = match cond {
            None => None,
            Some(c) if c.negate().is_some() => Some(3),
            Some(_) => Some(4),
        };
        assert!(targets.iter().any(|&(_, t)| t == far_slot), "{cond:?}: {targets:?}");
        assert!(prog.insns.iter().any(|i| matches!(i, Insn::JaLong { .. })));
        if let Some(ft) = fallthrough {
            assert_eq!(prog.insns[ft], Insn::mov64(Reg::R0, 1), "{cond:?}");
            // Every short jump stays inside the program.
            assert!(targets.iter().all(|&(_, t)| t >= 0 && t <= far_slot));
        }
    }
}

#[test]
fn unreachable_code_is_removed_with_its_comments() {
    let mut a = Asm::new();
    let end = a.label();
    a.jump(end);
    a.comment("shadowed rule");
    a.push(Insn::mov64(Reg::R0, 1));
    a.comment("decide");
    a.bind(end);
    a.push(Insn::mov64(Reg::R0, 2));
    a.push(Insn::exit());
    let prog = a.assemble().unwrap();
    // The jump, now to the next instruction, goes too.
    assert_eq!(prog.insns, vec![Insn::mov64(Reg::R0, 2), Insn::exit()]);
    assert_eq!(
        prog.comments,
        vec![(0, "unreachable, removed: shadowed rule".to_string()), (0, "decide".to_string())]
    );
}

#[test]
fn builder_errors_are_values() {
    let mut a = Asm::new();
    let l = a.label();
    a.jump(l);
    assert_eq!(a.assemble(), Err(AsmError::UnboundLabel(0)));
    a.bind(l);
    a.bind(l);
    assert_eq!(a.assemble(), Err(AsmError::LabelBoundTwice(0)));

    let mut a = Asm::new();
    a.push(Insn::Endian { kind: Endian::ToBe, bits: 12, dst: Reg::R1 });
    assert!(matches!(a.assemble(), Err(AsmError::Invalid { .. })));

    let mut a = Asm::new();
    for _ in 0..MAX_INSNS {
        a.push(Insn::mov64(Reg::R0, 0));
    }
    a.push(Insn::exit());
    assert!(matches!(a.assemble(), Err(AsmError::TooLarge(_))));
}

#[test]
fn listing_shows_provenance_names_and_targets() {
    let mut a = Asm::new();
    let deny = a.label();
    a.comment("tier security, policy security.block-bad (GlobalNetworkPolicy), rule 0: Deny");
    a.push(Insn::ldx(Size::B, Reg::R2, Reg::R6, 40));
    a.jump_if(Cond::Eq, Reg::R2, 6, deny);
    a.push(Insn::ld_map_fd(Reg::R1, 3));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.push(Insn::mov64(Reg::R0, 0));
    a.push(Insn::exit());
    a.comment("default: end of tier security");
    a.bind(deny);
    a.push(Insn::mov64(Reg::R0, 2));
    a.push(Insn::exit());
    let prog = a.assemble().unwrap();
    let names = |h: u64| (h == 3).then(|| "polc_ipsets".to_string());
    let listing = prog.listing(Some(&names));
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("asm_listing", listing);
    });
}
