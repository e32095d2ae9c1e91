//! RFC 7512 PKCS#11 URIs, the token-selecting part: `pkcs11:token=fl-site;serial=1234`.
//! Path attributes are `;`-separated, values percent-decoded; query attributes (`?pin-value`)
//! are refused outright, since a PIN must never sit in a URI.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Pkcs11Error;

/// A parsed URI: the attributes keyward uses to select a token and an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: token label.
    pub token: Option<String>,
    /// `serial=`: token serial number.
    pub serial: Option<String>,
    /// `manufacturer=`.
    pub manufacturer: Option<String>,
    /// `model=`.
    pub model: Option<String>,
    /// `object=`: the key label.
    pub object: Option<String>,
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    ///
    /// # Errors
    /// [`Pkcs11Error::BadUri`] naming the problem.
    pub fn parse(text: &str) -> Result<Self, Pkcs11Error> {
        let bad = |why: &str| Pkcs11Error::BadUri(why.to_owned());
        let rest = text.strip_prefix("pkcs11:").ok_or_else(|| bad("does not start with `pkcs11:`"))?;
        if rest.contains('?') {
            return Err(bad("query attributes (such as pin-value) are not accepted; give the PIN in a file"));
        }
        let mut attrs = BTreeMap::new();
        for part in rest.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| bad("attribute without `=`"))?;
            let value = percent_decode(value).ok_or_else(|| bad("bad percent-encoding"))?;
            if attrs.insert(name.to_owned(), value).is_some() {
                return Err(Pkcs11Error::BadUri(format!("attribute `{name}` given twice")));
            }
        }
        let mut uri = Self::default();
        for (name, value) in attrs {
            let slot = match name.as_str() {
                "token" => &mut uri.token,
                "serial" => &mut uri.serial,
                "manufacturer" => &mut uri.manufacturer,
                "model" => &mut uri.model,
                "object" => &mut uri.object,
                "type"
                | "id"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => continue,
                other => return Err(Pkcs11Error::BadUri(format!("unknown attribute `{other}`"))),
            };
            *slot = Some(value);
        }
        Ok(uri)
    }

    /// Whether a token with these properties matches every attribute given.
    pub fn matches(&self, label: &str, serial: &str, manufacturer: &str, model: &str) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
        ok(&self.token, label)
            && ok(&self.serial, serial)
            && ok(&self.manufacturer, manufacturer)
            && ok(&self.model, model)
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let parts = [
            ("token", &self.token),
            ("serial", &self.serial),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("object", &self.object),
        ];
        let mut first = true;
        for (name, value) in parts {
            if let Some(v) = value {
                if !first {
                    f.write_str(";")?;
                }
                first = false;
                write!(f, "{name}=")?;
                for c in v.chars() {
                    if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                        write!(f, "{c}")?;
                    } else {
                        for b in c.to_string().as_bytes() {
                            write!(f, "%{b:02X}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_and_object_with_percent_encoding() {
        let uri = Pkcs11Uri::parse("pkcs11:token=fl%20site;object=site-1;type=private").unwrap();
        assert_eq!(uri.token.as_deref(), Some("fl site"));
        assert_eq!(uri.object.as_deref(), Some("site-1"));
        assert_eq!(uri.to_string(), "pkcs11:token=fl%20site;object=site-1");
        assert!(uri.matches("fl site", "x", "y", "z"));
        assert!(!uri.matches("other", "x", "y", "z"));
    }

    #[test]
    fn refuses_pin_in_query_and_garbage() {
        assert!(Pkcs11Uri::parse("pkcs11:token=a?pin-value=1234").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:token").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:token=%zz").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:bogus=1").is_err());
        assert!(Pkcs11Uri::parse("token=a").is_err());
    }
}
