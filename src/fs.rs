//! Directory-level file handling: the lock file, directory fsync, segment file names.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::iohook::{Io, IoOp};

/// Name of the lock file; held with an exclusive advisory lock while a store is open.
pub(crate) const LOCK_FILE: &str = "LOCK";
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".olog";
const HINT_SUFFIX: &str = ".hint";
/// Suffix of a file being written under its temporary name; such files are deleted on open.
const TMP_SUFFIX: &str = ".tmp";

/// The temporary name a file is written under before it is renamed to `path`: the same name
/// with `.tmp` appended. A crash leaves at most such a file behind, which `open` deletes.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Creates the directory if needed and takes its lock.
///
/// The directory's own entry, and that of every level `create_dir_all` made, is fsynced
/// into its parent, or a power cut could take the whole store with it after claims in it
/// were acknowledged. The immediate parent is fsynced on every open, not only the one that
/// created the directory: that open may have crashed before its fsync.
pub(crate) fn lock_dir(io: &Io, dir: &Path) -> Result<File> {
    let mut created = Vec::new();
    let mut probe = Some(dir);
    while let Some(p) = probe.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        created.push(p);
        probe = p.parent();
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let parent_of = |p: &Path| match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => q.to_path_buf(),
        _ => PathBuf::from("."),
    };
    sync_dir(io, &parent_of(dir))?;
    // Each fsync makes one entry durable; their order does not matter.
    for p in created.iter().skip(1) {
        sync_dir(io, &parent_of(p))?;
    }
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(io: &Io, dir: &Path) -> Result<()> {
    io.run(IoOp::SyncDir { path: dir }, || {
        File::open(dir).and_then(|d| d.sync_all())
    })
    .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Renames `from` to `to`, replacing `to`.
pub(crate) fn rename(io: &Io, from: &Path, to: &Path) -> io::Result<()> {
    io.run(IoOp::Rename { from, to }, || fs::rename(from, to))
}

/// Creates (or truncates) `path` for reading and writing.
pub(crate) fn create(io: &Io, path: &Path) -> io::Result<File> {
    io.run(IoOp::Create { path }, || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    })
}

/// Makes `file`'s content and length durable.
pub(crate) fn sync_file(io: &Io, file: &File, path: &Path) -> io::Result<()> {
    io.run(IoOp::SyncFile { path }, || file.sync_all())
}

/// Writes all of `bytes` at `offset` of `file`.
pub(crate) fn write_at(
    io: &Io,
    file: &File,
    path: &Path,
    offset: u64,
    bytes: &[u8],
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = bytes.len() as u64;
    io.run(IoOp::Write { path, offset, len }, || {
        file.write_all_at(bytes, offset)
    })
}

/// The file name of segment `id`: `seg-` then 16 hex digits, so names sort by id.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{SEGMENT_PREFIX}{id:016x}{SEGMENT_SUFFIX}")
}

/// The segment id a file name stands for, if it is a segment name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The file name of segment `id`'s hint: `seg-` then 16 hex digits, then `.hint`.
pub(crate) fn hint_file_name(id: u64) -> String {
    format!("{SEGMENT_PREFIX}{id:016x}{HINT_SUFFIX}")
}

/// The segment id a hint file name stands for, if it is one.
pub(crate) fn parse_hint_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(HINT_SUFFIX)?;
    parse_segment_name(&format!("{stem}{SEGMENT_SUFFIX}"))
}

/// What a directory holds: segment and hint files by id, and leftover temporary files.
pub(crate) struct Listing {
    pub(crate) segments: Vec<(u64, PathBuf)>,
    pub(crate) hints: Vec<(u64, PathBuf)>,
    pub(crate) temporaries: Vec<PathBuf>,
}

impl Listing {
    /// Whether segment `id` is there (a hint of a missing segment is a stray).
    pub(crate) fn has_segment(&self, id: u64) -> bool {
        self.segments.binary_search_by_key(&id, |(s, _)| *s).is_ok()
    }
}

/// Lists segment files in id order. Files with other names are left alone.
///
/// A segment name on anything but a regular file (or a link to one) fails with
/// [`Error::Io`]: a directory or a device cannot be a segment, and opening a FIFO to read it
/// would block `open` for ever. A hint or temporary name on such a thing is left alone:
/// those files are optional, and only ever ones oncelog wrote.
pub(crate) fn list_dir(dir: &Path) -> Result<Listing> {
    let mut segments = Vec::new();
    let mut hints = Vec::new();
    let mut temporaries = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_name(name) {
            if !is_regular(&entry) {
                let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
                return Err(Error::io("open segment", entry.path(), e));
            }
            segments.push((id, entry.path()));
        } else if !is_regular(&entry) {
            continue;
        } else if let Some(id) = parse_hint_name(name) {
            hints.push((id, entry.path()));
        } else if name
            .strip_suffix(TMP_SUFFIX)
            .is_some_and(|n| parse_segment_name(n).is_some() || parse_hint_name(n).is_some())
        {
            temporaries.push(entry.path());
        }
    }
    segments.sort_unstable_by_key(|(id, _)| *id);
    hints.sort_unstable_by_key(|(id, _)| *id);
    Ok(Listing {
        segments,
        hints,
        temporaries,
    })
}

/// Whether `entry` is a regular file, or a symbolic link to one.
fn is_regular(entry: &fs::DirEntry) -> bool {
    match entry.file_type() {
        Ok(t) if t.is_symlink() => fs::metadata(entry.path()).is_ok_and(|m| m.is_file()),
        Ok(t) => t.is_file(),
        Err(_) => false,
    }
}

/// Creates `path` holding `bytes`, its data and length fsynced, and returns it open. Deletes
/// it on failure.
pub(crate) fn write_new(io: &Io, path: &Path, bytes: &[u8]) -> Result<File> {
    let made = (|| {
        let f = create(io, path)?;
        write_at(io, &f, path, 0, bytes)?;
        sync_file(io, &f, path)?;
        Ok(f)
    })();
    made.map_err(|e| {
        let _ = remove_file(io, path);
        Error::io("write file", path, e)
    })
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file(io: &Io, path: &Path) -> Result<()> {
    match io.run(IoOp::Remove { path }, || fs::remove_file(path)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_name(1), "seg-0000000000000001.olog");
        assert_eq!(
            parse_segment_name(&segment_name(0xdead_beef)),
            Some(0xdead_beef)
        );
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("seg-1.olog"), None);
        assert_eq!(parse_segment_name("seg-000000000000000g.olog"), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
        assert_eq!(hint_file_name(1), "seg-0000000000000001.hint");
        assert_eq!(parse_hint_name(&hint_file_name(77)), Some(77));
        assert_eq!(parse_hint_name(&segment_name(77)), None);
        assert_eq!(parse_hint_name("seg-1.hint"), None);
    }

    #[test]
    fn temporary_names_are_recognised_as_such() {
        let tmp = tmp_path(Path::new("/d").join(segment_name(3)).as_path());
        assert_eq!(tmp, Path::new("/d/seg-0000000000000003.olog.tmp"));
        let name = tmp.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name
            .strip_suffix(TMP_SUFFIX)
            .and_then(parse_segment_name)
            .is_some());
        let hint_tmp = tmp_path(Path::new(&hint_file_name(3)));
        assert_eq!(hint_tmp, Path::new("seg-0000000000000003.hint.tmp"));
    }
}
