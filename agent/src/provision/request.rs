//! The request folder, as `nvflare cert request` 2.9.0 writes it, with the key in the token:
//!
//! | file | mode | content |
//! |---|---|---|
//! | `<name>.key` | 0600 | a keyward key reference (no secret; `nvflare package` copies it to `startup/client.key`) |
//! | `<name>.csr` | 0644 | the CSR (PEM), signed in the token |
//! | `request.json` | 0600 | [`RequestMeta`]: `json.dump(indent=2)`, no final newline |
//! | `site.yaml` | 0644 | the local participant definition |
//! | `<name>.request.zip` | 0600 | exactly `request.json`, the approval `site.yaml`, `<name>.csr` (deflated, in that order) |
//!
//! Files are created new (`O_EXCL`, so never through a link) in a folder made 0700 when
//! absent; an existing request file stops the request before anything is written.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::participant::Identity;
use super::ProvisionError;

/// `request.json`, field for field and in NVFlare's order.
#[derive(Clone, Debug, Serialize)]
pub struct RequestMeta {
    /// `nvflare.cert.request`.
    pub artifact_type: &'static str,
    /// `1`.
    pub schema_version: &'static str,
    /// 32 lower-case hex digits (a UUID4 without dashes).
    pub request_id: String,
    /// UTC, `%Y-%m-%dT%H:%M:%SZ`.
    pub created_at: String,
    /// The project.
    pub project: String,
    /// The participant.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// `site`, `server` or `user`.
    pub kind: &'static str,
    /// `client`, `server`, `org_admin`, `lead` or `member`.
    pub cert_type: &'static str,
    /// An admin's role, else null.
    pub cert_role: Option<&'static str>,
    /// SHA-256 (hex) of `<name>.csr` as written.
    pub csr_sha256: String,
    /// SHA-256 (hex) of the CSR's SubjectPublicKeyInfo (DER).
    pub public_key_sha256: String,
    /// SHA-256 (hex) of the approval `site.yaml` (the one in the zip).
    pub site_yaml_sha256: String,
}

impl RequestMeta {
    /// The metadata of a new request by `identity` for `csr_pem` over `spki_der`.
    pub fn new(identity: &Identity, csr_pem: &str, spki_der: &[u8], approval_yaml: &str) -> Self {
        Self {
            artifact_type: "nvflare.cert.request",
            schema_version: "1",
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            project: identity.project.clone(),
            name: identity.name.clone(),
            org: identity.org.clone(),
            kind: identity.kind,
            cert_type: identity.cert_type,
            cert_role: identity.cert_role,
            csr_sha256: sha256_hex(csr_pem.as_bytes()),
            public_key_sha256: sha256_hex(spki_der),
            site_yaml_sha256: sha256_hex(approval_yaml.as_bytes()),
        }
    }

    /// `json.dump(meta, f, indent=2)`: two-space indent, `": "`, no final newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Everything a request folder holds.
pub struct RequestFiles<'a> {
    /// The participant's name (file names).
    pub name: &'a str,
    /// The key reference for `<name>.key`.
    pub key_reference: &'a str,
    /// `<name>.csr`.
    pub csr_pem: &'a str,
    /// `request.json`.
    pub meta: &'a RequestMeta,
    /// The local `site.yaml`.
    pub local_yaml: &'a str,
    /// The approval `site.yaml` (only in the zip).
    pub approval_yaml: &'a str,
}

impl RequestFiles<'_> {
    /// The zip's path in `dir`.
    pub fn zip_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.request.zip", self.name))
    }

    /// Checks that no file of a request by `name` is in `dir`, before a key is made for it.
    ///
    /// # Errors
    /// [`ProvisionError::Exists`] naming the first one found.
    pub fn check_absent(dir: &Path, name: &str) -> Result<(), ProvisionError> {
        let names = [format!("{name}.key"), format!("{name}.csr"), "request.json".into(), "site.yaml".into()];
        for path in names.iter().map(|f| dir.join(f)).chain([dir.join(format!("{name}.request.zip"))]) {
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(ProvisionError::Exists(path));
            }
        }
        Ok(())
    }

    /// Writes the folder `dir` (made 0700 when absent).
    ///
    /// # Errors
    /// [`ProvisionError::Exists`] when one of its files is already there (then nothing is
    /// written); I/O and zip errors naming the file.
    pub fn write(&self, dir: &Path) -> Result<(), ProvisionError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProvisionError::Io { path, source }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        let name = self.name;
        let meta_json = self.meta.to_json();
        let files: [(String, &[u8], u32); 4] = [
            (format!("{name}.key"), self.key_reference.as_bytes(), 0o600),
            (format!("{name}.csr"), self.csr_pem.as_bytes(), 0o644),
            ("request.json".into(), meta_json.as_bytes(), 0o600),
            ("site.yaml".into(), self.local_yaml.as_bytes(), 0o644),
        ];
        let zip_path = self.zip_path(dir);
        Self::check_absent(dir, name)?;
        for (file, bytes, mode) in &files {
            let path = dir.join(file);
            create_new(&path, *mode).and_then(|mut f| f.write_all(bytes)).map_err(io(&path))?;
        }
        let members: [(&str, &[u8]); 3] = [
            ("request.json", files[2].1),
            ("site.yaml", self.approval_yaml.as_bytes()),
            (&files[1].0, self.csr_pem.as_bytes()),
        ];
        let zip_file = create_new(&zip_path, 0o600).map_err(io(&zip_path))?;
        write_zip(zip_file, &members, &self.meta.created_at)
            .map_err(|source| ProvisionError::Zip { path: zip_path.clone(), source })
    }
}

/// Creates `path` (never an existing file or link) with exactly `mode`, whatever the umask, as
/// `nvflare cert request` does.
fn create_new(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

/// Writes `members` deflated, stamped with `created_at` (`YYYY-MM-DDTHH:MM:SSZ`), each with
/// mode 0600 as Python's `ZipFile.writestr` gives them.
fn write_zip(file: std::fs::File, members: &[(&str, &[u8])], created_at: &str) -> zip::result::ZipResult<()> {
    let mut zip = zip::ZipWriter::new(file);
    let mut options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o600);
    if let Some(stamp) = zip_time(created_at) {
        options = options.last_modified_time(stamp);
    }
    for (name, bytes) in members {
        zip.start_file(*name, options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?.sync_all()?;
    Ok(())
}

fn zip_time(created_at: &str) -> Option<zip::DateTime> {
    let n = |range: std::ops::Range<usize>| created_at.get(range)?.parse::<u16>().ok();
    let part = |range| n(range).and_then(|v| u8::try_from(v).ok());
    zip::DateTime::from_date_and_time(n(0..4)?, part(5..7)?, part(8..10)?, part(11..13)?, part(14..16)?, part(17..19)?)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_has_nvflares_fields_order_and_layout() {
        let identity = Identity {
            project: "kwproject".into(),
            name: "site-1".into(),
            org: "nvidia".into(),
            kind: "site",
            cert_type: "client",
            cert_role: None,
        };
        let meta = RequestMeta::new(&identity, "csr", b"spki", "yaml");
        let json = meta.to_json();
        let keys: Vec<&str> = json.lines().filter_map(|l| l.trim().strip_prefix('"')?.split('"').next()).collect();
        assert_eq!(
            keys,
            [
                "artifact_type",
                "schema_version",
                "request_id",
                "created_at",
                "project",
                "name",
                "org",
                "kind",
                "cert_type",
                "cert_role",
                "csr_sha256",
                "public_key_sha256",
                "site_yaml_sha256"
            ]
        );
        assert!(json.starts_with("{\n  \"artifact_type\": \"nvflare.cert.request\",\n"), "{json}");
        assert!(json.contains("\n  \"cert_role\": null,\n") && json.ends_with("\"\n}"), "{json}");
        assert_eq!(meta.request_id.len(), 32);
        assert!(meta.created_at.ends_with('Z') && meta.created_at.len() == 20, "{}", meta.created_at);
        assert!(zip_time(&meta.created_at).is_some());
    }

    #[test]
    fn an_existing_file_stops_the_request_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            project: "p".into(),
            name: "s".into(),
            org: "o".into(),
            kind: "site",
            cert_type: "client",
            cert_role: None,
        };
        let meta = RequestMeta::new(&identity, "c", b"k", "y");
        let files = RequestFiles {
            name: "s",
            key_reference: "r",
            csr_pem: "c",
            meta: &meta,
            local_yaml: "l",
            approval_yaml: "y",
        };
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("s.request.zip")).unwrap();
        assert!(matches!(files.write(dir.path()), Err(ProvisionError::Exists(p)) if p.ends_with("s.request.zip")));
        assert!(!dir.path().join("s.key").exists());
        std::fs::remove_file(dir.path().join("s.request.zip")).unwrap();
        files.write(dir.path()).unwrap();
        let zip = zip::ZipArchive::new(std::fs::File::open(dir.path().join("s.request.zip")).unwrap()).unwrap();
        assert_eq!(zip.file_names().collect::<Vec<_>>().len(), 3);
    }
}
