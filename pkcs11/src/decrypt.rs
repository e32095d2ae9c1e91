//! RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption with a token key, as NVFlare's
//! cell cipher needs for `secure=True` messages.
//!
//! SoftHSM 2.6.1 implements `CKM_RSA_PKCS_OAEP` with SHA-1 only and answers
//! `CKR_ARGUMENTS_BAD` to SHA-256 parameters. So the first decrypt probes: if the token
//! refuses the OAEP-SHA-256 parameters, this backend switches (for the life of the process)
//! to `CKM_RSA_X_509` — the private-key exponentiation still happens inside the token — and
//! removes the padding in software with `keyward_core::oaep` (constant time, one error for
//! every failure). Trade-off, documented in `docs/security.md`: the raw mechanism lets the
//! agent compute any RSA private operation with the key, so it is the agent's request
//! policy, not the token, that limits what the key is used for.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use keyward_core::{oaep, KeyId, StoreError};
use zeroize::Zeroizing;

use crate::store::{FoundKey, Pkcs11Store};

/// How this token does OAEP-SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OaepPath {
    /// `CKM_RSA_PKCS_OAEP` with SHA-256 parameters, entirely in the token.
    Native,
    /// `CKM_RSA_X_509` in the token, OAEP decoding in software.
    RawWithSoftwareDecoding,
}

fn oaep_sha256() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

/// Whether an error means "this token does not do these OAEP parameters".
fn refuses_parameters(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid, _))
}

pub(crate) fn decrypt(
    store: &mut Pkcs11Store,
    id: &KeyId,
    key: FoundKey,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let Some(bits) = key.algorithm.rsa_bits() else {
        return Err(StoreError::Unsupported { what: format!("decrypt with {} key `{id}` (RSA only)", key.algorithm) });
    };
    let k = bits / 8;
    if ciphertext.len() != k {
        return Err(StoreError::InvalidInput {
            what: format!("ciphertext is {} bytes; key `{id}` needs exactly {k}", ciphertext.len()),
        });
    }
    let path = store.shared.oaep_path.get().copied();
    if path != Some(OaepPath::RawWithSoftwareDecoding) {
        match store.session.decrypt(&oaep_sha256(), key.handle, ciphertext) {
            Ok(plain) => {
                let _ = store.shared.oaep_path.set(OaepPath::Native);
                return Ok(Zeroizing::new(plain));
            }
            Err(e) if path.is_none() && refuses_parameters(&e) => {
                tracing::info!(token = %store.shared.token, "token lacks OAEP-SHA-256; using raw RSA in the token with OAEP decoding in software");
                let _ = store.shared.oaep_path.set(OaepPath::RawWithSoftwareDecoding);
            }
            Err(e) => return Err(store.fail("C_Decrypt")(e)),
        }
    }
    let result = store.session.decrypt(&Mechanism::RsaX509, key.handle, ciphertext);
    let em = Zeroizing::new(result.map_err(store.fail("C_Decrypt (raw RSA)"))?);
    oaep::decode_sha256(&em, k).map_err(|_| StoreError::DecryptionFailed)
}
