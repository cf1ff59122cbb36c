//! The canonical printer: minimal parentheses, single quotes unless the value has one, set
//! members sorted and unique, one space around binary operators. Parentheses are exactly those
//! precedence needs, so a negated comparison prints as `!app == 'x'` (meaning `!(app == 'x')`):
//! adding parentheses there would make the printed form nest deeper than the parsed one and
//! could push a selector that parsed at the depth limit over it.

use super::{Expr, Selector};
use std::fmt::{self, Write};

/// Where an expression is printed, which decides whether it needs parentheses.
#[derive(Clone, Copy, PartialEq)]
enum Context {
    /// Top level or an operand of `||`: nothing needs parentheses.
    Loose,
    /// An operand of `&&`: an `||` needs parentheses.
    AndOperand,
    /// The operand of `!`: `&&` and `||` need parentheses.
    NotOperand,
}

fn needs_parens(expr: &Expr, context: Context) -> bool {
    matches!(
        (expr, context),
        (Expr::Or(_), Context::AndOperand | Context::NotOperand)
            | (Expr::And(_), Context::NotOperand)
    )
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(f, self.expr(), Context::Loose)
    }
}

fn write_expr(f: &mut fmt::Formatter<'_>, expr: &Expr, context: Context) -> fmt::Result {
    if needs_parens(expr, context) {
        f.write_char('(')?;
        write_expr(f, expr, Context::Loose)?;
        return f.write_char(')');
    }
    match expr {
        Expr::All => f.write_str("all()"),
        Expr::Global => f.write_str("global()"),
        Expr::Has(key) => write!(f, "has({key})"),
        Expr::Eq { key, value } => write!(f, "{key} == {}", Quoted(value)),
        Expr::Ne { key, value } => write!(f, "{key} != {}", Quoted(value)),
        Expr::Contains { key, value } => write!(f, "{key} contains {}", Quoted(value)),
        Expr::StartsWith { key, value } => write!(f, "{key} starts with {}", Quoted(value)),
        Expr::EndsWith { key, value } => write!(f, "{key} ends with {}", Quoted(value)),
        Expr::In { key, values } | Expr::NotIn { key, values } => {
            let op = if matches!(expr, Expr::In { .. }) { "in" } else { "not in" };
            write!(f, "{key} {op} {{")?;
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}", Quoted(value))?;
            }
            f.write_char('}')
        }
        Expr::Not(inner) => {
            f.write_char('!')?;
            write_expr(f, inner, Context::NotOperand)
        }
        Expr::And(operands) => write_joined(f, operands, " && ", Context::AndOperand),
        Expr::Or(operands) => write_joined(f, operands, " || ", Context::Loose),
    }
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    operands: &[Expr],
    separator: &str,
    context: Context,
) -> fmt::Result {
    for (i, operand) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_expr(f, operand, context)?;
    }
    Ok(())
}

/// A string literal: single-quoted unless the value contains a single quote. (A value with
/// both quote characters cannot be written; `Selector::from_expr` refuses those.)
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = if self.0.contains('\'') { '"' } else { '\'' };
        write!(f, "{quote}{}{quote}", self.0)
    }
}

/// The deepest nesting of `(` and `!` in the printed form of `expr`, which is what the
/// parser's depth limit counts.
pub(super) fn nesting(expr: &Expr) -> usize {
    nesting_in(expr, Context::Loose)
}

fn nesting_in(expr: &Expr, context: Context) -> usize {
    let own = usize::from(needs_parens(expr, context));
    let below = match expr {
        Expr::Not(inner) => 1 + nesting_in(inner, Context::NotOperand),
        Expr::And(operands) => {
            operands.iter().map(|e| nesting_in(e, Context::AndOperand)).max().unwrap_or(0)
        }
        Expr::Or(operands) => {
            operands.iter().map(|e| nesting_in(e, Context::Loose)).max().unwrap_or(0)
        }
        _ => 0,
    };
    own + below
}
