//! The verifier's open challenges: one file per challenge in `state_dir`, named by the
//! SHA-256 of its nonce, holding the nonce, the EK fingerprint, the AK's TPMT_PUBLIC and
//! when it was made. [`take`] removes the file before the evidence is checked, so each
//! challenge is answered at most once, whatever the outcome: replayed evidence finds
//! nothing (`AttestError::UnknownChallenge`), a late answer is refused
//! (`AttestError::ChallengeExpired`). Files are created new, 0600, atomically.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use keyward_tpm::attest::{AttestError, PendingChallenge};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::documents::{decode, encode};

#[derive(Serialize, Deserialize)]
struct Record {
    nonce: String,
    ek_fingerprint: String,
    ak_public: String,
    issued_at_unix: u64,
}

fn file_of(state_dir: &Path, nonce: &[u8]) -> PathBuf {
    let name: String = Sha256::digest(nonce).iter().map(|b| format!("{b:02x}")).collect();
    state_dir.join(format!("{name}.challenge"))
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Keeps `pending` as an open challenge.
///
/// # Errors
/// The folder cannot be made or the file written.
pub fn keep(state_dir: &Path, pending: &PendingChallenge) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("creating verifier state folder `{}`", state_dir.display()))?;
    let record = Record {
        nonce: encode(&pending.nonce),
        ek_fingerprint: pending.ek_fingerprint.clone(),
        ak_public: encode(&pending.ak_public),
        issued_at_unix: now_unix(),
    };
    let path = file_of(state_dir, &pending.nonce);
    let bytes = serde_json::to_vec(&record).context("encoding challenge record")?;
    crate::files::write_atomic(&path, &bytes, 0o600, false)
        .with_context(|| format!("writing challenge record `{}`", path.display()))
}

/// Takes (removes) the open challenge for `nonce`; refuses one never made, already used, or
/// older than `ttl`.
///
/// # Errors
/// [`AttestError::UnknownChallenge`], [`AttestError::ChallengeExpired`], or I/O errors.
pub fn take(state_dir: &Path, nonce: &[u8], ttl: Duration) -> Result<PendingChallenge> {
    let path = file_of(state_dir, nonce);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(AttestError::UnknownChallenge.into()),
        Err(e) => return Err(e).with_context(|| format!("reading challenge record `{}`", path.display())),
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        // Another verify took it between our read and remove: it is used.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(AttestError::UnknownChallenge.into()),
        Err(e) => return Err(e).with_context(|| format!("removing challenge record `{}`", path.display())),
    }
    let record: Record =
        serde_json::from_slice(&bytes).with_context(|| format!("reading challenge record `{}`", path.display()))?;
    let pending = PendingChallenge {
        nonce: decode("nonce", &record.nonce)?,
        ek_fingerprint: record.ek_fingerprint,
        ak_public: decode("ak_public", &record.ak_public)?,
    };
    let age = now_unix().saturating_sub(record.issued_at_unix);
    if age > ttl.as_secs() {
        return Err(AttestError::ChallengeExpired { seconds: age - ttl.as_secs() }.into());
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_is_taken_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingChallenge { nonce: vec![1; 32], ek_fingerprint: "ab".into(), ak_public: vec![2; 10] };
        keep(dir.path(), &pending).unwrap();
        assert_eq!(take(dir.path(), &pending.nonce, Duration::from_secs(60)).unwrap(), pending);
        let again = take(dir.path(), &pending.nonce, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(again.downcast_ref(), Some(AttestError::UnknownChallenge)), "{again:#}");

        keep(dir.path(), &pending).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let late = take(dir.path(), &pending.nonce, Duration::ZERO).unwrap_err();
        assert!(matches!(late.downcast_ref(), Some(AttestError::ChallengeExpired { .. })), "{late:#}");
    }
}
