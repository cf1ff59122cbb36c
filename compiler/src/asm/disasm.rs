//! Instruction text in the syntax of `llvm-objdump -d` (LLVM 22), which is also what
//! `bpftool prog dump xlated` users read: `r1 = *(u32 *)(r6 + 0x0)`, `if r2 != 0x6 goto +0xc`.
//! `Display` prints exactly llvm-objdump's text; `Listing` adds helper and map names and
//! absolute jump targets for people reading generated programs.

use super::insn::{AluOp, AtomicOp, Callee, Cond, Endian, Insn, Pseudo, Reg, Size, Src, Width};
use std::fmt::{self, Write};

/// Name of a helper function by number (from the kernel's `__BPF_FUNC_MAPPER` order).
pub fn helper_name(id: i32) -> Option<&'static str> {
    const NAMES: [&str; 52] = [
        "unspec",
        "map_lookup_elem",
        "map_update_elem",
        "map_delete_elem",
        "probe_read",
        "ktime_get_ns",
        "trace_printk",
        "get_prandom_u32",
        "get_smp_processor_id",
        "skb_store_bytes",
        "l3_csum_replace",
        "l4_csum_replace",
        "tail_call",
        "clone_redirect",
        "get_current_pid_tgid",
        "get_current_uid_gid",
        "get_current_comm",
        "get_cgroup_classid",
        "skb_vlan_push",
        "skb_vlan_pop",
        "skb_get_tunnel_key",
        "skb_set_tunnel_key",
        "perf_event_read",
        "redirect",
        "get_route_realm",
        "perf_event_output",
        "skb_load_bytes",
        "get_stackid",
        "csum_diff",
        "skb_get_tunnel_opt",
        "skb_set_tunnel_opt",
        "skb_change_proto",
        "skb_change_type",
        "skb_under_cgroup",
        "get_hash_recalc",
        "get_current_task",
        "probe_write_user",
        "current_task_under_cgroup",
        "skb_change_tail",
        "skb_pull_data",
        "csum_update",
        "set_hash_invalid",
        "get_numa_node_id",
        "skb_change_head",
        "xdp_adjust_head",
        "probe_read_str",
        "get_socket_cookie",
        "get_socket_uid",
        "set_hash",
        "setsockopt",
        "skb_adjust_room",
        "redirect_map",
    ];
    usize::try_from(id).ok().filter(|&i| i > 0).and_then(|i| NAMES.get(i).copied())
}

/// A signed number the way llvm-objdump prints it: `0x10`, `-0x4`.
pub(crate) fn hex(v: i64) -> String {
    if v < 0 {
        format!("-{:#x}", v.unsigned_abs())
    } else {
        format!("{v:#x}")
    }
}

fn reg(r: Reg, w: Width) -> String {
    match w {
        Width::W64 => format!("r{}", r.num()),
        Width::W32 => format!("w{}", r.num()),
    }
}

fn operand(s: Src, w: Width) -> String {
    match s {
        Src::Reg(r) => reg(r, w),
        Src::Imm(i) => hex(i as i64),
    }
}

fn size_name(s: Size, signed: bool) -> &'static str {
    match (s, signed) {
        (Size::B, false) => "u8",
        (Size::H, false) => "u16",
        (Size::W, false) => "u32",
        (Size::DW, false) => "u64",
        (Size::B, true) => "s8",
        (Size::H, true) => "s16",
        (Size::W, true) => "s32",
        (Size::DW, true) => "s64",
    }
}

/// Registers holding a value narrower than 64 bits print as `wN`, as llvm-objdump does.
fn value_width(s: Size) -> Width {
    if s == Size::DW {
        Width::W64
    } else {
        Width::W32
    }
}

fn mem(base: Reg, off: i16) -> String {
    if off < 0 {
        format!("r{} - {:#x}", base.num(), (off as i32).unsigned_abs())
    } else {
        format!("r{} + {:#x}", base.num(), off)
    }
}

fn jump_off(off: i64) -> String {
    if off < 0 {
        hex(off)
    } else {
        format!("+{off:#x}")
    }
}

fn cond_op(c: Cond) -> &'static str {
    match c {
        Cond::Eq => "==",
        Cond::Ne => "!=",
        Cond::Gt => ">",
        Cond::Ge => ">=",
        Cond::Lt => "<",
        Cond::Le => "<=",
        Cond::Sgt => "s>",
        Cond::Sge => "s>=",
        Cond::Slt => "s<",
        Cond::Sle => "s<=",
        Cond::Set => "&",
    }
}

/// How much to annotate: `Display` uses `plain()`, listings use richer options.
#[derive(Default, Clone, Copy)]
pub struct Style<'a> {
    /// `call bpf_map_lookup_elem` instead of `call 0x1`.
    pub helper_names: bool,
    /// Names for `LdImm64 { pseudo: MapFd, imm }` handles: `r1 = map[polc_ipsets] ll`.
    pub map_name: Option<&'a dyn Fn(u64) -> Option<String>>,
    /// The instruction's own slot index: jumps then print their absolute target `<N>`.
    pub at: Option<usize>,
}

/// Writes one instruction in llvm-objdump syntax, with the annotations `style` asks for.
pub fn write_insn(out: &mut String, insn: &Insn, style: &Style) -> fmt::Result {
    let target = |off: i64| -> String {
        match style.at {
            Some(at) => format!(" <{}>", at as i64 + 1 + off),
            None => String::new(),
        }
    };
    match *insn {
        Insn::Alu { width, op, dst, src } => {
            let d = reg(dst, width);
            let s = operand(src, width);
            let sym = match op {
                AluOp::Mov => return write!(out, "{d} = {s}"),
                AluOp::MovSx8 => return write!(out, "{d} = (s8){s}"),
                AluOp::MovSx16 => return write!(out, "{d} = (s16){s}"),
                AluOp::MovSx32 => return write!(out, "{d} = (s32){s}"),
                AluOp::Add => "+",
                AluOp::Sub => "-",
                AluOp::Mul => "*",
                AluOp::Div => "/",
                AluOp::SDiv => "s/",
                AluOp::Or => "|",
                AluOp::And => "&",
                AluOp::Lsh => "<<",
                AluOp::Rsh => ">>",
                AluOp::Mod => "%",
                AluOp::SMod => "s%",
                AluOp::Xor => "^",
                AluOp::Arsh => "s>>",
            };
            write!(out, "{d} {sym}= {s}")
        }
        Insn::Neg { width, dst } => {
            let d = reg(dst, width);
            write!(out, "{d} = -{d}")
        }
        Insn::Endian { kind, bits, dst } => {
            let name = match kind {
                Endian::ToLe => "le",
                Endian::ToBe => "be",
                Endian::Swap => "bswap",
            };
            write!(out, "r{0} = {name}{bits} r{0}", dst.num())
        }
        Insn::Ja { off } => write!(out, "goto {}{}", jump_off(off as i64), target(off as i64)),
        Insn::JaLong { off } => {
            write!(out, "gotol {}{}", jump_off(off as i64), target(off as i64))
        }
        Insn::MayGoto { off } => {
            write!(out, "may_goto {}{}", jump_off(off as i64), target(off as i64))
        }
        Insn::Jmp { width, cond, dst, src, off } => write!(
            out,
            "if {} {} {} goto {}{}",
            reg(dst, width),
            cond_op(cond),
            operand(src, width),
            jump_off(off as i64),
            target(off as i64)
        ),
        Insn::Call(Callee::Helper(id)) => match helper_name(id) {
            Some(name) if style.helper_names => write!(out, "call bpf_{name}"),
            _ => write!(out, "call {}", hex(id as i64)),
        },
        Insn::Call(Callee::Local(off)) => {
            write!(out, "call {}{}", hex(off as i64), target(off as i64))
        }
        Insn::Call(Callee::Kfunc { btf_id, .. }) => write!(out, "call {}", hex(btf_id as i64)),
        Insn::Exit => out.write_str("exit"),
        Insn::LdImm64 { dst, pseudo, imm } => {
            let name = match (pseudo, style.map_name) {
                (Pseudo::MapFd, Some(f)) => f(imm),
                (Pseudo::MapValue, Some(f)) => f(imm & 0xffff_ffff),
                _ => None,
            };
            match (name, pseudo) {
                // bpftool's form for a direct value address: map[...][key]+offset.
                (Some(name), Pseudo::MapValue) => {
                    write!(out, "r{} = map[{name}][0]+{:#x} ll", dst.num(), imm >> 32)
                }
                (Some(name), _) => write!(out, "r{} = map[{name}] ll", dst.num()),
                (None, _) => write!(out, "r{} = {:#x} ll", dst.num(), imm),
            }
        }
        Insn::LdAbs { size, imm } => {
            write!(out, "r0 = *({} *)skb[{}]", size_name(size, false), hex(imm as i64))
        }
        Insn::LdInd { size, src, imm } => {
            let idx = if imm == 0 {
                format!("r{}", src.num())
            } else {
                format!("r{} + {}", src.num(), hex(imm as i64))
            };
            write!(out, "r0 = *({} *)skb[{idx}]", size_name(size, false))
        }
        Insn::Ldx { size, signed, dst, src, off } => {
            let w = if signed { Width::W64 } else { value_width(size) };
            write!(out, "{} = *({} *)({})", reg(dst, w), size_name(size, signed), mem(src, off))
        }
        Insn::St { size, dst, off, imm } => {
            write!(out, "*({} *)({}) = {}", size_name(size, false), mem(dst, off), hex(imm as i64))
        }
        Insn::Stx { size, dst, src, off } => write!(
            out,
            "*({} *)({}) = {}",
            size_name(size, false),
            mem(dst, off),
            reg(src, value_width(size))
        ),
        Insn::Atomic { size, op, dst, src, off } => {
            let w = value_width(size);
            let ty = size_name(size, false);
            let m = mem(dst, off);
            let s = reg(src, w);
            let bits = if w == Width::W64 { "64" } else { "32_32" };
            let fetch = |name: &str| format!("{s} = atomic_fetch_{name}(({ty} *)({m}), {s})");
            let text = match op {
                AtomicOp::Add => format!("lock *({ty} *)({m}) += {s}"),
                AtomicOp::Or => format!("lock *({ty} *)({m}) |= {s}"),
                AtomicOp::And => format!("lock *({ty} *)({m}) &= {s}"),
                AtomicOp::Xor => format!("lock *({ty} *)({m}) ^= {s}"),
                AtomicOp::FetchAdd => fetch("add"),
                AtomicOp::FetchOr => fetch("or"),
                AtomicOp::FetchAnd => fetch("and"),
                AtomicOp::FetchXor => fetch("xor"),
                AtomicOp::Xchg => format!("{s} = xchg{}({m}, {s})", xchg_suffix(bits)),
                AtomicOp::CmpXchg => {
                    let r0 = reg(Reg::R0, w);
                    format!("{r0} = cmpxchg{}({m}, {r0}, {s})", xchg_suffix(bits))
                }
                // The one atomic whose dst is the destination and src the address.
                AtomicOp::LoadAcquire => {
                    format!("{} = load_acquire(({ty} *)({}))", reg(dst, w), mem(src, off))
                }
                AtomicOp::StoreRelease => format!("store_release(({ty} *)({m}), {s})"),
            };
            out.write_str(&text)
        }
    }
}

fn xchg_suffix(bits: &str) -> String {
    if bits == "64" {
        "_64".to_string()
    } else {
        "32_32".to_string()
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        write_insn(&mut s, self, &Style::default())?;
        f.write_str(&s)
    }
}
