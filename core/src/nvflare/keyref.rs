//! The key reference file that replaces `client.key` in an NVFlare startup kit: a PEM block
//! `KEYWARD KEY REFERENCE` around base64 of `{"v":1,"socket":...,"key":...}`. It holds no
//! secret. The format, byte for byte, is in `docs/nvflare-plugin.md`; the Python plug-in
//! (`python/src/keyward/keyref.py`) writes and reads the same bytes.

use serde::Serialize;

use crate::key::KeyId;

/// The PEM label.
pub const KEY_REFERENCE_LABEL: &str = "KEYWARD KEY REFERENCE";

#[derive(Serialize)]
struct Reference<'a> {
    v: u8,
    socket: &'a str,
    key: &'a str,
}

/// The reference file's bytes for `key` served on `socket` (an absolute path).
pub fn key_reference(socket: &str, key: &KeyId) -> String {
    let json = serde_json::to_vec(&Reference { v: 1, socket, key: key.as_str() }).unwrap_or_default();
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(KEY_REFERENCE_LABEL, json), lf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_golden_vector_in_docs_nvflare_plugin() {
        let text = key_reference("/run/keyward/agent.sock", &KeyId::new("site-1").unwrap());
        assert_eq!(
            text,
            "-----BEGIN KEYWARD KEY REFERENCE-----\n\
             eyJ2IjoxLCJzb2NrZXQiOiIvcnVuL2tleXdhcmQvYWdlbnQuc29jayIsImtleSI6\n\
             InNpdGUtMSJ9\n\
             -----END KEYWARD KEY REFERENCE-----\n"
        );
        assert_eq!(text.len(), 152);
    }
}
