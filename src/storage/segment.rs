//! Segment files: naming, creating and sealing them, reading whole batches
//! out of one, and the small files written beside them.
//!
//! A segment file is the concatenation of Kafka RecordBatch v2 batches with
//! consecutive offsets, byte for byte as they travel on the wire, followed by
//! zeros (preallocated space) up to the file's size. It is named after the
//! offset of its first record: `00000000000000001234.log`.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::protocol::batch::{peek_batch_len, BatchView};
use crate::protocol::types::{FilePos, Offset, TimestampMs};

use super::config::LogConfig;
use super::error::{Result, StorageError};
use super::index::SegmentIndex;
use super::io::{align_up, IoBuf, Storage, StorageFile, SyncMethod};

const LOG_SUFFIX: &str = "log";
const INDEX_SUFFIX: &str = "index";
const PRODUCERS_SUFFIX: &str = "producers";
const TMP_SUFFIX: &str = "tmp";

/// Bytes read from disk at a time when scanning batches.
pub(crate) const READ_CHUNK_BYTES: usize = 256 << 10;

pub(crate) fn log_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{LOG_SUFFIX}", base.get()))
}

pub(crate) fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{INDEX_SUFFIX}", base.get()))
}

/// The idempotent producers' state as of the start of segment `base`.
pub(crate) fn producers_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{PRODUCERS_SUFFIX}", base.get()))
}

pub(crate) fn producers_tmp_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{PRODUCERS_SUFFIX}.{TMP_SUFFIX}", base.get()))
}

pub(crate) fn index_tmp_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{INDEX_SUFFIX}.{TMP_SUFFIX}", base.get()))
}

/// The file a log prepares for its next segment (see [`create_spare`]). Its
/// temporary suffix makes recovery delete one a crash left behind.
pub(crate) fn spare_path(dir: &Path) -> PathBuf {
    dir.join(format!("next.{LOG_SUFFIX}.{TMP_SUFFIX}"))
}

/// What a file in a partition directory is, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Log(Offset),
    Index(Offset),
    Producers(Offset),
    Temporary,
    Other,
}

pub(crate) fn classify(path: &Path) -> FileKind {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return FileKind::Other;
    };
    if name.ends_with(&format!(".{TMP_SUFFIX}")) {
        return FileKind::Temporary;
    }
    let Some((stem, suffix)) = name.split_once('.') else {
        return FileKind::Other;
    };
    let base = (stem.len() == 20).then(|| stem.parse::<u64>().ok().and_then(Offset::new)).flatten();
    match (base, suffix) {
        (Some(base), LOG_SUFFIX) => FileKind::Log(base),
        (Some(base), INDEX_SUFFIX) => FileKind::Index(base),
        (Some(base), PRODUCERS_SUFFIX) => FileKind::Producers(base),
        _ => FileKind::Other,
    }
}

/// The header facts of one batch found in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchInfo {
    pub len: usize,
    pub base: Offset,
    /// One past the batch's last offset.
    pub next: Offset,
    pub max_timestamp: TimestampMs,
}

/// A forward reader over the batches of one segment file, between a start
/// position and a limit (the visible end). Reads in chunks; holds at most one
/// chunk plus one batch in memory.
pub(crate) struct BatchCursor<'f, F: StorageFile> {
    file: &'f F,
    path: &'f Path,
    /// File position of `buf[0]`.
    buf_pos: u64,
    buf: Vec<u8>,
    /// Read position inside `buf`.
    cursor: usize,
    limit: u64,
    batch_bytes_max: usize,
    /// The offset the next batch must start at (baseOffset is outside the
    /// CRC, so continuity is checked separately); unknown before the first.
    expected: Option<Offset>,
}

impl<'f, F: StorageFile> BatchCursor<'f, F> {
    pub(crate) fn new(file: &'f F, path: &'f Path, start: FilePos, limit: u64, batch_bytes_max: usize) -> Self {
        BatchCursor { file, path, buf_pos: start.0, buf: Vec::new(), cursor: 0, limit, batch_bytes_max, expected: None }
    }

    /// The next batch before the limit, header-checked (not CRC-checked:
    /// these bytes were validated when appended or recovered). `None` at
    /// the limit.
    pub(crate) async fn next(&mut self) -> Result<Option<(BatchInfo, &[u8])>> {
        let pos = self.buf_pos + self.cursor as u64;
        if pos >= self.limit {
            return Ok(None);
        }
        self.fill(crate::protocol::batch::LOG_OVERHEAD).await?;
        let (path, expected) = (self.path, self.expected);
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            pos: FilePos(pos),
            offset: expected.unwrap_or(Offset::ZERO),
            reason,
        };
        let available = &self.buf[self.cursor..];
        let len = match peek_batch_len(available, self.batch_bytes_max) {
            Ok(Some(len)) if pos + len as u64 <= self.limit => len,
            Ok(_) => return Err(corrupt("batch runs past the end of the log".into())),
            Err(error) => return Err(corrupt(error.to_string())),
        };
        self.fill(len).await?;
        let bytes = &self.buf[self.cursor..self.cursor + len];
        // Sealed segments are trusted at open (their index vouches for their
        // size), so damage inside them is caught here, on the way out.
        let view = BatchView::parse_header(bytes, self.batch_bytes_max)
            .and_then(|view| view.verify_crc().map(|()| view))
            .map_err(|error| corrupt(error.to_string()))?;
        let (Some(base), Some(last)) = (Offset::from_wire(view.base_offset()), Offset::from_wire(view.last_offset()))
        else {
            return Err(corrupt(format!("negative offset {}", view.base_offset())));
        };
        if expected.is_some_and(|expected| expected != base) {
            return Err(corrupt(format!("batch has base offset {base} out of sequence")));
        }
        self.expected = Some(last.plus(1));
        let info = BatchInfo { len, base, next: last.plus(1), max_timestamp: TimestampMs(view.max_timestamp()) };
        self.cursor += len;
        Ok(Some((info, bytes)))
    }

    /// Makes sure `len` bytes from the cursor are in memory (fewer only at
    /// the limit, which `next` then reports).
    async fn fill(&mut self, len: usize) -> Result<()> {
        if self.buf.len() - self.cursor >= len {
            return Ok(());
        }
        // Drop what was consumed so the buffer stays within a chunk plus a batch.
        self.buf.drain(..self.cursor);
        self.buf_pos += self.cursor as u64;
        self.cursor = 0;
        while self.buf.len() < len {
            let read_pos = self.buf_pos + self.buf.len() as u64;
            let want = (self.limit.saturating_sub(read_pos) as usize).min(READ_CHUNK_BYTES.max(len - self.buf.len()));
            if want == 0 {
                return Ok(());
            }
            let got = self
                .file
                .read_into(read_pos, want, &mut self.buf)
                .await
                .map_err(|source| StorageError::io("reading", self.path, source))?;
            if got == 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Segment<F> {
    pub file: Rc<F>,
    pub path: PathBuf,
    pub index: SegmentIndex,
    /// Bytes of this segment readers may see (all of it once sealed).
    pub visible_bytes: u64,
    /// The file's size: bytes reserved on disk (with `preallocate`), which
    /// appends must not pass before the file is extended.
    pub allocated_bytes: u64,
}

impl<F> Segment<F> {
    /// A new segment with nothing in it yet.
    fn empty(file: F, path: PathBuf, base: Offset, config: &LogConfig, allocated_bytes: u64) -> Self {
        Segment {
            file: Rc::new(file),
            path,
            index: SegmentIndex::new(base, config.index_interval_bytes),
            visible_bytes: 0,
            allocated_bytes,
        }
    }
}

/// What the first segment of a new partition reserves (with
/// `preallocate`): a new partition costs this much disk, not a whole
/// segment. The first append that needs more reserves the whole segment,
/// and segments started by a roll (the partition is busy) reserve it whole
/// at once. Growing in smaller steps (doubling) was measured: each
/// `fallocate` on a segment being written stalls its direct writes, and four
/// extensions per segment cost 5-8% of a 100-byte burst's throughput.
pub const PREALLOCATE_BYTES_FIRST: u64 = 4 << 20;

/// How much a new segment reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// The first segment of a partition: [`PREALLOCATE_BYTES_FIRST`].
    First,
    /// A segment started by a roll: the whole segment.
    Whole,
}

/// Creates, preallocates and makes durable a new empty segment.
pub(crate) async fn create_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
    segment_bytes_max: u64,
    reserve: Reserve,
) -> Result<Segment<S::File>> {
    let path = log_path(dir, base);
    let allocated_bytes = match (config.preallocate, reserve) {
        (false, _) => 0,
        (true, Reserve::First) => PREALLOCATE_BYTES_FIRST.min(segment_bytes_max),
        (true, Reserve::Whole) => segment_bytes_max,
    };
    let reserve = config.preallocate.then_some(allocated_bytes);
    let file = create_prepared(storage, dir, &path, reserve, config.segment_sync()).await?;
    Ok(Segment::empty(file, path, base, config, allocated_bytes))
}

/// Creates `path` (its writes made durable by `sync`), preallocates
/// `reserve` bytes of it, and makes both durable. On failure it leaves
/// nothing behind: a full disk must not leave a half-made file.
async fn create_prepared<S: Storage>(
    storage: &S,
    dir: &Path,
    path: &Path,
    reserve: Option<u64>,
    sync: SyncMethod,
) -> Result<S::File> {
    let io = |op, source| StorageError::io(op, path, source);
    let file = storage.create_new_with(path, sync).await.map_err(|source| io("creating segment", source))?;
    let prepared = async {
        if let Some(bytes) = reserve {
            file.pre_allocate(bytes).await.map_err(|source| io("preallocating", source))?;
            file.fdatasync().await.map_err(|source| io("fdatasync", source))?;
        }
        storage.sync_dir(dir).await.map_err(|source| StorageError::io("syncing", dir, source))
    };
    if let Err(error) = prepared.await {
        let _ = file.close().await;
        if let Err(remove_error) = storage.remove(path).await {
            tracing::warn!(path = %path.display(), %remove_error, "could not remove unfinished segment");
        }
        return Err(error);
    }
    Ok(file)
}

/// Prepares the file of a log's next segment while the active one fills:
/// created, `bytes` preallocated, durable, under [`spare_path`]. A roll then
/// only renames it ([`adopt_spare`]), and appends wait for that instead of
/// the creation (about 1 ms of a roll on the development VM).
pub(crate) async fn create_spare<S: Storage>(
    storage: &S,
    dir: &Path,
    bytes: u64,
    config: &LogConfig,
) -> Result<S::File> {
    let path = spare_path(dir);
    // A leftover of a failed adoption.
    let _ = storage.remove(&path).await;
    create_prepared(storage, dir, &path, Some(bytes), config.segment_sync()).await
}

/// Makes the prepared spare the new, empty segment at `base`: a rename and
/// a directory sync. On failure the spare is removed and the error returned.
pub(crate) async fn adopt_spare<S: Storage>(
    storage: &S,
    dir: &Path,
    file: S::File,
    allocated_bytes: u64,
    base: Offset,
    config: &LogConfig,
) -> Result<Segment<S::File>> {
    let (spare, path) = (spare_path(dir), log_path(dir, base));
    let adopted = async {
        storage.rename(&spare, &path).await.map_err(|source| StorageError::io("renaming", &spare, source))?;
        storage.sync_dir(dir).await.map_err(|source| StorageError::io("syncing", dir, source))
    };
    if let Err(error) = adopted.await {
        let _ = file.close().await;
        for leftover in [&spare, &path] {
            let _ = storage.remove(leftover).await;
        }
        return Err(error);
    }
    Ok(Segment::empty(file, path, base, config, allocated_bytes))
}

/// Trims a full segment to its logical size and writes its index file.
pub(crate) async fn seal_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    file: &S::File,
    path: &Path,
    index: &SegmentIndex,
) -> Result<()> {
    let io = |op, source| StorageError::io(op, path, source);
    file.truncate(index.segment_bytes).await.map_err(|source| io("truncating", source))?;
    file.fdatasync().await.map_err(|source| io("fdatasync", source))?;
    write_index_file(storage, dir, index).await
}

/// Writes an index file atomically: temp file, fdatasync, rename, directory sync.
pub(crate) async fn write_index_file<S: Storage>(storage: &S, dir: &Path, index: &SegmentIndex) -> Result<()> {
    let encoded = index.encode();
    write_small_file(storage, dir, &index_tmp_path(dir, index.base), &index_path(dir, index.base), &encoded).await
}

/// Writes a small file atomically: `tmp`, fdatasync, rename to `target`,
/// directory sync.
pub(crate) async fn write_small_file<S: Storage>(
    storage: &S,
    dir: &Path,
    tmp: &Path,
    target: &Path,
    encoded: &[u8],
) -> Result<()> {
    let io = |op, source| StorageError::io(op, tmp, source);
    // A leftover from a crash during an earlier attempt.
    let _ = storage.remove(tmp).await;
    let file = storage.create_new(tmp).await.map_err(|source| io("creating", source))?;
    let mut buf = storage.alloc_buf(align_up(encoded.len() as u64) as usize);
    buf.as_mut_slice()[..encoded.len()].copy_from_slice(encoded);
    buf.as_mut_slice()[encoded.len()..].fill(0);
    file.write_at(buf, 0).await.map_err(|source| io("writing", source))?;
    file.truncate(encoded.len() as u64).await.map_err(|source| io("truncating", source))?;
    file.fdatasync().await.map_err(|source| io("fdatasync", source))?;
    file.close().await.map_err(|source| io("closing", source))?;
    storage.rename(tmp, target).await.map_err(|source| io("renaming", source))?;
    storage.sync_dir(dir).await.map_err(|source| StorageError::io("syncing", dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_through_classify() {
        let dir = Path::new("/data/orders-3");
        let base = Offset::new(1234).unwrap();
        assert_eq!(log_path(dir, base), Path::new("/data/orders-3/00000000000000001234.log"));
        assert_eq!(classify(&log_path(dir, base)), FileKind::Log(base));
        assert_eq!(classify(&index_path(dir, base)), FileKind::Index(base));
        assert_eq!(classify(&index_tmp_path(dir, base)), FileKind::Temporary);
        assert_eq!(classify(Path::new("/data/x/1234.log")), FileKind::Other);
        assert_eq!(classify(Path::new("/data/x/.lock")), FileKind::Other);
        assert_eq!(classify(Path::new("/data/x/0000000000000000123x.log")), FileKind::Other);
    }
}
