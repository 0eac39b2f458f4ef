//! A value: any bytes. In the log's JSON a value that is UTF-8 text is a
//! plain JSON string (exactly as every entry written before values could be
//! binary), unless its escapes would make it longer than base64 (text full
//! of control characters grows up to six times as a JSON string); any other
//! value, and such text, is `{"base64": "..."}`. Both forms read back to the
//! same bytes, so a log entry is never more than 4/3 of its value's size
//! plus a few bytes. The HTTP API's JSON answers name the field `value` for
//! text and `value_base64` for other bytes (`Blob::json_field`).

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A value's bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Bytes);

impl Blob {
    /// The value as text, if it is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The field a JSON answer carries this value in, and its JSON value:
    /// `("value", text)` or `("value_base64", base64)`.
    pub fn json_field(&self) -> (&'static str, serde_json::Value) {
        match self.as_text() {
            Some(text) => ("value", serde_json::Value::String(text.to_string())),
            None => ("value_base64", serde_json::Value::String(BASE64.encode(&self.0))),
        }
    }

    /// The length of this value in an API answer's JSON (`json_field`), quotes
    /// included.
    pub fn json_field_len(&self) -> usize {
        match self.as_text() {
            Some(text) => json_string_len(text),
            None => 2 + base64_len(self.0.len()),
        }
    }

    /// Decodes standard base64 (with padding), as `value_base64` fields carry it.
    pub fn from_base64(text: &str) -> Result<Blob, String> {
        BASE64.decode(text).map(|bytes| Blob(bytes.into())).map_err(|e| format!("invalid base64: {e}"))
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

impl From<&str> for Blob {
    fn from(text: &str) -> Blob {
        Blob(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for Blob {
    fn from(text: String) -> Blob {
        Blob(Bytes::from(text))
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob(Bytes::from(bytes))
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob(bytes)
    }
}

/// The length of `text` as a JSON string, quotes and escapes included (as
/// serde_json escapes: `"`, `\\` and the control characters).
pub fn json_string_len(text: &str) -> usize {
    let escaped: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + 2
}

/// The length of `n` bytes in padded base64.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// `{"base64":""}` around the base64 text.
const BASE64_WRAPPING: usize = 13;

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.as_text().filter(|text| json_string_len(text) <= base64_len(text.len()) + BASE64_WRAPPING);
        match text {
            Some(text) => serializer.serialize_str(text),
            None => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("base64", &BASE64.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        struct BlobVisitor;

        impl<'de> Visitor<'de> for BlobVisitor {
            type Value = Blob;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or {\"base64\": \"...\"}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Blob, E> {
                Ok(Blob::from(text))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Blob, E> {
                Ok(Blob::from(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Blob, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key != "base64" {
                        return Err(de::Error::unknown_field(&key, &["base64"]));
                    }
                    if found.is_some() {
                        return Err(de::Error::duplicate_field("base64"));
                    }
                    let text: std::borrow::Cow<'de, str> = map.next_value()?;
                    found = Some(Blob::from_base64(&text).map_err(de::Error::custom)?);
                }
                found.ok_or_else(|| de::Error::missing_field("base64"))
            }
        }

        deserializer.deserialize_any(BlobVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_a_plain_json_string_and_other_bytes_are_base64() {
        assert_eq!(serde_json::to_string(&Blob::from("héllo")).unwrap(), "\"héllo\"");
        let binary = Blob::from(vec![0xff, 0x00, 0xfe]);
        assert_eq!(serde_json::to_string(&binary).unwrap(), "{\"base64\":\"/wD+\"}");
        for blob in
            [Blob::from(""), Blob::from("text \"quoted\"\n"), binary, Blob::from((0..=255u8).collect::<Vec<_>>())]
        {
            let json = serde_json::to_vec(&blob).unwrap();
            assert_eq!(serde_json::from_slice::<Blob>(&json).unwrap(), blob);
        }
    }

    #[test]
    fn text_that_escapes_longer_than_base64_is_logged_as_base64() {
        let controls = Blob::from("\u{1}".repeat(3000));
        let json = serde_json::to_vec(&controls).unwrap();
        assert!(json.starts_with(b"{\"base64\":"), "{}", String::from_utf8_lossy(&json[..20]));
        assert_eq!(json.len(), 4000 + BASE64_WRAPPING);
        assert_eq!(serde_json::from_slice::<Blob>(&json).unwrap(), controls);
        // Every kind of character: the length counted is serde_json's own.
        let mixed: String = (0..=0x7fu8).map(char::from).chain("é€😀".chars()).collect();
        assert_eq!(json_string_len(&mixed), serde_json::to_string(&mixed).unwrap().len());
        assert_eq!(Blob::from(mixed.as_str()).json_field_len(), serde_json::to_string(&mixed).unwrap().len());
        // A few quotes in ordinary text keep it a string.
        assert_eq!(serde_json::to_string(&Blob::from("say \"hi\"")).unwrap(), "\"say \\\"hi\\\"\"");
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "{}",
            "{\"base64\":\"!!\"}",
            "{\"base64\":\"AA==\",\"base64\":\"AA==\"}",
            "{\"base64\":\"AA==\",\"x\":1}",
            "{\"hex\":\"00\"}",
            "7",
            "null",
            "[1]",
        ] {
            assert!(serde_json::from_str::<Blob>(bad).is_err(), "{bad} accepted");
        }
    }
}
