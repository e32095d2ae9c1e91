//! One module per operation: its wire name, the `kind` of its reply, the request fields it
//! takes, whether it names a key, and the longest text each bounded field may carry. The
//! request and reply fields themselves are the [`crate::Operation`] and [`crate::Reply`]
//! variants of the same name; types used by one reply only live in that operation's module.
//!
//! [`OpKind`] and [`OpKind::ALL`] are made from one list by the macro below, and
//! [`crate::Operation::kind`] is an exhaustive match, so a new operation cannot be added
//! without its module here. Adding an operation means: one module here (and its variants),
//! one `agent/src/daemon/ops/<name>.rs`, one Python client method, one
//! `vectors/ops/<name>.json`; `tests/four_way.rs` fails while any is missing.

/// What one operation looks like on the wire, besides its field types.
#[derive(Debug, PartialEq, Eq)]
pub struct OpSpec {
    /// The request's `op`.
    pub name: &'static str,
    /// The `kind` of its successful reply.
    pub reply_kind: &'static str,
    /// The request's fields besides `v`, `id` and `op`; all required, no others accepted.
    pub fields: &'static [&'static str],
    /// Whether the request names a key (its `key` field).
    pub keyed: bool,
    /// Text fields and the most bytes each may hold, refused before they reach a log.
    pub text_limits: &'static [(&'static str, usize)],
}

/// Declares the operation modules and [`OpKind`] from `Kind => module` lines.
macro_rules! operations {
    ($($kind:ident => $module:ident,)*) => {
        $(pub mod $module;)*

        /// Which operation, without its fields.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind {
            $(#[doc = concat!("`", stringify!($module), "`: see [`", stringify!($module), "`].")] $kind,)*
        }

        impl OpKind {
            /// Every operation, in declaration order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),*];

            /// Its wire description.
            pub fn spec(self) -> &'static OpSpec {
                match self {
                    $(Self::$kind => &$module::SPEC,)*
                }
            }
        }
    };
}

operations! {
    Hello => hello,
    ListKeys => list_keys,
    PublicKey => public_key,
    Sign => sign,
    Decrypt => decrypt,
    Status => status,
    NvflareChallenge => nvflare_challenge,
    NvflareRegister => nvflare_register,
    NvflareVerifyToken => nvflare_verify_token,
    RetireKey => retire_key,
    NvflareServerChallenge => nvflare_server_challenge,
    NvflareServerRegister => nvflare_server_register,
}

impl OpKind {
    /// The request's `op`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The operation an `op` string names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::OpKind;

    #[test]
    fn names_and_reply_kinds_are_unique_and_snake_case() {
        let mut names = std::collections::HashSet::new();
        let mut kinds = std::collections::HashSet::new();
        for kind in OpKind::ALL {
            let spec = kind.spec();
            assert!(names.insert(spec.name) && kinds.insert(spec.reply_kind), "{spec:?}");
            assert!(spec.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{spec:?}");
            assert_eq!(OpKind::from_name(spec.name), Some(*kind));
            assert_eq!(spec.keyed, spec.fields.contains(&"key"), "{spec:?}");
            for (field, _) in spec.text_limits {
                assert!(spec.fields.contains(field), "{spec:?}: limit on unknown field `{field}`");
            }
        }
        assert_eq!(OpKind::from_name("format_disk"), None);
    }
}
