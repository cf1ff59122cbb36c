//! Calico selector expressions: parser, canonical printer, evaluator.
//!
//! The language is the one `projectcalico.org/v3` policies use in `selector`,
//! `namespaceSelector`, `serviceAccountSelector` and rule `selector`/`notSelector` fields:
//!
//! ```text
//! selector   := <whitespace only>            (same as all(), like Calico's empty selector)
//!             | or
//! or         := and ( '||' and )*
//! and        := unary ( '&&' unary )*
//! unary      := '!' unary | primary
//! primary    := '(' or ')' | 'all()' | 'global()' | 'has(' key ')' | key op
//! op         := '==' str | '!=' str | 'in' set | 'not' 'in' set
//!             | 'contains' str | 'starts' 'with' str | 'ends' 'with' str
//! set        := '{' [ str ( ',' str )* ] '}'
//! str        := '…' | "…"        (no escapes: the quote character cannot occur inside)
//! key        := [A-Za-z0-9._/-]+  (e.g. `app`, `kubernetes.io/metadata.name`)
//! ```
//!
//! Precedence: `!` binds tighter than `&&`, which binds tighter than `||`. `!` applies to a
//! whole comparison: `!a == 'x'` is `!(a == 'x')`.
//!
//! Absent labels: `==`, `in`, `contains`, `starts with`, `ends with` are false when the label
//! is absent; `!=` and `not in` are true when it is absent (they are exactly the negations of
//! `==` and `in`, as in Calico). `global()` is true only for non-namespaced resources (global
//! network sets, host endpoints), which the caller reports through [`Labels::is_global`].
//!
//! A [`Selector`] always holds a canonical AST (see [`Selector::from_expr`]), so two selectors
//! that differ only in parentheses, `&&`/`||` grouping, quoting, or set member order/duplicates
//! compare equal, and printing one ([`std::fmt::Display`]) and parsing it back gives it again.

mod parse;
mod print;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

pub use parse::MAX_DEPTH;

/// A selector expression tree. Inside a [`Selector`] it is canonical: `And`/`Or` have at least
/// two operands and none of them is the same kind (`a && (b && c)` is one `And` of three).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expr {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches non-namespaced resources only.
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == 'value'`: the label is present with this value.
    Eq { key: String, value: String },
    /// `key != 'value'`: the label is absent or has another value.
    Ne { key: String, value: String },
    /// `key in {…}`: the label is present with one of these values.
    In { key: String, values: BTreeSet<String> },
    /// `key not in {…}`: the label is absent or has none of these values.
    NotIn { key: String, values: BTreeSet<String> },
    /// `key contains 's'`: the label is present and its value contains `s`.
    Contains { key: String, value: String },
    /// `key starts with 's'`.
    StartsWith { key: String, value: String },
    /// `key ends with 's'`.
    EndsWith { key: String, value: String },
    /// `!e`.
    Not(Box<Expr>),
    /// `e1 && e2 && …` (an empty `And` is true).
    And(Vec<Expr>),
    /// `e1 || e2 || …` (an empty `Or` is false).
    Or(Vec<Expr>),
}

/// A parsed, canonical Calico selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
}

/// Why a selector could not be parsed (or an [`Expr`] could not become a [`Selector`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// 1-based column, counted in characters, of the offending token (one past the last
    /// character for "unexpected end of selector"; 0 when the error is not about source text,
    /// as from [`Selector::from_expr`]).
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for SelectorError {}

/// Something with labels that a selector can be evaluated against.
pub trait Labels {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str>;
    /// True for non-namespaced resources (GlobalNetworkSet, HostEndpoint): what `global()` tests.
    fn is_global(&self) -> bool {
        false
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Labels of a non-namespaced resource: the wrapped labels, with `is_global()` true.
#[derive(Clone, Copy, Debug)]
pub struct GlobalLabels<'a, L: Labels + ?Sized>(pub &'a L);

impl<L: Labels + ?Sized> Labels for GlobalLabels<'_, L> {
    fn label(&self, key: &str) -> Option<&str> {
        self.0.label(key)
    }
    fn is_global(&self) -> bool {
        true
    }
}

/// Parses a selector; an empty or whitespace-only string is `all()`.
pub fn parse(src: &str) -> Result<Selector, SelectorError> {
    let expr = parse::parse_expr(src)?;
    Ok(Selector { expr: canonicalize(expr) })
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl Selector {
    /// `all()`, which is also what an empty selector means.
    pub fn all() -> Selector {
        Selector { expr: Expr::All }
    }

    /// Builds a selector from an AST made in code (e.g. from a Kubernetes LabelSelector).
    /// The AST is canonicalised: `And`/`Or` are flattened, a one-operand `And`/`Or` becomes its
    /// operand, an empty `And` becomes `all()` and an empty `Or` becomes `!all()`. Fails
    /// (with column 0) when the result could not be printed as a selector: an invalid label
    /// key, a value containing both quote characters, or nesting deeper than [`MAX_DEPTH`].
    pub fn from_expr(expr: Expr) -> Result<Selector, SelectorError> {
        // Refuse absurdly deep trees before recursing over them to canonicalise.
        if deeper_than(&expr, 4 * MAX_DEPTH) {
            dismantle(expr);
            let message = format!("selector nests deeper than {MAX_DEPTH} levels");
            return Err(SelectorError { column: 0, message });
        }
        let expr = canonicalize(expr);
        check_printable(&expr)?;
        Ok(Selector { expr })
    }

    /// The canonical AST.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether `labels` is selected.
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        self.expr.matches(labels)
    }

    /// True if the selector is (syntactically, after canonicalisation) `all()`.
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }

    /// Every label key the selector reads.
    pub fn label_keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        self.expr.collect_keys(&mut keys);
        keys
    }

    /// True if the selector mentions `global()`.
    pub fn uses_global(&self) -> bool {
        self.expr.uses_global()
    }
}

impl Expr {
    /// Evaluates this expression (canonical or not) against `labels`.
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        match self {
            Expr::All => true,
            Expr::Global => labels.is_global(),
            Expr::Has(key) => labels.label(key).is_some(),
            Expr::Eq { key, value } => labels.label(key) == Some(value.as_str()),
            Expr::Ne { key, value } => labels.label(key) != Some(value.as_str()),
            Expr::In { key, values } => labels.label(key).is_some_and(|v| values.contains(v)),
            Expr::NotIn { key, values } => !labels.label(key).is_some_and(|v| values.contains(v)),
            Expr::Contains { key, value } => {
                labels.label(key).is_some_and(|v| v.contains(value.as_str()))
            }
            Expr::StartsWith { key, value } => {
                labels.label(key).is_some_and(|v| v.starts_with(value.as_str()))
            }
            Expr::EndsWith { key, value } => {
                labels.label(key).is_some_and(|v| v.ends_with(value.as_str()))
            }
            Expr::Not(inner) => !inner.matches(labels),
            Expr::And(operands) => operands.iter().all(|e| e.matches(labels)),
            Expr::Or(operands) => operands.iter().any(|e| e.matches(labels)),
        }
    }

    /// The label key a leaf reads, if this is a leaf that reads one.
    fn key(&self) -> Option<&str> {
        match self {
            Expr::Has(key)
            | Expr::Eq { key, .. }
            | Expr::Ne { key, .. }
            | Expr::In { key, .. }
            | Expr::NotIn { key, .. }
            | Expr::Contains { key, .. }
            | Expr::StartsWith { key, .. }
            | Expr::EndsWith { key, .. } => Some(key),
            Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
        }
    }

    /// Calls `f` on every leaf (everything but `Not`, `And`, `Or`).
    fn visit_leaves(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            Expr::Not(inner) => inner.visit_leaves(f),
            Expr::And(operands) | Expr::Or(operands) => {
                operands.iter().for_each(|e| e.visit_leaves(f))
            }
            leaf => f(leaf),
        }
    }

    fn collect_keys(&self, keys: &mut BTreeSet<String>) {
        self.visit_leaves(&mut |leaf| {
            if let Some(key) = leaf.key() {
                keys.insert(key.to_string());
            }
        });
    }

    fn uses_global(&self) -> bool {
        let mut found = false;
        self.visit_leaves(&mut |leaf| found |= *leaf == Expr::Global);
        found
    }
}

/// Flattens nested `And`/`Or` and removes degenerate ones (see [`Selector::from_expr`]).
/// Set members need no work: `BTreeSet` keeps them sorted and unique.
fn canonicalize(expr: Expr) -> Expr {
    match expr {
        Expr::Not(inner) => Expr::Not(Box::new(canonicalize(*inner))),
        Expr::And(operands) => flatten(operands, true),
        Expr::Or(operands) => flatten(operands, false),
        leaf => leaf,
    }
}

fn flatten(operands: Vec<Expr>, is_and: bool) -> Expr {
    let mut flat = Vec::with_capacity(operands.len());
    for operand in operands {
        match (canonicalize(operand), is_and) {
            (Expr::And(inner), true) | (Expr::Or(inner), false) => flat.extend(inner),
            (other, _) => flat.push(other),
        }
    }
    match (flat.len(), is_and) {
        (0, true) => Expr::All,
        (0, false) => Expr::Not(Box::new(Expr::All)),
        (1, _) => flat.pop().unwrap_or(Expr::All),
        (_, true) => Expr::And(flat),
        (_, false) => Expr::Or(flat),
    }
}

/// Checks that the printer can write `expr` so that the parser reads it back unchanged.
fn check_printable(expr: &Expr) -> Result<(), SelectorError> {
    let fail = |message: String| Err(SelectorError { column: 0, message });
    if print::nesting(expr) > MAX_DEPTH {
        return fail(format!("selector nests deeper than {MAX_DEPTH} levels"));
    }
    let mut bad = None;
    expr.visit_leaves(&mut |leaf| {
        if bad.is_some() {
            return;
        }
        if let Some(key) = leaf.key().filter(|k| !parse::is_valid_key(k)) {
            bad = Some(format!(
                "label key {key:?} is not valid (use 1 or more of A-Z a-z 0-9 . _ / -)"
            ));
        }
        let values: Vec<&String> = match leaf {
            Expr::Eq { value, .. }
            | Expr::Ne { value, .. }
            | Expr::Contains { value, .. }
            | Expr::StartsWith { value, .. }
            | Expr::EndsWith { value, .. } => vec![value],
            Expr::In { values, .. } | Expr::NotIn { values, .. } => values.iter().collect(),
            _ => Vec::new(),
        };
        if let Some(v) = values.iter().find(|v| v.contains('\'') && v.contains('"')) {
            bad = Some(format!(
                "value {v:?} contains both ' and \"; selector strings have no escapes"
            ));
        }
    });
    match bad {
        Some(message) => fail(message),
        None => Ok(()),
    }
}

/// True if `expr` has a path of more than `limit` nodes; recursion stops at `limit`.
fn deeper_than(expr: &Expr, limit: usize) -> bool {
    if limit == 0 {
        return true;
    }
    match expr {
        Expr::Not(inner) => deeper_than(inner, limit - 1),
        Expr::And(operands) | Expr::Or(operands) => {
            operands.iter().any(|e| deeper_than(e, limit - 1))
        }
        _ => false,
    }
}

/// Drops a tree of any depth without recursion (the default drop glue recurses per level).
fn dismantle(expr: Expr) {
    let mut stack = vec![expr];
    while let Some(node) = stack.pop() {
        match node {
            Expr::Not(inner) => stack.push(*inner),
            Expr::And(operands) | Expr::Or(operands) => stack.extend(operands),
            _ => {}
        }
    }
}
