//! Certificate parsing of files that come from elsewhere: a project's `rootCA.pem`
//! (`ServerTrust::new`, used by `keyward nvflare`), and a certificate to install for a key
//! (`keyward cert install`, `agent/src/certs.rs`): the same calls, in the same order, on
//! every `CERTIFICATE` block — x509-parser for the fields keyward reads, rustls-webpki for
//! end-entity and trust-anchor parsing. (The agent crate itself links the PKCS#11 and TPM
//! libraries, so its `CertStore::install` is mirrored here rather than called.)

#![no_main]

use keyward_core::nvflare::ServerTrust;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

#[path = "common.rs"]
mod common;

fn read_fields(der: &[u8]) {
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return };
    let validity = cert.validity();
    let _ = (validity.is_valid(), validity.not_before.to_string(), validity.not_after.to_string());
    if let Ok(Some(ku)) = cert.key_usage() {
        let _ = ku.value.digital_signature();
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let _ = (eku.value.client_auth, eku.value.server_auth, eku.value.any);
    }
    let _ = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let _ = cert.public_key().raw.len();
    let _ = cert.subject().to_string();
    let _ = cert.issuer().to_string();
}

fuzz_target!(|data: &[u8]| {
    let input = common::pem_input(data, "CERTIFICATE");
    let _ = ServerTrust::new(&input, "server");
    let Ok(blocks) = pem::parse_many(&input) else { return };
    for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
        read_fields(block.contents());
        let der = CertificateDer::from(block.contents());
        let _ = webpki::EndEntityCert::try_from(&der);
        let _ = webpki::anchor_from_trusted_cert(&der);
    }
});
