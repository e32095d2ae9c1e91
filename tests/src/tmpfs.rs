//! [`Tmpfs`]: a small tmpfs mounted on a test's own folder, to run a file system really full
//! (the audit log's fail-closed tests). Needs root; unmounted on drop.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// A tmpfs mounted on `dir`.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64k`) on `dir`, made if missing.
    pub fn mount(dir: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        crate::tools::assert_success(&out, "mount a tmpfs for the audit log (needs root)");
        Self { dir }
    }

    /// Fills the file system with `filler` until a write fails.
    pub fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let block = [0u8; 1024];
        while file.write_all(&block).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
