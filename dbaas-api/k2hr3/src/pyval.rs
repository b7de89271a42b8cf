//! Query-string values as K2HR3 clients send them: JSON (`["a"]`, `{"k":"v"}`) per the K2HR3
//! documentation, or the Python repr that k2hr3client 1.1.3 produces by url-encoding Python
//! objects (`['a']`, `{'k': 'v'}`, `True`, `None`). Owns turning either into JSON values;
//! anything that is neither is a plain string.

use serde_json::{Map, Value};

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > 32 {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'[' | b'(' => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut v = Vec::new();
                if self.eat(close) {
                    return Some(Value::Array(v));
                }
                loop {
                    v.push(self.value(depth + 1)?);
                    if self.eat(b',') {
                        if self.eat(close) {
                            return Some(Value::Array(v));
                        }
                        continue;
                    }
                    return self.eat(close).then_some(Value::Array(v));
                }
            }
            b'{' => {
                self.i += 1;
                let mut m = Map::new();
                if self.eat(b'}') {
                    return Some(Value::Object(m));
                }
                loop {
                    let k = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(depth + 1)?;
                    m.insert(k, v);
                    if self.eat(b',') {
                        if self.eat(b'}') {
                            return Some(Value::Object(m));
                        }
                        continue;
                    }
                    return self.eat(b'}').then_some(Value::Object(m));
                }
            }
            q @ (b'\'' | b'"') => {
                self.i += 1;
                let mut out = Vec::new();
                while let Some(&c) = self.s.get(self.i) {
                    self.i += 1;
                    if c == q {
                        return String::from_utf8(out).ok().map(Value::String);
                    }
                    if c == b'\\' {
                        let e = *self.s.get(self.i)?;
                        self.i += 1;
                        out.push(match e {
                            b'n' => b'\n',
                            b't' => b'\t',
                            b'r' => b'\r',
                            other => other,
                        });
                    } else {
                        out.push(c);
                    }
                }
                None
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && !b",]})".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let w = std::str::from_utf8(&self.s[start..self.i]).ok()?.trim();
                Some(match w {
                    "True" | "true" => Value::Bool(true),
                    "False" | "false" => Value::Bool(false),
                    "None" | "null" => Value::Null,
                    n => serde_json::from_str::<serde_json::Number>(n)
                        .map(Value::Number)
                        .ok()?,
                })
            }
        }
    }
}

/// Parse a JSON or Python literal; `None` when `s` is neither.
pub fn literal(s: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Some(v);
    }
    let mut p = P {
        s: s.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    (p.i == s.len()).then_some(v)
}

/// An optional string parameter: absent, empty, `None` and `null` are none.
pub fn opt(s: Option<&String>) -> Option<String> {
    let s = s?.trim();
    match s {
        "" | "None" | "null" => None,
        s => Some(s.to_string()),
    }
}

/// A list parameter: a JSON/Python list, or one plain value.
pub fn list(s: Option<&String>) -> Vec<String> {
    let Some(s) = opt(s) else { return Vec::new() };
    match literal(&s) {
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .collect(),
        _ => vec![s],
    }
}

/// A boolean parameter (`true`, `True`, `1`, `yes`).
pub fn flag(s: Option<&String>, default: bool) -> bool {
    match opt(s) {
        None => default,
        Some(v) => matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_python_forms() {
        assert_eq!(literal("['a', 'b']"), Some(json!(["a", "b"])));
        assert_eq!(literal(r#"["a"]"#), Some(json!(["a"])));
        assert_eq!(
            literal("{'k': 'v', 'n': 1, 't': True, 'x': None}"),
            Some(json!({"k": "v", "n": 1, "t": true, "x": null}))
        );
        assert_eq!(literal("'it\\'s'"), Some(json!("it's")));
        assert_eq!(literal("[unclosed"), None);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            list(s("['yrn:yahoo:::t:policy:p']").as_ref()),
            vec!["yrn:yahoo:::t:policy:p"]
        );
        assert_eq!(list(s("[]").as_ref()), Vec::<String>::new());
        assert_eq!(list(s("None").as_ref()), Vec::<String>::new());
        assert_eq!(list(s("plain").as_ref()), vec!["plain"]);
        assert_eq!(opt(s("None").as_ref()), None);
        assert!(flag(s("True").as_ref(), false));
        assert!(!flag(s("False").as_ref(), true));
    }
}
