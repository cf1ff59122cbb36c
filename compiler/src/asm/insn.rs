//! Typed eBPF instructions and their 8-byte encoding (Documentation/bpf/standardization/
//! instruction-set.rst), little-endian. One `Insn` is one instruction; `LdImm64` is the only
//! one that occupies two 8-byte slots.

use std::fmt;

/// A register, r0..r10 (r10 is the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reg(u8);

impl Reg {
    pub const R0: Reg = Reg(0);
    pub const R1: Reg = Reg(1);
    pub const R2: Reg = Reg(2);
    pub const R3: Reg = Reg(3);
    pub const R4: Reg = Reg(4);
    pub const R5: Reg = Reg(5);
    pub const R6: Reg = Reg(6);
    pub const R7: Reg = Reg(7);
    pub const R8: Reg = Reg(8);
    pub const R9: Reg = Reg(9);
    pub const R10: Reg = Reg(10);
    /// The frame pointer.
    pub const FP: Reg = Reg(10);

    /// `None` for numbers above 10.
    pub fn new(n: u8) -> Option<Reg> {
        (n <= 10).then_some(Reg(n))
    }
    pub fn num(self) -> u8 {
        self.0
    }
}

/// Operand width: the ALU/ALU64 and JMP32/JMP class split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    W32,
    W64,
}

/// Second operand of ALU and conditional-jump instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Src {
    Reg(Reg),
    Imm(i32),
}

impl From<Reg> for Src {
    fn from(r: Reg) -> Src {
        Src::Reg(r)
    }
}
impl From<i32> for Src {
    fn from(i: i32) -> Src {
        Src::Imm(i)
    }
}

/// Binary ALU operations (`dst op= src`). Signed div/mod are `SDiv`/`SMod` (offset 1);
/// sign-extending moves are `MovSx8/16/32` (offset 8/16/32, register source only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Div,
    SDiv,
    Or,
    And,
    Lsh,
    Rsh,
    Mod,
    SMod,
    Xor,
    Mov,
    MovSx8,
    MovSx16,
    MovSx32,
    Arsh,
}

/// Byte-order conversions: `ToLe`/`ToBe` (ALU class), `Swap` (ALU64 class, unconditional bswap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    ToLe,
    ToBe,
    Swap,
}

/// Conditions of conditional jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    Eq,
    Gt,
    Ge,
    Set,
    Ne,
    Sgt,
    Sge,
    Lt,
    Le,
    Slt,
    Sle,
}

impl Cond {
    /// The condition that holds exactly when `self` does not.
    pub fn negate(self) -> Option<Cond> {
        Some(match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Gt => Cond::Le,
            Cond::Le => Cond::Gt,
            Cond::Ge => Cond::Lt,
            Cond::Lt => Cond::Ge,
            Cond::Sgt => Cond::Sle,
            Cond::Sle => Cond::Sgt,
            Cond::Sge => Cond::Slt,
            Cond::Slt => Cond::Sge,
            // `if dst & src` has no single-instruction negation.
            Cond::Set => return None,
        })
    }
}

/// Memory access size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    pub fn bytes(self) -> u32 {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }
}

/// Atomic read-modify-write operations (STX | ATOMIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AtomicOp {
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
    /// `dst = load_acquire(src + off)`.
    LoadAcquire,
    /// `store_release(dst + off, src)`.
    StoreRelease,
}

/// The `src_reg` tag of a 64-bit immediate load: what the kernel should put in `imm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pseudo {
    /// A plain 64-bit constant.
    None,
    /// BPF_PSEUDO_MAP_FD: imm is a map fd (or, in polc, a map handle the loader patches).
    MapFd,
    /// BPF_PSEUDO_MAP_VALUE: low imm is a map fd, high imm an offset into its value.
    MapValue,
    /// BPF_PSEUDO_BTF_ID: imm is a kernel BTF id of a variable.
    BtfId,
    /// BPF_PSEUDO_FUNC: imm is the instruction offset of a subprogram.
    Func,
    /// BPF_PSEUDO_MAP_IDX: imm is an index into the fd_array given at load time.
    MapIdx,
    /// BPF_PSEUDO_MAP_IDX_VALUE.
    MapIdxValue,
}

impl Pseudo {
    fn code(self) -> u8 {
        match self {
            Pseudo::None => 0,
            Pseudo::MapFd => 1,
            Pseudo::MapValue => 2,
            Pseudo::BtfId => 3,
            Pseudo::Func => 4,
            Pseudo::MapIdx => 5,
            Pseudo::MapIdxValue => 6,
        }
    }
    fn from_code(c: u8) -> Option<Pseudo> {
        Some(match c {
            0 => Pseudo::None,
            1 => Pseudo::MapFd,
            2 => Pseudo::MapValue,
            3 => Pseudo::BtfId,
            4 => Pseudo::Func,
            5 => Pseudo::MapIdx,
            6 => Pseudo::MapIdxValue,
            _ => return None,
        })
    }
}

/// What a CALL instruction calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Callee {
    /// A helper by number (`call bpf_map_lookup_elem` is `Helper(1)`).
    Helper(i32),
    /// A bpf-to-bpf call: offset in instructions relative to the next instruction.
    Local(i32),
    /// A kfunc by BTF id; `off` selects the BTF object (0 = vmlinux).
    Kfunc { btf_id: i32, off: i16 },
}

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `dst op= src` (ALU/ALU64 classes).
    Alu {
        width: Width,
        op: AluOp,
        dst: Reg,
        src: Src,
    },
    /// `dst = -dst`.
    Neg {
        width: Width,
        dst: Reg,
    },
    /// `dst = be16 dst` etc.; `bits` is 16, 32 or 64.
    Endian {
        kind: Endian,
        bits: u8,
        dst: Reg,
    },
    /// `goto +off` (16-bit offset).
    Ja {
        off: i16,
    },
    /// `gotol +off` (32-bit offset, JMP32 class).
    JaLong {
        off: i32,
    },
    /// `if dst cond src goto +off`.
    Jmp {
        width: Width,
        cond: Cond,
        dst: Reg,
        src: Src,
        off: i16,
    },
    /// `may_goto +off`: a jump the kernel may take to bound loops.
    MayGoto {
        off: i16,
    },
    Call(Callee),
    Exit,
    /// `dst = imm64` with a pseudo source tag (two slots).
    LdImm64 {
        dst: Reg,
        pseudo: Pseudo,
        imm: u64,
    },
    /// Legacy packet access: `r0 = *(size *)skb[imm]`.
    LdAbs {
        size: Size,
        imm: i32,
    },
    /// Legacy packet access: `r0 = *(size *)skb[src + imm]`.
    LdInd {
        size: Size,
        src: Reg,
        imm: i32,
    },
    /// `dst = *(size *)(src + off)`, sign-extending when `signed`.
    Ldx {
        size: Size,
        signed: bool,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// `*(size *)(dst + off) = imm`.
    St {
        size: Size,
        dst: Reg,
        off: i16,
        imm: i32,
    },
    /// `*(size *)(dst + off) = src`.
    Stx {
        size: Size,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// Atomic operation on `*(size *)(dst + off)` with `src`.
    Atomic {
        size: Size,
        op: AtomicOp,
        dst: Reg,
        src: Reg,
        off: i16,
    },
}

// Opcode fields.
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const SRC_X: u8 = 0x08;
const MODE_IMM: u8 = 0x00;
const MODE_ABS: u8 = 0x20;
const MODE_IND: u8 = 0x40;
const MODE_MEM: u8 = 0x60;
const MODE_MEMSX: u8 = 0x80;
const MODE_ATOMIC: u8 = 0xc0;
const FETCH: i32 = 0x01;

/// One raw 8-byte slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawInsn {
    pub opcode: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl RawInsn {
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.opcode;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
    pub fn from_bytes(b: [u8; 8]) -> RawInsn {
        RawInsn {
            opcode: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Slot index (8-byte units) of the offending instruction.
    pub slot: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: {}", self.slot, self.message)
    }
}
impl std::error::Error for DecodeError {}

fn alu_code(op: AluOp) -> (u8, i16) {
    match op {
        AluOp::Add => (0x00, 0),
        AluOp::Sub => (0x10, 0),
        AluOp::Mul => (0x20, 0),
        AluOp::Div => (0x30, 0),
        AluOp::SDiv => (0x30, 1),
        AluOp::Or => (0x40, 0),
        AluOp::And => (0x50, 0),
        AluOp::Lsh => (0x60, 0),
        AluOp::Rsh => (0x70, 0),
        AluOp::Mod => (0x90, 0),
        AluOp::SMod => (0x90, 1),
        AluOp::Xor => (0xa0, 0),
        AluOp::Mov => (0xb0, 0),
        AluOp::MovSx8 => (0xb0, 8),
        AluOp::MovSx16 => (0xb0, 16),
        AluOp::MovSx32 => (0xb0, 32),
        AluOp::Arsh => (0xc0, 0),
    }
}

fn alu_op(code: u8, off: i16) -> Option<AluOp> {
    Some(match (code, off) {
        (0x00, 0) => AluOp::Add,
        (0x10, 0) => AluOp::Sub,
        (0x20, 0) => AluOp::Mul,
        (0x30, 0) => AluOp::Div,
        (0x30, 1) => AluOp::SDiv,
        (0x40, 0) => AluOp::Or,
        (0x50, 0) => AluOp::And,
        (0x60, 0) => AluOp::Lsh,
        (0x70, 0) => AluOp::Rsh,
        (0x90, 0) => AluOp::Mod,
        (0x90, 1) => AluOp::SMod,
        (0xa0, 0) => AluOp::Xor,
        (0xb0, 0) => AluOp::Mov,
        (0xb0, 8) => AluOp::MovSx8,
        (0xb0, 16) => AluOp::MovSx16,
        (0xb0, 32) => AluOp::MovSx32,
        (0xc0, 0) => AluOp::Arsh,
        _ => return None,
    })
}

fn cond_code(c: Cond) -> u8 {
    match c {
        Cond::Eq => 0x10,
        Cond::Gt => 0x20,
        Cond::Ge => 0x30,
        Cond::Set => 0x40,
        Cond::Ne => 0x50,
        Cond::Sgt => 0x60,
        Cond::Sge => 0x70,
        Cond::Lt => 0xa0,
        Cond::Le => 0xb0,
        Cond::Slt => 0xc0,
        Cond::Sle => 0xd0,
    }
}

fn cond_from(code: u8) -> Option<Cond> {
    Some(match code {
        0x10 => Cond::Eq,
        0x20 => Cond::Gt,
        0x30 => Cond::Ge,
        0x40 => Cond::Set,
        0x50 => Cond::Ne,
        0x60 => Cond::Sgt,
        0x70 => Cond::Sge,
        0xa0 => Cond::Lt,
        0xb0 => Cond::Le,
        0xc0 => Cond::Slt,
        0xd0 => Cond::Sle,
        _ => return None,
    })
}

fn size_code(s: Size) -> u8 {
    match s {
        Size::W => 0x00,
        Size::H => 0x08,
        Size::B => 0x10,
        Size::DW => 0x18,
    }
}

fn size_from(code: u8) -> Size {
    match code & 0x18 {
        0x00 => Size::W,
        0x08 => Size::H,
        0x10 => Size::B,
        _ => Size::DW,
    }
}

fn atomic_code(op: AtomicOp) -> i32 {
    match op {
        AtomicOp::Add => 0x00,
        AtomicOp::Or => 0x40,
        AtomicOp::And => 0x50,
        AtomicOp::Xor => 0xa0,
        AtomicOp::FetchAdd => FETCH,
        AtomicOp::FetchOr => 0x40 | FETCH,
        AtomicOp::FetchAnd => 0x50 | FETCH,
        AtomicOp::FetchXor => 0xa0 | FETCH,
        AtomicOp::Xchg => 0xe0 | FETCH,
        AtomicOp::CmpXchg => 0xf0 | FETCH,
        AtomicOp::LoadAcquire => 0x100,
        AtomicOp::StoreRelease => 0x110,
    }
}

fn atomic_from(imm: i32) -> Option<AtomicOp> {
    Some(match imm {
        0x00 => AtomicOp::Add,
        0x40 => AtomicOp::Or,
        0x50 => AtomicOp::And,
        0xa0 => AtomicOp::Xor,
        0x01 => AtomicOp::FetchAdd,
        0x41 => AtomicOp::FetchOr,
        0x51 => AtomicOp::FetchAnd,
        0xa1 => AtomicOp::FetchXor,
        0xe1 => AtomicOp::Xchg,
        0xf1 => AtomicOp::CmpXchg,
        0x100 => AtomicOp::LoadAcquire,
        0x110 => AtomicOp::StoreRelease,
        _ => return None,
    })
}

fn src_parts(src: Src) -> (u8, u8, i32) {
    match src {
        Src::Reg(r) => (SRC_X, r.0, 0),
        Src::Imm(i) => (0, 0, i),
    }
}

impl Insn {
    /// Number of 8-byte slots this instruction occupies (2 for `LdImm64`, else 1).
    pub fn slots(&self) -> usize {
        match self {
            Insn::LdImm64 { .. } => 2,
            _ => 1,
        }
    }

    /// Whether this instruction can be encoded as it is (operand combinations the ISA lacks,
    /// e.g. a sign-extending move from an immediate, are rejected here rather than mis-encoded).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Insn::Alu { width, op, src, .. } => {
                let sx = matches!(op, AluOp::MovSx8 | AluOp::MovSx16 | AluOp::MovSx32);
                if sx && matches!(src, Src::Imm(_)) {
                    return Err("movsx takes a register source".into());
                }
                if op == AluOp::MovSx32 && width == Width::W32 {
                    return Err("movsx32 exists only in ALU64".into());
                }
                Ok(())
            }
            Insn::Endian { kind, bits, .. } => {
                if !matches!(bits, 16 | 32 | 64) {
                    return Err(format!("byte swap of {bits} bits"));
                }
                let _ = kind;
                Ok(())
            }
            Insn::LdAbs { size, .. } | Insn::LdInd { size, .. } if size == Size::DW => {
                Err("legacy packet loads have no 64-bit form".into())
            }
            Insn::Ldx { size: Size::DW, signed: true, .. } => {
                Err("sign-extending load of 64 bits does not exist".into())
            }
            Insn::Atomic { size, op, .. } => {
                let acq_rel = matches!(op, AtomicOp::LoadAcquire | AtomicOp::StoreRelease);
                if !acq_rel && !matches!(size, Size::W | Size::DW) {
                    return Err("atomic read-modify-write is 32 or 64 bits".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Encode into raw slots (one, or two for `LdImm64`).
    pub fn encode(&self) -> Result<Vec<RawInsn>, String> {
        self.validate()?;
        let raw = |opcode, dst: u8, src: u8, off, imm| RawInsn { opcode, dst, src, off, imm };
        Ok(vec![match *self {
            Insn::Alu { width, op, dst, src } => {
                let class = if width == Width::W64 { CLASS_ALU64 } else { CLASS_ALU };
                let (code, off) = alu_code(op);
                let (x, s, imm) = src_parts(src);
                raw(class | code | x, dst.0, s, off, imm)
            }
            Insn::Neg { width, dst } => {
                let class = if width == Width::W64 { CLASS_ALU64 } else { CLASS_ALU };
                raw(class | 0x80, dst.0, 0, 0, 0)
            }
            Insn::Endian { kind, bits, dst } => {
                let opcode = match kind {
                    Endian::ToLe => CLASS_ALU | 0xd0,
                    Endian::ToBe => CLASS_ALU | 0xd0 | SRC_X,
                    Endian::Swap => CLASS_ALU64 | 0xd0,
                };
                raw(opcode, dst.0, 0, 0, bits as i32)
            }
            Insn::Ja { off } => raw(CLASS_JMP, 0, 0, off, 0),
            Insn::JaLong { off } => raw(CLASS_JMP32, 0, 0, 0, off),
            Insn::Jmp { width, cond, dst, src, off } => {
                let class = if width == Width::W64 { CLASS_JMP } else { CLASS_JMP32 };
                let (x, s, imm) = src_parts(src);
                raw(class | cond_code(cond) | x, dst.0, s, off, imm)
            }
            Insn::MayGoto { off } => raw(CLASS_JMP | 0xe0, 0, 0, off, 0),
            Insn::Call(callee) => match callee {
                Callee::Helper(id) => raw(CLASS_JMP | 0x80, 0, 0, 0, id),
                Callee::Local(off) => raw(CLASS_JMP | 0x80, 0, 1, 0, off),
                Callee::Kfunc { btf_id, off } => raw(CLASS_JMP | 0x80, 0, 2, off, btf_id),
            },
            Insn::Exit => raw(CLASS_JMP | 0x90, 0, 0, 0, 0),
            Insn::LdImm64 { dst, pseudo, imm } => {
                let lo =
                    raw(CLASS_LD | MODE_IMM | 0x18, dst.0, pseudo.code(), 0, imm as u32 as i32);
                let hi = raw(0, 0, 0, 0, (imm >> 32) as u32 as i32);
                return Ok(vec![lo, hi]);
            }
            Insn::LdAbs { size, imm } => raw(CLASS_LD | MODE_ABS | size_code(size), 0, 0, 0, imm),
            Insn::LdInd { size, src, imm } => {
                raw(CLASS_LD | MODE_IND | size_code(size), 0, src.0, 0, imm)
            }
            Insn::Ldx { size, signed, dst, src, off } => {
                let mode = if signed { MODE_MEMSX } else { MODE_MEM };
                raw(CLASS_LDX | mode | size_code(size), dst.0, src.0, off, 0)
            }
            Insn::St { size, dst, off, imm } => {
                raw(CLASS_ST | MODE_MEM | size_code(size), dst.0, 0, off, imm)
            }
            Insn::Stx { size, dst, src, off } => {
                raw(CLASS_STX | MODE_MEM | size_code(size), dst.0, src.0, off, 0)
            }
            Insn::Atomic { size, op, dst, src, off } => {
                raw(CLASS_STX | MODE_ATOMIC | size_code(size), dst.0, src.0, off, atomic_code(op))
            }
        }])
    }

    /// Decode one instruction from the start of `slots`; returns it and how many slots it used.
    pub fn decode(slots: &[RawInsn], at: usize) -> Result<(Insn, usize), DecodeError> {
        let err = |m: String| DecodeError { slot: at, message: m };
        let r = *slots.get(at).ok_or_else(|| err("past the end".into()))?;
        let reg = |n: u8| Reg::new(n).ok_or_else(|| err(format!("bad register r{n}")));
        let class = r.opcode & 0x07;
        let width = if matches!(class, CLASS_ALU64 | CLASS_JMP) { Width::W64 } else { Width::W32 };
        let src_operand = || -> Result<Src, DecodeError> {
            if r.opcode & SRC_X != 0 {
                Ok(Src::Reg(reg(r.src)?))
            } else {
                Ok(Src::Imm(r.imm))
            }
        };
        let insn = match class {
            CLASS_ALU | CLASS_ALU64 => {
                let code = r.opcode & 0xf0;
                let dst = reg(r.dst)?;
                match code {
                    0x80 => Insn::Neg { width, dst },
                    0xd0 => {
                        let kind = match (class, r.opcode & SRC_X) {
                            (CLASS_ALU, 0) => Endian::ToLe,
                            (CLASS_ALU, _) => Endian::ToBe,
                            (_, 0) => Endian::Swap,
                            _ => return Err(err(format!("bad opcode {:#04x}", r.opcode))),
                        };
                        Insn::Endian { kind, bits: r.imm as u8, dst }
                    }
                    _ => {
                        let op = alu_op(code, r.off).ok_or_else(|| {
                            err(format!("bad ALU opcode {:#04x} off {}", r.opcode, r.off))
                        })?;
                        Insn::Alu { width, op, dst, src: src_operand()? }
                    }
                }
            }
            CLASS_JMP | CLASS_JMP32 => match r.opcode & 0xf0 {
                0x00 if class == CLASS_JMP => Insn::Ja { off: r.off },
                0x00 => Insn::JaLong { off: r.imm },
                0x80 if class == CLASS_JMP => Insn::Call(match r.src {
                    0 => Callee::Helper(r.imm),
                    1 => Callee::Local(r.imm),
                    2 => Callee::Kfunc { btf_id: r.imm, off: r.off },
                    s => return Err(err(format!("bad call source {s}"))),
                }),
                0x90 if class == CLASS_JMP => Insn::Exit,
                0xe0 if class == CLASS_JMP => Insn::MayGoto { off: r.off },
                code => {
                    let cond = cond_from(code)
                        .ok_or_else(|| err(format!("bad jump opcode {:#04x}", r.opcode)))?;
                    Insn::Jmp { width, cond, dst: reg(r.dst)?, src: src_operand()?, off: r.off }
                }
            },
            CLASS_LD => match r.opcode & 0xe0 {
                MODE_IMM if r.opcode == 0x18 => {
                    let hi = slots.get(at + 1).ok_or_else(|| {
                        err("64-bit immediate load without its second slot".into())
                    })?;
                    if hi.opcode != 0 || hi.dst != 0 || hi.src != 0 || hi.off != 0 {
                        return Err(err("malformed second slot of a 64-bit immediate load".into()));
                    }
                    let pseudo = Pseudo::from_code(r.src)
                        .ok_or_else(|| err(format!("bad ld_imm64 source {}", r.src)))?;
                    let imm = (r.imm as u32 as u64) | ((hi.imm as u32 as u64) << 32);
                    let insn = Insn::LdImm64 { dst: reg(r.dst)?, pseudo, imm };
                    check_canonical(&insn, &slots[at..at + 2]).map_err(err)?;
                    return Ok((insn, 2));
                }
                MODE_ABS => Insn::LdAbs { size: size_from(r.opcode), imm: r.imm },
                MODE_IND => Insn::LdInd { size: size_from(r.opcode), src: reg(r.src)?, imm: r.imm },
                _ => return Err(err(format!("bad LD opcode {:#04x}", r.opcode))),
            },
            CLASS_LDX => {
                let signed = match r.opcode & 0xe0 {
                    MODE_MEM => false,
                    MODE_MEMSX => true,
                    _ => return Err(err(format!("bad LDX opcode {:#04x}", r.opcode))),
                };
                Insn::Ldx {
                    size: size_from(r.opcode),
                    signed,
                    dst: reg(r.dst)?,
                    src: reg(r.src)?,
                    off: r.off,
                }
            }
            CLASS_ST if r.opcode & 0xe0 == MODE_MEM => {
                Insn::St { size: size_from(r.opcode), dst: reg(r.dst)?, off: r.off, imm: r.imm }
            }
            CLASS_STX => match r.opcode & 0xe0 {
                MODE_MEM => Insn::Stx {
                    size: size_from(r.opcode),
                    dst: reg(r.dst)?,
                    src: reg(r.src)?,
                    off: r.off,
                },
                MODE_ATOMIC => Insn::Atomic {
                    size: size_from(r.opcode),
                    op: atomic_from(r.imm)
                        .ok_or_else(|| err(format!("bad atomic operation {:#x}", r.imm)))?,
                    dst: reg(r.dst)?,
                    src: reg(r.src)?,
                    off: r.off,
                },
                _ => return Err(err(format!("bad STX opcode {:#04x}", r.opcode))),
            },
            _ => return Err(err(format!("bad opcode {:#04x}", r.opcode))),
        };
        check_canonical(&insn, &slots[at..at + 1]).map_err(err)?;
        Ok((insn, 1))
    }
}

/// Decoding is strict, like the kernel: fields an instruction does not use must be zero.
/// Then every decodable byte string re-encodes to itself.
fn check_canonical(insn: &Insn, raw: &[RawInsn]) -> Result<(), String> {
    if insn.encode()? == raw {
        Ok(())
    } else {
        Err("reserved fields are not zero".into())
    }
}

/// Encode a whole program into little-endian bytes.
pub fn encode_program(insns: &[Insn]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(insns.len() * 8);
    for (i, insn) in insns.iter().enumerate() {
        for raw in insn.encode().map_err(|e| format!("instruction {i}: {e}"))? {
            out.extend_from_slice(&raw.to_bytes());
        }
    }
    Ok(out)
}

/// Split bytes into raw slots; the length must be a multiple of 8.
pub fn raw_slots(bytes: &[u8]) -> Result<Vec<RawInsn>, DecodeError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(DecodeError {
            slot: bytes.len() / 8,
            message: format!("{} bytes is not a whole number of instructions", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| RawInsn::from_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Decode little-endian bytes into instructions, each with its slot index.
pub fn decode_program(bytes: &[u8]) -> Result<Vec<(usize, Insn)>, DecodeError> {
    let slots = raw_slots(bytes)?;
    let mut out = Vec::with_capacity(slots.len());
    let mut at = 0;
    while at < slots.len() {
        let (insn, n) = Insn::decode(&slots, at)?;
        out.push((at, insn));
        at += n;
    }
    Ok(out)
}
