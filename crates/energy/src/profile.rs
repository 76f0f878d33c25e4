//! Energy profiles: the per-operation table, read from TOML and validated key by key.
//!
//! A profile file has two top-level strings (`name`, `description`) and one table per [`Op`], each
//! with `value` (finite, >= 0; the clock must be > 0), `unit` (must equal [`Op::unit`]), `source`
//! (non-empty text naming where the number comes from) and an optional `estimate` flag. Any other
//! key is an error: a misspelt key would otherwise silently fall back to nothing.

use std::fmt;
use std::path::Path;

/// One priced quantity of the energy model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// One 8x8 product in INT8 mode.
    MacInt8,
    /// One 16x16 product in INT16 mode.
    MacInt16,
    /// One 48-bit accumulator add (one per MAC, either mode).
    AccAdd48,
    /// One byte read from an on-chip buffer.
    BufferRead,
    /// One byte written to an on-chip buffer.
    BufferWrite,
    /// One byte read from or written to DRAM/DDR.
    Dram,
    /// One byte crossing the operand/result stream interface (DMA, interconnect).
    Stream,
    /// Static (leakage and clocking) power of the accelerator.
    StaticPower,
    /// Array clock frequency, to turn cycles into seconds.
    Clock,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::MacInt8,
        Op::MacInt16,
        Op::AccAdd48,
        Op::BufferRead,
        Op::BufferWrite,
        Op::Dram,
        Op::Stream,
        Op::StaticPower,
        Op::Clock,
    ];

    /// The TOML table name.
    pub fn key(self) -> &'static str {
        match self {
            Op::MacInt8 => "mac_int8",
            Op::MacInt16 => "mac_int16",
            Op::AccAdd48 => "acc_add48",
            Op::BufferRead => "buffer_read",
            Op::BufferWrite => "buffer_write",
            Op::Dram => "dram",
            Op::Stream => "stream",
            Op::StaticPower => "static_power",
            Op::Clock => "clock",
        }
    }

    /// The unit the value must be given in (written out in the file so a reader cannot misread it).
    pub fn unit(self) -> &'static str {
        match self {
            Op::MacInt8 | Op::MacInt16 | Op::AccAdd48 => "pJ/op",
            Op::BufferRead | Op::BufferWrite | Op::Dram | Op::Stream => "pJ/byte",
            Op::StaticPower => "W",
            Op::Clock => "Hz",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub value: f64,
    pub source: String,
    /// True when the number is derived or guessed rather than read from the source.
    pub estimate: bool,
}

/// A validated energy profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it was loaded from (`builtin:NAME` or a path), for messages and reports.
    pub origin: String,
    entries: [Entry; 9],
}

/// Profiles shipped inside the binary.
pub const BUILTIN: [(&str, &str); 2] = [
    ("asic45", include_str!("../profiles/asic45.toml")),
    ("zc706", include_str!("../profiles/zc706.toml")),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("energy profile {file}: cannot read: {message}")]
    Io { file: String, message: String },
    #[error("energy profile {file}: not valid TOML: {message}")]
    Toml { file: String, message: String },
    #[error("energy profile {file}: unknown key `{key}` (expected one of: {expected})")]
    UnknownKey {
        file: String,
        key: String,
        expected: String,
    },
    #[error("energy profile {file}: missing key `{key}`")]
    Missing { file: String, key: String },
    #[error("energy profile {file}: `{key}` must be {expected}")]
    WrongType {
        file: String,
        key: String,
        expected: &'static str,
    },
    #[error("energy profile {file}: `{key}` is {value}, expected a finite number >= 0")]
    Negative {
        file: String,
        key: String,
        value: f64,
    },
    #[error("energy profile {file}: `{key}` is {value}, expected a finite number")]
    NotFinite {
        file: String,
        key: String,
        value: f64,
    },
    #[error("energy profile {file}: `{key}` must be > 0 (it divides cycles into seconds)")]
    Zero { file: String, key: String },
    #[error("energy profile {file}: `{key}.unit` is \"{got}\", expected \"{expected}\"")]
    Unit {
        file: String,
        key: String,
        got: String,
        expected: &'static str,
    },
    #[error("unknown energy profile '{0}': expected asic45, zc706 or a path to a .toml file")]
    UnknownName(String),
}

impl Profile {
    /// A built-in profile by name (`asic45`, `zc706`).
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        let (n, text) = BUILTIN
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| ProfileError::UnknownName(name.to_string()))?;
        Profile::parse(text, &format!("builtin:{n}"))
    }

    /// What `--energy-profile` takes: a built-in name, or else a path to a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Profile, ProfileError> {
        if BUILTIN
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name_or_path.trim()))
        {
            return Profile::builtin(name_or_path);
        }
        let p = Path::new(name_or_path);
        if p.extension().is_some_and(|e| e == "toml") || p.exists() {
            return Profile::load(p);
        }
        Err(ProfileError::UnknownName(name_or_path.to_string()))
    }

    /// Read and validate a user's profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Profile::parse(&text, &file)
    }

    /// Parse and validate profile text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
        let f = || file.to_string();
        let table: toml::Table = toml::from_str(text).map_err(|e| ProfileError::Toml {
            file: f(),
            message: e.to_string(),
        })?;
        let mut expected_top: Vec<&str> = vec!["name", "description"];
        expected_top.extend(Op::ALL.iter().map(|o| o.key()));
        for key in table.keys() {
            if !expected_top.contains(&key.as_str()) {
                return Err(ProfileError::UnknownKey {
                    file: f(),
                    key: key.clone(),
                    expected: expected_top.join(", "),
                });
            }
        }
        let string_at = |t: &toml::Table, key: &str, path: &str| -> Result<String, ProfileError> {
            match t.get(key) {
                None => Err(ProfileError::Missing {
                    file: f(),
                    key: path.to_string(),
                }),
                Some(toml::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ProfileError::WrongType {
                    file: f(),
                    key: path.to_string(),
                    expected: "a string",
                }),
            }
        };
        let name = string_at(&table, "name", "name")?;
        let description = string_at(&table, "description", "description")?;
        let mut entries = Vec::with_capacity(Op::ALL.len());
        for op in Op::ALL {
            let key = op.key();
            let t = match table.get(key) {
                None => {
                    return Err(ProfileError::Missing {
                        file: f(),
                        key: key.to_string(),
                    });
                }
                Some(toml::Value::Table(t)) => t,
                Some(_) => {
                    return Err(ProfileError::WrongType {
                        file: f(),
                        key: key.to_string(),
                        expected: "a table with value, unit, source",
                    });
                }
            };
            for k in t.keys() {
                if !["value", "unit", "source", "estimate"].contains(&k.as_str()) {
                    return Err(ProfileError::UnknownKey {
                        file: f(),
                        key: format!("{key}.{k}"),
                        expected: "value, unit, source, estimate".into(),
                    });
                }
            }
            let vkey = format!("{key}.value");
            let value = match t.get("value") {
                None => {
                    return Err(ProfileError::Missing {
                        file: f(),
                        key: vkey,
                    });
                }
                Some(toml::Value::Float(x)) => *x,
                Some(toml::Value::Integer(i)) => *i as f64,
                Some(_) => {
                    return Err(ProfileError::WrongType {
                        file: f(),
                        key: vkey,
                        expected: "a number",
                    });
                }
            };
            if !value.is_finite() {
                return Err(ProfileError::NotFinite {
                    file: f(),
                    key: vkey,
                    value,
                });
            }
            if value < 0.0 {
                return Err(ProfileError::Negative {
                    file: f(),
                    key: vkey,
                    value,
                });
            }
            if op == Op::Clock && value == 0.0 {
                return Err(ProfileError::Zero {
                    file: f(),
                    key: vkey,
                });
            }
            let unit = string_at(t, "unit", &format!("{key}.unit"))?;
            if unit != op.unit() {
                return Err(ProfileError::Unit {
                    file: f(),
                    key: key.to_string(),
                    got: unit,
                    expected: op.unit(),
                });
            }
            let source = string_at(t, "source", &format!("{key}.source"))?;
            if source.trim().is_empty() {
                return Err(ProfileError::WrongType {
                    file: f(),
                    key: format!("{key}.source"),
                    expected: "a non-empty text naming where the number comes from",
                });
            }
            let estimate = match t.get("estimate") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => {
                    return Err(ProfileError::WrongType {
                        file: f(),
                        key: format!("{key}.estimate"),
                        expected: "true or false",
                    });
                }
            };
            entries.push(Entry {
                value,
                source,
                estimate,
            });
        }
        let entries: [Entry; 9] = entries.try_into().expect("one entry per Op::ALL element");
        Ok(Profile {
            name,
            description,
            origin: file.to_string(),
            entries,
        })
    }

    pub fn entry(&self, op: Op) -> &Entry {
        let i = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every Op is in Op::ALL");
        &self.entries[i]
    }

    pub fn value(&self, op: Op) -> f64 {
        self.entry(op).value
    }

    /// Rows (op, entry) in table order, for reports.
    pub fn rows(&self) -> impl Iterator<Item = (Op, &Entry)> {
        Op::ALL.iter().copied().zip(self.entries.iter())
    }

    /// Render as TOML in the file format (round-trips through [`Profile::parse`]).
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(self.name.clone()));
        t.insert(
            "description".into(),
            toml::Value::String(self.description.clone()),
        );
        for (op, e) in self.rows() {
            let mut r = toml::Table::new();
            r.insert("value".into(), toml::Value::Float(e.value));
            r.insert("unit".into(), toml::Value::String(op.unit().into()));
            r.insert("source".into(), toml::Value::String(e.source.clone()));
            r.insert("estimate".into(), toml::Value::Boolean(e.estimate));
            t.insert(op.key().into(), toml::Value::Table(r));
        }
        toml::to_string(&t).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_have_sources() {
        for (name, _) in BUILTIN {
            let p = Profile::builtin(name).unwrap();
            assert_eq!(p.name, name);
            for (op, e) in p.rows() {
                assert!(!e.source.trim().is_empty(), "{name}.{op} has no source");
                assert!(e.value >= 0.0);
            }
        }
        let a = Profile::builtin("asic45").unwrap();
        assert_eq!(a.value(Op::MacInt8), 0.2);
        assert_eq!(a.value(Op::MacInt16), 0.8);
        assert!(a.entry(Op::MacInt16).source.contains("quadratic"));
        let z = Profile::builtin("ZC706").unwrap();
        assert_eq!(z.value(Op::Clock), 2.0e8);
        assert!(
            z.rows().all(|(_, e)| e.estimate),
            "zc706 figures are estimates until measured"
        );
    }

    #[test]
    fn to_toml_round_trips() {
        let a = Profile::builtin("zc706").unwrap();
        let b = Profile::parse(&a.to_toml(), "builtin:zc706").unwrap();
        assert_eq!(a, b);
    }

    fn asic_text() -> String {
        BUILTIN[0].1.to_string()
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let text = asic_text() + "\n[mac_int4]\nvalue = 1.0\nunit = \"pJ/op\"\nsource = \"x\"\n";
        let e = Profile::parse(&text, "my.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::UnknownKey { key, .. } if key == "mac_int4"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("my.toml") && msg.contains("mac_int4"), "{msg}");
    }

    #[test]
    fn unknown_inner_key_is_named() {
        let text = asic_text().replace("[dram]\nvalue", "[dram]\nvalu = 3\nvalue");
        let e = Profile::parse(&text, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::UnknownKey { key, .. } if key == "dram.valu"),
            "{e}"
        );
    }

    #[test]
    fn negative_nan_missing_and_unit_errors() {
        let neg = asic_text().replace("value = 162.5", "value = -162.5");
        let e = Profile::parse(&neg, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::Negative { key, .. } if key == "dram.value"),
            "{e}"
        );
        assert!(e.to_string().contains("p.toml"));

        let nan = asic_text().replace("value = 162.5", "value = nan");
        let e = Profile::parse(&nan, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::NotFinite { key, .. } if key == "dram.value"),
            "{e}"
        );

        let inf = asic_text().replace("value = 162.5", "value = inf");
        assert!(matches!(
            Profile::parse(&inf, "p.toml"),
            Err(ProfileError::NotFinite { .. })
        ));

        let missing = asic_text().replace("[stream]\nvalue = 0.0\n", "[stream]\n");
        let e = Profile::parse(&missing, "p.toml").unwrap_err();
        assert_eq!(
            e,
            ProfileError::Missing {
                file: "p.toml".into(),
                key: "stream.value".into()
            }
        );

        let no_table = asic_text().replace("[clock]", "[clock_old]");
        let e = Profile::parse(&no_table, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::UnknownKey { key, .. } if key == "clock_old"),
            "{e}"
        );

        let unit = asic_text().replace(
            "value = 162.5\nunit = \"pJ/byte\"",
            "value = 162.5\nunit = \"nJ/byte\"",
        );
        let e = Profile::parse(&unit, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::Unit { key, .. } if key == "dram"),
            "{e}"
        );

        let zero_clock = asic_text().replace("value = 1.0e9", "value = 0.0");
        assert!(matches!(
            Profile::parse(&zero_clock, "p.toml"),
            Err(ProfileError::Zero { .. })
        ));

        let no_source = asic_text().replace(
            "source = \"Horowitz ISSCC 2014, 45 nm: 8-bit integer multiply 0.2 pJ\"",
            "source = \"  \"",
        );
        let e = Profile::parse(&no_source, "p.toml").unwrap_err();
        assert!(
            matches!(&e, ProfileError::WrongType { key, .. } if key == "mac_int8.source"),
            "{e}"
        );

        let bad = Profile::parse("name = ", "p.toml").unwrap_err();
        assert!(matches!(bad, ProfileError::Toml { .. }));
    }

    #[test]
    fn load_and_resolve_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, asic_text().replace("value = 0.2", "value = 0.25")).unwrap();
        let p = Profile::resolve(path.to_str().unwrap()).unwrap();
        assert_eq!(p.value(Op::MacInt8), 0.25);
        assert_eq!(p.origin, path.display().to_string());
        let missing = dir.path().join("nope.toml");
        let e = Profile::resolve(missing.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(&e, ProfileError::Io { file, .. } if file.ends_with("nope.toml")),
            "{e}"
        );
        assert!(matches!(
            Profile::resolve("asic7"),
            Err(ProfileError::UnknownName(_))
        ));
    }
}
