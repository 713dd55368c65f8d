//! The policy file: TOML or JSON, read with serde into the same [`PolicyBuilder`] as code uses.
//!
//! ```toml
//! default = "allow"            # or "deny"; optional, "allow" when absent
//!
//! [services.billing]           # rules of the service `billing`; every section is optional
//! accept = [                   # who may send which commands/requests to billing
//!   { from = "shop", messages = ["invoice.*"] },
//!   { from = "*", messages = ["health"] },
//! ]
//! publish = ["billing.>"]      # topics billing may publish
//! subscribe = ["order.>"]      # patterns billing may subscribe to
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{DefaultRule, Policy, PolicyBuilder};
use crate::error::Error;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    default: DefaultName,
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DefaultName {
    #[default]
    Allow,
    Deny,
}

/// One `[services.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    accept: Option<Vec<AcceptFile>>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
}

/// One `{ from = ..., messages = [...] }` accept rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptFile {
    from: String,
    messages: Vec<String>,
}

impl PolicyFile {
    fn into_policy(self) -> Result<Policy, Error> {
        let default = match self.default {
            DefaultName::Allow => DefaultRule::Allow,
            DefaultName::Deny => DefaultRule::Deny,
        };
        let mut builder = PolicyBuilder::default().default_rule(default);
        for (service, rules) in self.services {
            builder = builder.declare(&service);
            if let Some(accept) = rules.accept {
                builder = builder.lock_accept(&service);
                for rule in accept {
                    builder = builder.accept(&service, &rule.from, rule.messages);
                }
            }
            if let Some(publish) = rules.publish {
                builder = builder.publish(&service, publish);
            }
            if let Some(subscribe) = rules.subscribe {
                builder = builder.subscribe(&service, subscribe);
            }
        }
        builder.build()
    }
}

impl Policy {
    /// Reads a policy from TOML (the format is in this module's docs and the README).
    /// Unknown fields are errors, so a misspelt rule cannot silently allow everything.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| Error::Policy(e.to_string().trim().to_owned()))?;
        file.into_policy()
    }

    /// Reads a policy from JSON: the same structure as the TOML file
    /// (`{"default": "deny", "services": {"billing": {"accept": [{"from": "shop",
    /// "messages": ["invoice.*"]}]}}}`).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let file: PolicyFile =
            serde_json::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        file.into_policy()
    }

    /// Reads a policy file: TOML if its name ends in `.toml`, JSON if in `.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let parse = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml,
            Some("json") => Self::from_json,
            _ => {
                return Err(Error::Policy(format!(
                    "{}: a policy file's name must end in .toml or .json",
                    path.display()
                )));
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|e| match e {
            Error::Policy(msg) => Error::Policy(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}
