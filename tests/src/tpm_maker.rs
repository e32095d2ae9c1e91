//! [`TpmMaker`]: a TPM maker's CA for swtpm, in its own temp dir: `swtpm_setup
//! --create-ek-cert` with `swtpm_localca` (package swtpm-tools) writes an EK certificate
//! into a new TPM's NV index 0x01c00002, issued by this maker's intermediate CA under its
//! root (both made by `swtpm_localca` on first use). Two makers are two unrelated CAs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::assert_success;

/// A TPM maker's CA.
pub struct TpmMaker {
    dir: tempfile::TempDir,
}

impl TpmMaker {
    /// A new maker (its CA keys are made when it manufactures its first TPM).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("kwca").tempdir_in("/tmp").expect("temp dir");
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).expect("CA dir");
        let localca = dir.path().join("swtpm-localca.conf");
        std::fs::write(
            &localca,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .expect("localca config");
        let options = dir.path().join("swtpm-localca.options");
        std::fs::write(
            &options,
            "--platform-manufacturer keyward-test\n--platform-version 2.1\n--platform-model swtpm\n",
        )
        .expect("localca options");
        std::fs::write(
            dir.path().join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                localca.display(),
                options.display()
            ),
        )
        .expect("swtpm_setup config");
        Self { dir }
    }

    /// Writes a new TPM's state into `state`: EK and EK certificate from this maker.
    pub fn manufacture(&self, state: &Path) {
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--tpmstate"])
            .arg(state)
            .arg("--config")
            .arg(self.dir.path().join("swtpm_setup.conf"))
            .output()
            .expect("swtpm_setup is installed (package swtpm-tools)");
        assert_success(&out, "swtpm_setup --create-ek-cert");
    }

    /// The maker's CA certificates (intermediate and root, PEM), as an admin would put
    /// them in `accepted_tpm_cas`; only after the first TPM is manufactured.
    pub fn bundle(&self) -> PathBuf {
        let ca = self.dir.path().join("ca");
        let mut pem = std::fs::read_to_string(ca.join("issuercert.pem")).expect("intermediate CA cert");
        pem.push_str(&std::fs::read_to_string(ca.join("swtpm-localca-rootca-cert.pem")).expect("root CA cert"));
        let path = self.dir.path().join("tpm-cas.pem");
        std::fs::write(&path, pem).expect("write bundle");
        path
    }
}

impl Default for TpmMaker {
    fn default() -> Self {
        Self::new()
    }
}
