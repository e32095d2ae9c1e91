//! Files in a folder another user may change (an NVFlare startup kit, a key file given to
//! `key import --destroy-source`), handled so that a command run as root cannot be turned
//! against the host by that folder's owner.
//!
//! - [`KitDir::open`] walks the path from `/` one component at a time with
//!   `O_DIRECTORY|O_NOFOLLOW`: no symbolic link is followed anywhere in it, and every later
//!   operation is relative to the folder handle (`openat`, `renameat`, `unlinkat`), so moving
//!   or replacing a folder of the path afterwards changes nothing.
//! - [`KitDir::open_file`] opens a file with `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot hang us)
//!   and refuses, after `fstat`, anything that is not a regular file. The one handle serves
//!   the read, the overwrite and the same-file check: the file is never opened by name twice.
//! - [`KitDir::destroy`] and [`KitDir::replace`] zero the file through that handle, fsync, then
//!   check that the name still holds the same file (device and inode, `lstat` of the name and
//!   of the folder path) right before unlinking or renaming over it.
//!
//! Plain atomic writes of the agent's own files are in `files.rs`.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use zeroize::Zeroizing;

/// Why a kit file or folder was refused.
#[derive(Debug, thiserror::Error)]
pub enum KitFileError {
    /// A component of the path is a symbolic link.
    #[error("`{0}` is a symbolic link; keyward follows no links here, pass the real path")]
    Symlink(PathBuf),
    /// Not a folder where one is needed.
    #[error("`{0}` is not a folder")]
    NotFolder(PathBuf),
    /// `..` in the path, or no file name.
    #[error("`{0}` must be a path without `..` that names a file or folder")]
    BadPath(PathBuf),
    /// A FIFO, device, socket or folder where a regular file is needed.
    #[error("`{path}` is a {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// More than one name for the file: removing one would leave the content behind the others.
    #[error("`{path}` has {links} hard links; removing this name would leave the file readable through the others")]
    HardLinked {
        /// The file.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// Bigger than such a file can be.
    #[error("`{path}` is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The name or the folder now holds another file than the one read.
    #[error("`{0}` was replaced while keyward worked on it; it was left in place, not removed")]
    Changed(PathBuf),
    /// A system call failed.
    #[error("{op} `{path}`")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, KitFileError>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> KitFileError + 'a {
    move |e| KitFileError::Io { op, path: path.to_path_buf(), source: e.into() }
}

fn kind(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "regular file",
        FileType::Directory => "folder",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// A folder opened without following links; files are reached relative to it.
#[derive(Debug)]
pub struct KitDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Read, then overwrite and remove: the file must have one name only.
    ReadWrite,
}

/// A regular file opened once, without following links.
#[derive(Debug)]
pub struct KitFile {
    file: File,
    name: String,
    path: PathBuf,
    stat: Stat,
}

/// A new file written in a kit folder under a temporary name, removed on drop unless
/// [`KitDir::replace`] renamed it into place.
#[derive(Debug)]
pub struct Staged<'a> {
    dir: &'a KitDir,
    name: String,
    armed: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::fs::unlinkat(&self.dir.fd, self.name.as_str(), AtFlags::empty());
        }
    }
}

impl KitDir {
    /// Opens `path` (made absolute against the current folder, not resolved), refusing a
    /// symbolic link in any of its components.
    ///
    /// # Errors
    /// [`KitFileError::Symlink`] naming the first link, [`KitFileError::NotFolder`], or the
    /// failed `openat`.
    pub fn open(path: &Path) -> Result<Self> {
        let abs = std::path::absolute(path).map_err(|source| KitFileError::Io {
            op: "resolving",
            path: path.to_path_buf(),
            source,
        })?;
        let mut names = Vec::new();
        for c in abs.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => names.push(n),
                Component::ParentDir | Component::Prefix(_) => return Err(KitFileError::BadPath(abs)),
            }
        }
        let dir_flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Folders on the way are only traversed (O_PATH needs no read permission); the last
        // one is opened for reading so that it can be fsynced.
        let root_flags = if names.is_empty() { OFlags::RDONLY } else { OFlags::PATH };
        let mut fd = rustix::fs::open("/", dir_flags | root_flags, Mode::empty()).map_err(io("opening", &abs))?;
        let mut walked = PathBuf::from("/");
        for (i, name) in names.iter().enumerate() {
            walked.push(name);
            let flags = if i + 1 == names.len() { OFlags::RDONLY } else { OFlags::PATH };
            fd = match rustix::fs::openat(&fd, *name, dir_flags | flags, Mode::empty()) {
                Ok(next) => next,
                Err(e) => {
                    return Err(match rustix::fs::statat(&fd, *name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                            KitFileError::Symlink(walked)
                        }
                        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                            KitFileError::NotFolder(walked)
                        }
                        _ => KitFileError::Io { op: "opening", path: walked, source: e.into() },
                    })
                }
            };
        }
        Ok(Self { fd, path: abs })
    }

    /// The folder's path as given (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Owner and group of the folder.
    ///
    /// # Errors
    /// The failed `fstat`.
    pub fn owner(&self) -> Result<(u32, u32)> {
        let st = rustix::fs::fstat(&self.fd).map_err(io("inspecting", &self.path))?;
        Ok((st.st_uid, st.st_gid))
    }

    /// The path of `name` in the folder, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether `name` exists in the folder (as anything, a dangling link included).
    ///
    /// # Errors
    /// A failed `lstat` other than "not found".
    pub fn exists(&self, name: &str) -> Result<bool> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(KitFileError::Io { op: "looking up", path: self.join(name), source: e.into() }),
        }
    }

    /// Opens `name` without following a link and without blocking, and checks that it is a
    /// regular file (with a single name, for [`Access::ReadWrite`]).
    ///
    /// # Errors
    /// [`KitFileError::Symlink`], [`KitFileError::NotRegular`], [`KitFileError::HardLinked`],
    /// or the failed `openat` (`NotFound` when it does not exist).
    pub fn open_file(&self, name: &str, access: Access) -> Result<KitFile> {
        let path = self.join(name);
        let mode = if access == Access::Read { OFlags::RDONLY } else { OFlags::RDWR };
        let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(KitFileError::Symlink(path)),
            Err(e) => return Err(KitFileError::Io { op: "opening", path, source: e.into() }),
        };
        let stat = rustix::fs::fstat(&fd).map_err(io("inspecting", &path))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(KitFileError::NotRegular { path, kind: kind(&stat) });
        }
        #[allow(clippy::useless_conversion)] // st_nlink is u32 on some targets
        let links = u64::from(stat.st_nlink);
        if access == Access::ReadWrite && links != 1 {
            return Err(KitFileError::HardLinked { path, links });
        }
        Ok(KitFile { file: File::from(fd), name: name.to_owned(), path, stat })
    }

    /// Reads `name` whole (see [`KitDir::open_file`]), at most `max` bytes.
    ///
    /// # Errors
    /// As [`KitDir::open_file`] and [`KitFile::read_all`].
    pub fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let mut file = self.open_file(name, Access::Read)?;
        Ok(std::mem::take(&mut *file.read_all(max)?))
    }

    /// Writes `bytes` to a new file `name` (mode `mode`, owner `owner` when given) and fsyncs
    /// it. A leftover file of that name from an interrupted run is replaced; the new file is
    /// removed again when the returned [`Staged`] is dropped without being used. This is also
    /// the check that the folder is writable.
    ///
    /// # Errors
    /// The failed `openat`, write, `fchown` or fsync.
    pub fn stage(&self, name: &str, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<Staged<'_>> {
        let path = self.join(name);
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(KitFileError::Io { op: "removing the leftover", path, source: e.into() }),
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode)).map_err(io("creating", &path))?;
        let staged = Staged { dir: self, name: name.to_owned(), armed: true };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io("setting the mode of", &path))?;
        if let Some((uid, gid)) = owner {
            // The new file takes the old one's owner, so the kit stays its owner's.
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(io("setting the owner of", &path))?;
        }
        let file = File::from(fd);
        file.write_all_at(bytes, 0).map_err(|source| KitFileError::Io { op: "writing", path: path.clone(), source })?;
        file.sync_all().map_err(|source| KitFileError::Io { op: "syncing", path, source })?;
        Ok(staged)
    }

    /// Zeroes `file`, checks that its name still holds it, and unlinks it.
    ///
    /// # Errors
    /// [`KitFileError::Changed`] when the name or the folder now holds something else (the
    /// file was zeroed, the name is left alone), or the failed system call.
    pub fn destroy(&self, file: KitFile) -> Result<()> {
        file.zero()?;
        self.check_same(&file)?;
        rustix::fs::unlinkat(&self.fd, file.name.as_str(), AtFlags::empty()).map_err(io("removing", &file.path))?;
        self.sync()
    }

    /// Zeroes `file`, checks that its name still holds it, and renames `staged` over it.
    ///
    /// # Errors
    /// As [`KitDir::destroy`]; `staged` is removed on any error.
    pub fn replace(&self, file: KitFile, mut staged: Staged<'_>) -> Result<()> {
        file.zero()?;
        self.check_same(&file)?;
        rustix::fs::renameat(&self.fd, staged.name.as_str(), &self.fd, file.name.as_str())
            .map_err(io("renaming into place", &file.path))?;
        staged.armed = false;
        self.sync()
    }

    /// Renames `staged` to `name`, replacing a regular file or nothing (never following a link).
    ///
    /// # Errors
    /// The failed `renameat` or fsync.
    pub fn commit(&self, mut staged: Staged<'_>, name: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, staged.name.as_str(), &self.fd, name)
            .map_err(io("renaming into place", &self.join(name)))?;
        staged.armed = false;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io("syncing", &self.path))
    }

    /// The name still holds the file read (`lstat` of the name against `fstat` of the handle),
    /// and the folder path still leads to this folder.
    fn check_same(&self, file: &KitFile) -> Result<()> {
        let same = |a: &Stat, b: &Stat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        let now = rustix::fs::statat(&self.fd, file.name.as_str(), AtFlags::SYMLINK_NOFOLLOW);
        if !now.is_ok_and(|st| same(&st, &file.stat)) {
            return Err(KitFileError::Changed(file.path.clone()));
        }
        let here = rustix::fs::fstat(&self.fd).map_err(io("inspecting", &self.path))?;
        let again = Self::open(&self.path).map_err(|_| KitFileError::Changed(self.path.clone()))?;
        let there = rustix::fs::fstat(&again.fd).map_err(io("inspecting", &self.path))?;
        if !same(&here, &there) {
            return Err(KitFileError::Changed(self.path.clone()));
        }
        Ok(())
    }
}

impl KitFile {
    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Owner and group of the file.
    pub fn owner(&self) -> (u32, u32) {
        (self.stat.st_uid, self.stat.st_gid)
    }

    /// Reads the file from the start, at most `max` bytes, into a buffer that is zeroed when
    /// dropped.
    ///
    /// # Errors
    /// [`KitFileError::TooLarge`], or the failed read.
    pub fn read_all(&mut self, max: u64) -> Result<Zeroizing<Vec<u8>>> {
        let size = u64::try_from(self.stat.st_size).unwrap_or(0);
        if size > max {
            return Err(KitFileError::TooLarge { path: self.path.clone(), max });
        }
        // Room for the whole file up front, so no reallocation leaves a copy behind.
        let capacity = usize::try_from(max.min(size.max(4096)) + 1).unwrap_or(4097);
        let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
        (&self.file).take(max + 1).read_to_end(&mut bytes).map_err(|source| KitFileError::Io {
            op: "reading",
            path: self.path.clone(),
            source,
        })?;
        if bytes.len() as u64 > max {
            return Err(KitFileError::TooLarge { path: self.path.clone(), max });
        }
        Ok(bytes)
    }

    /// Overwrites the whole file with zeros through the handle and fsyncs it.
    fn zero(&self) -> Result<()> {
        let st = rustix::fs::fstat(&self.file).map_err(io("inspecting", &self.path))?;
        let len = u64::try_from(st.st_size).unwrap_or(0).max(u64::try_from(self.stat.st_size).unwrap_or(0));
        let zeros = [0u8; 4096];
        let mut at = 0u64;
        while at < len {
            let n = usize::try_from((len - at).min(4096)).unwrap_or(4096);
            self.file.write_all_at(&zeros[..n], at).map_err(|source| KitFileError::Io {
                op: "overwriting",
                path: self.path.clone(),
                source,
            })?;
            at += n as u64;
        }
        self.file.sync_all().map_err(|source| KitFileError::Io { op: "syncing", path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests;
