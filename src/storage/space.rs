//! Free space of the file system that holds the data directory.

use std::io;
use std::path::Path;

/// Bytes an unprivileged writer may still allocate on the file system
/// holding `path` (blocks available to non-root users, as `df` shows).
/// Blocking: a `statvfs` call.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_real_directory_is_positive_and_a_missing_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
