//! Control-flow analysis of emitted bytecode: the worst-case (longest) path through a
//! loop-free program, in executed instructions and map lookups. These are the numbers
//! `polc compile --output json` reports as `worst_case_insns` / `worst_case_map_lookups`:
//! computed from the bytes, not estimated from the policy.

use crate::asm::{helper, Callee, Insn};

/// The longest path's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorstCase {
    /// Instructions executed (a 64-bit immediate load counts once, as the verifier does).
    pub insns: u64,
    /// `bpf_map_lookup_elem` calls executed.
    pub map_lookups: u64,
    /// Of those, the lookups that stay helper calls in the kernel: the verifier inlines
    /// lookups in array and per-CPU array maps (a bounds check and an address computation),
    /// not in hash or LPM maps. Needs to know the map of each call: see [`worst_case_with`].
    pub helper_lookups: u64,
}

/// Longest path from the first instruction to an exit (or a successful tail call, which
/// also ends the program; its failure path is a path too), once weighting every
/// instruction 1 and once weighting map lookups 1. Errors on a backward jump (a loop:
/// generated policy programs have none) or a jump outside the program.
pub fn worst_case(insns: &[Insn]) -> Result<WorstCase, String> {
    worst_case_with(insns, |_| false)
}

/// [`worst_case`], with `inlined(handle)` saying whether lookups in the map loaded into r1
/// (by the `r1 = map[handle]` before the call, in the same straight-line code) are inlined.
pub fn worst_case_with(insns: &[Insn], inlined: impl Fn(u64) -> bool) -> Result<WorstCase, String> {
    let succs = successors(insns)?;
    let is_lookup = |i: &Insn| matches!(i, Insn::Call(Callee::Helper(helper::MAP_LOOKUP_ELEM)));
    // The map of each lookup: the last `r1 = map[h]` before it with no jump target or
    // other write of r1 between (generated code always loads r1 right before the call).
    let mut targets = vec![false; insns.len()];
    for s in &succs {
        for &t in s {
            targets[t] = true;
        }
    }
    let mut helper_call = vec![false; insns.len()];
    for (i, insn) in insns.iter().enumerate() {
        if !is_lookup(insn) {
            continue;
        }
        let mut map = None;
        for j in (0..i).rev() {
            match insns[j] {
                Insn::LdImm64 {
                    dst: crate::asm::Reg::R1,
                    pseudo: crate::asm::Pseudo::MapFd,
                    imm,
                } => {
                    map = Some(imm);
                    break;
                }
                _ if targets[j + 1] && j + 1 < i => break,
                _ => {}
            }
        }
        helper_call[i] = !map.is_some_and(&inlined);
    }
    let mut best = vec![0u64; insns.len()];
    for i in (0..insns.len()).rev() {
        let tail = succs[i].iter().map(|&s| best[s]).max().unwrap_or(0);
        best[i] = helper_call[i] as u64 + tail;
    }
    Ok(WorstCase {
        insns: longest(insns, &succs, |_| 1),
        map_lookups: longest(insns, &succs, |i| is_lookup(i) as u64),
        helper_lookups: best.first().copied().unwrap_or(0),
    })
}

/// Successor instruction indexes of each instruction (all forward).
fn successors(insns: &[Insn]) -> Result<Vec<Vec<usize>>, String> {
    let mut slot_of = Vec::with_capacity(insns.len());
    let mut index_of_slot = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        slot_of.push(index_of_slot.len());
        index_of_slot.extend(std::iter::repeat_n(i, insn.slots()));
    }
    let target = |i: usize, off: i64| -> Result<usize, String> {
        if off < 0 {
            return Err(format!("instruction {i} jumps backwards: loops are not analysed"));
        }
        let t = slot_of[i] + 1 + off as usize;
        match index_of_slot.get(t) {
            Some(&j) if slot_of[j] == t => Ok(j),
            _ => Err(format!("instruction {i} jumps outside the program or into an instruction")),
        }
    };
    let mut out = Vec::with_capacity(insns.len());
    for (i, insn) in insns.iter().enumerate() {
        let s = match *insn {
            Insn::Exit => vec![],
            Insn::Ja { off } => vec![target(i, off as i64)?],
            Insn::JaLong { off } => vec![target(i, off as i64)?],
            Insn::Jmp { off, .. } | Insn::MayGoto { off } => vec![i + 1, target(i, off as i64)?],
            Insn::Call(Callee::Local(_)) => return Err("bpf-to-bpf calls are not analysed".into()),
            _ => vec![i + 1],
        };
        if s.iter().any(|&n| n >= insns.len()) {
            return Err(format!("instruction {i} falls off the end of the program"));
        }
        out.push(s);
    }
    Ok(out)
}

/// Heaviest path weight from instruction 0 in a DAG whose edges all point forward.
fn longest(insns: &[Insn], succs: &[Vec<usize>], weight: impl Fn(&Insn) -> u64) -> u64 {
    let mut best = vec![0u64; insns.len()];
    for i in (0..insns.len()).rev() {
        let tail = succs[i].iter().map(|&s| best[s]).max().unwrap_or(0);
        best[i] = weight(&insns[i]) + tail;
    }
    best.first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::{Asm, Cond, Reg};

    #[test]
    fn longest_path_and_most_lookups() {
        // if r1 == 0 goto short; 3 lookups; exit | short: 5 movs; exit
        let mut a = Asm::new();
        let short = a.label();
        a.jump_if(Cond::Eq, Reg::R1, 0, short);
        for _ in 0..3 {
            a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        }
        a.push(Insn::exit());
        a.bind(short);
        for _ in 0..5 {
            a.push(Insn::mov64(Reg::R0, 0));
        }
        a.push(Insn::ld_imm64(Reg::R2, 1));
        a.push(Insn::exit());
        let p = a.assemble().unwrap();
        let w = worst_case(&p.insns).unwrap();
        assert_eq!(w.insns, 1 + 5 + 1 + 1);
        assert_eq!(w.map_lookups, 3);
        assert_eq!(w.helper_lookups, 3, "unknown maps count as helper calls");
    }

    #[test]
    fn array_lookups_are_inlined_hash_lookups_are_not() {
        let mut a = Asm::new();
        for handle in [0u32, 7, 0] {
            a.push(Insn::ld_map_fd(Reg::R1, handle));
            a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        }
        a.push(Insn::exit());
        let p = a.assemble().unwrap();
        let w = worst_case_with(&p.insns, |h| h == 0).unwrap();
        assert_eq!((w.map_lookups, w.helper_lookups), (3, 1));
    }

    #[test]
    fn loops_and_falling_off_are_errors() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        a.push(Insn::mov64(Reg::R0, 0));
        a.jump(top);
        assert!(worst_case(&a.assemble().unwrap().insns).is_err());
        assert!(worst_case(&[Insn::mov64(Reg::R0, 0)]).is_err());
    }
}
