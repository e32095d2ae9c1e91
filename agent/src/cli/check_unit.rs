//! `keyward check`'s look at how the agent runs as a service: the systemd unit's sandbox
//! against what the config needs, and whether the service user can write the socket's folder
//! and the audit log. The unit is read as systemd merges it: the unit file, then each
//! `*.conf` of `<unit>.d/` and of `/etc/systemd/system/keyward.service.d/` (with `--unit`,
//! of `<unit>.d/` only) in name order, a later `Key=` adding to (or, when empty, resetting) an earlier one. What a config needs is
//! written in docs/configuration.md, "Running under systemd", one drop-in per need.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{BackendConfig, Config};

/// Where a site's drop-ins go.
const ETC_DROP_INS: &str = "/etc/systemd/system/keyward.service.d";
/// Where the unit is looked for, in order.
const UNIT_PLACES: [&str; 3] = [
    "/etc/systemd/system/keyward.service",
    "/lib/systemd/system/keyward.service",
    "/usr/lib/systemd/system/keyward.service",
];

/// The unit's settings, merged: every value of each key, in order.
#[derive(Debug, Default)]
pub(super) struct Unit {
    /// The unit file.
    pub(super) path: PathBuf,
    settings: BTreeMap<String, Vec<String>>,
}

impl Unit {
    /// The unit at `path` (or the first of [`UNIT_PLACES`]), with its drop-ins; none without one.
    pub(super) fn find(path: Option<&Path>) -> Option<Self> {
        let (path, dirs) = match path {
            // A unit named on the command line: its own drop-ins only (a copy being checked).
            Some(p) => (p.to_path_buf(), vec![PathBuf::from(format!("{}.d", p.display()))]),
            None => {
                let p = UNIT_PLACES.iter().map(PathBuf::from).find(|p| p.is_file())?;
                (p.clone(), vec![PathBuf::from(format!("{}.d", p.display())), PathBuf::from(ETC_DROP_INS)])
            }
        };
        let mut unit = Self { path: path.clone(), settings: BTreeMap::new() };
        unit.read(&std::fs::read_to_string(&path).ok()?);
        let mut drop_ins: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut found: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect();
            found.sort();
            drop_ins.extend(found);
        }
        drop_ins.dedup();
        for file in drop_ins {
            if let Ok(text) = std::fs::read_to_string(&file) {
                unit.read(&text);
            }
        }
        Some(unit)
    }

    fn read(&mut self, text: &str) {
        for line in text.lines().map(str::trim) {
            if line.starts_with(['#', ';', '[']) {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            let values = self.settings.entry(key.trim().to_owned()).or_default();
            if value.trim().is_empty() {
                values.clear();
            } else {
                values.push(value.trim().to_owned());
            }
        }
    }

    /// The last value of `key`.
    pub(super) fn last(&self, key: &str) -> Option<&str> {
        self.settings.get(key).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every word of every value of `key`.
    fn words(&self, key: &str) -> Vec<&str> {
        self.settings.get(key).into_iter().flatten().flat_map(|v| v.split_whitespace()).collect()
    }
}

/// What the config needs of the sandbox that the unit does not give: one line each.
pub(super) fn sandbox_gaps(unit: &Unit, config: &Config) -> Vec<String> {
    let mut gaps = Vec::new();
    let other_callers = !config.access.allowed_uids.is_empty() || !config.access.allowed_gids.is_empty();
    let exe_keys: Vec<&str> =
        config.keys.iter().filter(|(_, k)| !k.allowed_executables.is_empty()).map(|(name, _)| name.as_str()).collect();
    if !exe_keys.is_empty() && other_callers {
        let ptraceable = unit.last("ProtectProc") == Some("ptraceable");
        let capability = unit.words("CapabilityBoundingSet").contains(&"CAP_SYS_PTRACE")
            && unit.words("AmbientCapabilities").contains(&"CAP_SYS_PTRACE");
        if !(ptraceable && capability) {
            gaps.push(format!(
                "keys {} set allowed_executables for callers of other uids, but the unit lacks `ProtectProc=ptraceable` and `CAP_SYS_PTRACE`: every such caller would be refused; add the allowed-executables.conf drop-in",
                exe_keys.join(", ")
            ));
        }
    }
    let tcp_tpm = match &config.backend {
        BackendConfig::Tpm { tcti, .. } => tcti.starts_with("swtpm:") || tcti.starts_with("mssim:"),
        BackendConfig::Pkcs11 { .. } => false,
    };
    let inet = unit.words("RestrictAddressFamilies").contains(&"AF_INET") && unit.last("PrivateNetwork") != Some("yes");
    if (config.metrics.is_some() || tcp_tpm) && !inet {
        let why = if tcp_tpm { "the TPM is reached over TCP" } else { "[metrics] listens on TCP" };
        gaps.push(format!("{why}, but the unit allows no AF_INET: add the loopback-tcp.conf drop-in"));
    }
    if let BackendConfig::Tpm { tcti, .. } = &config.backend {
        if let Some(device) = tcti.strip_prefix("device:") {
            let allowed = unit.settings.get("DeviceAllow").into_iter().flatten().any(|v| v.starts_with(device));
            if !allowed || unit.last("PrivateDevices") == Some("yes") {
                gaps.push(format!(
                    "the TPM is `{device}`, but the unit does not allow that device: add the tpm.conf drop-in"
                ));
            }
        }
    }
    gaps
}

/// A user the service runs as.
pub(super) struct ServiceUser {
    /// Name, as given.
    pub(super) name: String,
    uid: u32,
    gids: Vec<u32>,
}

impl ServiceUser {
    /// Looks `name` up in the user database.
    pub(super) fn lookup(name: &str) -> Result<Self, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
            .ok_or_else(|| format!("no user `{name}` on this machine"))?;
        let mut gids = vec![user.gid.as_raw()];
        let c_name = std::ffi::CString::new(name).map_err(|_| format!("user name `{name}` holds a NUL"))?;
        if let Ok(groups) = nix::unistd::getgrouplist(&c_name, user.gid) {
            gids.extend(groups.into_iter().map(nix::unistd::Gid::as_raw));
        }
        Ok(Self { name: name.to_owned(), uid: user.uid.as_raw(), gids })
    }

    /// Whether this user may write what `meta` describes (by its mode bits; root always may).
    pub(super) fn can_write(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.mode();
        self.uid == 0
            || (meta.uid() == self.uid && mode & 0o200 != 0)
            || (self.gids.contains(&meta.gid()) && mode & 0o020 != 0)
            || mode & 0o002 != 0
    }

    /// Whether this user may create files in `dir` (write and search).
    pub(super) fn can_create_in(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.mode();
        self.uid == 0
            || (meta.uid() == self.uid && mode & 0o300 == 0o300)
            || (self.gids.contains(&meta.gid()) && mode & 0o030 == 0o030)
            || mode & 0o003 == 0o003
    }
}

/// Why `user` cannot write the audit log at `path` (or create it), if it cannot.
pub(super) fn audit_log_gap(user: &ServiceUser, path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if !user.can_write(&meta) => Some(format!(
            "`{}` (owner uid {}, mode {:04o}) is not writable by the service user `{}`: the agent would refuse every signature",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            user.name
        )),
        Ok(_) => None,
        Err(_) => dir_gap(user, path.parent()?, "the audit log"),
    }
}

/// Why `user` cannot make the socket at `path`, if it cannot.
pub(super) fn socket_gap(user: &ServiceUser, path: &Path) -> Option<String> {
    dir_gap(user, path.parent()?, "the socket")
}

fn dir_gap(user: &ServiceUser, dir: &Path, what: &str) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    (!user.can_create_in(&meta)).then(|| {
        format!(
            "the folder of {what}, `{}` (owner uid {}, mode {:04o}), is not writable by the service user `{}`",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            user.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_add_to_and_reset_the_units_settings() {
        let mut unit = Unit::default();
        unit.read("[Service]\nProtectProc=invisible\nCapabilityBoundingSet=\nRestrictAddressFamilies=AF_UNIX\n# x=y\n");
        unit.read("[Service]\nProtectProc=ptraceable\nCapabilityBoundingSet=CAP_SYS_PTRACE\nRestrictAddressFamilies=AF_INET AF_INET6\n");
        assert_eq!(unit.last("ProtectProc"), Some("ptraceable"));
        assert_eq!(unit.words("RestrictAddressFamilies"), ["AF_UNIX", "AF_INET", "AF_INET6"]);
        unit.read("CapabilityBoundingSet=\n");
        assert!(unit.words("CapabilityBoundingSet").is_empty());
        assert_eq!(unit.last("x"), None);
    }
}
