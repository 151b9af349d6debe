//! The spool directory on disk: its layout (segment and sidecar names), the OS lock that
//! gives it to one process, private files and directories, and reading the sidecars.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The bookkeeping's subdirectory: the spool directory itself holds only segments, so
/// that it reads as a set of local trace files (`openlayer show DIR`).
pub(super) const STATE_DIR: &str = "state";
pub(super) const LOCK_FILE: &str = "lock";
pub(super) const DATA_EXT: &str = "jsonl";
pub(super) const ACK_EXT: &str = "acks";

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options for a file of the spool: created 0600, and never through a symbolic link (a
/// link planted where a file of ours goes would have us truncate or append to its target).
#[cfg(unix)]
pub(super) fn private_file(o: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o600).custom_flags(libc::O_NOFOLLOW)
}

#[cfg(not(unix))]
pub(super) fn private_file(o: &mut OpenOptions) -> &mut OpenOptions {
    o
}

/// Opens a file of the spool for reading, never through a symbolic link.
pub(super) fn open_read(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Creates a directory of the spool (0700), or checks one that exists: one of another
/// user, or writable by the group or others, is used with a warning (another user could
/// read its rows, or plant rows that would be sent with this process's key), as is one
/// readable by others. Its mode is not ours to change: it may be a volume set up for the
/// process (a Kubernetes `emptyDir`, a group-shared mount).
pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt as _};
        let meta = fs::metadata(dir)?;
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let mode = meta.permissions().mode();
        if meta.uid() != euid || mode & 0o022 != 0 {
            crate::util::diag::warn_limited!(
                dir = %dir.display(),
                owner = meta.uid(),
                mode = format_args!("{:o}", mode & 0o7777),
                "the spool directory belongs to another user or is writable by the group or \
                 others: they could read its rows, or plant rows that would be sent with this \
                 process's key; point spool_dir at a directory of its own (created with mode \
                 0700 when it does not exist)"
            );
        } else if mode & 0o044 != 0 {
            crate::util::diag::warn_limited!(
                dir = %dir.display(),
                "the spool directory is readable by other users; make it 0700"
            );
        }
    }
    Ok(())
}

/// Makes a new directory entry durable.
pub(super) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Takes the spool for this process: an OS file lock on `state/lock` (`flock` on unix,
/// `LockFileEx` on Windows), held for as long as the returned file is open and released
/// by the kernel when the process dies, whatever its PID namespace. The file names the
/// owner's process id, for the error message of the next process that tries.
pub(super) fn take_lock(state: &Path) -> io::Result<File> {
    let path = state.join(LOCK_FILE);
    let mut file = private_file(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let owner = fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            return Err(io::Error::other(format!(
                "the spool directory {} is in use by process {} (it holds the lock {})",
                state.parent().unwrap_or(state).display(),
                if owner.is_empty() { "?" } else { owner },
                path.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    Ok(file)
}

pub(super) fn parse_seq(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
        // Never reached by counting: a name past it is not ours (the next number would
        // overflow).
        .filter(|&seq| seq < SEQ_MAX)
}

/// Sequence numbers stay below this.
const SEQ_MAX: u64 = 1 << 62;

pub(super) fn read_acks(path: &Path) -> HashSet<u64> {
    let mut bytes = Vec::new();
    if open_read(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
    {
        return HashSet::new();
    }
    // Only newline-terminated records count: a torn last record is ignored. Read as
    // bytes: one damaged record (not UTF-8) must not cost the others.
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    complete
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok()?.trim().parse().ok())
        .collect()
}

/// Whether a file of newline-ended records ends in a torn one (its last byte is not a
/// newline). An unreadable file counts as torn: marking it costs one ignored line.
pub(super) fn ends_torn(f: &mut File) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return true;
    };
    if len == 0 {
        return false;
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))
        .and_then(|_| f.read_exact(&mut last))
        .map_or(true, |()| last[0] != b'\n')
}

/// Counts the complete lines of a file; returns (lines, length of the complete lines).
pub(super) fn count_lines(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = open_read(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut pos, mut end) = (0u64, 0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((lines, end));
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                end = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_number_near_the_end_of_u64_is_not_ours() {
        assert_eq!(parse_seq("00000000000000000042.jsonl", "jsonl"), Some(42));
        assert_eq!(parse_seq("18446744073709551615.jsonl", "jsonl"), None);
        assert_eq!(parse_seq("04611686018427387904.jsonl", "jsonl"), None);
    }

    #[test]
    fn a_damaged_acknowledgement_costs_only_itself() {
        let dir = std::env::temp_dir().join(format!("ol-acks-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks");
        fs::write(&path, b"12\n\xff\xfe\n40\n7").unwrap();
        let acks = read_acks(&path);
        assert_eq!(acks, HashSet::from([12, 40]));
        let _ = fs::remove_dir_all(&dir);
    }
}
