//! An exclusive lock on a data directory.
//!
//! Two processes appending to one segment would corrupt it. The lock makes
//! the second process on a data directory fail at start instead (a second
//! broker on the same *address* is refused by `server::exclusive`). It is an advisory `flock`, released
//! by the kernel when the process dies, so a `kill -9` never leaves a stale
//! lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};

const LOCK_FILE_NAME: &str = ".lock";

/// Held for as long as the data directory is in use.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or fails if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let lock_path = dir.join(LOCK_FILE_NAME);
        let io_error = |op, source| StorageError::io(op, &lock_path, source);
        if dir.exists() && !dir.is_dir() {
            return Err(StorageError::Config(format!(
                "data directory {} exists and is not a directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| StorageError::io("creating data directory", dir, source))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| io_error("opening lock file", source))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path: lock_path }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked { path: dir.to_path_buf(), lock: lock_path }),
            Err(TryLockError::Error(source)) => Err(io_error("locking data directory", source)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let second = DirLock::acquire(dir.path());
        assert!(matches!(second, Err(StorageError::Locked { .. })), "{second:?}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_data_directory_that_is_a_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"not a directory").unwrap();
        let error = DirLock::acquire(&file).unwrap_err().to_string();
        assert!(error.contains("exists and is not a directory"), "{error}");
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}
