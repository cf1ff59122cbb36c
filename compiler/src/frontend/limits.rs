//! Input limits (docs/limits.md): generous for real clusters, small enough that no input can
//! make polc use unbounded memory or time before it says what is wrong.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest input file polc reads (bytes).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Largest sum of all input files (bytes).
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;
/// YAML nodes (scalars, lists, mappings) one file may expand to, counting every use of an
/// alias as a copy of what it names. Stops "billion laughs" and quadratic alias bombs: a 15 KB
/// file of 3,000 aliases to a 3,000-item list would otherwise build 9 million values.
pub const MAX_YAML_NODES_PER_FILE: u64 = 1_000_000;
/// YAML nesting depth: fixed by serde_yaml_ng (it stops deeper documents itself).
pub const MAX_YAML_DEPTH: usize = 128;
/// Objects (documents and List items, including kinds polc skips) over all files.
pub const MAX_OBJECTS: usize = 100_000;
/// Rules in one policy's ingress list, and in its egress list.
pub const MAX_RULES_PER_POLICY: usize = 10_000;
/// Length of one Calico selector (bytes).
pub const MAX_SELECTOR_BYTES: usize = 8 << 10;
/// Nesting depth of one Calico selector (parentheses and `!`): the selector parser's limit.
pub const MAX_SELECTOR_DEPTH: usize = crate::selector::MAX_DEPTH;

/// Counts the YAML nodes of one document into a per-file budget, allocating nothing, so that
/// an alias bomb is refused before anything is built from it.
pub(super) struct NodeBudget<'a>(pub &'a Cell<u64>);

impl NodeBudget<'_> {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        let used = self.0.get() + 1;
        self.0.set(used);
        if used > MAX_YAML_NODES_PER_FILE {
            return Err(E::custom(format!(
                "the file expands to more than {MAX_YAML_NODES_PER_FILE} YAML nodes (limit; \
                 aliases count once per use)"
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeBudget<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident($ty:ty)),*) => {$(
        fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> { self.take() }
    )*};
}

impl<'de> Visitor<'de> for NodeBudget<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    scalar!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_i128(i128),
        visit_u128(u128),
        visit_f64(f64),
        visit_str(&str),
        visit_bytes(&[u8])
    );
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        NodeBudget(self.0).deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        NodeBudget(self.0).deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(NodeBudget(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(NodeBudget(self.0))?.is_some() {
            map.next_value_seed(NodeBudget(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // Tagged values (`!tag x`): count the tag and walk the value.
        use de::VariantAccess;
        self.take()?;
        let ((), variant) = data.variant_seed(NodeBudget(self.0))?;
        variant.newtype_variant_seed(NodeBudget(self.0))
    }
}

/// Longest quoted input value an error message repeats in full.
const MAX_QUOTED_CHARS: usize = 80;

/// An error message fit for one line: quoted input values longer than [`MAX_QUOTED_CHARS`] are
/// cut (a 300 KB "CIDR" is not repeated), and serde_yaml_ng's limit errors are said in terms
/// of the input.
pub(super) fn tidy_message(message: String) -> String {
    explain_yaml_limit(shorten_quoted(message))
}

/// Cuts every `"..."` run (Rust-debug quoting: `\"` is escaped) after MAX_QUOTED_CHARS.
fn shorten_quoted(message: String) -> String {
    if message.len() <= 2 * MAX_QUOTED_CHARS {
        return message;
    }
    let mut out = String::with_capacity(2 * MAX_QUOTED_CHARS);
    let (mut inside, mut kept, mut escaped, mut cut) = (false, 0usize, false, false);
    for c in message.chars() {
        if !inside {
            out.push(c);
            if c == '"' {
                (inside, kept, escaped, cut) = (true, 0, false, false);
            }
            continue;
        }
        let closes = c == '"' && !escaped;
        escaped = c == '\\' && !escaped;
        if closes {
            if cut {
                out.push_str("...");
            }
            out.push(c);
            inside = false;
        } else if kept < MAX_QUOTED_CHARS {
            out.push(c);
            kept += 1;
        } else {
            cut = true;
        }
    }
    out
}

/// serde_yaml_ng's own limit errors, said in terms of the input.
fn explain_yaml_limit(message: String) -> String {
    if message.contains("recursion limit exceeded") {
        return message.replace(
            "recursion limit exceeded",
            &format!("YAML nests deeper than {MAX_YAML_DEPTH} levels (limit)"),
        );
    }
    if message.contains("repetition limit exceeded") {
        return message.replace(
            "repetition limit exceeded",
            "YAML aliases are used too often (more than 100 times per YAML event; alias bomb?)",
        );
    }
    message
}

/// Where a file's flow collections (`[` and `{`) nest deeper than [`MAX_YAML_DEPTH`], if they
/// do: (document, line, column), all from 1. The YAML scanner's cost grows with the flow depth
/// for every token, so such files are refused before parsing. Quoted scalars and comments are
/// skipped; brackets inside plain scalars count, which only matters for 128 unbalanced ones.
pub(super) fn too_deep_flow(text: &str) -> Option<(usize, usize, usize)> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let (mut separators, mut content_seen) = (0usize, false);
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        col += 1;
        if c == '\n' {
            (line, col, prev) = (line + 1, 0, c);
            continue;
        }
        if col == 1 && c == '-' && text_at_line_start_is_separator(&mut chars.clone()) {
            separators += usize::from(content_seen);
            content_seen = true;
        }
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
                col += 1;
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                // A quote opens a quoted scalar only where a token starts (`don't` is plain).
                '"' | '\'' if prev.is_whitespace() || matches!(prev, '[' | '{' | ',') => {
                    quote = Some(c)
                }
                '#' if prev.is_whitespace() => {
                    // A comment: skip to the end of the line.
                    while chars.next_if(|&n| n != '\n').is_some() {}
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_YAML_DEPTH {
                        return Some((separators + 1, line, col));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        if !c.is_whitespace() {
            content_seen = true;
        }
        prev = c;
    }
    None
}

/// After a `-` in column 1: is the line `---` (a document separator)?
fn text_at_line_start_is_separator(rest: &mut impl Iterator<Item = char>) -> bool {
    rest.next() == Some('-')
        && rest.next() == Some('-')
        && rest.next().is_none_or(|c| c.is_whitespace())
}
