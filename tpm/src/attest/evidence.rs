//! The site's side of attestation, in its TPM: the endorsement key (EK, the TCG default
//! RSA-2048 template; its certificate from NV index 0x01c00002), an attestation key (AK) and
//! TPM2_ActivateCredential + TPM2_Certify of a site key.
//!
//! The AK is a primary key of the endorsement hierarchy from a fixed template (restricted
//! ECDSA-P256-SHA256 signing key, fixedTPM, fixedParent, sensitiveDataOrigin): the same seed
//! and template give the same key, so `attest begin` and `attest answer` (run minutes apart,
//! in separate processes) use one AK without keeping a file. Restricted means it signs only
//! structures the TPM made itself (TPM2_Certify output starts with TPM_GENERATED_VALUE).
//!
//! swtpm has 3 transient slots: the storage primary, the EK and the AK during activation;
//! the primary, the AK and the site key during Certify. The EK is flushed in between.

use keyward_core::{KeyId, StoreError};
use tss_esapi::abstraction::ek;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject, KeyDerivationFunctionScheme, Public,
    PublicBuilder, PublicEccParametersBuilder, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use super::{AttestationIdentity, Credential, KeyEvidence};
use crate::error::{Failure, TpmError};
use crate::store::TpmStore;

/// The AK template: restricted ECDSA-P256-SHA256 signing key bound to this TPM.
pub(crate) fn ak_template() -> tss_esapi::Result<Public> {
    ak_public_with(EccPoint::default())
}

/// The AK's public area with the point `unique` (the TPM fills it in; tests make their own).
pub(crate) fn ak_public_with(unique: EccPoint) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(unique)
        .build()
}

/// Creates the AK (the same one every time) and returns its handle and public area.
fn create_ak(ctx: &mut Context) -> Result<(KeyHandle, Public), TpmError> {
    let template = ak_template().map_err(TpmError::call("building the AK template"))?;
    let created = ctx
        .execute_with_nullauth_session(|c| c.create_primary(Hierarchy::Endorsement, template, None, None, None, None))
        .map_err(TpmError::call("TPM2_CreatePrimary (attestation key)"))?;
    Ok((created.key_handle, created.out_public))
}

fn flush(ctx: &mut Context, handle: impl Into<ObjectHandle>) {
    if let Err(e) = ctx.flush_context(handle.into()) {
        tracing::warn!(error = %e, "TPM2_FlushContext of an attestation object failed");
    }
}

/// Recovers the credential with the EK: the EK's policy is PolicySecret(TPM_RH_ENDORSEMENT)
/// (TCG EK Credential Profile, template L-1), satisfied with the (empty) endorsement auth.
pub(crate) fn activate(ctx: &mut Context, ak: KeyHandle, credential: &Credential) -> Result<Vec<u8>, TpmError> {
    let blob = IdObject::try_from(credential.credential_blob.clone())
        .map_err(TpmError::call("reading the credential blob"))?;
    let secret = EncryptedSecret::try_from(credential.encrypted_secret.clone())
        .map_err(TpmError::call("reading the encrypted credential seed"))?;
    let ek = ek::create_ek_object_2(ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048), None)
        .map_err(TpmError::call("TPM2_CreatePrimary (endorsement key)"))?;
    let result = activate_with(ctx, ak, ek, blob, secret);
    flush(ctx, ek);
    result
}

fn activate_with(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Result<Vec<u8>, TpmError> {
    let session = ctx
        .start_auth_session(None, None, None, SessionType::Policy, SymmetricDefinition::Null, HashingAlgorithm::Sha256)
        .map_err(TpmError::call("TPM2_StartAuthSession (EK policy)"))?
        .ok_or_else(|| TpmError::call("TPM2_StartAuthSession (EK policy)")(no_session()))?;
    let result = (|| {
        let policy = PolicySession::try_from(session).map_err(TpmError::call("EK policy session"))?;
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
        .map_err(TpmError::call("TPM2_PolicySecret (endorsement)"))?;
        ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
            c.activate_credential(ak, ek, blob, secret)
        })
        .map_err(TpmError::call("TPM2_ActivateCredential"))
    })();
    flush(ctx, tss_esapi::handles::SessionHandle::from(session));
    Ok(result?.value().to_vec())
}

fn no_session() -> tss_esapi::Error {
    tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm)
}

impl TpmStore {
    /// The TPM's EK certificate and its attestation key's public area: what the verifier
    /// needs to make a challenge (`keyward attest begin`).
    ///
    /// # Errors
    /// The TPM has no RSA EK certificate at 0x01c00002, or a TPM call failed.
    pub fn attestation_identity(&mut self) -> Result<AttestationIdentity, StoreError> {
        self.run(|conn| {
            let ek_certificate =
                ek::retrieve_ek_pubcert(&mut conn.ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048))
                    .map_err(TpmError::call("reading the RSA EK certificate (NV index 0x01c00002)"))?;
            let (ak, public) = create_ak(&mut conn.ctx)?;
            flush(&mut conn.ctx, ak);
            let ak_public = public.marshall().map_err(TpmError::call("marshalling the AK public area"))?;
            Ok(AttestationIdentity { ek_certificate, ak_public })
        })
    }

    /// Answers a verifier's challenge for key `id` (`keyward attest answer`): recovers the
    /// nonce with TPM2_ActivateCredential (only this TPM, with this AK, can) and has the AK
    /// certify the key over that nonce.
    ///
    /// # Errors
    /// No such key, a credential not made for this TPM and AK (TPM2_ActivateCredential
    /// fails), or another TPM failure.
    pub fn certify_key(&mut self, id: &KeyId, credential: &Credential) -> Result<KeyEvidence, StoreError> {
        let key = self.stored(id)?;
        let auth = self.key_auth(&key)?;
        let key_public = key
            .public()
            .marshall()
            .map_err(|e| TpmError::call("marshalling the key public area")(e).into_store_error(&self.tpm_name()))?;
        self.run(|conn| {
            let (ak, _) = create_ak(&mut conn.ctx)?;
            let nonce = match activate(&mut conn.ctx, ak, credential) {
                Ok(nonce) => nonce,
                Err(e) => {
                    flush(&mut conn.ctx, ak);
                    return Err(e.into());
                }
            };
            let primary = conn.primary;
            let parent_public = conn
                .ctx
                .execute_without_session(|c| c.read_public(primary))
                .map_err(TpmError::call("TPM2_ReadPublic (storage primary)"))
                .and_then(|(public, _, _)| {
                    public.marshall().map_err(TpmError::call("marshalling the primary's public area"))
                });
            let parent_public = match parent_public {
                Ok(parent_public) => parent_public,
                Err(e) => {
                    flush(&mut conn.ctx, ak);
                    return Err(e.into());
                }
            };
            let session = conn.session;
            let qualifying = Data::try_from(nonce.clone()).map_err(TpmError::call("nonce as qualifying data"));
            let certified = qualifying.map_err(Failure::from).and_then(|qualifying| {
                conn.with_key(&key, auth.clone(), |ctx, handle| {
                    ctx.execute_with_sessions((Some(session), Some(AuthSession::Password), None), |c| {
                        c.certify(handle.into(), ak, qualifying, SignatureScheme::Null)
                    })
                    .map_err(|e| TpmError::call("TPM2_Certify")(e).into())
                })
            });
            flush(&mut conn.ctx, ak);
            let (attest, signature) = certified?;
            Ok(KeyEvidence {
                nonce,
                attest: attest.marshall().map_err(TpmError::call("marshalling TPMS_ATTEST"))?,
                signature: signature.marshall().map_err(TpmError::call("marshalling TPMT_SIGNATURE"))?,
                key_public: key_public.clone(),
                parent_public,
            })
        })
    }
}
