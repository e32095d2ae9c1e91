//! Binding the agent's socket safely: the folder is created 0700 (0750 with a socket
//! group) and must be a real folder — not a symbolic link, which whoever controls the link
//! could point elsewhere after the check — owned by the agent's user (or root) and not
//! writable by others; a live agent already on the path is a refusal, a stale socket file
//! is removed, and anything else at the path is left alone. The socket is 0600 (0660 with
//! a socket group). [`BoundSocket`] removes it on drop.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

/// A bound listener whose socket file is removed when this is dropped.
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` as described in the module doc.
///
/// # Errors
/// When another agent answers there, the folder is unsafe, or binding fails.
pub fn bind_socket(path: &Path, group: Option<u32>) -> Result<BoundSocket> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_dir(dir, group)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another agent is already serving on `{}`; stop it first", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale socket `{}`", path.display()))?;
            tracing::info!(socket = %path.display(), "removed stale socket");
        }
        Ok(_) => bail!("`{}` exists and is not a socket; not touching it", path.display()),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding socket `{}`", path.display()))?;
    let bound = BoundSocket { listener, path: path.to_owned() };
    let mode = if let Some(gid) = group {
        // A socket is made with the agent's group: no chown then, which the unit's
        // system-call filter (`~@privileged`, which holds `@chown`) refuses.
        if std::fs::symlink_metadata(path).ok().map(|m| m.gid()) != Some(gid) {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).with_context(|| {
                format!(
                    "setting group {gid} on `{}` (under the systemd unit, `access.socket_gid` must be the agent's own group)",
                    path.display()
                )
            })?;
        }
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode of `{}`", path.display()))?;
    Ok(bound)
}

fn prepare_dir(dir: &Path, group: Option<u32>) -> Result<()> {
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    // `symlink_metadata`: a symbolic link is judged as itself, never by its target.
    if std::fs::symlink_metadata(dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the parent of socket folder `{}`", dir.display()))?;
        }
        // Created with its final mode: never briefly open to others.
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating socket folder `{}`", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))
                .with_context(|| format!("setting group {gid} on `{}`", dir.display()))?;
        }
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading socket folder `{}`", dir.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(dir).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        bail!(
            "socket folder `{}` is a symbolic link (to `{target}`); set `socket` to a path in the real folder",
            dir.display()
        );
    }
    if !meta.is_dir() {
        bail!("socket folder `{}` is not a folder", dir.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "socket folder `{}` belongs to uid {}; use a folder owned by the agent's user",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "socket folder `{}` is writable by group or others (mode {:04o}); use a private folder",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}
