//! Payload schemas: JSON Schema draft-07 from schemars, describing what a service reads (for
//! messages it receives) or what it writes (for messages it sends), placed in the document.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use crate::contract::message::MessageType;

/// Which side of the wire a schema describes. They differ: a field with
/// `#[serde(default)]` is optional to a reader and always present from a writer; a field
/// with `skip_serializing_if` may be absent from a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The service decodes these (it accepts or subscribes to them, or they answer its
    /// requests).
    Receive,
    /// The service encodes these.
    Send,
}

/// Where subschemas that cannot be inlined (recursive types) go in the document.
const COMPONENTS: &str = "/components/schemas";

/// The shared subschemas of a document (`components.schemas`).
#[derive(Default)]
pub(crate) struct Schemas {
    pub(crate) components: Map<String, Value>,
}

impl Schemas {
    /// The payload schema of `message`, inlined except for recursive types, whose schemas
    /// are added to [`Schemas::components`] (renamed if another type took the name).
    /// `pointer` is where the payload will sit in the document, for references to itself.
    pub(crate) fn payload(
        &mut self,
        message: &MessageType,
        direction: Direction,
        pointer: &str,
    ) -> Value {
        let settings = SchemaSettings::draft07().with(|s| {
            s.inline_subschemas = true;
            // The document declares the schema format; a `$schema` in a payload is noise.
            s.meta_schema = None;
            s.definitions_path = COMPONENTS.into();
        });
        let settings = match direction {
            Direction::Receive => settings.for_deserialize(),
            Direction::Send => settings.for_serialize(),
        };
        let mut generator = settings.into_generator();
        let mut payload = (message.schema)(&mut generator).to_value();
        let definitions = payload
            .as_object_mut()
            .and_then(|o| o.remove("components"))
            .and_then(|mut c| c.as_object_mut().and_then(|c| c.remove("schemas")))
            .and_then(|s| match s {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default();
        let mut renames = Vec::new();
        let mut adopted = Vec::new();
        for (name, schema) in definitions {
            let mut chosen = name.clone();
            let mut n = 2;
            while let Some(existing) = self.components.get(&chosen) {
                if *existing == schema {
                    break;
                }
                chosen = format!("{name}{n}");
                n += 1;
            }
            if chosen != name {
                renames.push((reference(&name), reference(&chosen)));
            }
            adopted.push((chosen, schema));
        }
        rewrite_refs(&mut payload, &renames, pointer);
        for (name, mut schema) in adopted {
            rewrite_refs(&mut schema, &renames, pointer);
            self.components.entry(name).or_insert(schema);
        }
        payload
    }
}

fn reference(name: &str) -> String {
    format!(
        "#{COMPONENTS}/{}",
        name.replace('~', "~0").replace('/', "~1")
    )
}

/// Renames references, and points a schema's references to itself (`#`) at `pointer`.
fn rewrite_refs(value: &mut Value, renames: &[(String, String)], pointer: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                if target == "#" {
                    *target = format!("#{pointer}");
                } else if let Some((_, to)) = renames.iter().find(|(from, _)| from == target) {
                    *target = to.clone();
                }
            }
            for child in map.values_mut() {
                rewrite_refs(child, renames, pointer);
            }
        }
        Value::Array(items) => {
            for child in items {
                rewrite_refs(child, renames, pointer);
            }
        }
        _ => {}
    }
}
