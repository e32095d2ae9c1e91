//! [`decode_request`] in one pass: the frame is read straight into the request's fields
//! (strings borrowed from the frame where they have no escapes, base64 decoded once), with
//! no `serde_json::Value`, clone or re-serialisation on the way. What it refuses, in this
//! order, each with its own code: a frame that is not JSON or repeats an object key at any
//! depth (`unique_keys.rs`), a missing or unsupported `v`, a missing `id`, a missing or
//! unknown `op`, then a field the operation does not have, a missing or mistyped field, an
//! invalid key name or base64 text, and an over-long text field.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error_code::ErrorCode;
use super::request::{oversized_field, Operation, Request, RequestError};
use super::unique_keys::{UniqueKeys, UniqueKeysVisitor, DUPLICATE_KEY};
use super::PROTOCOL_VERSION;
use crate::key::KeyId;

/// One field's value as read. Values no valid request has (objects, arrays, floats, ...)
/// are only walked, for repeated keys, and kept as `Other`.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(u64),
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        UniqueKeysVisitor.visit_seq(seq).map(|_| Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        UniqueKeysVisitor.visit_map(map).map(|_| Scalar::Other)
    }
}

/// Every field name any operation has, in one table: the index is the slot in [`Fields`].
const FIELD_NAMES: [&str; 15] = [
    "v",
    "id",
    "op",
    "key",
    "profile",
    "data",
    "client_nonce",
    "server_cert",
    "server_cn",
    "server_signature",
    "server_nonce",
    "session",
    "client_name",
    "token",
    "token_signature",
];

/// The top-level fields of a frame, read once.
#[derive(Default)]
struct Fields<'a> {
    values: [Option<Scalar<'a>>; FIELD_NAMES.len()],
    /// The first field no operation has.
    unknown: Option<String>,
    /// Whether the frame was a JSON object at all.
    object: bool,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields { object: true, ..Fields::default() };
        let mut unknown_names: Vec<String> = Vec::new();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let repeated =
                || de::Error::custom(format!("{DUPLICATE_KEY} `{}`", name.chars().take(40).collect::<String>()));
            match FIELD_NAMES.iter().position(|known| *known == name) {
                Some(slot) => {
                    if fields.values[slot].is_some() {
                        return Err(repeated());
                    }
                    fields.values[slot] = Some(map.next_value()?);
                }
                None => {
                    if unknown_names.iter().any(|n| *n == name) {
                        return Err(repeated());
                    }
                    map.next_value::<Scalar<'de>>()?;
                    unknown_names.push(name.into_owned());
                }
            }
        }
        fields.unknown = unknown_names.into_iter().next();
        Ok(fields)
    }

    // Not an object: walked for repeated keys only, then refused by the caller.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(Fields::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Fields::default())
    }
}

/// The fields each operation has besides `v`, `id` and `op`.
fn fields_of(op: &str) -> &'static [&'static str] {
    match op {
        "public_key" | "nvflare_challenge" => &["key"],
        "sign" => &["key", "profile", "data"],
        "decrypt" => &["key", "data"],
        "nvflare_register" => &["key", "client_nonce", "server_cert", "server_cn", "server_signature", "server_nonce"],
        "nvflare_verify_token" => &["session", "client_name", "token", "token_signature"],
        _ => &[],
    }
}

fn invalid(id: u64, message: String) -> RequestError {
    RequestError { id: Some(id), code: ErrorCode::InvalidRequest, message }
}

/// The fields of one operation, taken out of [`Fields`] with their types checked.
struct Taker<'a> {
    fields: Fields<'a>,
    id: u64,
}

impl Taker<'_> {
    fn take(&mut self, name: &'static str) -> Result<Scalar<'_>, RequestError> {
        let slot = FIELD_NAMES.iter().position(|known| *known == name).unwrap_or_default();
        self.fields.values[slot]
            .take()
            .ok_or_else(|| invalid(self.id, format!("invalid request: missing field `{name}`")))
    }

    fn text(&mut self, name: &'static str) -> Result<String, RequestError> {
        let id = self.id;
        match self.take(name)? {
            Scalar::Str(s) => Ok(s.into_owned()),
            _ => Err(invalid(id, format!("invalid request: field `{name}` must be a string"))),
        }
    }

    fn key(&mut self) -> Result<KeyId, RequestError> {
        let id = self.id;
        match self.take("key")? {
            Scalar::Str(s) => KeyId::new(&s).map_err(|e| {
                invalid(id, format!("invalid request: {}", e.to_string().chars().take(200).collect::<String>()))
            }),
            _ => Err(invalid(id, "invalid request: field `key` must be a string".into())),
        }
    }

    fn bytes(&mut self, name: &'static str) -> Result<Vec<u8>, RequestError> {
        let id = self.id;
        match self.take(name)? {
            Scalar::Str(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(|_| invalid(id, format!("invalid request: field `{name}` is not valid base64"))),
            _ => Err(invalid(id, format!("invalid request: field `{name}` must be a base64 string"))),
        }
    }
}

/// Decodes a frame body; see [`super::decode_request`].
pub(super) fn decode(body: &[u8]) -> Result<Request, RequestError> {
    let fail = |id, code, message: String| RequestError { id, code, message };
    let fields: Fields<'_> = serde_json::from_slice(body).map_err(|e| {
        let message = if e.classify() == serde_json::error::Category::Data {
            // Only a repeated key fails this parse with a data error.
            let detail = e.to_string();
            let detail = detail.split(" at line ").next().unwrap_or_default().to_owned();
            format!("frame is not valid JSON: {detail}")
        } else {
            format!("frame is not JSON ({})", category_name(&e))
        };
        fail(None, ErrorCode::MalformedRequest, message)
    })?;
    if !fields.object {
        return Err(fail(None, ErrorCode::MalformedRequest, "frame is not a JSON object".into()));
    }
    let [v, id, op, ..] = &fields.values;
    let id = match id {
        Some(Scalar::Int(id)) => Some(*id),
        _ => None,
    };
    match v {
        None => return Err(fail(id, ErrorCode::UnsupportedVersion, "missing protocol version `v`".into())),
        Some(Scalar::Int(v)) if *v == u64::from(PROTOCOL_VERSION) => {}
        Some(Scalar::Int(v)) => {
            let message = format!("protocol version {v} is not supported; this agent speaks {PROTOCOL_VERSION}");
            return Err(fail(id, ErrorCode::UnsupportedVersion, message));
        }
        Some(_) => {
            return Err(fail(id, ErrorCode::UnsupportedVersion, "protocol version `v` must be an integer".into()))
        }
    }
    let Some(id) = id else {
        return Err(fail(None, ErrorCode::InvalidRequest, "missing or non-integer request `id`".into()));
    };
    let op: &'static str = match op {
        Some(Scalar::Str(op)) => match Operation::NAMES.iter().find(|known| **known == op.as_ref()) {
            Some(known) => known,
            None => {
                let shown: String = op.chars().take(40).collect();
                return Err(fail(Some(id), ErrorCode::UnknownOperation, format!("unknown operation `{shown}`")));
            }
        },
        _ => return Err(fail(Some(id), ErrorCode::InvalidRequest, "missing `op`".into())),
    };
    let own = fields_of(op);
    let foreign = FIELD_NAMES[3..]
        .iter()
        .zip(&fields.values[3..])
        .find(|(name, value)| value.is_some() && !own.contains(name))
        .map(|(name, _)| (*name).to_owned());
    if let Some(extra) = foreign.or_else(|| fields.unknown.clone()) {
        let shown: String = extra.chars().take(40).collect();
        return Err(invalid(id, format!("invalid request: unknown field `{shown}`")));
    }
    let mut t = Taker { fields, id };
    let operation = match op {
        "hello" => Operation::Hello,
        "list_keys" => Operation::ListKeys,
        "status" => Operation::Status,
        "public_key" => Operation::PublicKey { key: t.key()? },
        "nvflare_challenge" => Operation::NvflareChallenge { key: t.key()? },
        "sign" => Operation::Sign { key: t.key()?, profile: t.text("profile")?, data: t.bytes("data")? },
        "decrypt" => Operation::Decrypt { key: t.key()?, data: t.bytes("data")? },
        "nvflare_register" => Operation::NvflareRegister {
            key: t.key()?,
            client_nonce: t.text("client_nonce")?,
            server_cert: t.bytes("server_cert")?,
            server_cn: t.text("server_cn")?,
            server_signature: t.bytes("server_signature")?,
            server_nonce: t.text("server_nonce")?,
        },
        _ => Operation::NvflareVerifyToken {
            session: t.text("session")?,
            client_name: t.text("client_name")?,
            token: t.text("token")?,
            token_signature: t.text("token_signature")?,
        },
    };
    if let Some(message) = oversized_field(&operation) {
        return Err(invalid(id, message));
    }
    Ok(Request { v: PROTOCOL_VERSION, id, op: operation })
}

fn category_name(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "i/o",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "bad data",
        serde_json::error::Category::Eof => "ends early",
    }
}
