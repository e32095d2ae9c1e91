//! RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption inside the TPM with
//! TPM2_RSA_Decrypt, as NVFlare's cell cipher needs. A ciphertext that does not decode is
//! answered as the deliberately vague `DecryptionFailed`.
//!
//! Quirk: libtpms 0.9 (swtpm 0.7) answers a bad OAEP padding with `TPM_RC_FAILURE` (0x101),
//! not `TPM_RC_VALUE`, without entering failure mode (the next command works; tested in
//! `tests/tests/tpm_backend.rs`). So 0x101 from this command means a bad ciphertext too; a
//! TPM really in failure mode fails the next TPM2_Load anyway.

use keyward_core::StoreError;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Data, HashScheme, PublicKeyRsa, RsaDecryptionScheme};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::error::{Failure, TpmError};

/// `TPM_RC_VALUE`, `TPM_RC_SIZE` and `TPM_RC_KEY` as format-1 parameter errors, masked.
const DECODE_ERRORS: [u32; 3] = [0x084, 0x095, 0x09c];
/// `TPM_RC_FAILURE`: what libtpms returns for bad OAEP padding.
const RC_FAILURE: u32 = 0x101;

fn is_bad_ciphertext(rc: u32) -> bool {
    let format_one = rc & 0x80 != 0 && DECODE_ERRORS.contains(&(rc & 0xbf));
    rc >> 16 == 0 && (format_one || rc == RC_FAILURE)
}

pub(crate) fn decrypt(ctx: &mut Context, key: KeyHandle, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let input = PublicKeyRsa::try_from(ciphertext.to_vec()).map_err(TpmError::call("building RSA input"))?;
    let scheme = RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256));
    // The plaintext comes back encrypted under the salted session's key, not in clear on the bus.
    let decrypted =
        crate::session::with_encrypted_response(ctx, |c| c.rsa_decrypt(key, input, scheme, Data::default()))?;
    match decrypted {
        Ok(plain) => Ok(Zeroizing::new(plain.value().to_vec())),
        Err(source) => {
            let err = TpmError::Call { call: "TPM2_RSA_Decrypt (OAEP-SHA-256)", source };
            if err.response_code().is_some_and(is_bad_ciphertext) {
                tracing::debug!(error = %keyward_core::error::chain(&err), "OAEP decryption refused by the TPM");
                Err(Failure::Store(StoreError::DecryptionFailed))
            } else {
                Err(Failure::Tpm(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_padding_codes_are_decryption_failures_and_others_are_not() {
        // TPM_RC_VALUE on parameter 1, libtpms' TPM_RC_FAILURE, TPM_RC_SIZE on parameter 1.
        for rc in [0x1c4, 0x101, 0x1d5] {
            assert!(is_bad_ciphertext(rc), "{rc:#x}");
        }
        // TPM_RC_AUTH_FAIL, TPM_RC_OBJECT_MEMORY, a TCTI I/O error.
        for rc in [0x98e, 0x902, 0x000a_000a] {
            assert!(!is_bad_ciphertext(rc), "{rc:#x}");
        }
    }
}
