//! `nvflare migrate --python <venv>/bin/python`: checks the plug-in against the venv's NVFlare
//! before the key is imported (`python -I -m keyward.nvflare install --dry-run`) and installs it
//! after (`install`, which writes one `.pth` into the venv), both as the venv's owner. Root never runs the NVFlare user's interpreter: its code, its `.pth` files
//! and its site-packages are that user's, so running them as root would hand root to them.
//! Root switches to the owner's uid and primary gid with no supplementary groups (std's
//! `Command::uid` drops them) and a minimal environment; anyone else must be the owner.
//! The venv is refused, before the migration changes anything, when it, its `bin` folder or
//! the interpreter (and a link's target) belong to another user than the venv's owner or
//! root, or are writable by others.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The PATH the installer runs with after switching user.
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A checked venv, ready for the install.
#[derive(Debug)]
pub(super) struct PluginInstall {
    python: PathBuf,
    venv: PathBuf,
    /// uid, gid and home to switch to (root running on another user's venv).
    switch_to: Option<(u32, u32, PathBuf)>,
}

/// Checks the venv of `python` and who will run its installer.
///
/// # Errors
/// Names the path and why it is refused.
pub(super) fn check(python: &Path) -> Result<PluginInstall> {
    let python = std::path::absolute(python).with_context(|| format!("resolving `{}`", python.display()))?;
    let bin = python.parent().context("--python takes `<venv>/bin/python`")?;
    let venv = bin.parent().context("--python takes `<venv>/bin/python`")?;
    if !std::fs::symlink_metadata(venv.join("pyvenv.cfg")).is_ok_and(|m| m.is_file()) {
        bail!("`{}` is not a venv (no pyvenv.cfg): --python takes `<venv>/bin/python`", venv.display());
    }
    let owner = lstat(venv)?.uid();
    for path in [venv, bin, python.as_path()] {
        let meta = lstat(path)?;
        check_owned(path, &meta, owner)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::metadata(path).with_context(|| format!("following `{}`", path.display()))?;
            check_owned(&std::fs::canonicalize(path)?, &target, owner)?;
        }
    }
    let me = nix::unistd::geteuid().as_raw();
    let switch_to = if me == owner || owner == 0 {
        None
    } else if me == 0 {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner)).ok().flatten();
        let gid = user.as_ref().map_or(lstat(venv)?.gid(), |u| u.gid.as_raw());
        let home = user.map_or_else(|| venv.to_path_buf(), |u| u.dir);
        Some((owner, gid, home))
    } else {
        bail!(
            "`{}` belongs to uid {owner}; install the plug-in as that user: `{} -I -m keyward.nvflare install`",
            venv.display(),
            python.display()
        );
    };
    Ok(PluginInstall { venv: venv.to_path_buf(), python, switch_to })
}

fn lstat(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::symlink_metadata(path).with_context(|| format!("inspecting `{}`", path.display()))
}

fn check_owned(path: &Path, meta: &std::fs::Metadata, owner: u32) -> Result<()> {
    if meta.uid() != owner && meta.uid() != 0 {
        bail!("`{}` belongs to uid {}, not to the venv's owner (uid {owner}) or root", path.display(), meta.uid());
    }
    if !meta.file_type().is_symlink() && meta.permissions().mode() & 0o002 != 0 {
        bail!("`{}` is writable by others; refusing to run the plug-in installer from it", path.display());
    }
    Ok(())
}

impl PluginInstall {
    /// Runs `install --dry-run`: the plug-in checks this venv's NVFlare (every name it patches,
    /// the version it was tested with) and its site-packages, and writes nothing. Run before
    /// the key is imported, so a migration on an NVFlare the plug-in refuses changes nothing.
    ///
    /// # Errors
    /// When it cannot start or refuses.
    pub(super) fn preflight(&self) -> Result<()> {
        self.installer(&["--dry-run"])
    }

    /// Runs the installer.
    ///
    /// # Errors
    /// When it cannot start or fails.
    pub(super) fn run(&self) -> Result<()> {
        self.installer(&[])
    }

    fn installer(&self, extra: &[&str]) -> Result<()> {
        let mut cmd = std::process::Command::new(&self.python);
        cmd.args(["-I", "-m", "keyward.nvflare", "install"]).args(extra).current_dir(&self.venv);
        if let Some((uid, gid, home)) = &self.switch_to {
            cmd.uid(*uid).gid(*gid).env_clear().env("PATH", SAFE_PATH).env("HOME", home);
            eprintln!("running the plug-in's installer as uid {uid} (the venv's owner), not as root");
        }
        let status = cmd.status().with_context(|| format!("running `{}`", self.python.display()))?;
        if !status.success() {
            let args = [&["install"], extra].concat().join(" ");
            bail!("`{} -I -m keyward.nvflare {args}` failed ({status})", self.python.display());
        }
        Ok(())
    }
}
