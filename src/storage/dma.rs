//! The production backend: glommio O_DIRECT files driven through io_uring.
//!
//! See `GLOMMIO.md` in the design notes for the traps this module works
//! around; the important one is [`seed_iopoll_probe`].

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::io::{IoBuf, Storage, StorageFile, SyncMethod, ALIGN};

/// Name of the scratch file used to seed glommio's io-polling probe.
const PROBE_FILE_NAME: &str = ".iopoll-probe";

thread_local! {
    static PROBE_SEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Works around a glommio 0.9.0 trap: the first `DmaFile` opened on an
/// executor thread probes io-polling by reading offset 0; on an empty file
/// that read "succeeds" without touching the device, polling is wrongly
/// enabled and every later DMA read fails with EOPNOTSUPP. Opening a
/// non-empty file first makes the probe read real data. Runs once per thread.
pub async fn seed_iopoll_probe(dir: &Path) -> io::Result<()> {
    if PROBE_SEEDED.with(Cell::get) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // One file per thread: shards start at the same time, and a probe that
    // caught another thread's file half-written (empty) would fall into the
    // very trap this avoids.
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
    let path = dir.join(format!("{PROBE_FILE_NAME}-{thread}"));
    std::fs::write(&path, [0u8; ALIGN as usize])?;
    let file = DmaFile::open(&path).await?;
    file.close().await?;
    std::fs::remove_file(&path)?;
    PROBE_SEEDED.with(|seeded| seeded.set(true));
    Ok(())
}

/// glommio's DMA files. Construct with [`DmaStorage::new`], which seeds the
/// io-polling probe for the calling executor thread.
#[derive(Debug, Clone)]
pub struct DmaStorage {
    _private: (),
}

impl DmaStorage {
    /// Prepares DMA I/O on this executor thread; `scratch_dir` receives the
    /// small probe file (the data directory is a good place).
    pub async fn new(scratch_dir: &Path) -> io::Result<DmaStorage> {
        seed_iopoll_probe(scratch_dir).await?;
        Ok(DmaStorage { _private: () })
    }
}

/// An aligned buffer for DMA writes.
#[derive(Debug)]
pub struct DmaBuf(DmaBuffer);

impl IoBuf for DmaBuf {
    fn as_slice(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

/// An open O_DIRECT file.
#[derive(Debug)]
pub struct DmaStorageFile(DmaFile);

impl Storage for DmaStorage {
    type Buf = DmaBuf;
    type File = DmaStorageFile;

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        // From the executor's registered pool when it has room (cheap, and
        // the kernel skips pinning pages), from the heap otherwise.
        DmaBuf(glommio::allocate_dma_buffer(len))
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Rare (topic creation), and glommio has no async mkdir -p.
        std::fs::create_dir_all(dir)
    }

    async fn open_with(&self, path: &Path, sync: SyncMethod) -> io::Result<DmaStorageFile> {
        let file = open_options(sync).dma_open(path).await?;
        Ok(DmaStorageFile(file))
    }

    async fn create_new_with(&self, path: &Path, sync: SyncMethod) -> io::Result<DmaStorageFile> {
        let file = open_options(sync).create_new(true).dma_open(path).await?;
        Ok(DmaStorageFile(file))
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        Ok(glommio::io::remove(path).await?)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(glommio::io::rename(from, to).await?)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        // Only at open and recovery time; a directory listing is small.
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                paths.push(entry.path());
            }
        }
        Ok(paths)
    }

    async fn list_dirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                paths.push(entry.path());
            }
        }
        Ok(paths)
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Rare (topic deletion): a blocking thread walks the tree.
        let doomed = dir.to_path_buf();
        let removed = glommio::executor().spawn_blocking(move || std::fs::remove_dir_all(&doomed)).await;
        match removed {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => self.sync_dir(parent).await,
            _ => Ok(()),
        }
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio 0.9.0 fails to open a relative directory path (EBADF).
        let directory = glommio::io::Directory::open(std::path::absolute(dir)?).await?;
        directory.sync().await?;
        directory.close().await?;
        Ok(())
    }
}

/// Read and write; `O_DSYNC` for [`SyncMethod::Dsync`] (glommio adds
/// `O_DIRECT`).
fn open_options(sync: SyncMethod) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if sync == SyncMethod::Dsync {
        options.custom_flags(libc::O_DSYNC);
    }
    options
}

impl StorageFile for DmaStorageFile {
    type Buf = DmaBuf;

    async fn write_at(&self, buf: DmaBuf, pos: u64) -> io::Result<()> {
        let len = buf.0.len();
        let written = self.0.write_at(buf.0, pos).await?;
        if written != len {
            let message = format!("short direct write: {written} of {len} bytes at {pos}");
            return Err(io::Error::new(io::ErrorKind::WriteZero, message));
        }
        Ok(())
    }

    async fn read_into(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        let result = self.0.read_at(pos, len).await?;
        out.extend_from_slice(&result);
        Ok(result.len())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(self.0.fdatasync().await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.0.file_size().await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.truncate(len).await?)
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.pre_allocate(len, false).await?)
    }

    async fn close(self) -> io::Result<()> {
        Ok(self.0.close().await?)
    }
}
