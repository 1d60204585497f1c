//! What a module declares: capabilities, needs, conflicts, cloud use, hardware, and a typed config schema.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Hardware a module needs. Zero means "no need".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HardwareNeeds {
    /// Bytes of RAM, checked against both the machine's total and what is free now.
    pub ram: u64,
    pub cores: usize,
    /// An NVIDIA GPU with CUDA.
    pub gpu: bool,
    /// Bytes of memory on one GPU.
    pub vram: u64,
}

impl HardwareNeeds {
    pub const NONE: HardwareNeeds = HardwareNeeds {
        ram: 0,
        cores: 0,
        gpu: false,
        vram: 0,
    };

    pub const fn gpu_gib(gib: u64) -> HardwareNeeds {
        HardwareNeeds {
            ram: 0,
            cores: 0,
            gpu: true,
            vram: gib << 30,
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

/// The type of a config field, with its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Str,
    /// One of a fixed set of words.
    Choice {
        options: &'static [&'static str],
    },
    /// Comma-separated on the command line.
    List,
}

/// A default, spelled so that it can sit in a `static` table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Def {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
    List(&'static [&'static str]),
}

/// One key of a module's config.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Field {
    pub key: &'static str,
    pub kind: Kind,
    pub default: Def,
    pub help: &'static str,
}

/// A config value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(l) => write!(f, "[{}]", l.join(", ")),
        }
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// A module's config: every key of its schema, each with a value of the key's type.
pub type ModuleConfig = BTreeMap<String, Value>;

impl Field {
    pub fn default_value(&self) -> Value {
        match self.default {
            Def::Bool(b) => Value::Bool(b),
            Def::Int(i) => Value::Int(i),
            Def::Float(x) => Value::Float(x),
            Def::Str(s) => Value::Str(s.to_string()),
            Def::List(l) => Value::List(l.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// Parses `text` (from `--set key=text`) as this field's type.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let v = match self.kind {
            Kind::Bool => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Value::Bool(true),
                "false" | "no" | "off" | "0" => Value::Bool(false),
                _ => return Err(format!("{}: '{text}' is not true or false", self.key)),
            },
            Kind::Int { .. } => Value::Int(
                text.trim()
                    .parse()
                    .map_err(|_| format!("{}: '{text}' is not a whole number", self.key))?,
            ),
            Kind::Float { .. } => Value::Float(
                text.trim()
                    .parse()
                    .map_err(|_| format!("{}: '{text}' is not a number", self.key))?,
            ),
            Kind::Str | Kind::Choice { .. } => Value::Str(text.to_string()),
            Kind::List => Value::List(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        };
        self.check(v)
    }

    /// Checks a value (parsed, or read back from modules.json) against the type and bounds.
    pub fn check(&self, v: Value) -> Result<Value, String> {
        let key = self.key;
        match (self.kind, v) {
            (Kind::Bool, v @ Value::Bool(_)) => Ok(v),
            (Kind::Int { min, max }, Value::Int(i)) => {
                if (min..=max).contains(&i) {
                    Ok(Value::Int(i))
                } else {
                    Err(format!("{key}: {i} is outside {min}..={max}"))
                }
            }
            (Kind::Float { min, max }, v) if v.as_float().is_some() => {
                let x = v.as_float().unwrap_or(f64::NAN);
                if x.is_finite() && (min..=max).contains(&x) {
                    Ok(Value::Float(x))
                } else {
                    Err(format!("{key}: {x} is outside {min}..={max}"))
                }
            }
            (Kind::Str, v @ Value::Str(_)) => Ok(v),
            (Kind::Choice { options }, Value::Str(s)) => {
                if options.contains(&s.as_str()) {
                    Ok(Value::Str(s))
                } else {
                    Err(format!("{key}: '{s}' is not one of {}", options.join(", ")))
                }
            }
            (Kind::List, v @ Value::List(_)) => Ok(v),
            (kind, v) => Err(format!("{key}: {v} is not a {}", kind_name(kind))),
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Bool => "true/false",
        Kind::Int { .. } => "whole number",
        Kind::Float { .. } => "number",
        Kind::Str => "string",
        Kind::Choice { .. } => "choice",
        Kind::List => "list",
    }
}

/// Everything the manager knows about a module before loading it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ModuleSpec {
    pub id: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    /// Capabilities; two modules providing one never run together.
    pub provides: &'static [&'static str],
    /// Modules that must be loaded first.
    pub needs: &'static [&'static str],
    /// Modules used when present: loaded first when both are restored, never required.
    pub optional: &'static [&'static str],
    /// Modules that never run together with this one (the relation is symmetric).
    pub conflicts: &'static [&'static str],
    /// Sends data off the machine; refused unless cloud modules are allowed.
    pub cloud: bool,
    /// Needs that hold for every config; a module can add config-dependent ones (`Module::hardware_needs`).
    pub hardware: HardwareNeeds,
    pub config: &'static [Field],
}

impl ModuleSpec {
    pub fn field(&self, key: &str) -> Option<&'static Field> {
        self.config.iter().find(|f| f.key == key)
    }

    pub fn defaults(&self) -> ModuleConfig {
        self.config
            .iter()
            .map(|f| (f.key.to_string(), f.default_value()))
            .collect()
    }

    /// The config from the defaults, then `base` (a saved config), then `set` (`key=value` from the user).
    /// Unknown keys and values of the wrong type are errors; saved keys this version no longer has are
    /// dropped (the schema is the authority).
    pub fn resolve(
        &self,
        base: Option<&ModuleConfig>,
        set: &[String],
    ) -> Result<ModuleConfig, String> {
        let mut cfg = self.defaults();
        if let Some(base) = base {
            for (k, v) in base {
                if let Some(f) = self.field(k) {
                    cfg.insert(k.clone(), f.check(v.clone())?);
                }
            }
        }
        for kv in set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("'{kv}' is not key=value"))?;
            let k = k.trim();
            let f = self.field(k).ok_or_else(|| {
                let keys: Vec<&str> = self.config.iter().map(|f| f.key).collect();
                if keys.is_empty() {
                    format!("module {} has no config keys ('{k}' given)", self.id)
                } else {
                    format!(
                        "module {} has no config key '{k}'; its keys are {}",
                        self.id,
                        keys.join(", ")
                    )
                }
            })?;
            cfg.insert(k.to_string(), f.parse(v)?);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        Field {
            key: "port",
            kind: Kind::Int { min: 1, max: 65535 },
            default: Def::Int(8080),
            help: "",
        },
        Field {
            key: "temp",
            kind: Kind::Float { min: 0.0, max: 2.0 },
            default: Def::Float(0.8),
            help: "",
        },
        Field {
            key: "mode",
            kind: Kind::Choice {
                options: &["a", "b"],
            },
            default: Def::Str("a"),
            help: "",
        },
        Field {
            key: "on",
            kind: Kind::Bool,
            default: Def::Bool(false),
            help: "",
        },
        Field {
            key: "dirs",
            kind: Kind::List,
            default: Def::List(&[]),
            help: "",
        },
    ];

    const SPEC: ModuleSpec = ModuleSpec {
        id: "t",
        category: "test",
        description: "",
        provides: &[],
        needs: &[],
        optional: &[],
        conflicts: &[],
        cloud: false,
        hardware: HardwareNeeds::NONE,
        config: FIELDS,
    };

    #[test]
    fn defaults_saved_values_and_settings_layer_in_order() {
        let d = SPEC.resolve(None, &[]).unwrap();
        assert_eq!(d["port"], Value::Int(8080));
        let mut saved = ModuleConfig::new();
        saved.insert("port".into(), Value::Int(9000));
        saved.insert("gone".into(), Value::Int(1));
        let set = ["temp=1".to_string(), "on=yes".into(), "dirs=a, b".into()];
        let c = SPEC.resolve(Some(&saved), &set).unwrap();
        assert_eq!(c["port"], Value::Int(9000));
        assert_eq!(c["temp"], Value::Float(1.0));
        assert_eq!(c["on"], Value::Bool(true));
        assert_eq!(c["dirs"], Value::List(vec!["a".into(), "b".into()]));
        assert!(!c.contains_key("gone"));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for (set, want) in [
            ("port=0", "outside 1..=65535"),
            ("port=x", "not a whole number"),
            ("temp=3", "outside"),
            ("temp=nan", "outside"),
            ("mode=c", "not one of a, b"),
            ("on=maybe", "not true or false"),
            (
                "nope=1",
                "no config key 'nope'; its keys are port, temp, mode, on, dirs",
            ),
            ("port", "not key=value"),
        ] {
            let err = SPEC.resolve(None, &[set.to_string()]).unwrap_err();
            assert!(err.contains(want), "{set}: {err}");
        }
        let mut saved = ModuleConfig::new();
        saved.insert("port".into(), Value::Str("x".into()));
        assert!(SPEC
            .resolve(Some(&saved), &[])
            .unwrap_err()
            .contains("not a whole number"));
    }
}
