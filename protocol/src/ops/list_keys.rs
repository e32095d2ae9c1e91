//! `list_keys`: the keys in the store. No fields; the reply is [`crate::Reply::Keys`], a list
//! of [`KeyEntry`].

use keyward_core::key::{KeyAlgorithm, KeyId};
use serde::{Deserialize, Serialize};

use super::OpSpec;

/// `list_keys` on the wire.
pub const SPEC: OpSpec = OpSpec { name: "list_keys", reply_kind: "keys", fields: &[], keyed: false, text_limits: &[] };

/// One key in a `list_keys` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Name.
    pub key: KeyId,
    /// Type.
    pub algorithm: KeyAlgorithm,
    /// Created inside the device (not imported).
    pub generated_on_device: bool,
    /// A certificate is installed for it.
    pub has_certificate: bool,
    /// Any client of the device can use it (a TPM key with the empty auth value); sent only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_auth: bool,
}
