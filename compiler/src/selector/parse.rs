//! Tokenizer and recursive-descent parser for selector source text.

use super::{Expr, SelectorError};
use std::collections::BTreeSet;

/// The deepest nesting of `(` and `!` the parser accepts; deeper input is an error, so that
/// hostile input cannot overflow the stack.
pub const MAX_DEPTH: usize = 256;

/// Characters a label key is made of (Calico's lexer accepts any run of these; Kubernetes keys
/// such as `app.kubernetes.io/name` are a subset).
pub(super) fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')
}

pub(super) fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(is_key_char)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A run of label-key characters: a key, a function name or a keyword (`in`, `not`, ...).
    Word(String),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    EqEq,
    NotEq,
    Bang,
    AndAnd,
    OrOr,
    End,
}

impl Tok {
    /// How an error message names this token.
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(s) => format!("string {}", quote_for_message(s)),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
            Tok::EqEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Bang => "'!'".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::OrOr => "'||'".into(),
            Tok::End => "end of selector".into(),
        }
    }
}

fn quote_for_message(s: &str) -> String {
    if s.contains('\'') {
        format!("\"{s}\"")
    } else {
        format!("'{s}'")
    }
}

/// A token and the 1-based character column it starts at.
#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    column: usize,
}

struct Parser {
    chars: Vec<char>,
    /// Index into `chars` of the next character the lexer reads.
    pos: usize,
    /// The token at `pos`, once looked at.
    peeked: Option<Token>,
    /// Currently open `(` and `!`.
    depth: usize,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, SelectorError> {
    Err(SelectorError { column, message: message.into() })
}

/// Parses `src` into a (not yet canonical) expression; blank input is `all()`.
pub(super) fn parse_expr(src: &str) -> Result<Expr, SelectorError> {
    let mut p = Parser { chars: src.chars().collect(), pos: 0, peeked: None, depth: 0 };
    if p.peek()?.tok == Tok::End {
        return Ok(Expr::All);
    }
    let expr = p.or()?;
    let next = p.next()?;
    match next.tok {
        Tok::End => Ok(expr),
        Tok::RParen => err(next.column, "unmatched ')'"),
        other => err(
            next.column,
            format!("expected '&&', '||' or end of selector, found {}", other.describe()),
        ),
    }
}

impl Parser {
    fn char_at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn lex(&mut self) -> Result<Token, SelectorError> {
        while self.char_at(self.pos).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let column = start + 1;
        let Some(c) = self.char_at(start) else {
            return Ok(Token { tok: Tok::End, column });
        };
        let next = self.char_at(start + 1);
        let (tok, len) = match (c, next) {
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('{', _) => (Tok::LBrace, 1),
            ('}', _) => (Tok::RBrace, 1),
            (',', _) => (Tok::Comma, 1),
            ('=', Some('=')) => (Tok::EqEq, 2),
            ('=', _) => return err(column, "'=' is not an operator; use '=='"),
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('!', _) => (Tok::Bang, 1),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('&', _) => return err(column, "'&' is not an operator; use '&&'"),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('|', _) => return err(column, "'|' is not an operator; use '||'"),
            ('\'' | '"', _) => {
                let body_len = self.chars[start + 1..].iter().position(|&q| q == c);
                let Some(body_len) = body_len else {
                    return err(column, format!("unterminated string: no closing {c}"));
                };
                let body: String = self.chars[start + 1..start + 1 + body_len].iter().collect();
                (Tok::Str(body), body_len + 2)
            }
            (c, _) if is_key_char(c) => {
                let len = self.chars[start..].iter().take_while(|&&k| is_key_char(k)).count();
                (Tok::Word(self.chars[start..start + len].iter().collect()), len)
            }
            (c, _) => return err(column, format!("unexpected character {c:?}")),
        };
        self.pos = start + len;
        Ok(Token { tok, column })
    }

    fn peek(&mut self) -> Result<&Token, SelectorError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex()?);
        }
        match &self.peeked {
            Some(token) => Ok(token),
            None => err(self.pos + 1, "internal error: no token"),
        }
    }

    fn next(&mut self) -> Result<Token, SelectorError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lex(),
        }
    }

    /// Consumes the next token if it is `tok`.
    fn eat(&mut self, tok: &Tok) -> Result<bool, SelectorError> {
        if self.peek()?.tok == *tok {
            self.peeked = None;
            return Ok(true);
        }
        Ok(false)
    }

    fn enter(&mut self, column: usize) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(column, format!("selector nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        let mut operands = vec![self.and()?];
        while self.eat(&Tok::OrOr)? {
            operands.push(self.and()?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { Expr::Or(operands) })
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let mut operands = vec![self.unary()?];
        while self.eat(&Tok::AndAnd)? {
            operands.push(self.unary()?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { Expr::And(operands) })
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        let token = self.next()?;
        match token.tok {
            Tok::Bang => {
                self.enter(token.column)?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Tok::LParen => {
                self.enter(token.column)?;
                let inner = self.or()?;
                let close = self.next()?;
                if close.tok != Tok::RParen {
                    return err(
                        close.column,
                        format!(
                            "expected ')' to close '(' at column {}, found {}",
                            token.column,
                            close.tok.describe()
                        ),
                    );
                }
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Word(word) => {
                if self.peek()?.tok == Tok::LParen {
                    self.function(word, token.column)
                } else {
                    self.comparison(word, token.column)
                }
            }
            Tok::End => err(token.column, "unexpected end of selector: expected an expression"),
            other => err(
                token.column,
                format!(
                    "expected an expression (a label key, has(), all(), global(), '!' or '('), \
                     found {}",
                    other.describe()
                ),
            ),
        }
    }

    /// `name(` has been seen (the `(` not yet consumed).
    fn function(&mut self, name: String, column: usize) -> Result<Expr, SelectorError> {
        self.next()?;
        match name.as_str() {
            "all" | "global" => {
                let close = self.next()?;
                if close.tok != Tok::RParen {
                    return err(
                        close.column,
                        format!("{name}() takes no arguments, found {}", close.tok.describe()),
                    );
                }
                Ok(if name == "all" { Expr::All } else { Expr::Global })
            }
            "has" => {
                let key = self.next()?;
                let key_name = match key.tok {
                    Tok::Word(w) => w,
                    Tok::Str(s) => {
                        let message = format!(
                            "has() takes an unquoted label key, found string {}",
                            quote_for_message(&s)
                        );
                        return err(key.column, message);
                    }
                    other => {
                        let message =
                            format!("expected a label key in has(), found {}", other.describe());
                        return err(key.column, message);
                    }
                };
                let close = self.next()?;
                if close.tok != Tok::RParen {
                    return err(
                        close.column,
                        format!(
                            "expected ')' after label '{key_name}' in has(), found {}",
                            close.tok.describe()
                        ),
                    );
                }
                Ok(Expr::Has(key_name))
            }
            _ => err(column, format!("unknown function '{name}' (known: all, global, has)")),
        }
    }

    /// A label key `key` has been read; an operator and its operand follow.
    fn comparison(&mut self, key: String, key_column: usize) -> Result<Expr, SelectorError> {
        let op = self.next()?;
        let op_name = match &op.tok {
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Word(w) if w == "in" => "in",
            Tok::Word(w) if w == "contains" => "contains",
            Tok::Word(w) if w == "not" => {
                self.expect_word("in", "not")?;
                "not in"
            }
            Tok::Word(w) if w == "starts" => {
                self.expect_word("with", "starts")?;
                "starts with"
            }
            Tok::Word(w) if w == "ends" => {
                self.expect_word("with", "ends")?;
                "ends with"
            }
            Tok::Word(w) if w == "startswith" || w == "endswith" || w == "notin" => {
                return err(op.column, format!("unknown operator '{w}' (write it as two words)"));
            }
            other => {
                return err(
                    op.column,
                    format!(
                        "expected an operator (==, !=, in, not in, contains, starts with, \
                         ends with) after label '{key}' at column {key_column}, found {}",
                        other.describe()
                    ),
                )
            }
        };
        match op_name {
            "in" | "not in" => {
                let values = self.set(op_name)?;
                Ok(if op_name == "in" {
                    Expr::In { key, values }
                } else {
                    Expr::NotIn { key, values }
                })
            }
            _ => {
                let value = self.string(op_name)?;
                Ok(match op_name {
                    "==" => Expr::Eq { key, value },
                    "!=" => Expr::Ne { key, value },
                    "contains" => Expr::Contains { key, value },
                    "starts with" => Expr::StartsWith { key, value },
                    _ => Expr::EndsWith { key, value },
                })
            }
        }
    }

    fn expect_word(&mut self, word: &str, after: &str) -> Result<(), SelectorError> {
        let token = self.next()?;
        match token.tok {
            Tok::Word(w) if w == word => Ok(()),
            other => err(
                token.column,
                format!("expected '{word}' after '{after}', found {}", other.describe()),
            ),
        }
    }

    /// A quoted string operand of `op`.
    fn string(&mut self, op: &str) -> Result<String, SelectorError> {
        let token = self.next()?;
        match token.tok {
            Tok::Str(s) => Ok(s),
            Tok::Word(w) => err(
                token.column,
                format!("expected a quoted string after '{op}', found '{w}' (quote it: '{w}')"),
            ),
            other => err(
                token.column,
                format!("expected a quoted string after '{op}', found {}", other.describe()),
            ),
        }
    }

    /// `{ 'a', "b" }` after `in` / `not in`.
    fn set(&mut self, op: &str) -> Result<BTreeSet<String>, SelectorError> {
        let open = self.next()?;
        if open.tok != Tok::LBrace {
            return err(
                open.column,
                format!("expected '{{' to start a set after '{op}', found {}", open.tok.describe()),
            );
        }
        let mut values = BTreeSet::new();
        if self.eat(&Tok::RBrace)? {
            return Ok(values);
        }
        loop {
            let member = self.next()?;
            match member.tok {
                Tok::Str(s) => {
                    values.insert(s);
                }
                other => {
                    return err(
                        member.column,
                        format!("expected a quoted string in set, found {}", other.describe()),
                    )
                }
            }
            let sep = self.next()?;
            match sep.tok {
                Tok::Comma => {}
                Tok::RBrace => return Ok(values),
                other => {
                    return err(
                        sep.column,
                        format!(
                            "expected ',' or '}}' in set opened at column {}, found {}",
                            open.column,
                            other.describe()
                        ),
                    )
                }
            }
        }
    }
}
