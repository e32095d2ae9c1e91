//! [`Pkcs11Store`]: one session, owned by one worker thread, and the key lookups every
//! operation shares (label → private key handle and algorithm, cached per session).

use std::collections::HashMap;
use std::sync::{Arc, RwLockReadGuard};

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, KeyInfo, KeyStore, PublicKey, SignProfile, StoreError, StoreInfo};
use rsa::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

use crate::device::{Gate, Shared};
use crate::error::Pkcs11Error;

/// DER of the P-256 curve OID, as `CKA_EC_PARAMS` holds it.
pub(crate) const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A private key found on the token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoundKey {
    pub(crate) handle: ObjectHandle,
    pub(crate) algorithm: KeyAlgorithm,
}

/// Whether an operation may run again after the recovery its own failure made due.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// It changes nothing on the token (sign, decrypt, lookups): running it twice is safe.
    Once,
    /// It creates objects: a second run after a failure of unknown effect could duplicate.
    Never,
}

/// How one run of an operation ended.
enum Attempt<T> {
    Done(Result<T, StoreError>),
    /// It failed and its failure marked the token down (the error for the caller).
    MarkedDown(StoreError),
}

impl<T> Attempt<T> {
    fn into_result(self) -> Result<T, StoreError> {
        match self {
            Self::Done(result) => result,
            Self::MarkedDown(e) => Err(e),
        }
    }
}

/// A session on the token: the [`KeyStore`] for one worker.
pub struct Pkcs11Store {
    pub(crate) session: Session,
    pub(crate) shared: Arc<Shared>,
    slot: Slot,
    /// The module generation `session` belongs to (see `device.rs`).
    generation: u64,
    cache: HashMap<KeyId, FoundKey>,
    /// Set by [`Pkcs11Store::fail`] when a call said the token or session went away.
    gone: Option<String>,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store").field("token", &self.shared.token).finish()
    }
}

impl Pkcs11Store {
    pub(crate) fn open(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let gate = shared.ready()?;
        let (session, slot) = open_session(&shared, &gate)?;
        let generation = gate.generation;
        drop(gate);
        Ok(Self { session, shared, slot, generation, cache: HashMap::new(), gone: None })
    }

    /// Runs one operation on a usable token. While the token is down this fails at once
    /// (or runs the recovery attempt that is due); after a recovery it first replaces the
    /// stale session. A failure that may mean "token gone" — a gone-class return value,
    /// or a key that vanished — is checked with `C_GetTokenInfo`, so a token that went
    /// away is reported as unavailable and never as "no such key". When this operation's
    /// failure is what marked the token down and `retry` allows, it waits for the recovery
    /// that is then due and runs once more on the fresh session (see `device.rs`).
    fn guarded<T>(
        &mut self,
        retry: Retry,
        mut op: impl FnMut(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        let outcome = self.attempt(&shared, shared.ready()?, &mut op);
        match outcome {
            Attempt::Done(result) => result,
            Attempt::MarkedDown(e) if retry == Retry::Never => Err(e),
            Attempt::MarkedDown(e) => match shared.ready_after_failure() {
                Ok(gate) => {
                    let again = self.attempt(&shared, gate, &mut op);
                    again.into_result()
                }
                Err(_) => Err(e),
            },
        }
    }

    /// One run of `op` under `gate`: see [`Pkcs11Store::guarded`].
    fn attempt<T>(
        &mut self,
        shared: &Shared,
        gate: RwLockReadGuard<'_, Gate>,
        op: &mut impl FnMut(&mut Self) -> Result<T, StoreError>,
    ) -> Attempt<T> {
        if self.generation != gate.generation {
            let (fresh, slot) = match open_session(shared, &gate) {
                Ok(opened) => opened,
                Err(e @ StoreError::Unavailable { .. }) => {
                    return Attempt::MarkedDown(shared.mark_down(format!("C_OpenSession after recovery: {e}")));
                }
                Err(e) => return Attempt::Done(Err(e)),
            };
            // The stale session's handle belongs to a finalized module instance; the fresh
            // instance reuses handle numbers, so closing it could close another worker's
            // new session. Leak it instead (a few bytes per recovery).
            std::mem::forget(std::mem::replace(&mut self.session, fresh));
            self.slot = slot;
            self.generation = gate.generation;
            self.cache.clear();
        }
        self.gone = None;
        let result = op(self);
        drop(gate);
        let Err(e) = result else { return Attempt::Done(result) };
        if let Some(why) = self.gone.take() {
            self.cache.clear();
            return Attempt::MarkedDown(shared.mark_down(why));
        }
        match e {
            StoreError::KeyNotFound { .. } | StoreError::Backend { .. } => match shared.ctx.get_token_info(self.slot) {
                Ok(_) => Attempt::Done(Err(e)),
                Err(probe) => {
                    self.cache.clear();
                    Attempt::MarkedDown(shared.mark_down(Pkcs11Error::call("C_GetTokenInfo")(probe).brief()))
                }
            },
            e => Attempt::Done(Err(e)),
        }
    }

    /// Classifies a PKCS#11 error for this token, dropping cached handles when the
    /// session or device went bad so the next call looks keys up again.
    pub(crate) fn fail(&mut self, call: &'static str) -> impl FnOnce(cryptoki::error::Error) -> StoreError + '_ {
        move |e| {
            let err = Pkcs11Error::call(call)(e);
            self.cache.clear();
            if err.token_gone() {
                self.gone = Some(err.brief());
            }
            err.into_store_error(&self.shared.token)
        }
    }

    pub(crate) fn find_objects(&mut self, template: &[Attribute]) -> Result<Vec<ObjectHandle>, StoreError> {
        let result = self.session.find_objects(template);
        result.map_err(self.fail("C_FindObjects"))
    }

    /// Finds the private key labelled `id`.
    pub(crate) fn find_private(&mut self, id: &KeyId) -> Result<FoundKey, StoreError> {
        if let Some(found) = self.cache.get(id) {
            return Ok(*found);
        }
        let handles = self.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(id.as_str().as_bytes().to_vec()),
        ])?;
        let handle = match handles.as_slice() {
            [] => return Err(StoreError::KeyNotFound { id: id.clone() }),
            [one] => *one,
            many => {
                return Err(StoreError::Unsupported {
                    what: format!(
                        "{} private keys are labelled `{id}` on the token; keyward needs exactly one",
                        many.len()
                    ),
                })
            }
        };
        let algorithm = self.algorithm_of(handle, id)?;
        let found = FoundKey { handle, algorithm };
        self.cache.insert(id.clone(), found);
        Ok(found)
    }

    fn algorithm_of(&mut self, handle: ObjectHandle, id: &KeyId) -> Result<KeyAlgorithm, StoreError> {
        let attrs = self
            .session
            .get_attributes(handle, &[AttributeType::KeyType, AttributeType::Modulus, AttributeType::EcParams]);
        let attrs = attrs.map_err(self.fail("C_GetAttributeValue"))?;
        let mut key_type = None;
        let mut modulus_bits = 0;
        let mut ec_params = Vec::new();
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Modulus(m) => modulus_bits = significant_bits(&m),
                Attribute::EcParams(p) => ec_params = p,
                _ => {}
            }
        }
        let unsupported = |what: String| StoreError::Unsupported { what: format!("key `{id}`: {what}") };
        match key_type {
            Some(KeyType::RSA) => KeyAlgorithm::from_rsa_bits(modulus_bits)
                .ok_or_else(|| unsupported(format!("RSA-{modulus_bits} (keyward uses RSA-2048 and RSA-3072)"))),
            Some(KeyType::EC) if ec_params == P256_OID_DER => Ok(KeyAlgorithm::EcP256),
            Some(KeyType::EC) => Err(unsupported("EC curve other than P-256".into())),
            other => Err(unsupported(format!("key type {other:?}"))),
        }
    }

    /// The public key of a private key, read from the matching public key object (or from
    /// the public attributes of the private key, which RSA private keys carry).
    fn read_public(&mut self, id: &KeyId, found: FoundKey) -> Result<PublicKey, StoreError> {
        let spki_der = match found.algorithm {
            KeyAlgorithm::EcP256 => {
                let pubs = self.find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(id.as_str().as_bytes().to_vec()),
                ])?;
                let handle = *pubs.first().ok_or_else(|| StoreError::Unsupported {
                    what: format!("key `{id}` has no public key object on the token"),
                })?;
                let attrs = self.session.get_attributes(handle, &[AttributeType::EcPoint]);
                let point = attrs.map_err(self.fail("C_GetAttributeValue"))?.into_iter().find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                });
                let point = point.ok_or_else(|| StoreError::backend("reading CKA_EC_POINT", "attribute missing"))?;
                let raw = unwrap_der_octet_string(&point).unwrap_or(&point);
                let key =
                    p256::PublicKey::from_sec1_bytes(raw).map_err(|e| StoreError::backend("decoding EC point", e))?;
                key.to_public_key_der().map_err(|e| StoreError::backend("encoding SPKI", e))?.into_vec()
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                let attrs =
                    self.session.get_attributes(found.handle, &[AttributeType::Modulus, AttributeType::PublicExponent]);
                let (mut n, mut e) = (Vec::new(), Vec::new());
                for a in attrs.map_err(self.fail("C_GetAttributeValue"))? {
                    match a {
                        Attribute::Modulus(m) => n = m,
                        Attribute::PublicExponent(x) => e = x,
                        _ => {}
                    }
                }
                let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from_bytes_be(&e))
                    .map_err(|e| StoreError::backend("decoding RSA public key", e))?;
                key.to_public_key_der().map_err(|e| StoreError::backend("encoding SPKI", e))?.into_vec()
            }
        };
        Ok(PublicKey { algorithm: found.algorithm, spki_der })
    }

    fn key_info(&mut self, id: &KeyId, found: FoundKey) -> Result<KeyInfo, StoreError> {
        let attrs = self.session.get_attributes(found.handle, &[AttributeType::Local]);
        let local =
            attrs.map_err(self.fail("C_GetAttributeValue"))?.into_iter().any(|a| matches!(a, Attribute::Local(true)));
        Ok(KeyInfo { id: id.clone(), algorithm: found.algorithm, generated_on_device: local, empty_auth: false })
    }
}

/// A new session on the logged-in token of the current module instance.
fn open_session(shared: &Shared, gate: &Gate) -> Result<(Session, Slot), StoreError> {
    let slot = gate
        .token
        .as_ref()
        .map(|t| t.slot)
        .ok_or(StoreError::Unavailable { what: format!("token `{}` is not logged in", shared.token), source: None })?;
    let session = shared
        .ctx
        .open_rw_session(slot)
        .map_err(|e| Pkcs11Error::call("C_OpenSession")(e).into_store_error(&shared.token))?;
    Ok((session, slot))
}

/// Bits in a big-endian unsigned integer, ignoring leading zero bytes.
fn significant_bits(be: &[u8]) -> usize {
    let skip = be.iter().take_while(|b| **b == 0).count();
    let rest = &be[skip..];
    rest.first().map_or(0, |first| rest.len() * 8 - first.leading_zeros() as usize)
}

/// SoftHSM returns `CKA_EC_POINT` as a DER OCTET STRING (`04 41 04 X Y`); strip the header.
fn unwrap_der_octet_string(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => Some(rest),
        _ => None,
    }
}

/// The operations themselves; the [`KeyStore`] methods run them through `guarded`.
impl Pkcs11Store {
    fn list_now(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        let handles = self.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
        let mut keys = Vec::new();
        for handle in handles {
            let attrs = self.session.get_attributes(handle, &[AttributeType::Label]);
            let label = attrs.map_err(self.fail("C_GetAttributeValue"))?.into_iter().find_map(|a| match a {
                Attribute::Label(l) => String::from_utf8(l).ok(),
                _ => None,
            });
            // Objects made by other tools may have labels keyward cannot name; skip them.
            let Some(id) = label.and_then(|l| KeyId::new(&l).ok()) else { continue };
            match self.find_private(&id) {
                Ok(found) => keys.push(self.key_info(&id, found)?),
                Err(StoreError::Unsupported { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    fn generate_now(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        self.refuse_existing(id)?;
        let found = crate::keygen::generate(self, id, algorithm)?;
        self.cache.insert(id.clone(), found);
        self.key_info(id, found)
    }

    fn import_now(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        self.refuse_existing(id)?;
        let found = crate::keygen::import(self, id, key)?;
        self.cache.insert(id.clone(), found);
        self.key_info(id, found)
    }

    fn public_key_now(&mut self, id: &KeyId) -> Result<PublicKey, StoreError> {
        let found = self.find_private(id)?;
        self.read_public(id, found)
    }

    fn sign_now(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        let found = self.find_private(id)?;
        crate::sign::sign(self, found, profile, msg)
    }

    fn decrypt_now(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let found = self.find_private(id)?;
        crate::decrypt::decrypt(self, id, found, ciphertext)
    }

    /// `C_DestroyObject` on every object labelled `id` with keyward's `CKA_ID` for it (the
    /// private key first, so a failure half-way never leaves a usable private key without
    /// its public half being findable); objects another tool made under the same label
    /// with another id are left alone.
    fn destroy_now(&mut self, id: &KeyId) -> Result<(), StoreError> {
        let private = self.find_private(id)?;
        self.cache.remove(id);
        self.session.destroy_object(private.handle).map_err(self.fail("C_DestroyObject"))?;
        let rest = self.find_objects(&[
            Attribute::Label(id.as_str().as_bytes().to_vec()),
            Attribute::Id(crate::keygen::object_id(id)),
        ])?;
        for handle in rest {
            self.session.destroy_object(handle).map_err(self.fail("C_DestroyObject"))?;
        }
        Ok(())
    }

    /// `C_GetTokenInfo`, because SoftHSM keeps answering `C_GetSessionInfo` after its
    /// token folder is gone.
    fn check_now(&mut self) -> Result<(), StoreError> {
        let info = self.shared.ctx.get_token_info(self.slot);
        info.map(|_| ()).map_err(|e| {
            self.gone = Some(Pkcs11Error::call("C_GetTokenInfo")(e).brief());
            StoreError::Unavailable { what: format!("token `{}`", self.shared.token), source: None }
        })
    }
}

impl KeyStore for Pkcs11Store {
    fn info(&self) -> StoreInfo {
        StoreInfo { backend: "pkcs11", device: format!("token `{}` ({})", self.shared.token, self.shared.device) }
    }

    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        self.guarded(Retry::Once, Self::list_now)
    }

    fn generate(&mut self, id: &KeyId, algorithm: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        self.guarded(Retry::Never, |s| s.generate_now(id, algorithm))
    }

    fn import(&mut self, id: &KeyId, key: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        self.guarded(Retry::Never, |s| s.import_now(id, key))
    }

    fn public_key(&mut self, id: &KeyId) -> Result<PublicKey, StoreError> {
        self.guarded(Retry::Once, |s| s.public_key_now(id))
    }

    fn sign(&mut self, id: &KeyId, profile: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.guarded(Retry::Once, |s| s.sign_now(id, profile, msg))
    }

    fn decrypt(&mut self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.guarded(Retry::Once, |s| s.decrypt_now(id, ciphertext))
    }

    fn check(&mut self) -> Result<(), StoreError> {
        self.guarded(Retry::Once, Self::check_now)
    }

    fn destroy(&mut self, id: &KeyId) -> Result<(), StoreError> {
        self.guarded(Retry::Never, |s| s.destroy_now(id))
    }
}

impl Pkcs11Store {
    /// Refuses when any object already carries this label or keyward's id for it.
    fn refuse_existing(&mut self, id: &KeyId) -> Result<(), StoreError> {
        self.cache.remove(id);
        let by_label = self.find_objects(&[Attribute::Label(id.as_str().as_bytes().to_vec())])?;
        if !by_label.is_empty() {
            return Err(StoreError::KeyExists {
                id: id.clone(),
                detail: format!("{} object(s) with label `{id}`", by_label.len()),
            });
        }
        let by_id = self.find_objects(&[Attribute::Id(crate::keygen::object_id(id))])?;
        if !by_id.is_empty() {
            return Err(StoreError::KeyExists { id: id.clone(), detail: "an object with the same CKA_ID".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01]), 1);
        assert_eq!(significant_bits(&[]), 0);
    }

    #[test]
    fn unwraps_softhsm_ec_point() {
        let mut der = vec![0x04, 65, 0x04];
        der.extend([7u8; 64]);
        assert_eq!(unwrap_der_octet_string(&der).map(<[u8]>::len), Some(65));
        assert_eq!(unwrap_der_octet_string(&[0x04, 5, 1]), None);
    }
}
