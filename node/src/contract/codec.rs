//! [`Codec`]: how a typed payload becomes bytes, named by the envelope's content type.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The payload encoding of a channel. JSON is the default; CBOR is smaller and faster to
/// parse, and keeps the same serde model (so the tolerant reader works the same way).
///
/// The content type travels in every message's envelope, and a receiver decodes by it, not
/// by what it expects: a service can move a channel from JSON to CBOR while old senders still
/// send JSON. A message without a content type (a byte-API sender that set none) is decoded
/// with the codec the receiver's contract names for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// `application/json` (serde_json).
    #[default]
    Json,
    /// `application/cbor` (ciborium).
    Cbor,
}

impl Codec {
    /// Every codec, in order of preference.
    pub const ALL: [Self; 2] = [Self::Json, Self::Cbor];

    /// The MIME type written in the envelope.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Cbor => "application/cbor",
        }
    }

    /// The codec of a content type: `application/json` (also with parameters such as
    /// `; charset=utf-8`, and `+json` types like `application/cloudevents+json`) or
    /// `application/cbor`. `None` for anything else.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => Some(Self::Json),
            "application/cbor" => Some(Self::Cbor),
            other if other.starts_with("application/") && other.ends_with("+json") => {
                Some(Self::Json)
            }
            other if other.starts_with("application/") && other.ends_with("+cbor") => {
                Some(Self::Cbor)
            }
            _ => None,
        }
    }

    /// Encodes `value`. Fails only for values serde cannot write in this format (a map with
    /// non-string keys in JSON, for instance).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, String> {
        match self {
            Self::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
            Self::Cbor => {
                let mut out = Vec::new();
                ciborium::into_writer(value, &mut out)
                    .map(|()| Bytes::from(out))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Decodes `bytes` into `T`: unknown fields are skipped, missing `Option` and
    /// `#[serde(default)]` fields take their defaults. Never panics on bad input: the error
    /// says what is wrong and where.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Self::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Self::Cbor => ciborium::from_reader(bytes).map_err(|e| e.to_string()),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.content_type())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V2 {
        id: u32,
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(serde::Serialize)]
    struct V1WithExtra {
        id: u32,
        from_a_newer_sender: bool,
    }

    #[test]
    fn content_types_name_their_codec() {
        for codec in Codec::ALL {
            assert_eq!(Codec::from_content_type(codec.content_type()), Some(codec));
        }
        assert_eq!(
            Codec::from_content_type("Application/JSON; charset=utf-8"),
            Some(Codec::Json)
        );
        assert_eq!(
            Codec::from_content_type("application/cloudevents+json"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::from_content_type("text/plain"), None);
        assert_eq!(Codec::from_content_type(""), None);
    }

    #[test]
    fn readers_are_tolerant_in_both_codecs() {
        let old = V1WithExtra {
            id: 7,
            from_a_newer_sender: true,
        };
        for codec in Codec::ALL {
            let bytes = codec.encode(&old).expect("encodes");
            let read: V2 = codec.decode(&bytes).expect("unknown field skipped");
            assert_eq!(
                read,
                V2 {
                    id: 7,
                    note: None,
                    tags: vec![]
                }
            );
        }
    }

    #[test]
    fn bad_input_is_an_error_that_says_why() {
        let err = Codec::Json.decode::<V2>(b"{\"note\":\"x\"}").unwrap_err();
        assert!(err.contains("missing field `id`"), "{err}");
        let err = Codec::Json.decode::<V2>(b"\xff\x00").unwrap_err();
        assert!(!err.is_empty());
        for garbage in [&b""[..], b"\xff", b"\xbf\xbf\xbf", &[0x9f; 4096]] {
            assert!(Codec::Cbor.decode::<V2>(garbage).is_err());
        }
    }
}
