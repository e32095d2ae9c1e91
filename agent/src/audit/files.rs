//! The log's files on disk: the rotated files `<path>.<N>` in order, the first and last
//! record of a file (where a chain starts and ends), and cutting a torn last line (a write
//! interrupted by a full disk or a crash) back to the last complete record.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::error::AuditError;
use super::record::sha256_hex;

/// How far from the end a file's last line is looked for (records are well under 1 KiB).
const TAIL_WINDOW: u64 = 64 * 1024;

/// `<path>.<index>`.
pub fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The rotated files of the log at `path` (`<path>.<N>`), oldest first.
///
/// # Errors
/// When the folder cannot be read.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let index = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(index) = index {
            found.push((index, rotated_name(path, index)));
        }
    }
    found.sort();
    Ok(found)
}

/// The whole log in chain order: the rotated files, oldest first, then `path` itself.
///
/// # Errors
/// When the folder cannot be read.
pub fn log_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, p)| p).collect();
    files.push(path.to_path_buf());
    Ok(files)
}

/// A record's place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its `seq`.
    pub seq: u64,
    /// For a last record: the SHA-256 of its line; for a first record: its `prev`.
    pub hash: String,
}

fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Open { path: path.to_path_buf(), source }
}

fn seq_of(line: &[u8]) -> Option<(u64, serde_json::Value)> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some((value["seq"].as_u64()?, value))
}

/// The last complete line of the file at `path`; `None` when it has none.
///
/// # Errors
/// An unreadable file, or a last line that is not a record.
pub fn last_link(path: &Path) -> Result<Option<Link>, AuditError> {
    let mut file = File::open(path).map_err(open_err(path))?;
    let len = file.metadata().map_err(open_err(path))?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_WINDOW))).map_err(open_err(path))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(open_err(path))?;
    let Some(last) = tail.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let (seq, _) = seq_of(last).ok_or_else(|| AuditError::NotARecord { path: path.to_path_buf() })?;
    Ok(Some(Link { seq, hash: sha256_hex(last) }))
}

/// The first line of the file at `path` (its `seq` and `prev`); `None` when it is empty or
/// that line is not a record (`keyward audit verify` names it).
///
/// # Errors
/// An unreadable file.
pub fn first_link(path: &Path) -> Result<Option<Link>, AuditError> {
    let file = File::open(path).map_err(open_err(path))?;
    let mut line = Vec::new();
    std::io::BufReader::new(file).read_until(b'\n', &mut line).map_err(open_err(path))?;
    Ok(seq_of(&line).and_then(|(seq, v)| Some(Link { seq, hash: v["prev"].as_str()?.to_owned() })))
}

/// What [`cut_torn_tail`] removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut {
    /// Bytes removed.
    pub dropped_bytes: u64,
    /// Their SHA-256, hex.
    pub dropped_sha256: String,
}

/// When `file` (the log at `path`) does not end with a newline, truncates it after its last
/// complete line.
///
/// # Errors
/// The file cannot be read or truncated, or its last 64 KiB hold no line end in a longer
/// file (not an audit log).
pub fn cut_torn_tail(file: &mut File, path: &Path) -> Result<Option<Cut>, AuditError> {
    let len = file.metadata().map_err(open_err(path))?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut reader = File::open(path).map_err(open_err(path))?;
    reader.seek(SeekFrom::Start(start)).map_err(open_err(path))?;
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).map_err(open_err(path))?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(end) => start + end as u64 + 1,
        None if start == 0 => 0,
        None => return Err(AuditError::NotARecord { path: path.to_path_buf() }),
    };
    let dropped = &tail[usize::try_from(keep - start).unwrap_or(0)..];
    let cut = Cut { dropped_bytes: dropped.len() as u64, dropped_sha256: sha256_hex(dropped) };
    file.set_len(keep).map_err(open_err(path))?;
    Ok(Some(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_back_to_the_last_newline_and_a_whole_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "{\"seq\":1,\"prev\":\"0\"}\n{\"seq\":2,\"pr").unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let cut = cut_torn_tail(&mut file, &path).unwrap().unwrap();
        assert_eq!(cut.dropped_bytes, 12);
        assert_eq!(cut.dropped_sha256, sha256_hex(b"{\"seq\":2,\"pr"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\":1,\"prev\":\"0\"}\n");
        assert_eq!(cut_torn_tail(&mut file, &path).unwrap(), None);
        assert_eq!(last_link(&path).unwrap().unwrap().seq, 1);
        assert_eq!(first_link(&path).unwrap(), Some(Link { seq: 1, hash: "0".into() }));

        std::fs::write(&path, "{\"seq\":1,\"pr").unwrap();
        assert_eq!(cut_torn_tail(&mut file, &path).unwrap().unwrap().dropped_bytes, 12);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_last_line_that_is_not_a_record_is_an_error_not_a_new_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "{\"seq\":1,\"prev\":\"0\"}\nnot json\n").unwrap();
        assert!(matches!(last_link(&path), Err(AuditError::NotARecord { .. })));
    }
}
