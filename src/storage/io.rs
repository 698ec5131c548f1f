//! The storage seam: the narrow set of file operations the partition log needs.
//!
//! The log is generic over [`Storage`] so the same append, flush, recovery and
//! retention logic runs against glommio's O_DIRECT files in production
//! ([`super::dma::DmaStorage`]) and against a simulated disk in tests
//! ([`super::sim::SimStorage`]) that keeps written and synced bytes apart and
//! can produce the image a power cut would leave behind.
//!
//! Writes are positional, aligned to [`ALIGN`], and take an owned buffer
//! from [`Storage::alloc_buf`]: with glommio that buffer comes from the
//! executor's registered I/O memory, which makes allocating one per flush
//! cheap and lets the kernel skip pinning pages for each write.

// The runtime is thread-per-core: none of these futures ever crosses a
// thread, so the `Send` bounds that `async fn` in traits cannot express are
// not wanted anyway.
#![allow(async_fn_in_trait)]

use std::io;
use std::path::{Path, PathBuf};

/// Alignment of every write position and length. O_DIRECT needs the device's
/// logical block size (512 here); 4096 is safe on every device.
pub const ALIGN: u64 = 4096;

/// Rounds `value` down to a multiple of [`ALIGN`].
pub fn align_down(value: u64) -> u64 {
    value & !(ALIGN - 1)
}

/// Rounds `value` up to a multiple of [`ALIGN`].
pub fn align_up(value: u64) -> u64 {
    align_down(value + ALIGN - 1)
}

/// A buffer a backend can write from. Allocated by [`Storage::alloc_buf`]
/// with a fixed capacity; never grows.
pub trait IoBuf: std::fmt::Debug + 'static {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// How the writes to an open file become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// Only through an `fdatasync` of the file called after they completed.
    #[default]
    Fdatasync,
    /// Each one when it completes: the file is opened with `O_DSYNC`, so the
    /// kernel makes a write's data, and the metadata needed to read it back,
    /// durable before it reports the write done. `fdatasync` still works.
    Dsync,
}

/// A directory tree of files, as the log sees it.
pub trait Storage: Clone + std::fmt::Debug + 'static {
    type Buf: IoBuf;
    type File: StorageFile<Buf = Self::Buf>;

    /// A buffer of exactly `len` bytes (a multiple of [`ALIGN`]), suitably
    /// aligned for direct I/O. Contents are unspecified.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and writing, its writes made
    /// durable by `sync`.
    async fn open_with(&self, path: &Path, sync: SyncMethod) -> io::Result<Self::File>;
    /// Creates a new file, its writes made durable by `sync`; fails if it
    /// exists.
    async fn create_new_with(&self, path: &Path, sync: SyncMethod) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing (writes made durable
    /// by `fdatasync`).
    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        self.open_with(path, SyncMethod::Fdatasync).await
    }
    /// Creates a new file (writes made durable by `fdatasync`); fails if it
    /// exists.
    async fn create_new(&self, path: &Path) -> io::Result<Self::File> {
        self.create_new_with(path, SyncMethod::Fdatasync).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// The paths of the regular files directly inside `dir`.
    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The paths of the directories directly inside `dir` (none if `dir`
    /// does not exist).
    async fn list_dirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Removes `dir` and everything below it, durably: its parent is
    /// synced. Removing a directory that does not exist succeeds.
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile: std::fmt::Debug + 'static {
    type Buf: IoBuf;

    /// Writes all of `buf` at `pos`; both aligned to [`ALIGN`]. Durable
    /// once it completes if the file was opened with [`SyncMethod::Dsync`].
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Appends up to `len` bytes read at `pos` to `out`; returns how many.
    async fn read_into(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<usize>;
    async fn fdatasync(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    /// Sets the file size (zero-filled when growing).
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks for the first `len` bytes, growing the file size
    /// to `len`, so that running out of space shows here rather than in the
    /// middle of an append.
    async fn pre_allocate(&self, len: u64) -> io::Result<()>;
    async fn close(self) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers_round_to_blocks() {
        assert_eq!(align_down(0), 0);
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(4097), 8192);
    }
}
