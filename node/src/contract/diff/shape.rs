//! What the comparison reads of one JSON Schema: its types, nullability, values,
//! properties, items, alternatives, and the ranges of numeric formats.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::document::Doc;

/// Nullable unions nested deeper than this are not read (a schema such as
/// `A = anyOf[A, null]` refers to itself without end).
pub(crate) const MAX_NULLABLE_NESTING: usize = 16;

/// The parts of a schema the comparison looks at, with `allOf` merged and a nullable
/// `anyOf`/`oneOf` (`[X, {type: null}]`, as schemars writes `Option<X>`) read as X or null.
/// A boolean schema reads as: `true` any value (as an empty schema), `false` none.
pub(crate) struct Shape<'a> {
    pub(crate) raw: &'a Map<String, Value>,
    /// The `type` keyword; `None` when absent (any type, unless alternatives say more).
    pub(crate) types: Option<BTreeSet<String>>,
    /// Whether a null alternative (`anyOf: [X, {type: null}]`) allows null, whatever the
    /// types of X (which may have no `type`: a `$ref`, a `oneOf`).
    pub(crate) nullable: bool,
    /// The `false` schema: no value is valid.
    pub(crate) nothing: bool,
    /// Nullable unions nested beyond [`MAX_NULLABLE_NESTING`]: not read.
    pub(crate) unreadable: bool,
    pub(crate) values: Option<Vec<&'a Value>>,
    pub(crate) properties: BTreeMap<String, &'a Value>,
    pub(crate) required: BTreeSet<String>,
    pub(crate) closed: bool,
    /// `additionalProperties` unless `false` (that is [`closed`](Self::closed)): a schema
    /// or `true`.
    pub(crate) additional: Option<&'a Value>,
    /// `items` as one schema (an object, `true` or `false`); a tuple's list is not read.
    pub(crate) items: Option<&'a Value>,
    pub(crate) variants: Vec<&'a Value>,
    pub(crate) combinator: Option<&'static str>,
}

impl<'a> Shape<'a> {
    pub(crate) fn of(doc: Doc<'a>, schema: &'a Value) -> Self {
        Self::read(doc, schema, 0)
    }

    fn read(doc: Doc<'a>, schema: &'a Value, nesting: usize) -> Self {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let raw = schema
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        let nothing = schema == &Value::Bool(false);
        let additional = raw.get("additionalProperties");
        let mut shape = Self {
            raw,
            types: if nothing {
                Some(BTreeSet::new())
            } else {
                types_of(raw)
            },
            nullable: false,
            nothing,
            unreadable: false,
            values: raw
                .get("enum")
                .and_then(Value::as_array)
                .map(|values| values.iter().collect())
                .or_else(|| raw.get("const").map(|v| vec![v])),
            properties: BTreeMap::new(),
            required: BTreeSet::new(),
            closed: additional == Some(&Value::Bool(false)),
            additional: additional.filter(|a| a.is_object() || a == &&Value::Bool(true)),
            items: raw.get("items").filter(|i| i.is_object() || i.is_boolean()),
            variants: Vec::new(),
            combinator: None,
        };
        shape.merge_object(raw);
        for member in raw
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Ok(Value::Object(member)) = doc.resolve(member) {
                shape.merge_object(member);
                shape.closed |= member.get("additionalProperties") == Some(&Value::Bool(false));
            }
        }
        for keyword in ["oneOf", "anyOf"] {
            let Some(members) = raw.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            let is_null = |m: &&'a Value| {
                doc.resolve(m)
                    .is_ok_and(|m| m.get("type") == Some(&Value::String("null".into())))
            };
            let nullable = members.iter().any(|m| is_null(&m));
            let others: Vec<&'a Value> = members.iter().filter(|m| !is_null(m)).collect();
            match others.as_slice() {
                [only] if nullable => {
                    if nesting >= MAX_NULLABLE_NESTING {
                        shape.unreadable = true;
                    } else if let Ok(inner) = doc.resolve(only) {
                        let inner = Self::read(doc, inner, nesting + 1);
                        shape.absorb(inner);
                    }
                    shape.allow_null();
                }
                _ => {
                    shape.variants = others;
                    shape.combinator = Some(if keyword == "oneOf" { "oneOf" } else { "anyOf" });
                    if nullable {
                        shape.allow_null();
                    }
                }
            }
        }
        shape
    }

    fn merge_object(&mut self, object: &'a Map<String, Value>) {
        for (name, schema) in object
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            self.properties.insert(name.clone(), schema);
        }
        for name in object
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            self.required.insert(name.to_owned());
        }
    }

    /// Takes the inner schema of a nullable union as this one (its constraints too).
    fn absorb(&mut self, inner: Self) {
        self.raw = inner.raw;
        self.types = inner.types;
        self.nullable |= inner.nullable;
        self.nothing = inner.nothing;
        self.unreadable |= inner.unreadable;
        self.values = self.values.take().or(inner.values);
        self.properties.extend(inner.properties);
        self.required.extend(inner.required);
        self.closed |= inner.closed;
        self.additional = self.additional.or(inner.additional);
        self.items = self.items.or(inner.items);
        self.variants = inner.variants;
        self.combinator = inner.combinator;
    }

    fn allow_null(&mut self) {
        self.nullable = true;
        if let Some(types) = &mut self.types {
            types.insert("null".to_owned());
        }
    }

    /// Whether null is valid: a null alternative, `null` among the types, or no type and
    /// nothing else that restricts it.
    pub(crate) fn accepts_null(&self) -> bool {
        match &self.types {
            Some(types) => types.contains("null") || self.nullable,
            None => {
                self.nullable
                    || (self.variants.is_empty()
                        && self
                            .values
                            .as_ref()
                            .is_none_or(|v| v.contains(&&Value::Null)))
            }
        }
    }

    /// The types without `null` (nullability is [`accepts_null`](Self::accepts_null)).
    pub(crate) fn types_without_null(&self) -> Option<BTreeSet<String>> {
        self.types
            .as_ref()
            .map(|types| types.iter().filter(|t| *t != "null").cloned().collect())
    }

    /// Whether a value of type `t` may be valid here.
    pub(crate) fn may_be(&self, t: &str) -> bool {
        self.types.as_ref().is_none_or(|types| types.contains(t))
    }
}

/// The `type` keyword as a set; `None` when absent (any type).
fn types_of(raw: &Map<String, Value>) -> Option<BTreeSet<String>> {
    match raw.get("type")? {
        Value::String(t) => Some(BTreeSet::from([t.clone()])),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// The values a numeric `format` allows, as schemars writes them for Rust's number types:
/// integers as an inclusive range, floats by precision. `None` for any other format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumberFormat {
    /// An integer format: its least and greatest value (`uint128`'s greatest is clamped,
    /// which keeps the order of the ranges).
    Integer(i128, i128),
    /// A float format: its bits (`float` 32, `double` 64).
    Float(u8),
}

impl NumberFormat {
    pub(crate) fn of(format: &Value) -> Option<Self> {
        let signed = |bits: u32| Self::Integer(-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
        let unsigned = |bits: u32| {
            let max = if bits >= 127 {
                i128::MAX
            } else {
                (1i128 << bits) - 1
            };
            Self::Integer(0, max)
        };
        Some(match format.as_str()? {
            "int8" => signed(8),
            "int16" => signed(16),
            "int32" => signed(32),
            // `int` and `uint` are isize and usize: assumed 64 bits.
            "int64" | "int" => signed(64),
            "int128" => Self::Integer(i128::MIN, i128::MAX),
            "uint8" => unsigned(8),
            "uint16" => unsigned(16),
            "uint32" => unsigned(32),
            "uint64" | "uint" => unsigned(64),
            "uint128" => unsigned(128),
            "float" => Self::Float(32),
            "double" => Self::Float(64),
            _ => return None,
        })
    }

    /// Whether every value of `self` is a value of `other`.
    pub(crate) fn within(self, other: Self) -> bool {
        match (self, other) {
            (Self::Integer(lo, hi), Self::Integer(olo, ohi)) => olo <= lo && hi <= ohi,
            (Self::Float(bits), Self::Float(obits)) => bits <= obits,
            _ => false,
        }
    }
}

/// How an alternative of a `oneOf`/`anyOf` that is not a list of values is recognised
/// across versions: its tag (the single required property of serde's externally tagged
/// enums, or a property with a constant for internally tagged ones), its title, or else
/// its position. (Alternatives that list values are compared by their values.)
pub(crate) fn variant_key(shape: &Shape<'_>, variant: &Value, position: usize) -> String {
    if let Some((name, _)) = shape.properties.iter().find(|(_, p)| {
        p.get("const").is_some()
            || p.get("enum")
                .is_some_and(|e| e.as_array().is_some_and(|a| a.len() == 1))
    }) {
        let value = shape.properties[name]
            .get("const")
            .or_else(|| shape.properties[name].get("enum").and_then(|e| e.get(0)))
            .map(Value::to_string)
            .unwrap_or_default();
        return format!("tagged {name}={value}");
    }
    if shape.required.len() == 1
        && shape.properties.len() == 1
        && let Some(name) = shape.required.iter().next()
    {
        return format!("tagged `{name}`");
    }
    if let Some(title) = variant.get("title").and_then(Value::as_str) {
        return format!("`{title}`");
    }
    format!("#{position}")
}
