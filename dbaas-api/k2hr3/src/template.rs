//! The K2HR3 template language, as far as per-cluster configurations need it: `{{= expr }}`
//! prints, `{{# comment }}`, `{{ if }} / elif / else / endif`, `while .. done`, `do .. while`,
//! `for init ; cond ; step .. done`, `foreach %v% in expr .. done`, `break`, `continue`,
//! assignments and `++`/`--`, arithmetic, bit, comparison and logical operators with the usual
//! precedence, constants `null true false`, numbers (decimal, `0x`, `0o`, `0b`), quoted
//! strings, and variables `%name%` with `[index]` / `{'key'}` access. An optional
//! `{{#!k2hr3template }}` header names the engine. `{{{` and `}}}` print `{{` and `}}`.
//!
//! Invariants: expansion is pure (variables come in a map; nothing is fetched while
//! expanding), bounded (at most [`MAX_STEPS`] loop iterations and [`MAX_OUTPUT`] bytes), and
//! a statement alone on its line leaves no blank line behind.

use std::collections::HashMap;

use serde_json::{Number, Value};

/// Most loop iterations in one expansion.
pub const MAX_STEPS: usize = 100_000;
/// Largest output.
pub const MAX_OUTPUT: usize = 4 << 20;

/// A template error, with what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(m.into()))
}

/// The `%name%` variables a template mentions (to fetch them before expanding).
pub fn variables(tpl: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = tpl;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else { break };
        let stmt = &after[..j];
        let b = stmt.as_bytes();
        let mut k = 0;
        while k < b.len() {
            if b[k] == b'%'
                && let Some(name) = var_at(stmt, k)
            {
                k += name.len() + 2;
                if !out.contains(&name) {
                    out.push(name);
                }
                continue;
            }
            k += 1;
        }
        rest = &after[j + 2..];
    }
    out
}

/// A `%name%` starting at byte `k` of `s` (no whitespace inside, not empty).
fn var_at(s: &str, k: usize) -> Option<String> {
    let rest = &s[k + 1..];
    let end = rest.find('%')?;
    let name = &rest[..end];
    (!name.is_empty() && !name.chars().any(char::is_whitespace)).then(|| name.to_string())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Str(String),
    Var(String),
    Op(&'static str),
    Word(String),
}

const OPS: &[&str] = &[
    "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "++", "--", "+", "-", "*", "/", "%", "&", "|",
    "<", ">", "!", "=", "[", "]", "{", "}", "(", ")", ";",
];

fn lex(s: &str) -> Result<Vec<Tok>, TemplateError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '%'
            && let Some(name) = var_at(s, i)
        {
            i += name.len() + 2;
            out.push(Tok::Var(name));
            continue;
        }
        if c == '\'' || c == '"' {
            let mut v = Vec::new();
            i += 1;
            loop {
                let Some(&d) = b.get(i) else {
                    return err(format!("unterminated string in {s:?}"));
                };
                i += 1;
                if d == b'\\' {
                    let Some(&e) = b.get(i) else {
                        return err("a string ends with \\");
                    };
                    i += 1;
                    v.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        o => o,
                    });
                } else if d == c as u8 {
                    break;
                } else {
                    v.push(d);
                }
            }
            out.push(Tok::Str(String::from_utf8_lossy(&v).into_owned()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i] as char).is_ascii_alphanumeric() {
                i += 1;
            }
            let w = &s[start..i];
            let n = if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
                i64::from_str_radix(h, 16)
            } else if let Some(o) = w.strip_prefix("0o") {
                i64::from_str_radix(o, 8)
            } else if let Some(bn) = w.strip_prefix("0b") {
                i64::from_str_radix(bn, 2)
            } else {
                w.parse::<i64>()
            };
            match n {
                Ok(n) => out.push(Tok::Num(Value::from(n))),
                Err(_) => return err(format!("bad number {w:?}")),
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Word(s[start..i].to_string()));
            continue;
        }
        match OPS.iter().find(|o| s[i..].starts_with(**o)) {
            Some(o) => {
                out.push(Tok::Op(o));
                i += o.len();
            }
            None => return err(format!("unexpected {c:?} in {s:?}")),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Var(String),
    Index(Box<Expr>, Box<Expr>),
    Unary(&'static str, Box<Expr>),
    Pre(&'static str, Box<Expr>),
    Post(&'static str, Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Assign(Box<Expr>, Box<Expr>),
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
}

fn prec(op: &str) -> Option<u8> {
    Some(match op {
        "||" => 1,
        "&&" => 2,
        "|" => 3,
        "&" => 4,
        "==" | "!=" => 5,
        "<" | ">" | "<=" | ">=" => 6,
        "<<" | ">>" => 7,
        "+" | "-" => 8,
        "*" | "/" | "%" => 9,
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn is_op(&self, o: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(x)) if *x == o)
    }

    fn expect(&mut self, o: &str) -> Result<(), TemplateError> {
        if self.is_op(o) {
            self.i += 1;
            Ok(())
        } else {
            err(format!("expected {o:?}"))
        }
    }

    fn expr(&mut self) -> Result<Expr, TemplateError> {
        let lhs = self.binary(0)?;
        if self.is_op("=") {
            self.i += 1;
            if !matches!(lhs, Expr::Var(_) | Expr::Index(..)) {
                return err("only a variable can be assigned");
            }
            let rhs = self.expr()?;
            return Ok(Expr::Assign(Box::new(lhs), Box::new(rhs)));
        }
        Ok(lhs)
    }

    fn binary(&mut self, min: u8) -> Result<Expr, TemplateError> {
        let mut lhs = self.unary()?;
        loop {
            let Some(Tok::Op(op)) = self.peek().cloned() else {
                return Ok(lhs);
            };
            let Some(p) = prec(op) else { return Ok(lhs) };
            if p < min {
                return Ok(lhs);
            }
            self.i += 1;
            let rhs = self.binary(p + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn unary(&mut self) -> Result<Expr, TemplateError> {
        match self.peek().cloned() {
            Some(Tok::Op(o @ ("!" | "-"))) => {
                self.i += 1;
                Ok(Expr::Unary(o, Box::new(self.unary()?)))
            }
            Some(Tok::Op(o @ ("++" | "--"))) => {
                self.i += 1;
                Ok(Expr::Pre(o, Box::new(self.postfix()?)))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, TemplateError> {
        let mut e = self.primary()?;
        loop {
            if self.is_op("[") {
                self.i += 1;
                let k = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(k));
            } else if self.is_op("{") {
                self.i += 1;
                let k = self.expr()?;
                self.expect("}")?;
                e = Expr::Index(Box::new(e), Box::new(k));
            } else if self.is_op("++") || self.is_op("--") {
                let Some(Tok::Op(o)) = self.peek().cloned() else {
                    unreachable!()
                };
                self.i += 1;
                e = Expr::Post(o, Box::new(e));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, TemplateError> {
        let Some(t) = self.peek().cloned() else {
            return err("an expression ends too early");
        };
        self.i += 1;
        match t {
            Tok::Num(n) => Ok(Expr::Lit(n)),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Var(v) => Ok(Expr::Var(v)),
            Tok::Word(w) => match w.as_str() {
                "null" => Ok(Expr::Lit(Value::Null)),
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                other => err(format!("unknown word {other:?} in an expression")),
            },
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op(o) => err(format!("unexpected {o:?}")),
        }
    }
}

fn parse_expr(toks: &[Tok]) -> Result<Expr, TemplateError> {
    let mut p = Parser {
        t: toks.to_vec(),
        i: 0,
    };
    let e = p.expr()?;
    if p.i != p.t.len() {
        return err(format!("unexpected {:?} after an expression", p.t[p.i]));
    }
    Ok(e)
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Expr),
    Eval(Expr),
    If(Vec<(Expr, Vec<Node>)>, Vec<Node>),
    While(Expr, Vec<Node>),
    DoWhile(Vec<Node>, Expr),
    For(Option<Expr>, Option<Expr>, Option<Expr>, Vec<Node>),
    Foreach(String, Expr, Vec<Node>),
    Break,
    Continue,
}

/// Pieces of the template: text and statements (with whether they print).
enum Piece {
    Text(String),
    Stmt(String),
}

fn split(tpl: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut s = tpl;
    // The engine header.
    if s.starts_with("{{#!")
        && let Some(e) = s.find("}}")
    {
        let name = s[4..e].trim();
        if name != "k2hr3template" {
            return err(format!("unknown template engine {name:?}"));
        }
        s = s[e + 2..].trim_start_matches(['\r', '\n']);
    }
    let mut out: Vec<Piece> = Vec::new();
    let mut text = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if s[i..].starts_with("{{{") {
            text.push_str("{{");
            i += 3;
        } else if s[i..].starts_with("}}}") {
            text.push_str("}}");
            i += 3;
        } else if s[i..].starts_with("{{") {
            let Some(e) = s[i + 2..].find("}}") else {
                return err("a {{ has no }}");
            };
            let stmt = s[i + 2..i + 2 + e].to_string();
            i += e + 4;
            // A statement alone on its line (not a print) takes its line with it.
            let standalone = !stmt.trim_start().starts_with('=') && {
                let line_start = text.rfind('\n').map_or(0, |p| p + 1);
                let before_blank = text[line_start..].trim().is_empty()
                    && (line_start > 0 || out.is_empty() || ends_with_newline(&out));
                let rest = &s[i..];
                let after_nl =
                    rest.starts_with('\n') || rest.starts_with("\r\n") || rest.is_empty();
                before_blank && after_nl
            };
            if standalone {
                let line_start = text.rfind('\n').map_or(0, |p| p + 1);
                text.truncate(line_start);
                if s[i..].starts_with("\r\n") {
                    i += 2;
                } else if s[i..].starts_with('\n') {
                    i += 1;
                }
            }
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Stmt(stmt));
        } else {
            let ch = s[i..].chars().next().expect("char");
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// Whether the text before the current one ended a line (a statement at the start of the
/// text that follows a statement counts as the start of a line only then).
fn ends_with_newline(out: &[Piece]) -> bool {
    for p in out.iter().rev() {
        if let Piece::Text(t) = p {
            return t.ends_with('\n');
        }
    }
    true
}

enum End {
    Eof,
    Word(String, Vec<Tok>),
}

fn block(
    pieces: &[Piece],
    i: &mut usize,
    ends: &[&str],
) -> Result<(Vec<Node>, End), TemplateError> {
    let mut nodes = Vec::new();
    while *i < pieces.len() {
        let p = &pieces[*i];
        *i += 1;
        let stmt = match p {
            Piece::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Piece::Stmt(s) => s.trim(),
        };
        if stmt.starts_with('#') {
            continue;
        }
        if let Some(e) = stmt.strip_prefix('=') {
            nodes.push(Node::Print(parse_expr(&lex(e)?)?));
            continue;
        }
        let toks = lex(stmt)?;
        let word = match toks.first() {
            Some(Tok::Word(w)) => w.clone(),
            _ => String::new(),
        };
        if ends.contains(&word.as_str()) {
            return Ok((nodes, End::Word(word, toks[1..].to_vec())));
        }
        let rest = || toks[1..].to_vec();
        match word.as_str() {
            "if" => {
                let mut arms = vec![];
                let mut cond = parse_expr(&rest())?;
                let mut otherwise = vec![];
                loop {
                    let (body, end) = block(pieces, i, &["elif", "else", "endif"])?;
                    match end {
                        End::Word(w, t) if w == "elif" => {
                            arms.push((cond, body));
                            cond = parse_expr(&t)?;
                        }
                        End::Word(w, _) if w == "else" => {
                            arms.push((cond, body));
                            let (body, end) = block(pieces, i, &["endif"])?;
                            if matches!(end, End::Eof) {
                                return err("if without endif");
                            }
                            otherwise = body;
                            break;
                        }
                        End::Word(_, _) => {
                            arms.push((cond, body));
                            break;
                        }
                        End::Eof => return err("if without endif"),
                    }
                }
                nodes.push(Node::If(arms, otherwise));
            }
            "while" => {
                let cond = parse_expr(&rest())?;
                let (body, end) = block(pieces, i, &["done"])?;
                if matches!(end, End::Eof) {
                    return err("while without done");
                }
                nodes.push(Node::While(cond, body));
            }
            "do" => {
                let (body, end) = block(pieces, i, &["while"])?;
                let End::Word(_, t) = end else {
                    return err("do without while");
                };
                nodes.push(Node::DoWhile(body, parse_expr(&t)?));
            }
            "for" => {
                let r = rest();
                let parts: Vec<&[Tok]> = r.split(|t| *t == Tok::Op(";")).collect();
                if parts.len() != 3 {
                    return err("for needs init ; condition ; step");
                }
                let opt = |t: &[Tok]| {
                    if t.is_empty() {
                        Ok(None)
                    } else {
                        parse_expr(t).map(Some)
                    }
                };
                let (a, b, c) = (opt(parts[0])?, opt(parts[1])?, opt(parts[2])?);
                let (body, end) = block(pieces, i, &["done"])?;
                if matches!(end, End::Eof) {
                    return err("for without done");
                }
                nodes.push(Node::For(a, b, c, body));
            }
            "foreach" => {
                let r = rest();
                let (Some(Tok::Var(v)), Some(Tok::Word(w))) = (r.first(), r.get(1)) else {
                    return err("foreach needs %var% in <expression>");
                };
                if w != "in" {
                    return err("foreach needs %var% in <expression>");
                }
                let e = parse_expr(&r[2..])?;
                let (body, end) = block(pieces, i, &["done"])?;
                if matches!(end, End::Eof) {
                    return err("foreach without done");
                }
                nodes.push(Node::Foreach(v.clone(), e, body));
            }
            "break" => nodes.push(Node::Break),
            "continue" => nodes.push(Node::Continue),
            "elif" | "else" | "endif" | "done" => {
                return err(format!("{word} without its opening statement"));
            }
            _ => nodes.push(Node::Eval(parse_expr(&toks)?)),
        }
    }
    Ok((nodes, End::Eof))
}

enum Flow {
    Next,
    Break,
    Continue,
}

struct Run<'a> {
    vars: &'a mut HashMap<String, Value>,
    out: String,
    steps: usize,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse().ok(),
        Value::Null => Some(0.0),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        other => num(other).map(|f| f as i64),
    }
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), y) => *x == show(y),
        (Value::Number(_) | Value::Bool(_), y) | (y, Value::Number(_) | Value::Bool(_))
            if num(y).is_some() =>
        {
            num(a) == num(b)
        }
        (x, y) => x == y,
    }
}

impl Run<'_> {
    fn get(&self, name: &str) -> Value {
        self.vars.get(name).cloned().unwrap_or(Value::Null)
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, TemplateError> {
        Ok(match e {
            Expr::Lit(v) => v.clone(),
            Expr::Var(n) => self.get(n),
            Expr::Index(base, k) => {
                let b = self.eval(base)?;
                let k = self.eval(k)?;
                match (&b, &k) {
                    (Value::Array(a), k) => int(k)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| a.get(i).cloned())
                        .unwrap_or(Value::Null),
                    (Value::Object(o), k) => o.get(&show(k)).cloned().unwrap_or(Value::Null),
                    _ => Value::Null,
                }
            }
            Expr::Unary("!", x) => Value::Bool(!truthy(&self.eval(x)?)),
            Expr::Unary(_, x) => {
                let v = self.eval(x)?;
                number(-num(&v).ok_or_else(|| TemplateError(format!("-{v} is not a number")))?)
            }
            Expr::Pre(op, x) | Expr::Post(op, x) => {
                let Expr::Var(n) = &**x else {
                    return err("++ and -- need a variable");
                };
                let old = num(&self.get(n)).unwrap_or(0.0);
                let new = if *op == "++" { old + 1.0 } else { old - 1.0 };
                self.vars.insert(n.clone(), number(new));
                number(if matches!(e, Expr::Pre(..)) { new } else { old })
            }
            Expr::Assign(lhs, rhs) => {
                let v = self.eval(rhs)?;
                match &**lhs {
                    Expr::Var(n) => {
                        self.vars.insert(n.clone(), v.clone());
                    }
                    Expr::Index(base, k) => {
                        let Expr::Var(n) = &**base else {
                            return err("only one level of [ ] or { } can be assigned");
                        };
                        let k = self.eval(k)?;
                        let slot = self.vars.entry(n.clone()).or_insert(Value::Null);
                        match slot {
                            Value::Array(a) => {
                                let i = int(&k)
                                    .and_then(|i| usize::try_from(i).ok())
                                    .filter(|i| *i <= a.len() && *i < 100_000)
                                    .ok_or_else(|| {
                                        TemplateError("array index out of range".into())
                                    })?;
                                if i == a.len() {
                                    a.push(v.clone());
                                } else {
                                    a[i] = v.clone();
                                }
                            }
                            Value::Object(o) => {
                                o.insert(show(&k), v.clone());
                            }
                            other => {
                                let mut o = serde_json::Map::new();
                                o.insert(show(&k), v.clone());
                                *other = Value::Object(o);
                            }
                        }
                    }
                    _ => return err("only a variable can be assigned"),
                }
                v
            }
            Expr::Bin(op, a, b) => {
                if *op == "&&" {
                    let l = self.eval(a)?;
                    return Ok(Value::Bool(truthy(&l) && truthy(&self.eval(b)?)));
                }
                if *op == "||" {
                    let l = self.eval(a)?;
                    return Ok(Value::Bool(truthy(&l) || truthy(&self.eval(b)?)));
                }
                let l = self.eval(a)?;
                let r = self.eval(b)?;
                match *op {
                    "==" => Value::Bool(equal(&l, &r)),
                    "!=" => Value::Bool(!equal(&l, &r)),
                    "<" | ">" | "<=" | ">=" => {
                        let ord = match (&l, num(&l), num(&r)) {
                            (Value::String(x), _, _) if num(&l).is_none() => {
                                Some(x.as_str().cmp(show(&r).as_str()))
                            }
                            (_, Some(x), Some(y)) => x.partial_cmp(&y),
                            _ => None,
                        };
                        let Some(o) = ord else {
                            return Ok(Value::Bool(false));
                        };
                        Value::Bool(match *op {
                            "<" => o.is_lt(),
                            ">" => o.is_gt(),
                            "<=" => o.is_le(),
                            _ => o.is_ge(),
                        })
                    }
                    "+" if matches!(l, Value::String(_)) || num(&r).is_none() => {
                        Value::String(show(&l) + &show(&r))
                    }
                    "&" | "|" | "<<" | ">>" | "%" => {
                        let (Some(x), Some(y)) = (int(&l), int(&r)) else {
                            return err(format!("{op} needs numbers"));
                        };
                        Value::from(match *op {
                            "&" => x & y,
                            "|" => x | y,
                            "<<" => x.checked_shl(y as u32).unwrap_or(0),
                            ">>" => x.checked_shr(y as u32).unwrap_or(0),
                            _ => {
                                if y == 0 {
                                    return err("modulo by zero");
                                }
                                x % y
                            }
                        })
                    }
                    _ => {
                        let (Some(x), Some(y)) = (num(&l), num(&r)) else {
                            return err(format!("{op} needs numbers"));
                        };
                        match *op {
                            "+" => number(x + y),
                            "-" => number(x - y),
                            "*" => number(x * y),
                            _ => {
                                if y == 0.0 {
                                    return err("division by zero");
                                }
                                // Integers divide as integers.
                                if x.fract() == 0.0 && y.fract() == 0.0 {
                                    number((x / y).trunc())
                                } else {
                                    number(x / y)
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    fn step(&mut self) -> Result<(), TemplateError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return err(format!("more than {MAX_STEPS} loop iterations"));
        }
        Ok(())
    }

    fn run(&mut self, nodes: &[Node]) -> Result<Flow, TemplateError> {
        for n in nodes {
            if self.out.len() > MAX_OUTPUT {
                return err("the output is too large");
            }
            match n {
                Node::Text(t) => self.out.push_str(t),
                Node::Print(e) => {
                    let v = self.eval(e)?;
                    self.out.push_str(&show(&v));
                }
                Node::Eval(e) => {
                    self.eval(e)?;
                }
                Node::If(arms, otherwise) => {
                    let mut done = false;
                    for (c, body) in arms {
                        if truthy(&self.eval(c)?) {
                            match self.run(body)? {
                                Flow::Next => {}
                                f => return Ok(f),
                            }
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        match self.run(otherwise)? {
                            Flow::Next => {}
                            f => return Ok(f),
                        }
                    }
                }
                Node::While(c, body) => {
                    while truthy(&self.eval(c)?) {
                        self.step()?;
                        if let Flow::Break = self.run(body)? {
                            break;
                        }
                    }
                }
                Node::DoWhile(body, c) => loop {
                    self.step()?;
                    if let Flow::Break = self.run(body)? {
                        break;
                    }
                    if !truthy(&self.eval(c)?) {
                        break;
                    }
                },
                Node::For(init, cond, stepx, body) => {
                    if let Some(i) = init {
                        self.eval(i)?;
                    }
                    loop {
                        if let Some(c) = cond
                            && !truthy(&self.eval(c)?)
                        {
                            break;
                        }
                        self.step()?;
                        if let Flow::Break = self.run(body)? {
                            break;
                        }
                        if let Some(s) = stepx {
                            self.eval(s)?;
                        }
                    }
                }
                Node::Foreach(var, e, body) => {
                    let items: Vec<Value> = match self.eval(e)? {
                        Value::Array(a) => a,
                        Value::Object(o) => o.keys().cloned().map(Value::String).collect(),
                        Value::Null => vec![],
                        other => vec![other],
                    };
                    for it in items {
                        self.step()?;
                        self.vars.insert(var.clone(), it);
                        if let Flow::Break = self.run(body)? {
                            break;
                        }
                    }
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Next)
    }
}

/// Whether `tpl` uses the template language at all (plain strings are returned as they are).
pub fn is_template(tpl: &str) -> bool {
    tpl.contains("{{")
}

/// Check that `tpl` parses (without running it: its variables are not known yet).
pub fn check(tpl: &str) -> Result<(), TemplateError> {
    let pieces = split(tpl)?;
    let mut i = 0;
    block(&pieces, &mut i, &[]).map(drop)
}

/// Expand `tpl` with `vars` (names without `%`). Assignments update `vars`.
pub fn expand(tpl: &str, vars: &mut HashMap<String, Value>) -> Result<String, TemplateError> {
    let pieces = split(tpl)?;
    let mut i = 0;
    let (nodes, end) = block(&pieces, &mut i, &[])?;
    debug_assert!(matches!(end, End::Eof));
    let mut r = Run {
        vars,
        out: String::new(),
        steps: 0,
    };
    r.run(&nodes)?;
    Ok(r.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn x(t: &str, vars: Value) -> Result<String, TemplateError> {
        let mut m: HashMap<String, Value> = vars
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        expand(t, &mut m)
    }

    #[test]
    fn the_documented_samples() {
        let t = "{{#!k2hr3template }}\n{{# comment }}\nExample.\n  {{ for %val% = 0 ; %val% < 2 ; ++%val% }}\n    - value {{= %val% }}.\n  {{ done }}\n  {{ %val% = 10 + 10 * 9 / 3 }}\nresult = {{= %val% }}\n";
        assert_eq!(
            x(t, json!({})).unwrap(),
            "Example.\n    - value 0.\n    - value 1.\nresult = 40\n"
        );
        assert_eq!(
            x("{{ %p% = 1 + 3 * 2 * 3 + 1 }}{{= %p% }}", json!({})).unwrap(),
            "20"
        );
    }

    #[test]
    fn role_hosts_and_keys() {
        let hosts = json!({
            "10.0.0.1,0,cuk1": {"host": "10.0.0.1", "port": 0, "cuk": "cuk1", "tag": "n1.example"},
            "10.0.0.2,0,cuk2": {"host": "10.0.0.2", "port": 0, "cuk": "cuk2", "tag": "n2.example"},
        });
        let t = "GROUP={{= %cluster-name% }}\n{{ foreach %k% in %yrn:yahoo:::t:role:c/server/hosts/ip% }}\n{{ %h% = %yrn:yahoo:::t:role:c/server/hosts/ip%{%k%} }}\n[SVRNODE]\nNAME={{= %h%{'tag'} }}\nCUK={{= %h%{'cuk'} }}\n{{ done }}\n";
        let out = x(
            t,
            json!({"cluster-name": "c", "yrn:yahoo:::t:role:c/server/hosts/ip": hosts}),
        )
        .unwrap();
        assert_eq!(
            out,
            "GROUP=c\n[SVRNODE]\nNAME=n1.example\nCUK=cuk1\n[SVRNODE]\nNAME=n2.example\nCUK=cuk2\n"
        );
        assert_eq!(
            variables(t),
            vec![
                "cluster-name",
                "k",
                "yrn:yahoo:::t:role:c/server/hosts/ip",
                "h"
            ]
        );
    }

    #[test]
    fn control_flow_and_operators() {
        let t = "{{ if %n% == 0 }}zero{{ elif %n% == 1 }}one{{ else }}many{{ endif }}";
        assert_eq!(x(t, json!({"n": 0})).unwrap(), "zero");
        assert_eq!(x(t, json!({"n": 1})).unwrap(), "one");
        assert_eq!(x(t, json!({"n": 5})).unwrap(), "many");
        assert_eq!(
            x(
                "{{ while 0 < %v% }}{{= %v% }}{{ --%v% }}{{ done }}",
                json!({"v": 3})
            )
            .unwrap(),
            "321"
        );
        assert_eq!(
            x("{{ do }}x{{ %v%++ }}{{ while %v% < 2 }}", json!({"v": 0})).unwrap(),
            "xx"
        );
        assert_eq!(
            x(
                "{{ foreach %e% in %a% }}{{ if %e% == 2 }}{{ continue }}{{ endif }}{{ if %e% == 4 }}{{ break }}{{ endif }}{{= %e% }}{{ done }}",
                json!({"a": [1, 2, 3, 4, 5]})
            )
            .unwrap(),
            "13"
        );
        assert_eq!(
            x("{{= 0xff & 0b1010 }} {{= 1 << 4 }} {{= 7 % 3 }} {{= !true }} {{= 'a' + 1 }} {{= 1 && null }}", json!({})).unwrap(),
            "10 16 1 false a1 false"
        );
        assert_eq!(
            x("{{{ not a statement }}}", json!({})).unwrap(),
            "{{ not a statement }}"
        );
        assert_eq!(x("{{= %a%[1] }}", json!({"a": ["x", "y"]})).unwrap(), "y");
        assert_eq!(x("{{= \"q\\\"uote\" }}", json!({})).unwrap(), "q\"uote");
    }

    #[test]
    fn errors_are_reported_not_hung() {
        for bad in [
            "{{ if 1 }}no end",
            "{{ done }}",
            "{{= 1 + }}",
            "{{ foreach x in %a% }}{{ done }}",
            "{{ while true }}{{ done }}",
            "{{= 1 / 0 }}",
            "{{#!jinja }}x",
            "{{ unclosed",
        ] {
            assert!(x(bad, json!({"a": [1]})).is_err(), "{bad}");
        }
    }
}
