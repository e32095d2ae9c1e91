//! Test certificates shaped like `nvflare provision`'s, made with rcgen (a project root CA and
//! leaf certificates: SAN and CN only unless a test adds more), and PSS signatures made with
//! the `rsa` crate: what the client-side and server-side checks are tested against.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rsa::pkcs8::EncodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};

/// NVFlare's PSS salt for a 2048-bit key (the maximum).
const NVFLARE_SALT: usize = 222;

/// A project root CA.
pub(super) struct Pki {
    pub(super) ca_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn rsa_key() -> (rsa::RsaPrivateKey, KeyPair) {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let pair = KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    (key, pair)
}

/// A root CA named `name`.
pub(super) fn project_ca(name: &str) -> Pki {
    project_ca_with(name, |_| {})
}

/// A root CA named `name`, its parameters changed by `tweak` first.
pub(super) fn project_ca_with(name: &str, tweak: impl FnOnce(&mut CertificateParams)) -> Pki {
    let (_, pair) = rsa_key();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    tweak(&mut params);
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&pair).unwrap();
    Pki { ca_pem: cert.pem(), issuer: rcgen::Issuer::new(params, pair) }
}

/// A leaf certificate for `cn` (CN and SAN) issued by `pki`, changed by `tweak`; its key and PEM.
pub(super) fn leaf_cert(
    pki: &Pki,
    cn: &str,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (rsa::RsaPrivateKey, String) {
    let (key, pair) = rsa_key();
    let mut params = CertificateParams::new(vec![cn.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    tweak(&mut params);
    (key, params.signed_by(&pair, &pki.issuer).unwrap().pem())
}

/// RSA-PSS-SHA-256 over `msg` at NVFlare's salt.
pub(super) fn pss_sign(key: &rsa::RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    pss_sign_with_salt(key, msg, NVFLARE_SALT)
}

/// RSA-PSS-SHA-256 over `msg` with a salt of `salt` bytes.
pub(super) fn pss_sign_with_salt(key: &rsa::RsaPrivateKey, msg: &[u8], salt: usize) -> Vec<u8> {
    let signer = rsa::pss::SigningKey::<sha2::Sha256>::new_with_salt_len(key.clone(), salt);
    signer.sign_with_rng(&mut rand::thread_rng(), msg).to_vec()
}
