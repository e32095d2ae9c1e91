//! Reading the golden vectors (`protocol/vectors/`), shared by the tests of this folder.
//! An operation's vector, `vectors/ops/<op>.json`, holds its request and reply twice: as
//! JSON objects to read (`request`, `reply`) and as the exact frames in hex
//! (`request_frame`, `reply_frame`: the 4-byte length prefix, then the body).

#![allow(dead_code)] // each test file uses part of it
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// `protocol/vectors`.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `vectors/error_codes.json`.
pub fn error_codes_file() -> PathBuf {
    vectors_dir().join("error_codes.json")
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("`{}`: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{}`: {e}", path.display()))
}

/// The operations that have a vector file, sorted.
pub fn op_vector_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vectors_dir().join("ops"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .map(|name| {
            name.strip_suffix(".json").unwrap_or_else(|| panic!("`{name}` in vectors/ops is not .json")).to_owned()
        })
        .collect();
    names.sort_unstable();
    names
}

/// The error codes of `vectors/error_codes.json`.
pub fn error_code_names() -> Vec<String> {
    let table = read_json(&error_codes_file());
    table["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

/// One operation's vector.
pub struct OpVector {
    /// The request body as JSON.
    pub request: Value,
    /// The exact request frame.
    pub request_frame: Vec<u8>,
    /// The reply body as JSON.
    pub reply: Value,
    /// The exact reply frame.
    pub reply_frame: Vec<u8>,
}

impl OpVector {
    /// `vectors/ops/<op>.json`, with its `op` and both frames' length prefixes checked.
    pub fn load(op: &str) -> Self {
        let file = read_json(&vectors_dir().join("ops").join(format!("{op}.json")));
        assert_eq!(file["op"], op, "`{op}.json`: `op`");
        let frame = |name: &str| {
            let bytes = hex::decode(file[name].as_str().unwrap()).unwrap();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4, "`{op}.json`: `{name}` length prefix");
            bytes
        };
        Self {
            request: file["request"].clone(),
            request_frame: frame("request_frame"),
            reply: file["reply"].clone(),
            reply_frame: frame("reply_frame"),
        }
    }

    /// The request frame's body.
    pub fn request_body(&self) -> &[u8] {
        &self.request_frame[4..]
    }

    /// The reply frame's body.
    pub fn reply_body(&self) -> &[u8] {
        &self.reply_frame[4..]
    }

    /// The file text for a new vector.
    pub fn render(op: &str, request_frame: &[u8], reply_frame: &[u8]) -> String {
        let body = |frame: &[u8]| serde_json::from_slice::<Value>(&frame[4..]).unwrap();
        let file = json!({
            "op": op,
            "request": body(request_frame),
            "request_frame": hex::encode(request_frame),
            "reply": body(reply_frame),
            "reply_frame": hex::encode(reply_frame),
        });
        serde_json::to_string_pretty(&file).unwrap() + "\n"
    }
}
