//! A program builder with symbolic labels and provenance comments.
//!
//! Jumps name a `Label`; `assemble` lays the program out, resolving every label in one
//! fix-up pass after a relaxation loop: a jump whose target is beyond a 16-bit offset is
//! rewritten to its long form (`gotol`, or an inverted short branch around a `gotol`).
//! Errors (unbound or twice-bound labels, unencodable instructions) are values.

use super::disasm::{write_insn, Style};
use super::insn::{Cond, Insn, Reg, Src, Width};
use std::fmt;

/// A jump target; create with `Asm::label`, place with `Asm::bind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(usize);

#[derive(Debug, Clone)]
enum Item {
    Insn(Insn),
    Jump { cond: Option<(Width, Cond, Reg, Src)>, target: Label },
    Bind(Label),
    Comment(String),
}

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsmError {
    UnboundLabel(usize),
    LabelBoundTwice(usize),
    /// `index` counts the builder's items (instructions, jumps, labels and comments).
    Invalid {
        index: usize,
        message: String,
    },
    TooLarge(usize),
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsmError::UnboundLabel(l) => write!(f, "label L{l} is jumped to but never bound"),
            AsmError::LabelBoundTwice(l) => write!(f, "label L{l} is bound twice"),
            AsmError::Invalid { index, message } => write!(f, "instruction {index}: {message}"),
            AsmError::TooLarge(n) => {
                write!(f, "program of {n} instructions exceeds the kernel's 1,000,000 limit")
            }
        }
    }
}
impl std::error::Error for AsmError {}

/// The kernel's limit on instructions per program (BPF_COMPLEXITY_LIMIT_INSNS).
pub const MAX_INSNS: usize = 1_000_000;

/// Builds a program item by item.
#[derive(Debug, Clone, Default)]
pub struct Asm {
    items: Vec<Item>,
    labels: usize,
    /// Instruction slots pushed so far, before relaxation and dead-code removal.
    slots: usize,
}

/// An assembled program: instructions in order plus comments attached before instructions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    pub insns: Vec<Insn>,
    /// (index into `insns`, text): the comment is printed before that instruction.
    pub comments: Vec<(usize, String)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// A fresh, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Place `label` at the next instruction.
    pub fn bind(&mut self, label: Label) {
        self.items.push(Item::Bind(label));
    }

    pub fn push(&mut self, insn: Insn) {
        self.slots += insn.slots();
        self.items.push(Item::Insn(insn));
    }

    pub fn extend(&mut self, insns: impl IntoIterator<Item = Insn>) {
        for i in insns {
            self.push(i);
        }
    }

    /// A comment line shown before the next instruction in listings (provenance).
    pub fn comment(&mut self, text: impl Into<String>) {
        self.items.push(Item::Comment(text.into()));
    }

    /// `goto label`.
    pub fn jump(&mut self, target: Label) {
        self.slots += 1;
        self.items.push(Item::Jump { cond: None, target });
    }

    /// `if dst cond src goto label` (64-bit compare).
    pub fn jump_if(&mut self, cond: Cond, dst: Reg, src: impl Into<Src>, target: Label) {
        self.slots += 1;
        self.items.push(Item::Jump { cond: Some((Width::W64, cond, dst, src.into())), target });
    }

    /// `if wdst cond src goto label` (32-bit compare, JMP32 class).
    pub fn jump32_if(&mut self, cond: Cond, dst: Reg, src: impl Into<Src>, target: Label) {
        self.slots += 1;
        self.items.push(Item::Jump { cond: Some((Width::W32, cond, dst, src.into())), target });
    }

    /// Instruction slots pushed so far (before jump relaxation and unreachable-code
    /// removal, so an upper bound of the assembled size when no jump needs relaxing).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// A position in the item stream, for [`Asm::insert_at`].
    pub fn mark(&self) -> usize {
        self.items.len()
    }

    /// Insert what `build` pushes at an earlier `mark`, e.g. a dispatch block whose
    /// contents are known only once the code after it is emitted. Labels are shared.
    pub fn insert_at(&mut self, mark: usize, build: impl FnOnce(&mut Asm)) {
        let mut tmp = Asm { items: Vec::new(), labels: self.labels, slots: 0 };
        build(&mut tmp);
        self.labels = tmp.labels;
        self.slots += tmp.slots;
        let at = mark.min(self.items.len());
        self.items.splice(at..at, tmp.items);
    }

    /// Whether nothing (no instruction, jump, label or comment) has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Lay out, relax out-of-range jumps, resolve labels.
    pub fn assemble(&self) -> Result<Program, AsmError> {
        // Where each label is bound, as an item index.
        let mut bound: Vec<Option<usize>> = vec![None; self.labels];
        for (i, item) in self.items.iter().enumerate() {
            if let Item::Bind(Label(l)) = item {
                let slot = bound.get_mut(*l).ok_or(AsmError::UnboundLabel(*l))?;
                if slot.replace(i).is_some() {
                    return Err(AsmError::LabelBoundTwice(*l));
                }
            }
        }
        for (index, item) in self.items.iter().enumerate() {
            if let Item::Jump { target: Label(l), .. } = item {
                if bound.get(*l).copied().flatten().is_none() {
                    return Err(AsmError::UnboundLabel(*l));
                }
            }
            if let Item::Insn(insn) = item {
                insn.validate().map_err(|message| AsmError::Invalid { index, message })?;
            }
        }

        // The kernel rejects unreachable instructions, and generated code has them whenever
        // an earlier rule matches everything; drop them here, once, for every producer.
        let live = self.reachable(&bound);
        let items: Vec<Item> = self
            .items
            .iter()
            .zip(&live)
            .filter_map(|(item, &live)| match (item, live) {
                (_, true) | (Item::Bind(_), false) => Some(item.clone()),
                (Item::Comment(c), false) => {
                    Some(Item::Comment(format!("unreachable, removed: {c}")))
                }
                _ => None,
            })
            .collect();
        // A jump to a label bound before the next instruction is a no-op: drop it. One
        // backward pass: `landing` holds the labels bound between here and the next kept
        // instruction, so dropping a jump lets the jump before it see through it too.
        let mut keep = vec![true; items.len()];
        let mut landing: Vec<Label> = Vec::new();
        for (i, item) in items.iter().enumerate().rev() {
            match item {
                Item::Bind(l) => landing.push(*l),
                Item::Comment(_) => {}
                // Conditional or not: either way execution continues at the label.
                Item::Jump { target, .. } if landing.contains(target) => keep[i] = false,
                _ => landing.clear(),
            }
        }
        let items: Vec<Item> =
            items.into_iter().zip(keep).filter_map(|(item, k)| k.then_some(item)).collect();
        let mut bound: Vec<Option<usize>> = vec![None; self.labels];
        for (i, item) in items.iter().enumerate() {
            if let Item::Bind(Label(l)) = item {
                bound[*l] = Some(i);
            }
        }
        let this = Asm { items, labels: self.labels, slots: self.slots };
        this.emit(&bound)
    }

    /// Which items execution can reach from the first one. Programs that push raw jumps
    /// (numeric offsets) are left alone: removing code would move their targets.
    fn reachable(&self, bound: &[Option<usize>]) -> Vec<bool> {
        let n = self.items.len();
        let raw_jumps = self.items.iter().any(|i| {
            matches!(
                i,
                Item::Insn(
                    Insn::Ja { .. }
                        | Insn::JaLong { .. }
                        | Insn::Jmp { .. }
                        | Insn::MayGoto { .. }
                        | Insn::Call(super::insn::Callee::Local(_))
                )
            )
        });
        if raw_jumps {
            return vec![true; n];
        }
        let mut live = vec![false; n];
        let mut work = vec![0usize];
        while let Some(i) = work.pop() {
            if i >= n || live[i] {
                continue;
            }
            live[i] = true;
            match &self.items[i] {
                Item::Insn(Insn::Exit) => {}
                Item::Jump { cond, target: Label(l) } => {
                    if cond.is_some() {
                        work.push(i + 1);
                    }
                    work.extend(bound[*l]);
                }
                _ => work.push(i + 1),
            }
        }
        // A comment describes the instruction after it: it lives or dies with that one,
        // even when reached only through a label bound in between.
        let mut next_live = false;
        for i in (0..n).rev() {
            match &self.items[i] {
                Item::Comment(_) => live[i] = next_live,
                Item::Bind(_) => {}
                _ => next_live = live[i],
            }
        }
        live
    }

    /// Relax and resolve jumps; `bound` gives each label's item index.
    fn emit(&self, bound: &[Option<usize>]) -> Result<Program, AsmError> {
        // Relaxation: jumps start short; any that cannot reach become long. Growth is
        // monotonic, so this terminates (at most once per jump).
        let mut long = vec![false; self.items.len()];
        let slot_of = loop {
            let slot_of = self.layout(&long);
            let mut changed = false;
            for (i, item) in self.items.iter().enumerate() {
                if let Item::Jump { target: Label(l), .. } = item {
                    if long[i] {
                        continue;
                    }
                    let off = slot_of[bound[*l].unwrap_or(0)] as i64 - (slot_of[i] as i64 + 1);
                    if i16::try_from(off).is_err() {
                        long[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break slot_of;
            }
        };
        let total = *slot_of.last().unwrap_or(&0);
        if total > MAX_INSNS {
            return Err(AsmError::TooLarge(total));
        }

        // Emit.
        let mut prog = Program::default();
        for (i, item) in self.items.iter().enumerate() {
            match item {
                Item::Insn(insn) => prog.insns.push(*insn),
                Item::Comment(c) => prog.comments.push((prog.insns.len(), c.clone())),
                Item::Bind(_) => {}
                Item::Jump { cond, target: Label(l) } => {
                    let dest = slot_of[bound[*l].unwrap_or(0)] as i64;
                    let next = slot_of[i] as i64 + jump_slots(*cond, long[i]) as i64;
                    let off = dest - next;
                    match (cond, long[i]) {
                        (None, false) => prog.insns.push(Insn::Ja { off: off as i16 }),
                        (None, true) => prog.insns.push(Insn::JaLong { off: off as i32 }),
                        (Some((width, cond, dst, src)), false) => prog.insns.push(Insn::Jmp {
                            width: *width,
                            cond: *cond,
                            dst: *dst,
                            src: *src,
                            off: off as i16,
                        }),
                        (Some((width, cond, dst, src)), true) => {
                            let (w, d, s) = (*width, *dst, *src);
                            match cond.negate() {
                                // if !cond skip the gotol.
                                Some(neg) => prog.insns.push(Insn::Jmp {
                                    width: w,
                                    cond: neg,
                                    dst: d,
                                    src: s,
                                    off: 1,
                                }),
                                // `&` has no negation: branch to the gotol, else skip it.
                                None => {
                                    prog.insns.push(Insn::Jmp {
                                        width: w,
                                        cond: *cond,
                                        dst: d,
                                        src: s,
                                        off: 1,
                                    });
                                    prog.insns.push(Insn::Ja { off: 1 });
                                }
                            }
                            prog.insns.push(Insn::JaLong { off: off as i32 });
                        }
                    }
                }
            }
        }
        Ok(prog)
    }

    /// Slot index at which each item starts (plus one trailing entry: the total).
    fn layout(&self, long: &[bool]) -> Vec<usize> {
        let mut slots = Vec::with_capacity(self.items.len() + 1);
        let mut at = 0usize;
        for (i, item) in self.items.iter().enumerate() {
            slots.push(at);
            at += match item {
                Item::Insn(insn) => insn.slots(),
                Item::Jump { cond, .. } => jump_slots(*cond, long[i]),
                Item::Bind(_) | Item::Comment(_) => 0,
            };
        }
        slots.push(at);
        slots
    }
}

fn jump_slots(cond: Option<(Width, Cond, Reg, Src)>, long: bool) -> usize {
    match (cond, long) {
        (_, false) | (None, true) => 1,
        (Some((_, c, _, _)), true) => {
            if c.negate().is_some() {
                2
            } else {
                3
            }
        }
    }
}

impl Program {
    /// Number of 8-byte instruction slots.
    pub fn slot_count(&self) -> usize {
        self.insns.iter().map(Insn::slots).sum()
    }

    /// Little-endian bytecode.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Every instruction was validated by `assemble`; encode cannot fail here, but stay
        // total: an unencodable one would be a bug, reported by `try_to_bytes`.
        self.try_to_bytes().unwrap_or_default()
    }

    pub fn try_to_bytes(&self) -> Result<Vec<u8>, String> {
        super::insn::encode_program(&self.insns)
    }

    /// An annotated listing: comment lines (`; ...`) before the instructions they describe,
    /// then `slot: instruction` in llvm-objdump syntax with helper/map names and targets.
    pub fn listing(&self, map_name: Option<&dyn Fn(u64) -> Option<String>>) -> String {
        let mut out = String::new();
        let mut comments = self.comments.iter().peekable();
        let mut slot = 0usize;
        for (i, insn) in self.insns.iter().enumerate() {
            while let Some((_, text)) = comments.next_if(|(at, _)| *at == i) {
                for line in text.lines() {
                    out.push_str("; ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            let style = Style { helper_names: true, map_name, at: Some(slot) };
            out.push_str(&format!("{slot:>8}:\t"));
            let _ = write_insn(&mut out, insn, &style);
            out.push('\n');
            slot += insn.slots();
        }
        for (_, text) in comments {
            out.push_str("; ");
            out.push_str(text);
            out.push('\n');
        }
        out
    }
}
