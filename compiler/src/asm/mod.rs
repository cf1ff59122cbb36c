//! The eBPF assembler: typed instructions (`Insn`), their 8-byte encoding and decoding,
//! llvm-objdump-syntax text, and a builder (`Asm`) with labels and provenance comments.
//!
//! ```
//! use polc::asm::{Asm, Cond, Insn, Reg};
//! let mut a = Asm::new();
//! let drop = a.label();
//! a.comment("drop anything but protocol 6");
//! a.jump_if(Cond::Ne, Reg::R2, 6, drop);
//! a.push(Insn::mov64(Reg::R0, 0));
//! a.push(Insn::exit());
//! a.bind(drop);
//! a.push(Insn::mov64(Reg::R0, 2));
//! a.push(Insn::exit());
//! let prog = a.assemble().unwrap();
//! assert_eq!(prog.insns[0].to_string(), "if r2 != 0x6 goto +0x2");
//! ```

mod builder;
mod disasm;
mod insn;

pub use builder::{Asm, AsmError, Label, Program, MAX_INSNS};
pub use disasm::{helper_name, write_insn, Style};
pub use insn::{
    decode_program, encode_program, raw_slots, AluOp, AtomicOp, Callee, Cond, DecodeError, Endian,
    Insn, Pseudo, RawInsn, Reg, Size, Src, Width,
};

/// Helper function numbers used by polc (kernel `enum bpf_func_id`).
pub mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const KTIME_GET_NS: i32 = 5;
    pub const GET_PRANDOM_U32: i32 = 7;
    pub const GET_SMP_PROCESSOR_ID: i32 = 8;
    pub const TAIL_CALL: i32 = 12;
    pub const SKB_LOAD_BYTES: i32 = 26;
}

/// Builder functions in the style of cilium/ebpf's `asm` package.
impl Insn {
    /// `dst = src` (64-bit).
    pub fn mov64(dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { width: Width::W64, op: AluOp::Mov, dst, src: src.into() }
    }
    /// `wdst = src` (32-bit, zero-extends).
    pub fn mov32(dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { width: Width::W32, op: AluOp::Mov, dst, src: src.into() }
    }
    /// `dst op= src` (64-bit).
    pub fn alu64(op: AluOp, dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { width: Width::W64, op, dst, src: src.into() }
    }
    /// `wdst op= src` (32-bit).
    pub fn alu32(op: AluOp, dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { width: Width::W32, op, dst, src: src.into() }
    }
    /// `dst = *(size *)(src + off)`.
    pub fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::Ldx { size, signed: false, dst, src, off }
    }
    /// `*(size *)(dst + off) = src`.
    pub fn stx(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
        Insn::Stx { size, dst, src, off }
    }
    /// `*(size *)(dst + off) = imm`.
    pub fn st(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
        Insn::St { size, dst, off, imm }
    }
    /// `if dst cond src goto +off` (64-bit compare).
    pub fn jmp(cond: Cond, dst: Reg, src: impl Into<Src>, off: i16) -> Insn {
        Insn::Jmp { width: Width::W64, cond, dst, src: src.into(), off }
    }
    /// `call helper`.
    pub fn call(helper: i32) -> Insn {
        Insn::Call(Callee::Helper(helper))
    }
    pub fn exit() -> Insn {
        Insn::Exit
    }
    /// `dst = imm ll` (a 64-bit constant).
    pub fn ld_imm64(dst: Reg, imm: u64) -> Insn {
        Insn::LdImm64 { dst, pseudo: Pseudo::None, imm }
    }
    /// `dst = map[handle]`: the map's fd (or a handle the loader/ELF relocation replaces).
    pub fn ld_map_fd(dst: Reg, handle: u32) -> Insn {
        Insn::LdImm64 { dst, pseudo: Pseudo::MapFd, imm: handle as u64 }
    }
    /// `dst = &map[handle][0] + offset`: the address of a byte in the one value of a
    /// single-entry array map, with no lookup (BPF_PSEUDO_MAP_VALUE; the low half of `imm`
    /// is the handle the loader or ELF relocation replaces, the high half the offset).
    pub fn ld_map_value(dst: Reg, handle: u32, offset: u32) -> Insn {
        Insn::LdImm64 { dst, pseudo: Pseudo::MapValue, imm: (offset as u64) << 32 | handle as u64 }
    }
}
