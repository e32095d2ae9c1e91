//! Independent checks of what keyward produced, shared by the SoftHSM and TPM scenarios:
//! NVFlare's own verification (the real `nvflare` package), and OAEP-SHA-256 ciphertexts made
//! by openssl for keyward to decrypt.

use std::path::Path;

use crate::tools::{assert_success, openssl, run_python};

/// NVFlare's own `nvflare.lighter.utils.verify_content` (the real package; `PSS.MAX_LENGTH`
/// and SHA-256), Python `cryptography` with the exact salt `argv[4]`, and a tampered
/// message that must fail both.
const VERIFY_NVFLARE: &str = r#"
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from nvflare.lighter.utils import verify_content
key = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
sig = open(sys.argv[2], "rb").read(); msg = open(sys.argv[3], "rb").read()
verify_content(msg, sig, key)
key.verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=int(sys.argv[4])), hashes.SHA256())
try:
    verify_content(msg + b"x", sig, key)
    sys.exit("tampered message verified")
except Exception:
    pass
print("ok")
"#;

/// Asserts that NVFlare's own `verify_content` accepts `sig` over `msg`, that its salt is
/// the maximum for the key (`(bits - 256 - 16) / 8`: 222 for RSA-2048, 350 for RSA-3072),
/// and that a tampered message is rejected.
pub fn assert_python_verifies_nvflare(public_pem: &Path, sig: &Path, msg: &Path) {
    let arg = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let salt = std::fs::metadata(sig).expect("signature file").len() - 32 - 2;
    let out = run_python(VERIFY_NVFLARE, &[&arg(public_pem), &arg(sig), &arg(msg), &salt.to_string()]);
    assert_success(&out, "python cryptography verify");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Encrypts `plain` to `ct` with openssl RSA-OAEP (`oaep_md` and MGF1 over the same hash).
pub fn openssl_oaep_encrypt(public_pem: &Path, oaep_md: &str, plain: &Path, ct: &Path) {
    let md = format!("rsa_oaep_md:{oaep_md}");
    let mgf = format!("rsa_mgf1_md:{oaep_md}");
    let out = openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        public_pem.to_str().expect("utf-8 path"),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        &md,
        "-pkeyopt",
        &mgf,
        "-in",
        plain.to_str().expect("utf-8 path"),
        "-out",
        ct.to_str().expect("utf-8 path"),
    ]);
    assert_success(&out, &format!("openssl OAEP-{oaep_md} encrypt"));
}

/// openssl's own verdict on a signature: `openssl dgst <digest> [extra] -verify public -signature sig msg`.
pub fn openssl_verifies(public_pem: &Path, msg: &Path, sig: &Path, digest: &str, extra: &[&str]) -> bool {
    let (public, sig, msg) = (s(public_pem), s(sig), s(msg));
    let mut args = vec!["dgst", digest];
    args.extend_from_slice(extra);
    args.extend(["-verify", public, "-signature", sig, msg]);
    openssl(&args).status.success()
}

/// The `-sigopt` arguments for RSA-PSS with an exact salt (`rsa_pss_saltlen:222`) and MGF1
/// hash (`rsa_mgf1_md:sha256`).
pub fn pss_sigopts(salt: &'static str, mgf: &'static str) -> [&'static str; 6] {
    ["-sigopt", "rsa_padding_mode:pss", "-sigopt", salt, "-sigopt", mgf]
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
