//! TPM key attestation end to end, with swtpm manufactured with an EK certificate from a
//! local test CA (`TpmMaker`, swtpm_setup + swtpm_localca) and the real `keyward` CLI on
//! both sides: `attest begin` / `answer` at the site, `attest challenge` / `verify` at the
//! admin's (docs/attestation.md). A key born in the TPM is accepted (which also shows the
//! software TPM2_MakeCredential is what swtpm's TPM2_ActivateCredential expects); each
//! refusal is checked by its exact reason and exit code 4.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_tests::tools::{assert_success, keyward_bin};
use keyward_tests::{openssl, AgentSite, Swtpm, TpmMaker, TpmSite};

/// The project admin: a verifier config and its state, in a temp dir.
struct Admin {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Admin {
    fn new(accepted: &[&TpmMaker], ek_allow_list: Option<&[String]>, accept_unattested_keys: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("kwadm").tempdir_in("/tmp").unwrap();
        let bundles: Vec<String> = accepted.iter().map(|m| format!("{:?}", m.bundle().display().to_string())).collect();
        let mut text = format!(
            "accepted_tpm_cas = [{}]\nstate_dir = {:?}\naccept_unattested_keys = {accept_unattested_keys}\n",
            bundles.join(", "),
            dir.path().join("state").display().to_string()
        );
        if let Some(list) = ek_allow_list {
            let quoted: Vec<String> = list.iter().map(|f| format!("{f:?}")).collect();
            text.push_str(&format!("ek_allow_list = [{}]\n", quoted.join(", ")));
        }
        let config = dir.path().join("verifier.toml");
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    fn keyward(&self, args: &[&str]) -> Output {
        Command::new(keyward_bin())
            .args(args)
            .args(["--verifier-config", self.config.to_str().unwrap()])
            .env_remove("KEYWARD_CONFIG")
            .output()
            .unwrap()
    }

    /// `attest challenge` for the site's request; the challenge file.
    fn challenge(&self, request: &Path) -> Result<PathBuf, Output> {
        let out = self.dir.path().join(format!("challenge-{}.json", rand::random::<u32>()));
        let result = self.keyward(&[
            "attest",
            "challenge",
            "--request",
            request.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        if result.status.success() {
            Ok(out)
        } else {
            Err(result)
        }
    }

    /// `attest verify` of a CSR with (or without) evidence.
    fn verify(&self, csr: &Path, evidence: Option<&Path>) -> Output {
        let mut args = vec!["attest", "verify", "--csr", csr.to_str().unwrap()];
        if let Some(evidence) = evidence {
            args.extend(["--evidence", evidence.to_str().unwrap()]);
        }
        self.keyward(&args)
    }
}

/// `attest begin` for `key`; the request file.
fn begin(site: &TpmSite, key: &str) -> PathBuf {
    let out = site.path(&format!("{key}.attest-request.json"));
    site.keyward_ok(&["attest", "begin", key, "--out", out.to_str().unwrap()]);
    out
}

/// `attest answer`; the evidence file.
fn answer(site: &TpmSite, challenge: &Path) -> PathBuf {
    let out = site.path(&format!("evidence-{}.json", rand::random::<u32>()));
    site.keyward_ok(&["attest", "answer", "--challenge", challenge.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    out
}

fn csr(site: &TpmSite, key: &str) -> PathBuf {
    let out = site.path(&format!("{key}.csr"));
    site.keyward_ok(&["csr", key, "--subject", &format!("CN={key},O=hospital-a"), "--out", out.to_str().unwrap()]);
    out
}

/// The whole flow for `key`: evidence for it.
fn evidence_for(site: &TpmSite, admin: &Admin, key: &str) -> PathBuf {
    let challenge = admin.challenge(&begin(site, key)).unwrap_or_else(|out| panic!("challenge refused: {out:?}"));
    answer(site, &challenge)
}

fn ek_fingerprint(request: &Path) -> String {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(request).unwrap()).unwrap();
    doc["ek_fingerprint"].as_str().unwrap().to_owned()
}

/// Asserts a refusal (exit 4) whose message holds `reason`.
fn assert_refused(out: &Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("refused as expected: {stderr}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stderr.contains(reason), "expected `{reason}` in:\n{stderr}");
}

fn manufactured_site(maker: &TpmMaker) -> TpmSite {
    TpmSite::on(Swtpm::start_manufactured(maker))
}

#[test]
fn a_key_born_in_the_tpm_is_accepted_and_its_evidence_cannot_be_replayed() {
    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    site.generate("site-1", "rsa-2048");
    let admin = Admin::new(&[&maker], None, false);
    let evidence = evidence_for(&site, &admin, "site-1");
    let request_csr = csr(&site, "site-1");

    let out = admin.verify(&request_csr, Some(&evidence));
    assert_success(&out, "keyward attest verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("accepted: key `site-1` was born in the TPM"), "{stdout}");

    // The same evidence again: its challenge was used up by the first verify.
    assert_refused(&admin.verify(&request_csr, Some(&evidence)), "replayed evidence: no open challenge for its nonce");

    // A P-256 key too (ECDSA CSR), with an EK allow-list naming this TPM.
    site.generate("tls", "p-256");
    let fingerprint = ek_fingerprint(&begin(&site, "tls"));
    let admin = Admin::new(&[&maker], Some(&[fingerprint]), false);
    let out = admin.verify(&csr(&site, "tls"), Some(&evidence_for(&site, &admin, "tls")));
    assert_success(&out, "keyward attest verify (p-256)");
}

#[test]
fn an_imported_key_is_refused_as_not_born_in_the_tpm() {
    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    let source = site.path("client.key");
    let out = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        source.to_str().unwrap(),
    ]);
    assert_success(&out, "openssl genpkey");
    site.keyward_ok(&["key", "import", "site-1", "--from", source.to_str().unwrap()]);
    let admin = Admin::new(&[&maker], None, false);
    let evidence = evidence_for(&site, &admin, "site-1");
    assert_refused(
        &admin.verify(&csr(&site, "site-1"), Some(&evidence)),
        "key was not born in the TPM (an imported key?): not fixedTPM, fixedParent, sensitiveDataOrigin",
    );
}

#[test]
fn a_key_from_a_tpm_not_in_the_ek_allow_list_is_refused() {
    let maker = TpmMaker::new();
    let (known, other) = (manufactured_site(&maker), manufactured_site(&maker));
    known.generate("site-1", "p-256");
    other.generate("site-1", "p-256");
    let allowed = ek_fingerprint(&begin(&known, "site-1"));
    let admin = Admin::new(&[&maker], Some(std::slice::from_ref(&allowed)), false);

    let request = begin(&other, "site-1");
    let theirs = ek_fingerprint(&request);
    assert_ne!(theirs, allowed);
    let out = admin.challenge(&request).unwrap_err();
    assert_refused(&out, &format!("key from another TPM: EK `{theirs}` is not in the EK allow-list"));

    // Nor can the other TPM answer a challenge made for the known one: the credential is
    // bound to the known TPM's EK.
    let challenge = admin.challenge(&begin(&known, "site-1")).unwrap();
    let out = other.keyward(&["attest", "answer", "--challenge", challenge.to_str().unwrap(), "--out", "-"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TPM2_ActivateCredential failed"), "{out:?}");
}

#[test]
fn evidence_certifying_another_key_than_the_requests_is_refused() {
    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    site.generate("site-1", "p-256");
    site.generate("other", "p-256");
    let admin = Admin::new(&[&maker], None, false);
    let evidence = evidence_for(&site, &admin, "other");
    assert_refused(
        &admin.verify(&csr(&site, "site-1"), Some(&evidence)),
        "the certified TPM key is not the certificate request's key",
    );
}

#[test]
fn an_ek_certificate_from_another_tpm_maker_is_refused() {
    let (maker, stranger) = (TpmMaker::new(), TpmMaker::new());
    let site = manufactured_site(&stranger);
    let _ = manufactured_site(&maker); // the accepted maker's CA exists once it made a TPM
    site.generate("site-1", "p-256");
    let admin = Admin::new(&[&maker], None, false);
    let out = admin.challenge(&begin(&site, "site-1")).unwrap_err();
    assert_refused(&out, "is not issued by an accepted TPM CA");
    assert_refused(&out, "did not sign it (signature does not verify)");
}

#[test]
fn a_request_without_evidence_passes_only_when_unattested_keys_are_accepted() {
    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    site.generate("site-1", "p-256");
    let request_csr = csr(&site, "site-1");
    let strict = Admin::new(&[&maker], None, false);
    assert_refused(
        &strict.verify(&request_csr, None),
        "no TPM evidence for this certificate request, and `accept_unattested_keys` is false",
    );
    let lenient = Admin::new(&[&maker], None, true);
    let out = lenient.verify(&request_csr, None);
    assert_success(&out, "keyward attest verify (unattested accepted)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted WITHOUT attestation"), "{out:?}");
}

#[test]
fn an_nvflare_request_zip_with_a_tpm_key_is_verified_before_approval() {
    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    let definition = site.path("site-1.yaml");
    std::fs::write(
        &definition,
        "name: kwproject\nparticipants:\n  - name: site-1\n    type: client\n    org: nvidia\n",
    )
    .unwrap();
    let folder = site.path("req");
    site.keyward_ok(&["nvflare", "request", "-p", definition.to_str().unwrap(), "--out", folder.to_str().unwrap()]);
    let zip = folder.join("site-1.request.zip");
    let admin = Admin::new(&[&maker], None, false);
    let evidence = evidence_for(&site, &admin, "site-1");
    let out = admin.keyward(&[
        "attest",
        "verify",
        "--request-zip",
        zip.to_str().unwrap(),
        "--evidence",
        evidence.to_str().unwrap(),
    ]);
    assert_success(&out, "keyward attest verify --request-zip");

    // Evidence for another key of the same TPM does not pass for this request.
    site.generate("other", "rsa-2048");
    let evidence = evidence_for(&site, &admin, "other");
    let out = admin.keyward(&[
        "attest",
        "verify",
        "--request-zip",
        zip.to_str().unwrap(),
        "--evidence",
        evidence.to_str().unwrap(),
    ]);
    assert_refused(&out, "the certified TPM key is not the certificate request's key");
}

/// The attack the qualified-name check is there for, on the real swtpm: the site's owner
/// loads the public area of a software key with TPM2_LoadExternal, claiming fixedTPM |
/// fixedParent | sensitiveDataOrigin (swtpm accepts that for a public-only object),
/// activates the genuine challenge with the genuine AK and asks the AK to certify that
/// object. The TPM already refuses (TPM_RC_AUTH_UNAVAILABLE: a public-only object has no
/// auth value, and its policy cannot be used either, so Certify's ADMIN role cannot be met);
/// the verifier's qualified-name check (unit test
/// `a_public_key_loaded_from_outside_is_refused_by_its_qualified_name`) is the second line.
#[test]
fn the_tpm_does_not_certify_a_public_key_loaded_from_outside() {
    use base64::Engine as _;
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::constants::SessionType;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{
        Data, Digest, EccParameter, EccPoint, EccScheme, HashScheme, PublicBuilder, PublicEccParametersBuilder,
        SignatureScheme, SymmetricDefinition,
    };

    let maker = TpmMaker::new();
    let site = manufactured_site(&maker);
    site.generate("site-1", "p-256");
    let admin = Admin::new(&[&maker], None, false);
    let challenge = admin.challenge(&begin(&site, "site-1")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&challenge).unwrap()).unwrap();
    let b64 = |field: &str| base64::engine::general_purpose::STANDARD.decode(doc[field].as_str().unwrap()).unwrap();

    let mut ctx = tss_esapi::Context::new(site.swtpm.tcti().parse().unwrap()).unwrap();
    let policy_session = |ctx: &mut tss_esapi::Context| {
        ctx.start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .unwrap()
        .unwrap()
    };
    let ak_template = keyward_tpm::attest::attestation_key_template().unwrap();
    let ak = ctx
        .execute_with_nullauth_session(|c| {
            c.create_primary(Hierarchy::Endorsement, ak_template, None, None, None, None)
        })
        .unwrap()
        .key_handle;
    let credential = keyward_tpm::attest::Credential {
        credential_blob: b64("credential_blob"),
        encrypted_secret: b64("encrypted_secret"),
    };
    let nonce = keyward_tpm::attest::activate_credential(&mut ctx, ak, &credential).unwrap();

    let software = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&software.public_key(), false);
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_admin_with_policy(true)
        .with_sign_encrypt(true)
        .build()
        .unwrap();
    let external = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        // The empty policy (all zeros), which a fresh policy session satisfies.
        .with_auth_policy(Digest::try_from(vec![0u8; 32]).unwrap())
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()
            .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
            EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
        ))
        .build()
        .unwrap();
    let loaded = ctx.execute_without_session(|c| c.load_external_public(external, Hierarchy::Owner)).unwrap();
    let qualifying = Data::try_from(nonce).unwrap();
    // With a password (TPM_RC_AUTH_TYPE: adminWithPolicy wants a policy) and with the
    // empty policy (TPM_RC_AUTH_UNAVAILABLE: no policy for a public-only object).
    for (admin_session, code) in [(AuthSession::Password, 0x124), (policy_session(&mut ctx), 0x12f)] {
        let refused = ctx
            .execute_with_sessions((Some(admin_session), Some(AuthSession::Password), None), |c| {
                c.certify(loaded.into(), ak, qualifying.clone(), SignatureScheme::Null)
            })
            .unwrap_err();
        assert!(format!("{refused:?}").contains(&format!(".0: {code}")), "{code:#x}: {refused:?}");
    }
}
