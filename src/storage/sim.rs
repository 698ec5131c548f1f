//! A simulated disk for tests: it keeps written and synced bytes apart, can
//! inject I/O errors and a full disk, and produces the image a power cut
//! would leave behind.
//!
//! The model, stated so tests can rely on it:
//! - A write is visible to reads at once, but survives a crash only once an
//!   `fdatasync` of its file, called after the write completed, has completed;
//!   or, through a file opened with [`SyncMethod::Dsync`], once the write
//!   itself has completed.
//! - A write that was not synced survives a crash as a whole, not at all, or
//!   torn: an arbitrary subset of its 512-byte sectors (sectors themselves are
//!   atomic, as on real devices).
//! - A file created, renamed or removed survives a crash only once its
//!   directory has been synced; before that the crash may or may not keep it.
//!   Size changes (truncate, preallocate) are synced by the file's
//!   `fdatasync`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_lite::future;

use super::io::{IoBuf, Storage, StorageFile, SyncMethod, ALIGN};

/// The unit a torn write is cut into.
pub const SECTOR_BYTES: usize = 512;

/// A simulated directory tree. Clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    disk: Rc<RefCell<SimDisk>>,
}

/// Which operation a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Sync,
    Read,
}

/// An injected failure: the `skip`+1-th operation of kind `op` from now fails
/// with an I/O error (EIO).
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub op: FaultOp,
    pub skip: u32,
}

/// What happens to writes that were not synced when the power went out.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Everything not fdatasync'd is lost (the harshest case).
    LoseUnsynced,
    /// Each unsynced write survives whole, not at all, or torn at sector
    /// granularity, decided by a generator seeded with the given value.
    Torn { seed: u64 },
    /// Everything survives (a process kill: the kernel still has the data).
    KeepAll,
}

#[derive(Debug, Default)]
struct SimDisk {
    /// The namespace as processes see it now.
    files: BTreeMap<PathBuf, Rc<RefCell<SimFile>>>,
    /// The namespace as of the last sync of each directory.
    durable_files: BTreeMap<PathBuf, Rc<RefCell<SimFile>>>,
    dirs: BTreeSet<PathBuf>,
    faults: Vec<Fault>,
    /// Bytes that may still be allocated; `None` for unlimited.
    space_left_bytes: Option<u64>,
    /// A disk that lies: `fdatasync` and `O_DSYNC` writes succeed and make
    /// nothing durable.
    syncs_lie: bool,
    /// Bytes returned by reads so far.
    bytes_read: u64,
    /// Writes that covered both blocks written before and blocks never
    /// written (see [`SimStorage::mixed_extent_writes`]).
    mixed_extent_writes: u64,
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    data: Vec<u8>,
    /// The contents as of the last `fdatasync` (with the durable writes
    /// folded in, see [`SimFile::fold_durable`]).
    synced: Vec<u8>,
    /// Writes completed since, oldest first. A crash keeps the durable ones
    /// and decides for each other one; in order, so that a later write
    /// always lands over an earlier one.
    unsynced_writes: Vec<PendingWrite>,
    /// `fdatasync` calls in flight: each drains the writes it covers by
    /// their count, so none are folded meanwhile. A sync dropped mid-flight
    /// leaves it raised: folding stops for the file, which costs memory,
    /// never durability (unfolded durable writes still survive a crash).
    syncs_in_flight: usize,
    /// Blocks written since the file was created or restored (a crash
    /// image or `set_contents` starts with none): the rest of `data`,
    /// preallocated or restored, counts as never written.
    written_blocks: BTreeSet<u64>,
}

/// A completed write not yet covered by an `fdatasync`.
#[derive(Debug, Clone)]
struct PendingWrite {
    pos: u64,
    bytes: Vec<u8>,
    /// Written through an `O_DSYNC` file (to a disk that does not lie):
    /// it survives a crash.
    durable: bool,
}

impl SimFile {
    /// Moves the durable writes at the front of the list into `synced`: a
    /// crash image would apply them first, whatever the mode. Keeps the
    /// list short when nothing calls `fdatasync`.
    fn fold_durable(&mut self) {
        if self.syncs_in_flight > 0 {
            return;
        }
        let folded = self.unsynced_writes.iter().take_while(|write| write.durable).count();
        for write in self.unsynced_writes.drain(..folded) {
            apply(&mut self.synced, write.pos, &write.bytes, |_| true);
        }
    }
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Queues an injected failure.
    pub fn inject(&self, fault: Fault) {
        self.disk.borrow_mut().faults.push(fault);
    }

    /// Limits how many more bytes files may grow by (`None`: unlimited).
    /// Beyond it, writes and preallocations fail with `StorageFull`.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.disk.borrow_mut().space_left_bytes = bytes;
    }

    /// Makes `fdatasync` and `O_DSYNC` writes succeed without making
    /// anything durable, as a disk with a volatile write cache that ignores
    /// flushes does. Only the negative controls of the simulations use it:
    /// they must catch it.
    pub fn set_syncs_lie(&self, lie: bool) {
        self.disk.borrow_mut().syncs_lie = lie;
    }

    /// The disk as it would be found after a power cut now: a new, independent
    /// storage holding only what the model says survives.
    pub fn crash_image(&self, mode: CrashMode) -> SimStorage {
        let disk = self.disk.borrow();
        let mut rng = SplitMix64(match mode {
            CrashMode::Torn { seed } => seed,
            _ => 0,
        });
        let mut files = BTreeMap::new();
        for (path, file) in &disk.files {
            let durable = disk.durable_files.get(path).is_some_and(|durable| Rc::ptr_eq(durable, file));
            let keep_name = durable || matches!(mode, CrashMode::KeepAll) || rng.next().is_multiple_of(2);
            if keep_name && !matches!(mode, CrashMode::LoseUnsynced if !durable) {
                let survived = surviving_contents(&file.borrow(), mode, &mut rng);
                files.insert(path.clone(), survived);
            }
        }
        // Names removed or renamed away without a directory sync come back.
        for (path, file) in &disk.durable_files {
            if !files.contains_key(path) && !disk.files.contains_key(path) {
                let survived = surviving_contents(&file.borrow(), mode, &mut rng);
                files.insert(path.clone(), survived);
            }
        }
        let files: BTreeMap<_, _> = files
            .into_iter()
            .map(|(path, data)| {
                let file = SimFile { synced: data.clone(), data, ..SimFile::default() };
                (path, Rc::new(RefCell::new(file)))
            })
            .collect();
        let image = SimDisk {
            durable_files: files.clone(),
            files,
            dirs: disk.dirs.clone(),
            faults: Vec::new(),
            space_left_bytes: None,
            syncs_lie: disk.syncs_lie,
            bytes_read: 0,
            mixed_extent_writes: 0,
        };
        SimStorage { disk: Rc::new(RefCell::new(image)) }
    }

    /// Bytes returned by reads of any file so far.
    pub fn bytes_read(&self) -> u64 {
        self.disk.borrow().bytes_read
    }

    /// Writes so far that covered both a block written before and one never
    /// written. On ext4, such a direct write cannot be issued without
    /// blocking (it spans a written and an unwritten extent), so io_uring
    /// hands it to a worker thread. Performance only: the data is the same.
    pub fn mixed_extent_writes(&self) -> u64 {
        self.disk.borrow().mixed_extent_writes
    }

    /// The current contents of a file, as reads would see them.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.disk.borrow().files.get(path).map(|file| file.borrow().data.clone())
    }

    /// Replaces a file's contents (for corruption tests); the change counts as synced.
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let file = SimFile { synced: data.clone(), data, ..SimFile::default() };
        let file = Rc::new(RefCell::new(file));
        let mut disk = self.disk.borrow_mut();
        disk.files.insert(path.to_path_buf(), Rc::clone(&file));
        disk.durable_files.insert(path.to_path_buf(), file);
    }

    fn take_fault(&self, op: FaultOp) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let Some(index) = disk.faults.iter().position(|fault| fault.op == op) else {
            return Ok(());
        };
        if disk.faults[index].skip > 0 {
            disk.faults[index].skip -= 1;
            return Ok(());
        }
        disk.faults.remove(index);
        Err(io::Error::other(format!("injected {op:?} failure")))
    }

    fn reserve_growth(&self, old_len: usize, new_len: usize) -> io::Result<()> {
        let growth = new_len.saturating_sub(old_len) as u64;
        let mut disk = self.disk.borrow_mut();
        if let Some(space_left) = disk.space_left_bytes.as_mut() {
            if growth > *space_left {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated disk is full"));
            }
            *space_left -= growth;
        }
        Ok(())
    }
}

fn surviving_contents(file: &SimFile, mode: CrashMode, rng: &mut SplitMix64) -> Vec<u8> {
    let mut image = file.synced.clone();
    for PendingWrite { pos, bytes, durable } in &file.unsynced_writes {
        if *durable {
            apply(&mut image, *pos, bytes, |_| true);
            continue;
        }
        match mode {
            CrashMode::LoseUnsynced => {}
            CrashMode::KeepAll => apply(&mut image, *pos, bytes, |_| true),
            CrashMode::Torn { .. } => match rng.next() % 3 {
                0 => {}
                1 => apply(&mut image, *pos, bytes, |_| true),
                _ => {
                    let mask = rng.next();
                    apply(&mut image, *pos, bytes, |sector| mask >> (sector % 64) & 1 == 1)
                }
            },
        }
    }
    image
}

/// Copies the sectors of `bytes` that `keep` selects into `image` at `pos`.
fn apply(image: &mut Vec<u8>, pos: u64, bytes: &[u8], keep: impl Fn(usize) -> bool) {
    let pos = pos as usize;
    for (sector, chunk) in bytes.chunks(SECTOR_BYTES).enumerate() {
        if !keep(sector) {
            continue;
        }
        let start = pos + sector * SECTOR_BYTES;
        if image.len() < start + chunk.len() {
            image.resize(start + chunk.len(), 0);
        }
        image[start..start + chunk.len()].copy_from_slice(chunk);
    }
}

/// A tiny deterministic generator, so crash images are reproducible from a seed.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A plain heap buffer stands in for an aligned DMA buffer.
#[derive(Debug)]
pub struct SimBuf(Vec<u8>);

impl IoBuf for SimBuf {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// An open simulated file.
#[derive(Debug)]
pub struct SimStorageFile {
    storage: SimStorage,
    file: Rc<RefCell<SimFile>>,
    sync: SyncMethod,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl Storage for SimStorage {
    type Buf = SimBuf;
    type File = SimStorageFile;

    fn alloc_buf(&self, len: usize) -> SimBuf {
        SimBuf(vec![0xAB; len])
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        for ancestor in dir.ancestors() {
            disk.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    async fn open_with(&self, path: &Path, sync: SyncMethod) -> io::Result<SimStorageFile> {
        let file = self.disk.borrow().files.get(path).cloned().ok_or_else(|| not_found(path))?;
        Ok(SimStorageFile { storage: self.clone(), file, sync })
    }

    async fn create_new_with(&self, path: &Path, sync: SyncMethod) -> io::Result<SimStorageFile> {
        let mut disk = self.disk.borrow_mut();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !disk.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        if disk.files.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}", path.display())));
        }
        let file = Rc::new(RefCell::new(SimFile::default()));
        disk.files.insert(path.to_path_buf(), Rc::clone(&file));
        Ok(SimStorageFile { storage: self.clone(), file, sync })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let removed = self.disk.borrow_mut().files.remove(path);
        removed.map(drop).ok_or_else(|| not_found(path))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let file = disk.files.remove(from).ok_or_else(|| not_found(from))?;
        disk.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = self.disk.borrow();
        if !disk.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |path: &&PathBuf| path.parent() == Some(dir);
        Ok(disk.files.keys().filter(in_dir).cloned().collect())
    }

    async fn list_dirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = self.disk.borrow();
        Ok(disk.dirs.iter().filter(|path| path.parent() == Some(dir)).cloned().collect())
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.take_fault(FaultOp::Sync)?;
        // The removal is made durable at once (the parent directory is
        // synced), so the files are gone from both namespaces.
        let mut disk = self.disk.borrow_mut();
        disk.files.retain(|path, _| !path.starts_with(dir));
        disk.durable_files.retain(|path, _| !path.starts_with(dir));
        disk.dirs.retain(|path| !path.starts_with(dir));
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.take_fault(FaultOp::Sync)?;
        let mut disk = self.disk.borrow_mut();
        disk.durable_files.retain(|path, _| path.parent() != Some(dir));
        let current: Vec<_> = disk
            .files
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, file)| (path.clone(), Rc::clone(file)))
            .collect();
        disk.durable_files.extend(current);
        Ok(())
    }
}

/// Scheduling turns an `fdatasync` takes; a write takes one.
const SYNC_TURNS: usize = 4;

impl StorageFile for SimStorageFile {
    type Buf = SimBuf;

    async fn write_at(&self, buf: SimBuf, pos: u64) -> io::Result<()> {
        // Yield so other tasks (and crash images) can run while the write is
        // "in flight", as with a real device.
        future::yield_now().await;
        self.write(buf.as_slice(), pos)
    }

    async fn read_into(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        self.storage.take_fault(FaultOp::Read)?;
        let file = self.file.borrow();
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(file.data.len());
        let end = start.saturating_add(len).min(file.data.len());
        out.extend_from_slice(&file.data[start..end]);
        self.storage.disk.borrow_mut().bytes_read += (end - start) as u64;
        Ok(end - start)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        // Only writes completed before the call become durable: one landing
        // while the sync is in flight stays unsynced, as on a real device.
        let (snapshot, covered) = {
            let mut file = self.file.borrow_mut();
            file.syncs_in_flight += 1;
            (file.data.clone(), file.unsynced_writes.len())
        };
        // A sync takes longer than a write (several scheduling turns), so
        // writes issued meanwhile complete while it is still in flight.
        for _ in 0..SYNC_TURNS {
            future::yield_now().await;
        }
        let synced = self.storage.take_fault(FaultOp::Sync).map(|()| !self.storage.disk.borrow().syncs_lie);
        let mut file = self.file.borrow_mut();
        file.syncs_in_flight -= 1;
        if synced? {
            file.synced = snapshot;
            file.unsynced_writes.drain(..covered);
        }
        file.fold_durable();
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.borrow().data.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old_len = self.file.borrow().data.len();
        self.storage.reserve_growth(old_len, len)?;
        let mut file = self.file.borrow_mut();
        file.data.resize(len, 0);
        // Blocks cut off are unallocated again.
        file.written_blocks.split_off(&(len as u64).div_ceil(ALIGN));
        Ok(())
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old_len = self.file.borrow().data.len();
        if len > old_len {
            self.storage.reserve_growth(old_len, len)?;
            self.file.borrow_mut().data.resize(len, 0);
        }
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl SimStorageFile {
    fn write(&self, bytes: &[u8], pos: u64) -> io::Result<()> {
        if !pos.is_multiple_of(ALIGN) || !(bytes.len() as u64).is_multiple_of(ALIGN) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.storage.take_fault(FaultOp::Write)?;
        let start = usize::try_from(pos).map_err(io::Error::other)?;
        let end = start + bytes.len();
        let old_len = self.file.borrow().data.len();
        self.storage.reserve_growth(old_len, end)?;
        let mut file = self.file.borrow_mut();
        if file.data.len() < end {
            file.data.resize(end, 0);
        }
        file.data[start..end].copy_from_slice(bytes);
        let durable = self.sync == SyncMethod::Dsync && !self.storage.disk.borrow().syncs_lie;
        file.unsynced_writes.push(PendingWrite { pos, bytes: bytes.to_vec(), durable });
        file.fold_durable();
        let blocks = pos / ALIGN..(pos + bytes.len() as u64) / ALIGN;
        let before = blocks.clone().filter(|block| file.written_blocks.contains(block)).count();
        if before > 0 && before < blocks.clone().count() {
            self.storage.disk.borrow_mut().mixed_extent_writes += 1;
        }
        file.written_blocks.extend(blocks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = ALIGN as usize;

    fn block(fill: u8) -> SimBuf {
        SimBuf(vec![fill; BLOCK])
    }

    /// A disk with one empty, durable file at `/d/f`.
    fn disk_with_file() -> (SimStorage, PathBuf) {
        let storage = SimStorage::new();
        let path = PathBuf::from("/d/f");
        future::block_on(async {
            storage.create_dir_all(Path::new("/d")).await.unwrap();
            storage.create_new(&path).await.unwrap();
            storage.sync_dir(Path::new("/d")).await.unwrap();
        });
        (storage, path)
    }

    /// Two handles on `path`: plain, and opened with `O_DSYNC`.
    async fn handles(storage: &SimStorage, path: &Path) -> (SimStorageFile, SimStorageFile) {
        let plain = storage.open(path).await.unwrap();
        (plain, storage.open_with(path, SyncMethod::Dsync).await.unwrap())
    }

    #[test]
    fn a_dsync_write_survives_a_power_cut_once_it_completes_and_a_plain_one_does_not() {
        let (storage, path) = disk_with_file();
        future::block_on(async {
            let (plain, dsync) = handles(&storage, &path).await;
            plain.write_at(block(1), 0).await.unwrap();
            dsync.write_at(block(2), ALIGN).await.unwrap();
            let image = storage.crash_image(CrashMode::LoseUnsynced);
            let survived = image.contents(&path).unwrap();
            assert_eq!(survived.len(), 2 * BLOCK);
            assert!(survived[..BLOCK].iter().all(|&byte| byte == 0), "the plain write is lost");
            assert!(survived[BLOCK..].iter().all(|&byte| byte == 2), "the dsync write survives");
        });
    }

    #[test]
    fn a_dsync_write_to_a_lying_disk_is_lost() {
        let (storage, path) = disk_with_file();
        storage.set_syncs_lie(true);
        future::block_on(async {
            let dsync = storage.open_with(&path, SyncMethod::Dsync).await.unwrap();
            dsync.write_at(block(2), 0).await.unwrap();
        });
        assert_eq!(storage.crash_image(CrashMode::LoseUnsynced).contents(&path).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn no_crash_brings_an_older_write_back_over_a_durable_one() {
        for mode in [CrashMode::KeepAll, CrashMode::Torn { seed: 7 }, CrashMode::Torn { seed: 8 }] {
            let (storage, path) = disk_with_file();
            future::block_on(async {
                let (plain, dsync) = handles(&storage, &path).await;
                plain.write_at(block(1), 0).await.unwrap();
                dsync.write_at(block(2), 0).await.unwrap();
            });
            let survived = storage.crash_image(mode).contents(&path).unwrap();
            assert_eq!(survived, vec![2; BLOCK], "{mode:?}");
        }
    }

    #[test]
    fn a_dsync_write_completing_during_an_fdatasync_stays_durable() {
        let (storage, path) = disk_with_file();
        future::block_on(async {
            let (plain, dsync) = handles(&storage, &path).await;
            plain.write_at(block(1), 0).await.unwrap();
            plain.fdatasync().await.unwrap();
            // The next sync's snapshot is taken before the dsync write lands,
            // and set as the synced contents after it.
            let sync = plain.fdatasync();
            let write = dsync.write_at(block(2), ALIGN);
            let (synced, written) = future::zip(sync, write).await;
            synced.unwrap();
            written.unwrap();
        });
        let survived = storage.crash_image(CrashMode::LoseUnsynced).contents(&path).unwrap();
        assert_eq!(survived, [vec![1; BLOCK], vec![2; BLOCK]].concat());
    }
}
