//! Signature encodings that tokens do not produce themselves: the PSS maximum salt length
//! and the conversion of a raw ECDSA `r || s` (what PKCS#11 `CKM_ECDSA` and TPM2_Sign return)
//! into the DER `ECDSA-Sig-Value` that TLS and X.509 expect.

/// The maximum PSS salt for a modulus of `mod_bits` and a hash of `hash_len` bytes:
/// `emLen - hLen - 2` with `emLen = ceil((modBits - 1) / 8)` (RFC 8017 §9.1.1). This is what
/// Python `cryptography` uses for `PSS.MAX_LENGTH` when signing: 222 for RSA-2048/SHA-256.
pub fn pss_max_salt_len(mod_bits: usize, hash_len: usize) -> usize {
    let em_len = (mod_bits - 1).div_ceil(8);
    em_len.saturating_sub(hash_len + 2)
}

/// Converts a raw P-256 ECDSA signature (`r || s`, 64 bytes) into DER.
///
/// # Errors
/// [`crate::StoreError::Backend`] when the input is not a valid 64-byte signature.
pub fn ecdsa_p256_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, crate::StoreError> {
    let sig = p256::ecdsa::Signature::from_slice(raw)
        .map_err(|e| crate::StoreError::Backend { op: "ecdsa signature encoding", source: Box::new(e) })?;
    Ok(sig.to_der().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_salt_matches_cryptography() {
        assert_eq!(pss_max_salt_len(2048, 32), 222);
        assert_eq!(pss_max_salt_len(3072, 32), 350);
        assert_eq!(pss_max_salt_len(1024, 32), 94);
    }

    #[test]
    fn raw_ecdsa_becomes_der_with_leading_zero_rules() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r high bit set: DER needs a leading 0x00
        raw[31] = 1;
        raw[63] = 5;
        let der = ecdsa_p256_raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert!(ecdsa_p256_raw_to_der(&raw[..63]).is_err());
    }
}
