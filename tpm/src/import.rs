//! One-time import of an existing private key (TPM2_Import), for migrating a site whose key
//! already exists as a file.
//!
//! The TPM only imports objects that are *not* fixedTPM and not fixedParent, and it cannot
//! mark them sensitiveDataOrigin: an imported key is honestly "held by the TPM", never "born
//! in the TPM", and `key list` says so (`generated_on_device = false`). Its wrapped blob is
//! still bound to this TPM's storage primary like a generated key's.
//!
//! The duplicate is handed over without an outer (seed) or inner (symmetric) wrapper: the
//! key's sensitive area, with the auth value keyward chose for it, travels once, in clear,
//! over the TCTI (the kernel's `/dev/tpmrm0`
//! on a real machine). A TPM only accepts that for objects without encryptedDuplication,
//! which ours never have. Someone who can read the bus between CPU and TPM at that moment
//! sees the key; someone who could read the key file before could anyway. Where that
//! matters, generate the key in the TPM instead. Every buffer that held the secret is
//! zeroized (tss-esapi's `Private` and `Sensitive` buffers wipe themselves on drop).

use keyward_core::private_key::PrivateKeyMaterial;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, EccScheme, EncryptedSecret, HashScheme, KeyDerivationFunctionScheme, Private,
    PrivateKeyRsa, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, Sensitive, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use crate::blob::KeyBlob;
use crate::connection::Connection;
use crate::error::TpmError;

/// Imports `key` under the storage primary; returns it wrapped by the primary.
pub(crate) fn import(
    conn: &mut Connection,
    key: &PrivateKeyMaterial,
    auth: Option<Auth>,
    no_da: bool,
) -> Result<KeyBlob, TpmError> {
    let (mut public, sensitive) =
        parts(key, auth.unwrap_or_default()).map_err(TpmError::call("building import structures"))?;
    crate::keygen::set_no_da(&mut public, no_da);
    let duplicate = unwrapped_duplicate(&sensitive).map_err(TpmError::call("marshalling TPM2B_SENSITIVE"))?;
    drop(sensitive);
    let primary = conn.primary;
    let template = public.clone();
    // The duplicate (key and auth value) is TPM2_Import's third parameter: parameter
    // encryption covers only the first, so it crosses the bus in clear (module doc).
    let private = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.import(
                primary.into(),
                None,
                template,
                duplicate,
                EncryptedSecret::default(),
                SymmetricDefinitionObject::Null,
            )
        })
        .map_err(TpmError::call("TPM2_Import"))?;
    Ok(KeyBlob { public, private, auth: None })
}

/// Attributes of an imported key: usable with the auth value, never duplicable again
/// (no duplication policy is set), but not fixedTPM/fixedParent (the TPM refuses those in
/// an import) and not sensitiveDataOrigin (the TPM did not make it).
fn imported_attributes(decrypt: bool) -> tss_esapi::Result<tss_esapi::attributes::ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(false)
        .with_fixed_parent(false)
        .with_sensitive_data_origin(false)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(decrypt)
        .with_restricted(false)
        .build()
}

/// The public template (same schemes as generated keys, see `keygen.rs`) and the sensitive
/// area of `key`.
fn parts(key: &PrivateKeyMaterial, auth_value: Auth) -> tss_esapi::Result<(Public, Sensitive)> {
    let no_seed = Digest::default();
    match key {
        PrivateKeyMaterial::Rsa { parts, .. } => {
            let bits = match parts.modulus.len() {
                256 => RsaKeyBits::Rsa2048,
                384 => RsaKeyBits::Rsa3072,
                _ => return Err(tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::UnsupportedParam)),
            };
            let exponent = parts.public_exponent.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            let exponent = match exponent {
                65537 => RsaExponent::default(),
                other => RsaExponent::create(
                    u32::try_from(other)
                        .map_err(|_| tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::UnsupportedParam))?,
                )?,
            };
            let public = PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_name_hashing_algorithm(crate::keygen::NAME_ALG)
                .with_object_attributes(imported_attributes(true)?)
                .with_rsa_parameters(
                    PublicRsaParametersBuilder::new()
                        .with_scheme(RsaScheme::Null)
                        .with_key_bits(bits)
                        .with_exponent(exponent)
                        .with_is_signing_key(true)
                        .with_is_decryption_key(true)
                        .with_restricted(false)
                        .build()?,
                )
                .with_rsa_unique_identifier(PublicKeyRsa::try_from(parts.modulus.clone())?)
                .build()?;
            let sensitive = Sensitive::Rsa {
                auth_value,
                seed_value: no_seed,
                sensitive: PrivateKeyRsa::try_from(parts.prime_1.to_vec())?,
            };
            Ok((public, sensitive))
        }
        PrivateKeyMaterial::EcP256 { scalar, point, .. } => {
            let bad_point = tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam);
            let (x, y) = point.get(1..).and_then(|xy| xy.split_at_checked(32)).ok_or(bad_point)?;
            let public = PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_name_hashing_algorithm(crate::keygen::NAME_ALG)
                .with_object_attributes(imported_attributes(false)?)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_unrestricted_signing_key(
                        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                        EccCurve::NistP256,
                    )
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::new(
                    EccParameter::try_from(x.to_vec())?,
                    EccParameter::try_from(y.to_vec())?,
                ))
                .build()?;
            let sensitive =
                Sensitive::Ecc { auth_value, seed_value: no_seed, sensitive: EccParameter::try_from(scalar.to_vec())? };
            Ok((public, sensitive))
        }
    }
}

/// A duplicate with neither outer nor inner wrapper: the marshalled TPM2B_SENSITIVE.
fn unwrapped_duplicate(sensitive: &Sensitive) -> tss_esapi::Result<Private> {
    let area = Zeroizing::new(sensitive.marshall()?);
    let size = u16::try_from(area.len())
        .map_err(|_| tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize))?;
    let mut buffer = Zeroizing::new(Vec::with_capacity(area.len() + 2));
    buffer.extend_from_slice(&size.to_be_bytes());
    buffer.extend_from_slice(&area);
    Private::try_from(buffer.to_vec())
}
