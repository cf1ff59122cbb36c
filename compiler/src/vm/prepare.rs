//! Static checks and rewrites that make rbpf 0.4.1 run a tc program the way the kernel would.
//!
//! - Rejects, with the instruction number, whatever rbpf would reject, mis-execute or panic
//!   on (see [`check_insn`]), plus loops and backward calls: rbpf has no instruction limit, so
//!   only loop-free programs are guaranteed to stop.
//! - Tracks which registers hold the context pointer (a one-pass dataflow: all edges go
//!   forward) and rewrites `ldxw rD, [ctx + data|data_end|data_meta]` into 64-bit loads of
//!   real packet pointers stored after the 192-byte `__sk_buff`, as the kernel's verifier
//!   does. Context accesses a tc program may not make are rejected.
//! - Prepends a prologue that reports the stack address to the helpers, so they can check
//!   the pointers a program passes them.

use std::collections::BTreeSet;

use super::skb::{offset, SK_BUFF_SIZE};
use super::VmError;

/// Most instructions a program may have (rbpf's limit, minus our prologue).
pub const MAX_INSNS: usize = 1_000_000 - PROLOGUE_INSNS;
/// Number of instructions [`prepare`] prepends.
pub const PROLOGUE_INSNS: usize = 4;
/// The pseudo-helper the prologue calls with `r2 = r10`.
pub(crate) const STACK_PROBE_HELPER: u32 = 0x7fff_0001;
/// Where the rewritten `data`, `data_end` and `data_meta` loads read 64-bit pointers.
pub(crate) const CTX_DATA: usize = SK_BUFF_SIZE;
pub(crate) const CTX_DATA_END: usize = SK_BUFF_SIZE + 8;
pub(crate) const CTX_DATA_META: usize = SK_BUFF_SIZE + 16;
/// Size of the context buffer given to rbpf.
pub(crate) const CTX_BUFFER_SIZE: usize = SK_BUFF_SIZE + 24;

/// A program ready for rbpf.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Prologue followed by the (rewritten) program.
    pub code: Vec<u8>,
    /// Map handles named by `LD_IMM64 src=1` (map fd) and `src=2` (map value) instructions.
    pub map_handles: BTreeSet<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Insn {
    opc: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

fn decode(bytes: &[u8]) -> Insn {
    let b = |i: usize| bytes.get(i).copied().unwrap_or(0);
    Insn {
        opc: b(0),
        dst: b(1) & 0x0f,
        src: b(1) >> 4,
        off: i16::from_le_bytes([b(2), b(3)]),
        imm: i32::from_le_bytes([b(4), b(5), b(6), b(7)]),
    }
}

fn encode(insn: Insn) -> [u8; 8] {
    let off = insn.off.to_le_bytes();
    let imm = insn.imm.to_le_bytes();
    [insn.opc, insn.dst | (insn.src << 4), off[0], off[1], imm[0], imm[1], imm[2], imm[3]]
}

// Instruction classes and fields of the eBPF encoding.
const CLS_LD: u8 = 0x00;
const CLS_LDX: u8 = 0x01;
const CLS_ST: u8 = 0x02;
const CLS_STX: u8 = 0x03;
const CLS_ALU: u8 = 0x04;
const CLS_JMP: u8 = 0x05;
const CLS_JMP32: u8 = 0x06;
const CLS_ALU64: u8 = 0x07;
const SRC_X: u8 = 0x08;
const MODE_MEM: u8 = 0x60;
const OP_DIV: u8 = 0x30;
const OP_NEG: u8 = 0x80;
const OP_MOD: u8 = 0x90;
const OP_MOV: u8 = 0xb0;
const OP_END: u8 = 0xd0;
const OP_JA: u8 = 0x00;
const OP_JEQ: u8 = 0x10;
const OP_JGT: u8 = 0x20;
const OP_JGE: u8 = 0x30;
const OP_JNE: u8 = 0x50;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const OP_JLT: u8 = 0xa0;
const OP_JLE: u8 = 0xb0;
const LD_IMM64: u8 = 0x18;
const LDX_DW: u8 = 0x79;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

fn size_of_access(opc: u8) -> i64 {
    match opc & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

/// What an instruction does to control flow.
enum Flow {
    Next,
    /// Conditional jump: next and target.
    Branch(usize),
    Jump(usize),
    /// Helper call (src 0) or bpf-to-bpf call (target).
    Call(Option<usize>),
    Exit,
    /// LD_IMM64: continues two slots on.
    Wide,
}

/// Checks one instruction and returns its control flow. `n` is the program length.
fn check_insn(
    pc: usize,
    insn: Insn,
    n: usize,
    helpers: &[u32],
    second_slot: &[bool],
) -> Result<Flow, String> {
    let class = insn.opc & 0x07;
    let op = insn.opc & 0xf0;
    let target = |off: i64| -> Result<usize, String> {
        if off < 0 {
            return Err("backward jump: the vm engine runs loop-free programs only (rbpf has \
                        no instruction limit)"
                .into());
        }
        let t = pc as i64 + 1 + off;
        if t >= n as i64 {
            return Err(format!("jump to #{t} is outside the program"));
        }
        if second_slot.get(t as usize).copied().unwrap_or(false) {
            return Err(format!("jump into the middle of LD_IMM64 at #{t}"));
        }
        Ok(t as usize)
    };
    if insn.dst > 10 || insn.src > 10 {
        return Err("invalid register".into());
    }
    let writes_dst = matches!(class, CLS_LD | CLS_LDX | CLS_ALU | CLS_ALU64);
    if writes_dst && insn.dst == 10 {
        return Err("r10 is read-only".into());
    }
    match class {
        CLS_LD => {
            if insn.opc != LD_IMM64 {
                return Err(format!(
                    "opcode {:#04x}: legacy packet loads (LD_ABS/LD_IND) are not supported: \
                     rbpf does not convert them to host byte order",
                    insn.opc
                ));
            }
            if pc + 1 >= n {
                return Err("LD_IMM64 is missing its second slot".into());
            }
            if insn.src > 2 {
                return Err(format!(
                    "LD_IMM64 src={} is not supported (only constants, map handles and map \
                     values)",
                    insn.src
                ));
            }
            Ok(Flow::Wide)
        }
        CLS_LDX | CLS_ST | CLS_STX => {
            let mode = insn.opc & 0xe0;
            if mode == MODE_MEM {
                Ok(Flow::Next)
            } else if mode == 0x80 && class == CLS_LDX {
                Err("sign-extending loads (ldsx) are not supported by rbpf 0.4.1".into())
            } else if mode == 0xc0 && class == CLS_STX {
                Err("atomic instructions are not supported by rbpf 0.4.1".into())
            } else {
                Err(format!("unknown opcode {:#04x}", insn.opc))
            }
        }
        CLS_ALU | CLS_ALU64 => {
            if op == OP_END {
                if class == CLS_ALU64 {
                    return Err("bswap (ALU64 END) is not supported by rbpf 0.4.1".into());
                }
                if !matches!(insn.imm, 16 | 32 | 64) {
                    return Err(format!("byte swap width {} is not 16, 32 or 64", insn.imm));
                }
                return Ok(Flow::Next);
            }
            if op > OP_END || (op == OP_NEG && insn.opc & SRC_X != 0) {
                return Err(format!("unknown opcode {:#04x}", insn.opc));
            }
            if insn.off != 0 {
                return Err(match op {
                    OP_DIV | OP_MOD => "signed division/modulo (sdiv/smod) is not supported: \
                                        rbpf 0.4.1 executes it as unsigned"
                        .into(),
                    OP_MOV => "sign-extending move (movsx) is not supported: rbpf 0.4.1 \
                               executes it as a plain mov"
                        .into(),
                    _ => "reserved offset field is not 0".into(),
                });
            }
            if matches!(op, OP_DIV | OP_MOD) && insn.opc & SRC_X == 0 && insn.imm == 0 {
                return Err("division by zero".into());
            }
            Ok(Flow::Next)
        }
        CLS_JMP | CLS_JMP32 => match op {
            OP_EXIT if insn.opc == EXIT => Ok(Flow::Exit),
            OP_CALL if insn.opc == CALL => match insn.src {
                0 => {
                    if helpers.contains(&(insn.imm as u32)) {
                        Ok(Flow::Call(None))
                    } else {
                        Err(format!("unknown helper {}", insn.imm))
                    }
                }
                1 => {
                    if insn.imm < 0 {
                        return Err("backward bpf-to-bpf call is not supported".into());
                    }
                    Ok(Flow::Call(Some(target(i64::from(insn.imm))?)))
                }
                src => Err(format!("call type src={src} (kfunc) is not supported")),
            },
            OP_JA if class == CLS_JMP && insn.opc & SRC_X == 0 => {
                Ok(Flow::Jump(jump_target_fits(target(i64::from(insn.off))?)?))
            }
            OP_JA | OP_CALL | OP_EXIT => Err(format!(
                "opcode {:#04x} is not supported by rbpf 0.4.1 (gotol, callx, tail-call insn)",
                insn.opc
            )),
            _ if op > 0xd0 => Err(format!("unknown opcode {:#04x}", insn.opc)),
            _ => {
                let unsigned_or_eq =
                    matches!(op, OP_JEQ | OP_JGT | OP_JGE | OP_JNE | OP_JLT | OP_JLE);
                if class == CLS_JMP && insn.opc & SRC_X == 0 && unsigned_or_eq && insn.imm < 0 {
                    return Err(format!(
                        "64-bit compare with negative immediate {}: rbpf 0.4.1 zero-extends it \
                         (the kernel sign-extends); compare against a register or use JMP32",
                        insn.imm
                    ));
                }
                Ok(Flow::Branch(jump_target_fits(target(i64::from(insn.off))?)?))
            }
        },
        _ => Err(format!("unknown opcode {:#04x}", insn.opc)),
    }
}

/// rbpf 0.4.1 computes jump targets in i16 and breaks past instruction 32767 (counted with
/// our prologue).
fn jump_target_fits(target: usize) -> Result<usize, String> {
    if target + PROLOGUE_INSNS > i16::MAX as usize {
        return Err(format!("jump target #{target} is beyond what rbpf 0.4.1 can jump to"));
    }
    Ok(target)
}

// Register kinds in the context-pointer dataflow.
const CTX: u8 = 1;
const SCALAR: u8 = 2;

/// Outcome of an access through a register that may be the context pointer.
#[derive(PartialEq, Eq, Debug)]
enum CtxAccess {
    Plain,
    /// Replace with a 64-bit load from this context offset.
    Pointer(i16),
}

fn ctx_load(off: i64, size: i64) -> Result<CtxAccess, String> {
    let end = off + size;
    if off < 0 || end > SK_BUFF_SIZE as i64 {
        return Err(format!("context load at offset {off} is outside __sk_buff"));
    }
    for (field, to) in [
        (offset::DATA, CTX_DATA),
        (offset::DATA_END, CTX_DATA_END),
        (offset::DATA_META, CTX_DATA_META),
    ] {
        let field = field as i64;
        if off < field + 4 && end > field {
            if off == field && size == 4 {
                return Ok(CtxAccess::Pointer(to as i16));
            }
            return Err(format!("context load at offset {off}: packet pointers are 32-bit loads"));
        }
    }
    let forbidden = [
        (offset::FAMILY, offset::DATA_META, "sk_skb-only socket fields"),
        (offset::FLOW_KEYS, offset::TSTAMP, "flow_keys"),
        (offset::SK, offset::GSO_SIZE, "the skb->sk pointer"),
    ];
    for (from, to, what) in forbidden {
        if off < to as i64 && end > from as i64 {
            return Err(format!("context load at offset {off} reads {what}, not modelled"));
        }
    }
    Ok(CtxAccess::Plain)
}

fn ctx_store(off: i64, size: i64) -> Result<(), String> {
    // Fields a tc program may write (the kernel's tc_cls_act_is_valid_access).
    let writable = [
        (offset::MARK, 4),
        (offset::QUEUE_MAPPING, 4),
        (offset::PRIORITY, 4),
        (offset::TC_INDEX, 4),
        (offset::CB, 20),
        (offset::TC_CLASSID, 4),
        (offset::TSTAMP, 8),
    ];
    if writable.iter().any(|&(at, len)| off >= at as i64 && off + size <= (at + len) as i64) {
        Ok(())
    } else {
        Err(format!("tc programs may not write context offset {off}"))
    }
}

/// Checks `program` (raw little-endian instructions) and builds the code rbpf runs.
pub(crate) fn prepare(program: &[u8], helpers: &[u32]) -> Result<Prepared, VmError> {
    let reject = |insn: usize, message: String| VmError::Rejected { insn: Some(insn), message };
    if program.is_empty() || !program.len().is_multiple_of(8) {
        return Err(VmError::Rejected {
            insn: None,
            message: format!("program is {} bytes, not a non-empty multiple of 8", program.len()),
        });
    }
    let n = program.len() / 8;
    if n > MAX_INSNS {
        return Err(VmError::Rejected {
            insn: None,
            message: format!("program has {n} instructions, more than {MAX_INSNS}"),
        });
    }
    let insns: Vec<Insn> = program.chunks_exact(8).map(decode).collect();
    let mut second_slot = vec![false; n];
    let mut pc = 0;
    while pc < n {
        if insns[pc].opc == LD_IMM64 {
            if let Some(slot) = second_slot.get_mut(pc + 1) {
                *slot = true;
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }

    let mut states: Vec<Option<[u8; 11]>> = vec![None; n];
    let mut entry = [SCALAR; 11];
    entry[1] = CTX;
    states[0] = Some(entry);
    let mut out = insns.clone();
    let mut map_handles = BTreeSet::new();
    let join = |states: &mut Vec<Option<[u8; 11]>>, at: usize, regs: [u8; 11]| {
        if let Some(slot) = states.get_mut(at) {
            let merged = match slot {
                Some(old) => std::array::from_fn(|r| old[r] | regs[r]),
                None => regs,
            };
            *slot = Some(merged);
        }
    };

    for pc in 0..n {
        if second_slot[pc] {
            let insn = insns[pc];
            if insn.opc != 0 || insn.dst != 0 || insn.src != 0 || insn.off != 0 {
                return Err(reject(pc, "malformed second slot of LD_IMM64".into()));
            }
            continue;
        }
        let Some(mut regs) = states[pc] else {
            return Err(reject(
                pc,
                "unreachable instruction (the kernel rejects dead code)".into(),
            ));
        };
        let insn = insns[pc];
        let flow = check_insn(pc, insn, n, helpers, &second_slot).map_err(|m| reject(pc, m))?;
        let (dst, src) = (insn.dst as usize, insn.src as usize);
        let class = insn.opc & 0x07;
        let may_be_ctx = |r: usize| regs[r] & CTX != 0;
        let ctx_reg_error = |r: usize, what: &str| {
            reject(pc, format!("r{r} may or may not hold the context pointer here; {what}"))
        };
        match class {
            CLS_LD => {
                if insn.src == 1 || insn.src == 2 {
                    map_handles.insert(insn.imm as u32);
                }
                regs[dst] = SCALAR;
            }
            CLS_LDX => {
                if may_be_ctx(src) {
                    let access = ctx_load(i64::from(insn.off), size_of_access(insn.opc))
                        .map_err(|m| reject(pc, m))?;
                    if let CtxAccess::Pointer(to) = access {
                        if regs[src] != CTX {
                            return Err(ctx_reg_error(src, "cannot rewrite a packet pointer load"));
                        }
                        out[pc] = Insn { opc: LDX_DW, off: to, ..insn };
                    }
                }
                regs[dst] = SCALAR;
            }
            CLS_ST | CLS_STX => {
                if class == CLS_STX && may_be_ctx(src) {
                    return Err(reject(
                        pc,
                        format!(
                            "r{src} (the context pointer) is stored to memory, which the vm \
                                 engine cannot track"
                        ),
                    ));
                }
                if may_be_ctx(dst) {
                    ctx_store(i64::from(insn.off), size_of_access(insn.opc))
                        .map_err(|m| reject(pc, m))?;
                }
            }
            CLS_ALU | CLS_ALU64 => {
                let uses_src = insn.opc & SRC_X != 0;
                let is_mov = insn.opc & 0xf0 == OP_MOV;
                if class == CLS_ALU64 && is_mov && uses_src {
                    regs[dst] = regs[src];
                } else {
                    // A mov overwrites dst; anything else computes with it.
                    let touches_ctx =
                        (!is_mov && regs[dst] == CTX) || (uses_src && regs[src] == CTX);
                    if touches_ctx {
                        return Err(reject(
                            pc,
                            "arithmetic on the context pointer is not supported".into(),
                        ));
                    }
                    regs[dst] = SCALAR;
                }
            }
            _ => {}
        }
        match flow {
            Flow::Next => join(&mut states, pc + 1, regs),
            Flow::Wide => join(&mut states, pc + 2, regs),
            Flow::Jump(t) => join(&mut states, t, regs),
            Flow::Branch(t) => {
                join(&mut states, pc + 1, regs);
                join(&mut states, t, regs);
            }
            Flow::Call(callee) => {
                if let Some(t) = callee {
                    join(&mut states, t, regs);
                }
                // Calls clobber r0-r5; subprograms are assumed to return scalars.
                for r in regs.iter_mut().take(6) {
                    *r = SCALAR;
                }
                join(&mut states, pc + 1, regs);
            }
            Flow::Exit => {}
        }
        let falls_through = matches!(flow, Flow::Next | Flow::Branch(_) | Flow::Call(_));
        let next = if matches!(flow, Flow::Wide) { pc + 2 } else { pc + 1 };
        if (falls_through || matches!(flow, Flow::Wide)) && next >= n {
            return Err(reject(pc, "execution falls off the end of the program".into()));
        }
    }

    let prologue = [
        // mov64 r2, r10; call STACK_PROBE; mov64 r0, 0; mov64 r2, 0
        Insn { opc: 0xbf, dst: 2, src: 10, off: 0, imm: 0 },
        Insn { opc: CALL, dst: 0, src: 0, off: 0, imm: STACK_PROBE_HELPER as i32 },
        Insn { opc: 0xb7, dst: 0, src: 0, off: 0, imm: 0 },
        Insn { opc: 0xb7, dst: 2, src: 0, off: 0, imm: 0 },
    ];
    let code = prologue.iter().chain(out.iter()).flat_map(|&i| encode(i)).collect();
    Ok(Prepared { code, map_handles })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(opc: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        encode(Insn { opc, dst, src, off, imm })
    }

    fn prog(insns: &[[u8; 8]]) -> Vec<u8> {
        insns.concat()
    }

    fn rejected(program: &[u8]) -> (Option<usize>, String) {
        match prepare(program, &[1, 2]) {
            Err(VmError::Rejected { insn, message }) => (insn, message),
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    const LDX_W: u8 = 0x61;
    const EXIT_I: [u8; 8] = [0x95, 0, 0, 0, 0, 0, 0, 0];
    const MOV_R0_0: [u8; 8] = [0xb7, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn rewrites_data_loads_through_copied_ctx() {
        let p = prog(&[
            raw(0xbf, 6, 1, 0, 0),   // r6 = r1
            raw(LDX_W, 2, 6, 76, 0), // r2 = skb->data
            raw(LDX_W, 3, 6, 80, 0), // r3 = skb->data_end
            raw(LDX_W, 4, 6, 8, 0),  // r4 = skb->mark (untouched)
            MOV_R0_0,
            EXIT_I,
        ]);
        let prepared = prepare(&p, &[]).unwrap();
        let body: Vec<Insn> =
            prepared.code.chunks_exact(8).skip(PROLOGUE_INSNS).map(decode).collect();
        assert_eq!((body[1].opc, body[1].off), (LDX_DW, CTX_DATA as i16));
        assert_eq!((body[2].opc, body[2].off), (LDX_DW, CTX_DATA_END as i16));
        assert_eq!((body[3].opc, body[3].off), (LDX_W, 8));
    }

    #[test]
    fn loads_at_data_offsets_from_other_pointers_are_untouched() {
        let p = prog(&[
            raw(0xbf, 2, 10, 0, 0), // r2 = fp
            raw(0x07, 2, 0, 0, -128),
            raw(LDX_W, 0, 2, 76, 0),
            EXIT_I,
        ]);
        let prepared = prepare(&p, &[]).unwrap();
        let body: Vec<Insn> =
            prepared.code.chunks_exact(8).skip(PROLOGUE_INSNS).map(decode).collect();
        assert_eq!((body[2].opc, body[2].off), (LDX_W, 76));
    }

    #[test]
    fn ambiguous_ctx_register_is_rejected() {
        // r2 is ctx on one path and the frame pointer on the other, then data is loaded.
        let p = prog(&[
            raw(0xbf, 2, 1, 0, 0),
            raw(0x15, 0, 0, 1, 0), // if r0 == 0 goto +1
            raw(0xbf, 2, 10, 0, 0),
            raw(LDX_W, 3, 2, 76, 0),
            MOV_R0_0,
            EXIT_I,
        ]);
        let (insn, msg) = rejected(&p);
        assert_eq!(insn, Some(3));
        assert!(msg.contains("may or may not"), "{msg}");
    }

    #[test]
    fn ctx_rules() {
        let load = |off: i16, opc: u8| prog(&[raw(opc, 0, 1, off, 0), EXIT_I]);
        assert!(rejected(&load(92, LDX_W)).1.contains("sk_skb"));
        assert!(rejected(&load(168, LDX_DW)).1.contains("sk"));
        assert!(rejected(&load(188, LDX_DW)).1.contains("outside"));
        assert!(rejected(&load(72, LDX_DW)).1.contains("32-bit"));
        assert!(prepare(&load(152, LDX_DW), &[]).is_ok());
        let store = |off: i16| prog(&[raw(0x62, 1, 0, off, 1), MOV_R0_0, EXIT_I]);
        assert!(prepare(&store(8), &[]).is_ok());
        assert!(prepare(&store(64), &[]).is_ok());
        assert!(rejected(&store(0)).1.contains("may not write"));
        let spill = prog(&[raw(0x7b, 10, 1, -8, 0), MOV_R0_0, EXIT_I]);
        assert!(rejected(&spill).1.contains("stored to memory"));
        let arith = prog(&[raw(0x07, 1, 0, 0, 8), MOV_R0_0, EXIT_I]);
        assert!(rejected(&arith).1.contains("arithmetic"));
    }

    #[test]
    fn structural_rejections_name_the_instruction() {
        assert_eq!(rejected(&prog(&[raw(0x05, 0, 0, -1, 0), EXIT_I])).0, Some(0));
        assert!(rejected(&prog(&[MOV_R0_0])).1.contains("falls off"));
        assert!(rejected(&prog(&[MOV_R0_0, raw(0x15, 0, 0, 0, 0)])).1.contains("outside"));
        assert!(rejected(&prog(&[raw(0x85, 0, 0, 0, 1)])).1.contains("falls off"));
        assert!(rejected(&prog(&[EXIT_I, EXIT_I])).1.contains("unreachable"));
        assert!(rejected(&prog(&[raw(0x85, 0, 0, 0, 99), EXIT_I])).1.contains("unknown helper 99"));
        assert!(rejected(&prog(&[raw(0x20, 0, 0, 0, 12), EXIT_I])).1.contains("LD_ABS"));
        assert!(rejected(&prog(&[raw(0x3f, 0, 1, 1, 0), EXIT_I])).1.contains("sdiv"));
        assert!(rejected(&prog(&[raw(0xbf, 0, 1, 8, 0), EXIT_I])).1.contains("movsx"));
        assert!(rejected(&prog(&[raw(0x81, 0, 10, -8, 0), EXIT_I])).1.contains("ldsx"));
        assert!(rejected(&prog(&[raw(0xd7, 0, 0, 0, 16), EXIT_I])).1.contains("bswap"));
        assert!(rejected(&prog(&[raw(0xdb, 10, 0, -8, 0), MOV_R0_0, EXIT_I])).1.contains("atomic"));
        assert!(rejected(&prog(&[raw(0x06, 0, 0, 0, 0), EXIT_I])).1.contains("gotol"));
        assert!(rejected(&prog(&[raw(0x15, 0, 0, 0, -1), EXIT_I])).1.contains("negative"));
        assert!(rejected(&prog(&[raw(0x37, 0, 0, 0, 0), EXIT_I])).1.contains("division by zero"));
        assert!(rejected(&prog(&[raw(0x18, 0, 3, 0, 1), [0; 8], EXIT_I])).1.contains("src=3"));
        assert!(rejected(&prog(&[raw(0xb7, 10, 0, 0, 0), EXIT_I])).1.contains("r10"));
        assert!(rejected(&[0u8; 12]).1.contains("multiple of 8"));
        // JMP32 with a negative immediate is fine: it compares 32 bits.
        assert!(prepare(&prog(&[raw(0x16, 0, 0, 0, -1), EXIT_I]), &[]).is_ok());
    }

    #[test]
    fn long_programs_and_far_jumps() {
        let mov = raw(0xb7, 0, 0, 0, 1);
        let mut far = vec![mov; 32_000];
        far.push(raw(0x05, 0, 0, 1_000, 0));
        far.extend(std::iter::repeat_n(mov, 1_000));
        far.push(EXIT_I);
        let (insn, msg) = rejected(&prog(&far));
        assert_eq!(insn, Some(32_000));
        assert!(msg.contains("beyond what rbpf"), "{msg}");
        // Straight-line code of any length up to the limit is fine.
        let mut long = vec![mov; 100_000];
        long.push(EXIT_I);
        assert!(prepare(&prog(&long), &[]).is_ok());
    }

    #[test]
    fn collects_map_handles() {
        let p = prog(&[
            raw(0x18, 1, 1, 0, 42),
            [0; 8],
            raw(0x18, 2, 0, 0, 7),
            [0; 8],
            raw(0x18, 3, 2, 0, 43),
            [0; 8],
            EXIT_I,
        ]);
        let prepared = prepare(&p, &[]).unwrap();
        assert_eq!(prepared.map_handles.into_iter().collect::<Vec<_>>(), vec![42, 43]);
    }
}
