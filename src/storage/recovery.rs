//! Opening a partition directory after a clean or unclean stop.
//!
//! - Sealed segments (all but the last) load their `.index` file; a missing
//!   or damaged index is rebuilt by scanning (and validating) the segment.
//! - The last segment is always scanned batch by batch with full validation
//!   (CRC included) to find the end of the log.
//! - Where validation stops before the end, the bytes after that point decide
//!   what happened. The log never has more than `write_bytes_max` bytes
//!   written but unsynced, starting at or before the damaged batch, so a crash
//!   can only have left non-zero bytes within that distance of it (plus a
//!   block either side, [`LogConfig::torn_window_bytes`]): damage whose
//!   trailing bytes all lie within that window is a torn tail, trimmed (and zeroed on disk) with the
//!   number of bytes dropped logged. Damage in a sealed segment, or with data
//!   beyond the window, is corruption: the partition is refused with file,
//!   byte position and offset, unless the operator asked for
//!   [`RecoveryMode::TruncateCorruption`].
//!
//! A damaged byte inside the last window of a log cannot be told apart from
//! a torn write by the bytes alone; that limit is discussed in
//! `docs/storage-format.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

use crate::protocol::batch::{peek_batch_len, BatchView, LOG_OVERHEAD};
use crate::protocol::types::{FilePos, Offset, TimestampMs};

use super::config::LogConfig;
use super::error::{Result, StorageError};
use super::index::SegmentIndex;
use super::io::{align_down, align_up, IoBuf, Storage, StorageFile, ALIGN};
use super::producers::{ProducerFields, ProducerTable};
use super::segment::{
    classify, create_segment, index_path, log_path, producers_path, seal_segment, FileKind, Reserve, Segment,
    READ_CHUNK_BYTES,
};

/// What recovery does when it finds corruption before the tail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open the partition (the default).
    #[default]
    Strict,
    /// Operator override: cut the log at the first corrupt batch, deleting
    /// everything after it, including later segments.
    TruncateCorruption,
}

/// The segments found, the partial last block of the active one, and the
/// idempotent producers whose batches the scans read (the active segment
/// always, sealed ones whose index had to be rebuilt).
#[derive(Debug)]
pub(crate) struct Recovered<F> {
    pub segments: BTreeMap<Offset, Segment<F>>,
    pub tail_block: Vec<u8>,
    pub producers: ProducerTable,
    /// Records below this were deleted (see `log_start`).
    pub start_floor: Offset,
}

/// Where a scan of a segment stopped.
#[derive(Debug)]
enum ScanEnd {
    /// At the end of the file or at zeros that run on to it.
    Clean,
    /// At a batch that does not validate.
    Damaged { pos: u64, offset: Offset, reason: String },
}

pub(crate) async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &LogConfig,
    mode: RecoveryMode,
) -> Result<Recovered<S::File>> {
    storage.create_dir_all(dir).await.map_err(|source| StorageError::io("creating", dir, source))?;
    let listing = storage.list(dir).await.map_err(|source| StorageError::io("listing", dir, source))?;
    let (mut bases, mut index_bases, mut snapshot_bases) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for path in listing {
        match classify(&path) {
            FileKind::Log(base) => drop(bases.insert(base)),
            FileKind::Index(base) => drop(index_bases.insert(base)),
            FileKind::Producers(base) => drop(snapshot_bases.insert(base)),
            FileKind::Temporary => {
                storage.remove(&path).await.map_err(|source| StorageError::io("removing", &path, source))?
            }
            FileKind::Other => {}
        }
    }
    for orphan in index_bases.difference(&bases) {
        // Left by a crash between the two removals of a retention delete.
        let path = index_path(dir, *orphan);
        storage.remove(&path).await.map_err(|source| StorageError::io("removing", &path, source))?;
    }
    let mut segments = BTreeMap::new();
    let mut producers = ProducerTable::new(config.producers_max, config.producer_expiry_ms as i64);
    let Some(&last_base) = bases.last() else {
        let first =
            create_segment(storage, dir, Offset::ZERO, config, config.segment_bytes_max, Reserve::First).await?;
        segments.insert(Offset::ZERO, first);
        return Ok(Recovered { segments, tail_block: Vec::new(), producers, start_floor: Offset::ZERO });
    };
    // The newest readable producer snapshot of a segment that exists: the
    // producers as of that segment's start. Batches of it and later
    // segments are applied on top (normally it is the active segment's,
    // which recovery scans anyway).
    let mut producers_from = None;
    for &base in snapshot_bases.iter().rev().filter(|base| bases.contains(base)) {
        if let Some(table) = read_producer_snapshot(storage, dir, base, config).await {
            producers = table;
            producers_from = Some(base);
            break;
        }
    }
    let mut expected_base: Option<Offset> = None;
    for &base in &bases {
        let path = log_path(dir, base);
        // Opened the way the log writes (O_DSYNC or not): the last segment
        // is written to again.
        let opened = storage.open_with(&path, config.segment_sync()).await;
        let file = opened.map_err(|source| StorageError::io("opening", &path, source))?;
        if let Some(expected) = expected_base.filter(|expected| *expected != base) {
            let reason = format!("segment starts at offset {base} but the previous one ends at {expected}");
            let error = StorageError::Corrupt { path: path.clone(), pos: FilePos(0), offset: base, reason };
            cut_or_refuse(storage, dir, mode, error, &bases, base, None).await?;
            break;
        }
        let is_last = base == last_base;
        let has_index = index_bases.contains(&base);
        let after_snapshot = producers_from.is_some_and(|from| base >= from);
        let (index, end) = match load_sealed(storage, dir, &file, base, has_index && !is_last, config).await? {
            Some(index) => {
                if after_snapshot {
                    // Sealed after the newest snapshot (a crash came between
                    // a roll and its snapshot): read its producers too.
                    scan(&file, &path, base, config, Some(&mut producers)).await?;
                }
                (index, None)
            }
            None => {
                let record = after_snapshot || producers_from.is_none();
                let (index, end) = scan(&file, &path, base, config, record.then_some(&mut producers)).await?;
                (index, Some(end))
            }
        };
        let (index, cut) = match end {
            Some(end) => settle_end(storage, dir, &file, &path, index, end, is_last, config, mode, &bases).await?,
            None => (index, false),
        };
        expected_base = Some(index.next_offset);
        let visible_bytes = index.segment_bytes;
        let allocated_bytes = file.size().await.map_err(|source| StorageError::io("sizing", &path, source))?;
        segments.insert(base, Segment { file: Rc::new(file), path, index, visible_bytes, allocated_bytes });
        if cut {
            break;
        }
    }
    let (_, active) = segments.last_key_value().expect("at least one segment was recovered");
    let end = active.index.segment_bytes;
    let mut tail_block = Vec::new();
    let block_start = align_down(end);
    active
        .file
        .read_into(block_start, (end - block_start) as usize, &mut tail_block)
        .await
        .map_err(|source| StorageError::io("reading", &active.path, source))?;
    // Room for the next appends: a segment that has none left (a file
    // written without preallocation, or full) reserves the whole segment,
    // as a roll does; one that has room (an idle partition's first 4 MiB)
    // keeps what it has. A full disk is not an error here (the partition
    // still serves reads), and an append that needs the room reserves it.
    if config.preallocate && align_up(end) + ALIGN > active.allocated_bytes {
        let target = config.segment_bytes_max.max(align_up(end) + ALIGN);
        match active.file.pre_allocate(target).await {
            Ok(()) => {
                let active = segments.last_entry().expect("at least one segment was recovered").into_mut();
                active.allocated_bytes = target;
            }
            Err(error) => {
                tracing::warn!(path = %active.path.display(), %error, "could not preallocate the active segment")
            }
        }
    }
    let start_floor = super::log_start::read(storage, dir).await.unwrap_or(Offset::ZERO);
    Ok(Recovered { segments, tail_block, producers, start_floor })
}

/// The producer snapshot of segment `base`, if it is there and intact.
async fn read_producer_snapshot<S: Storage>(
    storage: &S,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
) -> Option<ProducerTable> {
    let path = producers_path(dir, base);
    let file = storage.open(&path).await.ok()?;
    let size = file.size().await.ok()?;
    // The most a snapshot of `producers_max` producers can take.
    let size_max = 8 + config.producers_max as u64 * (19 + 5 * 24) + 4;
    if size > size_max {
        tracing::warn!(path = %path.display(), size, "a producer snapshot larger than any this log writes: ignored");
        return None;
    }
    let mut bytes = Vec::new();
    file.read_into(0, size as usize, &mut bytes).await.ok()?;
    let _ = file.close().await;
    let table = ProducerTable::decode_snapshot(&bytes, config.producers_max, config.producer_expiry_ms as i64);
    if table.is_none() {
        tracing::warn!(path = %path.display(), "a damaged producer snapshot: ignored");
    }
    table
}

/// Loads a sealed segment's index file if it is intact and matches the file.
async fn load_sealed<S: Storage>(
    storage: &S,
    dir: &Path,
    file: &S::File,
    base: Offset,
    try_index: bool,
    config: &LogConfig,
) -> Result<Option<SegmentIndex>> {
    if !try_index {
        return Ok(None);
    }
    let path = index_path(dir, base);
    let size = file.size().await.map_err(|source| StorageError::io("stat", &path, source))?;
    let mut bytes = Vec::new();
    let loaded = match storage.open(&path).await {
        Ok(index_file) => {
            let index_size = index_file.size().await.unwrap_or(0);
            // An index is small: 16 bytes per `index_interval_bytes` of log.
            let plausible = index_size <= size / u64::from(config.index_interval_bytes).max(1) * 16 + 4096;
            let read =
                if plausible { index_file.read_into(0, index_size as usize, &mut bytes).await.is_ok() } else { false };
            let _ = index_file.close().await;
            read.then(|| SegmentIndex::decode(&bytes, base, config.index_interval_bytes)).flatten()
        }
        Err(_) => None,
    };
    let index = loaded.filter(|index| index.segment_bytes == size);
    if index.is_none() {
        tracing::warn!(path = %path.display(), "index missing or damaged; rebuilding it by scanning the segment");
    }
    Ok(index)
}

/// Reads a segment from the start, validating every batch, and builds its index.
async fn scan<F: StorageFile>(
    file: &F,
    path: &Path,
    base: Offset,
    config: &LogConfig,
    mut producers: Option<&mut ProducerTable>,
) -> Result<(SegmentIndex, ScanEnd)> {
    let now_ms = super::producers::now_ms();
    let size = file.size().await.map_err(|source| StorageError::io("stat", path, source))?;
    let mut index = SegmentIndex::new(base, config.index_interval_bytes);
    let mut buf = Vec::new();
    let mut buf_pos = 0u64;
    let mut pos = 0u64;
    let mut expected = base;
    loop {
        let damaged = |reason: String| ScanEnd::Damaged { pos, offset: expected, reason };
        if pos >= size {
            return Ok((index, ScanEnd::Clean));
        }
        // Keep the buffer to the unread part, then make sure a header is there.
        buf.drain(..(pos - buf_pos) as usize);
        buf_pos = pos;
        fill(file, path, &mut buf, buf_pos, LOG_OVERHEAD, size).await?;
        if buf.len() < LOG_OVERHEAD {
            return Ok((index, damaged("a partial batch header at the end of the file".into())));
        }
        if buf[..LOG_OVERHEAD].iter().all(|&byte| byte == 0) {
            return Ok((index, damaged("end of data".into())));
        }
        let len = match peek_batch_len(&buf, config.batch_bytes_max) {
            Ok(Some(len)) => len,
            Ok(None) => unreachable!("a full header is buffered"),
            Err(error) => return Ok((index, damaged(error.to_string()))),
        };
        fill(file, path, &mut buf, buf_pos, len, size).await?;
        let view = match BatchView::parse(&buf, config.batch_bytes_max) {
            Ok(view) => view,
            Err(error) => return Ok((index, damaged(error.to_string()))),
        };
        if Offset::from_wire(view.base_offset()) != Some(expected) {
            return Ok((
                index,
                damaged(format!("batch has base offset {} where {expected} was expected", view.base_offset())),
            ));
        }
        let next = expected.plus(u64::from(view.last_offset_delta() as u32) + 1);
        index.push_batch(expected, next, len as u64, TimestampMs(view.max_timestamp()));
        if let (Some(producers), Some(fields)) = (producers.as_deref_mut(), ProducerFields::of(&view)) {
            producers.record(&fields, expected, next, now_ms);
        }
        expected = next;
        pos += len as u64;
    }
}

/// Reads until `buf` (which starts at file position `buf_pos`) holds `len`
/// bytes or the file ends.
async fn fill<F: StorageFile>(
    file: &F,
    path: &Path,
    buf: &mut Vec<u8>,
    buf_pos: u64,
    len: usize,
    size: u64,
) -> Result<()> {
    while buf.len() < len {
        let read_pos = buf_pos + buf.len() as u64;
        let want = (size.saturating_sub(read_pos) as usize).min(READ_CHUNK_BYTES.max(len - buf.len()));
        if want == 0 {
            return Ok(());
        }
        let got =
            file.read_into(read_pos, want, buf).await.map_err(|source| StorageError::io("reading", path, source))?;
        if got == 0 {
            return Ok(());
        }
    }
    Ok(())
}

/// Decides what the end of a scan means and acts on it: nothing, trim a
/// torn tail, re-seal a sealed segment (trim preallocated space, write its
/// index), or refuse/cut on corruption. Returns the index and whether the
/// log was cut here.
#[allow(clippy::too_many_arguments)]
async fn settle_end<S: Storage>(
    storage: &S,
    dir: &Path,
    file: &S::File,
    path: &Path,
    index: SegmentIndex,
    end: ScanEnd,
    is_last: bool,
    config: &LogConfig,
    mode: RecoveryMode,
    bases: &BTreeSet<Offset>,
) -> Result<(SegmentIndex, bool)> {
    let io = |op, source| StorageError::io(op, path, source);
    let ScanEnd::Damaged { pos, offset, reason } = end else {
        if !is_last {
            // A sealed segment whose index had to be rebuilt.
            tracing::info!(path = %path.display(), bytes = index.segment_bytes, "sealing a recovered segment");
            seal_segment(storage, dir, file, path, &index).await?;
        }
        return Ok((index, false));
    };
    let size = file.size().await.map_err(|source| io("stat", source))?;
    let window = config.torn_window_bytes();
    let dirty_end = last_nonzero_end(file, path, pos, size, align_down(pos) + 2 * window).await?;
    let Some(dirty_end) = dirty_end else {
        // Zeros from `pos` on: the clean end of the data.
        if !is_last {
            seal_segment(storage, dir, file, path, &index).await?;
        }
        return Ok((index, false));
    };
    let torn = is_last && dirty_end <= align_down(pos) + window;
    if torn {
        tracing::warn!(
            path = %path.display(), pos, offset = %offset, dropped_bytes = dirty_end - pos, %reason,
            "trimmed a torn tail left by an interrupted write"
        );
        zero_range(storage, file, path, pos, dirty_end, config).await?;
        return Ok((index, false));
    }
    let error = StorageError::Corrupt { path: path.to_path_buf(), pos: FilePos(pos), offset, reason };
    cut_or_refuse(storage, dir, mode, error, bases, index.base, Some((file, pos))).await?;
    Ok((index, true))
}

/// Refuses the partition, or (operator override) cuts the log at the
/// corruption and deletes every later segment.
async fn cut_or_refuse<S: Storage>(
    storage: &S,
    dir: &Path,
    mode: RecoveryMode,
    error: StorageError,
    bases: &BTreeSet<Offset>,
    at_base: Offset,
    cut_file: Option<(&S::File, u64)>,
) -> Result<()> {
    if mode == RecoveryMode::Strict {
        tracing::error!(%error, "refusing corrupt partition");
        return Err(error);
    }
    tracing::error!(%error, "truncating the log at the corruption, as the operator asked");
    if let Some((file, pos)) = cut_file {
        let path = log_path(dir, at_base);
        file.truncate(pos).await.map_err(|source| StorageError::io("truncating", &path, source))?;
        file.fdatasync().await.map_err(|source| StorageError::io("fdatasync", &path, source))?;
    }
    let doomed = bases.range(at_base..).filter(|base| cut_file.is_none() || **base != at_base);
    for &base in doomed {
        for path in [log_path(dir, base), index_path(dir, base)] {
            match storage.remove(&path).await {
                Ok(()) => tracing::error!(path = %path.display(), "deleted segment after the corruption"),
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::io("removing", &path, source)),
            }
        }
    }
    // The index of the cut segment, if any, no longer matches it.
    if cut_file.is_some() {
        let _ = storage.remove(&index_path(dir, at_base)).await;
    }
    storage.sync_dir(dir).await.map_err(|source| StorageError::io("syncing", dir, source))
}

/// One past the last non-zero byte in `[from, min(to, size))`, if any.
async fn last_nonzero_end<F: StorageFile>(file: &F, path: &Path, from: u64, size: u64, to: u64) -> Result<Option<u64>> {
    let mut last = None;
    let mut pos = from;
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let end = to.min(size);
    while pos < end {
        buf.clear();
        let want = ((end - pos) as usize).min(READ_CHUNK_BYTES);
        let got =
            file.read_into(pos, want, &mut buf).await.map_err(|source| StorageError::io("reading", path, source))?;
        if got == 0 {
            break;
        }
        if let Some(index) = buf.iter().rposition(|&byte| byte != 0) {
            last = Some(pos + index as u64 + 1);
        }
        pos += got as u64;
    }
    Ok(last)
}

/// Overwrites `[from, to)` with zeros on disk (keeping the bytes before
/// `from` in its block) and syncs, so garbage from a torn write can never be
/// mistaken for data by a later recovery.
async fn zero_range<S: Storage>(
    storage: &S,
    file: &S::File,
    path: &Path,
    from: u64,
    to: u64,
    config: &LogConfig,
) -> Result<()> {
    let io = |op, source| StorageError::io(op, path, source);
    let block_start = align_down(from);
    let mut prefix = Vec::new();
    file.read_into(block_start, (from - block_start) as usize, &mut prefix)
        .await
        .map_err(|source| io("reading", source))?;
    let mut pos = block_start;
    let end = align_up(to);
    while pos < end {
        let len = ((end - pos) as usize).min(config.write_bytes_max);
        let len = align_up(len as u64) as usize;
        let mut buf = storage.alloc_buf(len);
        buf.as_mut_slice().fill(0);
        if pos == block_start {
            buf.as_mut_slice()[..prefix.len()].copy_from_slice(&prefix);
        }
        file.write_at(buf, pos).await.map_err(|source| io("zeroing torn tail", source))?;
        pos += len as u64;
    }
    file.fdatasync().await.map_err(|source| io("fdatasync", source))
}
