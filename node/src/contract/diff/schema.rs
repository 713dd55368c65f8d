//! Comparing two JSON Schemas (draft-07, as AsyncAPI payloads and headers are), node by
//! node. Each difference is reported under the rule that names it; whether it breaks
//! anything depends on the message's direction, which the caller knows
//! ([`Rule::level`](super::rules::Rule)).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

use super::document::{Doc, escape};
use super::rules::Rule;
use super::shape::{MAX_NULLABLE_NESTING, NumberFormat, Shape, variant_key};

/// The schema `true`: any value (what an absent `items` or `additionalProperties` allows).
static ANY: Value = Value::Bool(true);

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
/// (`format` is one too, except between the number formats of Rust's types, which are
/// ranges: [`NumberFormat`].)
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
        if old.unreadable || new.unreadable {
            let message = format!(
                "nullable unions nested more than {MAX_NULLABLE_NESTING} deep (a schema that \
                 refers to itself); not compared"
            );
            self.found(Rule::SchemaNotCompared, path, message);
            return;
        }
        self.types(&old, &new, path);
        self.values(&old, &new, path);
        self.constraints(&old, &new, path);
        self.object(&old, &new, path, depth);
        // An absent `items` allows any item, as `true` does.
        if (old.items.is_some() || new.items.is_some())
            && old.may_be("array")
            && new.may_be("array")
        {
            let (o, n) = (old.items.unwrap_or(&ANY), new.items.unwrap_or(&ANY));
            self.node(o, n, &format!("{path}/items"), depth + 1);
        }
        self.variants(&old, &new, path, depth);
    }

    /// Types and nullability. Null is judged apart from the other types: a nullable union
    /// of a schema without `type` (a `$ref`, a `oneOf`) allows null all the same.
    fn types(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) {
        let show = |shape: &Shape<'a>| {
            let mut names = match shape.types_without_null() {
                _ if shape.nothing => vec!["nothing (false)".to_owned()],
                None if shape.variants.is_empty() => vec!["any type".to_owned()],
                None => vec!["one of its alternatives".to_owned()],
                Some(set) => set.into_iter().collect::<Vec<_>>(),
            };
            if shape.accepts_null() && (shape.types.is_some() || !shape.variants.is_empty()) {
                names.push("null".to_owned());
            }
            names.join(" or ")
        };
        let (o, n) = (old.types_without_null(), new.types_without_null());
        let (mut widened, mut narrowed) = match (&o, &n) {
            (None, None) => (false, false),
            (None, Some(_)) => (false, true),
            (Some(_), None) => (true, false),
            (Some(o), Some(n)) => (
                n.iter().any(|t| !covered(t, o)),
                o.iter().any(|t| !covered(t, n)),
            ),
        };
        let (old_null, new_null) = (old.accepts_null(), new.accepts_null());
        widened |= new_null && !old_null;
        narrowed |= old_null && !new_null;
        let rule = match (widened, narrowed) {
            (false, false) => return,
            (true, true) => Rule::TypeChanged,
            (true, false) => Rule::TypeWidened,
            (false, true) => Rule::TypeNarrowed,
        };
        let message = if o == n && old.nothing == new.nothing {
            if new_null {
                "null is now allowed".to_owned()
            } else {
                "null is no longer allowed".to_owned()
            }
        } else {
            format!("type was {}, is now {}", show(old), show(new))
        };
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
                (Some(o), Some(n)) => match (NumberFormat::of(o), NumberFormat::of(n)) {
                    // u32 to u64, f32 to f64: every old value is still one.
                    (Some(o), Some(n)) if key == "format" && o.within(n) => {
                        Rule::ConstraintLoosened
                    }
                    (Some(o), Some(n)) if key == "format" && n.within(o) => {
                        Rule::ConstraintTightened
                    }
                    _ => Rule::ConstraintChanged,
                },
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
                if new.closed {
                    let message =
                        format!("field `{name}` removed from an object that refuses others");
                    self.found(Rule::FieldRemovedFromClosedModel, &at, message);
                }
            }
        }
        // Values of other properties (a map's values): an absent schema allows any, as `true`
        // does; `false` is a closed model, judged above.
        if (old.additional.is_some() || new.additional.is_some())
            && !old.closed
            && !new.closed
            && old.may_be("object")
            && new.may_be("object")
        {
            let (o, n) = (
                old.additional.unwrap_or(&ANY),
                new.additional.unwrap_or(&ANY),
            );
            self.node(o, n, &format!("{path}/additionalProperties"), depth + 1);
        }
    }

    fn variants(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str, depth: usize) {
        if old.variants.is_empty() && new.variants.is_empty() {
            return;
        }
        let (o, n) = (
            Alternatives::of(self.old, &old.variants),
            Alternatives::of(self.new, &new.variants),
        );
        let keyword = new.combinator.or(old.combinator).unwrap_or("oneOf");
        for (key, (i, schema)) in &n.keyed {
            let at = format!("{path}/{keyword}/{i}");
            match o.keyed.get(key) {
                Some((_, before)) => self.node(before, schema, &at, depth + 1),
                None => self.found(Rule::VariantAdded, &at, format!("alternative {key} added")),
            }
        }
        for (key, (i, _)) in &o.keyed {
            if !n.keyed.contains_key(key) {
                let at = format!("{path}/{keyword}/{i}");
                let message = format!("alternative {key} removed");
                self.found(Rule::VariantRemoved, &at, message);
            }
        }
        // Alternatives that list values (a constant, or schemars' one enum of all unit
        // variants) are compared by the values, whichever alternative holds them.
        for (value, i) in &n.values {
            if !o.values.contains_key(value) {
                let at = format!("{path}/{keyword}/{i}");
                let message = format!("alternative value {value} added");
                self.found(Rule::VariantAdded, &at, message);
            }
        }
        for (value, i) in &o.values {
            if !n.values.contains_key(value) {
                let at = format!("{path}/{keyword}/{i}");
                let message = format!("alternative value {value} removed");
                self.found(Rule::VariantRemoved, &at, message);
            }
        }
    }
}

/// The alternatives of a `oneOf`/`anyOf`, as they are recognised across versions.
struct Alternatives<'a> {
    /// Alternatives that list values: each value (as JSON text) and its alternative's
    /// position.
    values: BTreeMap<String, usize>,
    /// The others, by [`variant_key`], with their position.
    keyed: BTreeMap<String, (usize, &'a Value)>,
}

impl<'a> Alternatives<'a> {
    fn of(doc: Doc<'a>, variants: &[&'a Value]) -> Self {
        let mut alternatives = Self {
            values: BTreeMap::new(),
            keyed: BTreeMap::new(),
        };
        for (i, variant) in variants.iter().enumerate() {
            let variant = doc.resolve(variant).unwrap_or(variant);
            let shape = Shape::of(doc, variant);
            match &shape.values {
                Some(values) if shape.properties.is_empty() && shape.variants.is_empty() => {
                    for value in values {
                        alternatives.values.entry(value.to_string()).or_insert(i);
                    }
                }
                _ => {
                    let key = variant_key(&shape, variant, i);
                    alternatives.keyed.insert(key, (i, variant));
                }
            }
        }
        alternatives
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
