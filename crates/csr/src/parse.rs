//! Parser for the `localparam int unsigned NAME = VALUE;` lines of `rtl/pkg/e2t_pkg.sv`.
//!
//! Shared by `build.rs` (which generates the Rust constants) and the crate's tests (which re-read the
//! package at test time and compare). It accepts exactly one declaration per line; VALUE is a decimal
//! number or a Verilog based literal (`'h1F`, `12'h0FC`, `32'hE2A0_0001`, `'d5`, `'b101`). Any other
//! `localparam` line is an error, so a package edit the parser does not understand fails the build
//! loudly instead of silently dropping a constant.

use std::collections::BTreeMap;
use std::fmt;

/// One parsed constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: u64,
    /// 1-based line in the package file.
    pub line: usize,
}

/// Why the package could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e2t_pkg.sv line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a Verilog number: decimal, or `[size]'[sS]?(h|d|b|o)digits` with `_` separators.
pub fn parse_number(text: &str) -> Result<u64, String> {
    let t: String = text.chars().filter(|c| *c != '_').collect();
    if t.is_empty() {
        return Err("empty value".to_string());
    }
    let Some(tick) = t.find('\'') else {
        return t
            .parse::<u64>()
            .map_err(|e| format!("value `{text}` is not a decimal number: {e}"));
    };
    let (size, rest) = (&t[..tick], &t[tick + 1..]);
    let rest = rest.strip_prefix(['s', 'S']).unwrap_or(rest);
    let mut chars = rest.chars();
    let base = match chars.next() {
        Some('h' | 'H') => 16,
        Some('d' | 'D') => 10,
        Some('b' | 'B') => 2,
        Some('o' | 'O') => 8,
        _ => {
            return Err(format!(
                "value `{text}`: expected a base letter (h, d, b, o) after the tick"
            ));
        }
    };
    let digits = chars.as_str();
    let value = u64::from_str_radix(digits, base)
        .map_err(|e| format!("value `{text}`: bad digits: {e}"))?;
    if !size.is_empty() {
        let bits: u32 = size
            .parse()
            .map_err(|_| format!("value `{text}`: bad size `{size}`"))?;
        if bits < 64 && value >> bits != 0 {
            return Err(format!(
                "value `{text}` does not fit its declared {bits} bits"
            ));
        }
    }
    Ok(value)
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses every `localparam` of the package source, in file order. Errors name the line.
pub fn parse_package(src: &str) -> Result<Vec<Param>, ParseError> {
    let mut out: Vec<Param> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut saw_package = false;
    for (idx, raw) in src.lines().enumerate() {
        let line = idx + 1;
        let code = raw.split("//").next().unwrap_or("").trim();
        if code.starts_with("package ") {
            saw_package = true;
        }
        if !code.starts_with("localparam") {
            continue;
        }
        let err = |message: String| ParseError { line, message };
        let rest = code
            .strip_prefix("localparam")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix("int unsigned"))
            .ok_or_else(|| {
                err(format!(
                    "expected `localparam int unsigned NAME = VALUE;`, found `{code}`"
                ))
            })?;
        let body = rest.trim().strip_suffix(';').ok_or_else(|| {
            err("expected one declaration ending in `;` on this line".to_string())
        })?;
        let (name, value) = body
            .split_once('=')
            .ok_or_else(|| err(format!("expected `NAME = VALUE`, found `{body}`")))?;
        let (name, value) = (name.trim(), value.trim());
        if !is_ident(name) {
            return Err(err(format!("`{name}` is not a plain identifier")));
        }
        let value = parse_number(value).map_err(err)?;
        if let Some(prev) = seen.insert(name.to_string(), line) {
            return Err(err(format!(
                "`{name}` is declared twice (first on line {prev})"
            )));
        }
        out.push(Param {
            name: name.to_string(),
            value,
            line,
        });
    }
    if !saw_package {
        return Err(ParseError {
            line: 0,
            message: "no `package` declaration found".to_string(),
        });
    }
    if out.is_empty() {
        return Err(ParseError {
            line: 0,
            message: "no `localparam int unsigned` declarations found".to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("12"), Ok(12));
        assert_eq!(parse_number("'h100"), Ok(0x100));
        assert_eq!(parse_number("32'hE2A0_0001"), Ok(0xE2A0_0001));
        assert_eq!(parse_number("4'b1010"), Ok(10));
        assert_eq!(parse_number("'d5"), Ok(5));
        assert!(parse_number("4'h1F").is_err());
        assert!(parse_number("'x12").is_err());
        assert!(parse_number("FOO").is_err());
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let e = parse_package("package p;\n  localparam logic [3:0] X = 4'd1;\nendpackage\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_package(
            "package p;\n localparam int unsigned A = 1;\n localparam int unsigned A = 2;\n",
        )
        .unwrap_err();
        assert!(e.message.contains("declared twice"), "{e}");
        assert!(parse_package("localparam int unsigned A = 1;\n").is_err());
        let ok =
            parse_package("package p;\n  localparam int unsigned A = 'h10; // x\nendpackage\n")
                .unwrap();
        assert_eq!(
            ok,
            vec![Param {
                name: "A".into(),
                value: 16,
                line: 2
            }]
        );
    }
}
