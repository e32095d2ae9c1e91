//! The verifier's checks on hand-made TPM structures (TPMS_ATTEST and TPMT_SIGNATURE
//! marshalled as TPM 2.0 Part 2 lays them out), signed by a software P-256 "AK": the checks
//! an honest swtpm never trips in the end-to-end tests (tests/tests/tpm_attestation.rs).

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::SigningKey;
use tss_esapi::structures::{EccParameter, EccPoint};
use tss_esapi::traits::Marshall;

use super::*;

fn public_of(key: &SigningKey) -> Vec<u8> {
    let point = key.verifying_key().to_encoded_point(false);
    let unique = EccPoint::new(
        EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
        EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
    );
    crate::attest::evidence::ak_public_with(unique).unwrap().marshall().unwrap()
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

/// TPMS_ATTEST of type `st` certifying `name` (qualified name `qualified`) over `nonce`.
fn attest_with(st: u16, nonce: &[u8], name: &[u8], qualified: &[u8]) -> Vec<u8> {
    let mut out = 0xff54_4347u32.to_be_bytes().to_vec(); // TPM_GENERATED_VALUE
    out.extend_from_slice(&st.to_be_bytes());
    tpm2b(&mut out, &name_of(b"signer"));
    tpm2b(&mut out, nonce);
    out.extend_from_slice(&[0; 8]); // clock
    out.extend_from_slice(&[0; 8]); // resetCount, restartCount
    out.push(1); // safe
    out.extend_from_slice(&[0; 8]); // firmwareVersion
    tpm2b(&mut out, name); // TPMS_CERTIFY_INFO.name
    tpm2b(&mut out, qualified); // .qualifiedName
    out
}

/// TPMS_ATTEST of a key under the storage primary `parent`, or the bare `name` when no key
/// public area is given (for the structures that never get that far).
fn attest(st: u16, nonce: &[u8], name: &[u8]) -> Vec<u8> {
    attest_with(st, nonce, name, &qualified_under(&storage_primary(), name))
}

/// A storage primary's public area, as `connection.rs` derives it.
fn storage_primary() -> Vec<u8> {
    tss_esapi::utils::create_restricted_decryption_rsa_public(
        tss_esapi::structures::SymmetricDefinitionObject::AES_128_CFB,
        tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048,
        tss_esapi::structures::RsaExponent::default(),
    )
    .unwrap()
    .marshall()
    .unwrap()
}

/// H(handle ‖ name) or H(QN(parent) ‖ name), with the SHA-256 algorithm id in front.
fn qualified(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut qn = vec![0x00, 0x0b];
    qn.extend_from_slice(&Sha256::digest([prefix, name].concat()));
    qn
}

fn qualified_under(parent_public: &[u8], name: &[u8]) -> Vec<u8> {
    qualified(&qualified(&OWNER_HIERARCHY.to_be_bytes(), &name_of(parent_public)), name)
}

/// TPMT_SIGNATURE: ECDSA-SHA-256 by `key` over `message`.
fn signature(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let sig: p256::ecdsa::Signature = key.sign(message);
    let (r, s) = sig.split_bytes();
    let mut out = vec![0x00, 0x18, 0x00, 0x0b]; // TPM_ALG_ECDSA, TPM_ALG_SHA256
    tpm2b(&mut out, &r);
    tpm2b(&mut out, &s);
    out
}

const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

struct Case {
    ak: SigningKey,
    pending: PendingChallenge,
    key_public: Vec<u8>,
    spki: Vec<u8>,
}

fn case() -> Case {
    let ak = SigningKey::random(&mut rand::rngs::OsRng);
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let key_public = public_of(&key);
    let spki = p256::pkcs8::EncodePublicKey::to_public_key_der(key.verifying_key()).unwrap().into_vec();
    let pending = PendingChallenge { nonce: vec![9; 32], ek_fingerprint: "ek".into(), ak_public: public_of(&ak) };
    Case { ak, pending, key_public, spki }
}

fn evidence(case: &Case, signer: &SigningKey, st: u16, nonce: &[u8], name: &[u8]) -> KeyEvidence {
    let attest = attest(st, nonce, name);
    KeyEvidence {
        nonce: nonce.to_vec(),
        signature: signature(signer, &attest),
        attest,
        key_public: case.key_public.clone(),
        parent_public: storage_primary(),
    }
}

#[test]
fn a_well_formed_certify_of_the_request_key_passes() {
    let c = case();
    let e = evidence(&c, &c.ak, TPM_ST_ATTEST_CERTIFY, &c.pending.nonce, &name_of(&c.key_public));
    let attested = verify_evidence(&c.pending, &e, &c.spki).unwrap();
    assert_eq!(attested.spki_der, c.spki);
}

#[test]
fn a_signature_by_another_key_than_the_challenged_ak_is_refused() {
    let c = case();
    let stranger = SigningKey::random(&mut rand::rngs::OsRng);
    let e = evidence(&c, &stranger, TPM_ST_ATTEST_CERTIFY, &c.pending.nonce, &name_of(&c.key_public));
    assert!(matches!(verify_evidence(&c.pending, &e, &c.spki), Err(AttestError::BadSignature)));
}

#[test]
fn a_certify_over_another_nonce_is_refused() {
    let c = case();
    let e = evidence(&c, &c.ak, TPM_ST_ATTEST_CERTIFY, &[8; 32], &name_of(&c.key_public));
    assert!(matches!(verify_evidence(&c.pending, &e, &c.spki), Err(AttestError::WrongNonce)));
}

#[test]
fn a_quote_is_not_a_certify() {
    let c = case();
    let mut attest = attest_with(TPM_ST_ATTEST_QUOTE, &c.pending.nonce, &[], &[]);
    attest.truncate(attest.len() - 4); // drop the certify info's two empty names
    attest.extend_from_slice(&[0, 0, 0, 0]); // TPML_PCR_SELECTION count 0 ...
    attest.extend_from_slice(&[0, 0]); // ... and an empty pcrDigest
    let e = KeyEvidence {
        nonce: c.pending.nonce.clone(),
        signature: signature(&c.ak, &attest),
        attest,
        key_public: c.key_public.clone(),
        parent_public: storage_primary(),
    };
    assert!(matches!(verify_evidence(&c.pending, &e, &c.spki), Err(AttestError::NotCertify)));
}

#[test]
fn a_key_public_area_other_than_the_certified_one_is_refused() {
    let c = case();
    let e = evidence(&c, &c.ak, TPM_ST_ATTEST_CERTIFY, &c.pending.nonce, &name_of(b"another public area"));
    assert!(matches!(verify_evidence(&c.pending, &e, &c.spki), Err(AttestError::KeyNameMismatch)));
}

#[test]
fn an_unrestricted_attestation_key_is_refused() {
    let unrestricted = crate::keygen::template(keyward_core::KeyAlgorithm::EcP256).unwrap().marshall().unwrap();
    let err = check_attestation_key(&unrestricted).unwrap_err();
    assert!(matches!(&err, AttestError::BadAttestationKey { reason } if reason.contains("restricted")), "{err}");
}

#[test]
fn a_public_key_loaded_from_outside_is_refused_by_its_qualified_name() {
    // TPM2_LoadExternal of a public area claiming fixedTPM | fixedParent |
    // sensitiveDataOrigin, in the owner hierarchy: QN = H(TPM_RH_OWNER ‖ name).
    let c = case();
    let name = name_of(&c.key_public);
    let external = qualified(&OWNER_HIERARCHY.to_be_bytes(), &name);
    let attest = attest_with(TPM_ST_ATTEST_CERTIFY, &c.pending.nonce, &name, &external);
    let e = KeyEvidence {
        nonce: c.pending.nonce.clone(),
        signature: signature(&c.ak, &attest),
        attest,
        key_public: c.key_public.clone(),
        parent_public: storage_primary(),
    };
    let err = verify_evidence(&c.pending, &e, &c.spki).unwrap_err();
    assert!(matches!(err, AttestError::NotInKeyHierarchy { .. }), "{err}");

    // Nor does a made-up parent that is not a storage key help.
    let mut e = evidence(&c, &c.ak, TPM_ST_ATTEST_CERTIFY, &c.pending.nonce, &name);
    e.parent_public = c.key_public.clone();
    let err = verify_evidence(&c.pending, &e, &c.spki).unwrap_err();
    assert!(matches!(err, AttestError::NotInKeyHierarchy { .. }), "{err}");
}
