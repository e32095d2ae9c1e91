//! [`TestCa`]: a throwaway project PKI made with the real openssl, shaped like
//! `nvflare provision`'s: a root CA (CA:TRUE, KeyUsage keyCertSign/cRLSign/digitalSignature)
//! and leaf certificates with only the extensions a test asks for. Plus
//! [`sign_pss_max_salt`], what NVFlare's `sign_content` does, done by openssl.

use std::path::{Path, PathBuf};

use crate::tools::{assert_success, openssl};

/// A root CA in a test's folder.
pub struct TestCa {
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Its certificate (PEM): a kit's `rootCA.pem`.
    pub cert: PathBuf,
    dir: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl TestCa {
    /// A new root CA with subject `CN=example_project`, valid two days; files `<name>.key`
    /// and `<name>.crt` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        assert_success(&openssl(&["genrsa", "-out", s(&key), "2048"]), "CA key");
        #[rustfmt::skip]
        let ca_args = [
            "req", "-x509", "-new", "-key", s(&key), "-subj", "/CN=example_project", "-days", "2", "-out", s(&cert),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ];
        assert_success(&openssl(&ca_args), "CA certificate");
        Self { key, cert, dir: dir.to_path_buf() }
    }

    /// Issues `csr` into `out` with the given openssl extension lines (one day validity).
    pub fn issue(&self, csr: &Path, out: &Path, extensions: &str) {
        self.issue_days(csr, out, extensions, 1);
    }

    /// Issues `csr` into `out`, valid from now for `days` days. A negative `days` (openssl
    /// 3.0 takes it) makes a certificate that expired that many days ago.
    pub fn issue_days(&self, csr: &Path, out: &Path, extensions: &str, days: i32) {
        let ext_file = self.dir.join(format!("{}.ext", rand::random::<u32>()));
        std::fs::write(&ext_file, extensions).expect("extension file");
        let days = days.to_string();
        #[rustfmt::skip]
        let args = [
            "x509", "-req", "-in", s(csr), "-CA", s(&self.cert), "-CAkey", s(&self.key), "-CAcreateserial", "-days", &days,
            "-out", s(out), "-extfile", s(&ext_file),
        ];
        assert_success(&openssl(&args), "issue certificate");
    }

    /// A new RSA-2048 key (PKCS#1 PEM, as NVFlare writes) and a certificate for `subject`
    /// (openssl form, `/CN=site-1/O=nvidia`): `<tag>.key`, `<tag>.crt`.
    pub fn leaf(&self, subject: &str, tag: &str, extensions: &str) -> (PathBuf, PathBuf) {
        self.leaf_days(subject, tag, extensions, 1)
    }

    /// [`TestCa::leaf`] valid for `days` days from now (negative: expired, see
    /// [`TestCa::issue_days`]).
    pub fn leaf_days(&self, subject: &str, tag: &str, extensions: &str, days: i32) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{tag}.key"));
        let csr = self.dir.join(format!("{tag}.csr"));
        let cert = self.dir.join(format!("{tag}.crt"));
        assert_success(&openssl(&["genrsa", "-traditional", "-out", s(&key), "2048"]), "leaf key");
        assert_success(&openssl(&["req", "-new", "-key", s(&key), "-subj", subject, "-out", s(&csr)]), "leaf csr");
        self.issue_days(&csr, &cert, extensions, days);
        (key, cert)
    }
}

/// Signs `msg` with `key` as NVFlare's `sign_content` does: RSA-PSS, SHA-256, MGF1-SHA-256,
/// maximum salt. Temp files go in `dir`.
pub fn sign_pss_max_salt(dir: &Path, key: &Path, msg: &[u8]) -> Vec<u8> {
    let tag = rand::random::<u32>();
    let (m, sig) = (dir.join(format!("m{tag}")), dir.join(format!("s{tag}")));
    std::fs::write(&m, msg).expect("message file");
    #[rustfmt::skip]
    let args = [
        "dgst", "-sha256", "-sign", s(key), "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max", "-sigopt",
        "rsa_mgf1_md:sha256", "-out", s(&sig), s(&m),
    ];
    assert_success(&openssl(&args), "PSS signature");
    std::fs::read(&sig).expect("signature file")
}

/// Whether `sig` over `msg` verifies, with OpenSSL, against `cert`'s public key as NVFlare's
/// `verify_content` checks it: RSA-PSS, SHA-256, MGF1-SHA-256, salt 222 (RSA-2048's maximum).
/// Temp files go in `dir`.
pub fn verify_pss_max_salt(dir: &Path, cert: &Path, msg: &[u8], sig: &[u8]) -> bool {
    let tag = rand::random::<u32>();
    let (m, sg, p) = (dir.join(format!("vm{tag}")), dir.join(format!("vs{tag}")), dir.join(format!("vp{tag}.pem")));
    std::fs::write(&m, msg).expect("message file");
    std::fs::write(&sg, sig).expect("signature file");
    assert_success(
        &openssl(&["x509", "-in", s(cert), "-pubkey", "-noout", "-out", s(&p)]),
        "public key of the certificate",
    );
    let options = crate::checks::pss_sigopts("rsa_pss_saltlen:222", "rsa_mgf1_md:sha256");
    crate::checks::openssl_verifies(&p, &m, &sg, "-sha256", &options)
}
