//! Comparing two JSON Schemas (draft-07, as AsyncAPI payloads and headers are), node by
//! node. Each difference is reported under the rule that names it; whether it breaks
//! anything depends on the message's direction, which the caller knows
//! ([`Rule::level`](super::rules::Rule)).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::document::{Doc, escape};
use super::rules::Rule;

/// Deeper than this, schemas are not compared (a bound for pathological documents).
const MAX_DEPTH: usize = 64;

/// Lower bounds: raising one, or adding one, tightens.
const MIN_KEYWORDS: [&str; 5] = [
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
];
/// Upper bounds: lowering one, or adding one, tightens.
const MAX_KEYWORDS: [&str; 5] = [
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
];
/// Constraints that are neither tighter nor looser when they change, only different.
const OTHER_KEYWORDS: [&str; 5] = [
    "pattern",
    "format",
    "multipleOf",
    "contentEncoding",
    "contentMediaType",
];

/// One difference between two schemas.
pub(crate) struct Finding {
    pub(crate) rule: Rule,
    pub(crate) location: String,
    pub(crate) message: String,
}

/// Compares schemas of one message, old against new.
pub(crate) struct SchemaDiff<'a> {
    old: Doc<'a>,
    new: Doc<'a>,
    pub(crate) findings: Vec<Finding>,
    /// Pairs of (resolved) schemas already compared: recursive schemas end here.
    seen: HashSet<(usize, usize)>,
}

impl<'a> SchemaDiff<'a> {
    pub(crate) fn new(old: Doc<'a>, new: Doc<'a>) -> Self {
        Self {
            old,
            new,
            findings: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Compares `old` with `new`, reporting under `path`.
    pub(crate) fn compare(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        self.node(old, new, path, 0);
    }

    fn found(&mut self, rule: Rule, location: &str, message: String) {
        self.findings.push(Finding {
            rule,
            location: location.to_owned(),
            message,
        });
    }

    fn node(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        // Equal text is not equal meaning: a `$ref` may point at a schema that changed.
        if depth > MAX_DEPTH {
            return;
        }
        let (old, new) = match (self.old.resolve(old), self.new.resolve(new)) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(why), _) | (_, Err(why)) => {
                self.found(Rule::SchemaNotCompared, path, why);
                return;
            }
        };
        let pair = (
            std::ptr::from_ref(old) as usize,
            std::ptr::from_ref(new) as usize,
        );
        // Equal schemas are equal in meaning unless a `$ref` inside points at a schema that
        // changed.
        if (old == new && !has_ref(old)) || !self.seen.insert(pair) {
            return;
        }
        let old = Shape::of(self.old, old);
        let new = Shape::of(self.new, new);
        self.types(&old, &new, path);
        self.values(&old, &new, path);
        self.constraints(&old, &new, path);
        self.object(&old, &new, path, depth);
        if let (Some(o), Some(n)) = (old.items, new.items) {
            self.node(o, n, &format!("{path}/items"), depth + 1);
        }
        self.variants(&old, &new, path, depth);
    }

    fn types(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) {
        let show = |t: &Option<BTreeSet<String>>| match t {
            None => "any type".to_owned(),
            Some(set) => set.iter().cloned().collect::<Vec<_>>().join(" or "),
        };
        let (widened, narrowed) = match (&old.types, &new.types) {
            (None, None) => (false, false),
            (None, Some(_)) => (false, true),
            (Some(_), None) => (true, false),
            (Some(o), Some(n)) => (
                n.iter().any(|t| !covered(t, o)),
                o.iter().any(|t| !covered(t, n)),
            ),
        };
        let rule = match (widened, narrowed) {
            (false, false) => return,
            (true, true) => Rule::TypeChanged,
            (true, false) => Rule::TypeWidened,
            (false, true) => Rule::TypeNarrowed,
        };
        let message = format!("type was {}, is now {}", show(&old.types), show(&new.types));
        self.found(rule, path, message);
    }

    fn values(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) {
        let list = |values: &[&Value]| {
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (&old.values, &new.values) {
            (None, None) => {}
            (None, Some(n)) => {
                let message = format!("values are now limited to {}", list(n));
                self.found(Rule::ConstraintTightened, path, message);
            }
            (Some(o), None) => {
                let message = format!("values are no longer limited to {}", list(o));
                self.found(Rule::ConstraintLoosened, path, message);
            }
            (Some(o), Some(n)) => {
                let removed: Vec<&Value> = o.iter().copied().filter(|v| !n.contains(v)).collect();
                let added: Vec<&Value> = n.iter().copied().filter(|v| !o.contains(v)).collect();
                if !removed.is_empty() {
                    let message = format!("enum values removed: {}", list(&removed));
                    self.found(Rule::EnumValueRemoved, path, message);
                }
                if !added.is_empty() {
                    let message = format!("enum values added: {}", list(&added));
                    self.found(Rule::EnumValueAdded, path, message);
                }
            }
        }
    }

    fn constraints(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) {
        let number = |shape: &Shape<'a>, key: &str| shape.raw.get(key).and_then(Value::as_f64);
        for (keywords, raising_tightens) in [(MIN_KEYWORDS, true), (MAX_KEYWORDS, false)] {
            for key in keywords {
                let (o, n) = (number(old, key), number(new, key));
                let tightened = match (o, n) {
                    (None, None) => continue,
                    (None, Some(_)) => true,
                    (Some(_), None) => false,
                    (Some(o), Some(n)) if o == n => continue,
                    (Some(o), Some(n)) => (n > o) == raising_tightens,
                };
                let show = |v: Option<f64>| v.map_or("none".to_owned(), |v| v.to_string());
                let message = format!("{key} was {}, is now {}", show(o), show(n));
                let rule = if tightened {
                    Rule::ConstraintTightened
                } else {
                    Rule::ConstraintLoosened
                };
                self.found(rule, path, message);
            }
        }
        for key in OTHER_KEYWORDS {
            let (o, n) = (old.raw.get(key), new.raw.get(key));
            let rule = match (o, n) {
                (None, None) => continue,
                (Some(o), Some(n)) if o == n => continue,
                (None, Some(_)) => Rule::ConstraintTightened,
                (Some(_), None) => Rule::ConstraintLoosened,
                (Some(_), Some(_)) => Rule::ConstraintChanged,
            };
            let show = |v: Option<&Value>| v.map_or("none".to_owned(), Value::to_string);
            let message = format!("{key} was {}, is now {}", show(o), show(n));
            self.found(rule, path, message);
        }
        let unique = |shape: &Shape<'a>| shape.raw.get("uniqueItems") == Some(&Value::Bool(true));
        match (unique(old), unique(new)) {
            (false, true) => {
                self.found(
                    Rule::ConstraintTightened,
                    path,
                    "items must now be unique".into(),
                );
            }
            (true, false) => {
                self.found(
                    Rule::ConstraintLoosened,
                    path,
                    "items need no longer be unique".into(),
                );
            }
            _ => {}
        }
    }

    fn object(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str, depth: usize) {
        match (old.closed, new.closed) {
            (false, true) => self.found(
                Rule::ModelClosed,
                path,
                "no longer allows properties it does not list (additionalProperties: false)".into(),
            ),
            (true, false) => self.found(
                Rule::ModelOpened,
                path,
                "now allows properties it does not list".into(),
            ),
            _ => {}
        }
        for (name, schema) in &new.properties {
            let at = format!("{path}/properties/{}", escape(name));
            let Some(before) = old.properties.get(name) else {
                let required = new.required.contains(name);
                let (rule, what) = if required {
                    (Rule::RequiredFieldAdded, "required")
                } else {
                    (Rule::OptionalFieldAdded, "optional")
                };
                self.found(rule, &at, format!("field `{name}` added ({what})"));
                if old.closed {
                    let message = format!("field `{name}` added to an object that refused others");
                    self.found(Rule::FieldAddedToClosedModel, &at, message);
                }
                continue;
            };
            match (old.required.contains(name), new.required.contains(name)) {
                (false, true) => {
                    let message = format!("field `{name}` became required");
                    self.found(Rule::FieldBecameRequired, &at, message);
                }
                (true, false) => {
                    let message = format!("field `{name}` became optional");
                    self.found(Rule::FieldBecameOptional, &at, message);
                }
                _ => {}
            }
            self.node(before, schema, &at, depth + 1);
        }
        for name in old.properties.keys() {
            if !new.properties.contains_key(name) {
                let what = if old.required.contains(name) {
                    "required"
                } else {
                    "optional"
                };
                let at = format!("{path}/properties/{}", escape(name));
                self.found(
                    Rule::FieldRemoved,
                    &at,
                    format!("field `{name}` removed (it was {what})"),
                );
            }
        }
        if let (Some(o), Some(n)) = (old.additional, new.additional) {
            self.node(o, n, &format!("{path}/additionalProperties"), depth + 1);
        }
    }

    fn variants(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str, depth: usize) {
        if old.variants.is_empty() && new.variants.is_empty() {
            return;
        }
        let keyed =
            |doc: Doc<'a>, variants: &[&'a Value]| -> BTreeMap<String, (usize, &'a Value)> {
                variants
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (variant_key(doc, v, i), (i, *v)))
                    .collect()
            };
        let (o, n) = (
            keyed(self.old, &old.variants),
            keyed(self.new, &new.variants),
        );
        let keyword = new.combinator.or(old.combinator).unwrap_or("oneOf");
        for (key, (i, schema)) in &n {
            let at = format!("{path}/{keyword}/{i}");
            match o.get(key) {
                Some((_, before)) => self.node(before, schema, &at, depth + 1),
                None => self.found(Rule::VariantAdded, &at, format!("alternative {key} added")),
            }
        }
        for (key, (i, _)) in &o {
            if !n.contains_key(key) {
                let at = format!("{path}/{keyword}/{i}");
                self.found(
                    Rule::VariantRemoved,
                    &at,
                    format!("alternative {key} removed"),
                );
            }
        }
    }
}

/// Whether `value` holds a `$ref` anywhere.
fn has_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("$ref") || map.values().any(has_ref),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// Whether type `t` is among `types` (an integer is a number).
fn covered(t: &str, types: &BTreeSet<String>) -> bool {
    types.contains(t) || (t == "integer" && types.contains("number"))
}

/// How an alternative of a `oneOf`/`anyOf` is recognised across versions: its constant,
/// its tag (the single required property of serde's externally tagged enums, or a property
/// with a constant for internally tagged ones), its title, or else its position.
fn variant_key(doc: Doc<'_>, variant: &Value, position: usize) -> String {
    let variant = doc.resolve(variant).unwrap_or(variant);
    let shape = Shape::of(doc, variant);
    if let Some([only]) = shape.values.as_deref() {
        return format!("value {only}");
    }
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

/// The parts of a schema the comparison looks at, with `allOf` merged and a nullable
/// `anyOf`/`oneOf` (`[X, {type: null}]`, as schemars writes `Option<X>`) read as X or null.
struct Shape<'a> {
    raw: &'a Map<String, Value>,
    types: Option<BTreeSet<String>>,
    values: Option<Vec<&'a Value>>,
    properties: BTreeMap<String, &'a Value>,
    required: BTreeSet<String>,
    closed: bool,
    additional: Option<&'a Value>,
    items: Option<&'a Value>,
    variants: Vec<&'a Value>,
    combinator: Option<&'static str>,
}

impl<'a> Shape<'a> {
    fn of(doc: Doc<'a>, schema: &'a Value) -> Self {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let raw = schema
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        let mut shape = Self {
            raw,
            types: types_of(raw),
            values: raw
                .get("enum")
                .and_then(Value::as_array)
                .map(|values| values.iter().collect())
                .or_else(|| raw.get("const").map(|v| vec![v])),
            properties: BTreeMap::new(),
            required: BTreeSet::new(),
            closed: raw.get("additionalProperties") == Some(&Value::Bool(false)),
            additional: raw.get("additionalProperties").filter(|a| a.is_object()),
            items: raw.get("items").filter(|i| i.is_object()),
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
                    if let Ok(inner) = doc.resolve(only) {
                        let inner = Self::of(doc, inner);
                        shape.absorb(inner);
                    }
                    shape.add_type("null");
                }
                _ => {
                    shape.variants = others;
                    shape.combinator = Some(if keyword == "oneOf" { "oneOf" } else { "anyOf" });
                    if nullable {
                        shape.add_type("null");
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
        self.values = self.values.take().or(inner.values);
        self.properties.extend(inner.properties);
        self.required.extend(inner.required);
        self.closed |= inner.closed;
        self.additional = self.additional.or(inner.additional);
        self.items = self.items.or(inner.items);
        self.variants = inner.variants;
        self.combinator = inner.combinator;
    }

    fn add_type(&mut self, t: &str) {
        if let Some(types) = &mut self.types {
            types.insert(t.to_owned());
        }
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
