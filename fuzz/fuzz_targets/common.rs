//! Shared by the targets: turning fuzz input into PEM text. The first byte chooses whether
//! the rest is used as given (PEM text, what the agent receives) or is DER that gets wrapped
//! in a PEM block first, so that mutations reach the DER parsers directly instead of being
//! spent on base64.

/// `data[0]` even: `data[1..]` as is; odd: `data[1..]` wrapped as a PEM block tagged `tag`.
pub fn pem_input(data: &[u8], tag: &str) -> Vec<u8> {
    match data.split_first() {
        None => Vec::new(),
        Some((mode, rest)) if mode % 2 == 0 => rest.to_vec(),
        Some((_, der)) => pem::encode(&pem::Pem::new(tag, der.to_vec())).into_bytes(),
    }
}
