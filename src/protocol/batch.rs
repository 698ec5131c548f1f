//! Kafka RecordBatch v2 (magic 2): validation, zero-copy reading and building.
//!
//! ringbroker stores and serves batches in exactly the byte layout Kafka
//! producers send, so a later Kafka-protocol front door only translates
//! request framing; batches go to disk and back to consumers untouched.
//! The broker assigns offsets by rewriting the 8-byte `baseOffset` in place
//! ([`set_base_offset`]); that field lies outside the CRC, so assigning
//! offsets never costs a re-checksum.
//!
//! Layout (big-endian, 61-byte header, positions are the `*_POS` constants):
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 (CRC-32C of attributes..end) | attributes i16 | lastOffsetDelta i32 |
//! baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16 |
//! baseSequence i32 | recordsCount i32 | records...
//! ```
//!
//! Each record is `length varint | attributes i8 | timestampDelta varlong |
//! offsetDelta varint | keyLength varint | key | valueLength varint | value |
//! headersCount varint | headers`, each header `keyLength varint | key |
//! valueLength varint | value`; a length of -1 means null.
//!
//! Everything here is pure: no I/O, and reading never allocates, so a length
//! field from the network can never make the broker allocate.

use super::compression::{self, CompressionError};
pub use super::compression::{Compression, COMPRESSION_MASK};
use super::varint::{self, VarintError};

/// Bytes of the fixed batch header; records start here.
pub const HEADER_LEN: usize = 61;
/// `baseOffset` + `batchLength`: the bytes not counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format this codec accepts.
pub const MAGIC: i8 = 2;
/// Smallest legal `batchLength`: a header with no room for records.
pub const MIN_BATCH_LENGTH: usize = HEADER_LEN - LOG_OVERHEAD;

pub const BASE_OFFSET_POS: usize = 0;
pub const BATCH_LENGTH_POS: usize = 8;
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
pub const MAGIC_POS: usize = 16;
pub const CRC_POS: usize = 17;
/// First byte covered by the CRC.
pub const ATTRIBUTES_POS: usize = 21;
pub const LAST_OFFSET_DELTA_POS: usize = 23;
pub const BASE_TIMESTAMP_POS: usize = 27;
pub const MAX_TIMESTAMP_POS: usize = 35;
pub const PRODUCER_ID_POS: usize = 43;
pub const PRODUCER_EPOCH_POS: usize = 51;
pub const BASE_SEQUENCE_POS: usize = 53;
pub const RECORDS_COUNT_POS: usize = 57;
pub const RECORDS_POS: usize = HEADER_LEN;

/// Attribute bit 3: timestamps are log-append time rather than create time.
pub const TIMESTAMP_TYPE_FLAG: i16 = 0x08;
/// Attribute bit 4: the batch belongs to a transaction.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;
/// Attribute bit 5: the batch holds control records (transaction markers).
pub const CONTROL_FLAG: i16 = 0x20;

/// `producerId` of a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producerEpoch` of a non-idempotent producer.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `baseSequence` of a non-idempotent producer.
pub const NO_SEQUENCE: i32 = -1;
/// `partitionLeaderEpoch` before a broker has stamped one.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Why a batch was rejected. Each variant carries enough detail to log;
/// callers that only need to branch use [`BatchError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("bad batch length: {0}")]
    Length(LengthProblem),
    #[error("unsupported batch magic {0} (only {MAGIC} is accepted)")]
    Magic(i8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    /// `recordsCount` is not positive or disagrees with `lastOffsetDelta`.
    #[error("bad record count: recordsCount {records_count}, lastOffsetDelta {last_offset_delta}")]
    Count { records_count: i32, last_offset_delta: i32 },
    /// Record `index` (0-based) or the record area around it is malformed.
    #[error("bad record {index}: {problem}")]
    Records { index: i32, problem: RecordsProblem },
    /// Records of a compressed batch cannot be read without decompressing.
    #[error("records are {0:?}-compressed")]
    Compressed(Compression),
    /// A compressed batch's records do not inflate (within the limit).
    #[error("compressed records: {0}")]
    Inflate(CompressionError),
}

/// The coarse class of a [`BatchError`], for callers that map errors to
/// protocol error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchErrorKind {
    Length,
    Magic,
    Crc,
    /// Record count or record encoding; also "records are compressed".
    Records,
}

impl BatchError {
    pub fn kind(&self) -> BatchErrorKind {
        match self {
            BatchError::Length(_) => BatchErrorKind::Length,
            BatchError::Magic(_) => BatchErrorKind::Magic,
            BatchError::Crc { .. } => BatchErrorKind::Crc,
            BatchError::Count { .. }
            | BatchError::Records { .. }
            | BatchError::Compressed(_)
            | BatchError::Inflate(_) => BatchErrorKind::Records,
        }
    }
}

/// Detail of a [`BatchError::Length`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthProblem {
    /// The buffer ends before the batch (or its 12-byte length prefix) does.
    #[error("need {needed} bytes, buffer holds {available}")]
    Truncated { needed: usize, available: usize },
    /// `batchLength` cannot even hold the fixed header.
    #[error("batchLength {0} is below the minimum {MIN_BATCH_LENGTH}")]
    TooSmall(i32),
    /// The batch is larger than the caller allows.
    #[error("batch of {total} bytes exceeds the limit of {max}")]
    TooLarge { total: usize, max: usize },
}

/// Detail of a [`BatchError::Records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordsProblem {
    #[error("{field}: {error}")]
    Varint { field: &'static str, error: VarintError },
    /// A length or count that is negative where it may not be.
    #[error("{field}: invalid length {len}")]
    BadLength { field: &'static str, len: i32 },
    /// A length that runs past the end of its record (or of the batch).
    #[error("{field}: {len} bytes claimed, {available} left")]
    Overrun { field: &'static str, len: usize, available: usize },
    /// The record's fields end before its declared length does.
    #[error("{bytes} unread bytes at the end of the record")]
    RecordTrailing { bytes: usize },
    #[error("offsetDelta {found}, expected {expected}")]
    OffsetDelta { expected: i32, found: i32 },
    /// The batch ends before `recordsCount` records were read.
    #[error("batch holds only {found} of {expected} records")]
    TooFew { expected: i32, found: i32 },
    /// Bytes remain after `recordsCount` records.
    #[error("{bytes} bytes after the last record")]
    TrailingBytes { bytes: usize },
}

/// Copies `N` bytes at `pos`. Callers only pass positions inside a buffer
/// whose length was already checked, so the slice index cannot fail.
#[inline]
fn bytes_at<const N: usize>(buf: &[u8], pos: usize) -> [u8; N] {
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(&buf[pos..pos + N]);
    bytes
}

fn truncated(needed: usize, available: usize) -> BatchError {
    BatchError::Length(LengthProblem::Truncated { needed, available })
}

/// Looks at the first 12 bytes of `buf` (a stream of concatenated batches)
/// and returns the total length (12 + batchLength) of the batch that starts
/// there. `Ok(None)` if `buf` has fewer than 12 bytes; `Err(Length)` if
/// batchLength is too small for a header or the batch would exceed
/// `max_batch_bytes`. Never looks past `buf`, never allocates, so a reader
/// can call it before deciding how much to buffer.
pub fn peek_batch_len(buf: &[u8], max_batch_bytes: usize) -> Result<Option<usize>, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Ok(None);
    }
    let batch_length = i32::from_be_bytes(bytes_at(buf, BATCH_LENGTH_POS));
    let body = match usize::try_from(batch_length) {
        Ok(body) if body >= MIN_BATCH_LENGTH => body,
        _ => return Err(BatchError::Length(LengthProblem::TooSmall(batch_length))),
    };
    let total = LOG_OVERHEAD + body;
    if total > max_batch_bytes {
        let problem = LengthProblem::TooLarge { total, max: max_batch_bytes };
        return Err(BatchError::Length(problem));
    }
    Ok(Some(total))
}

/// Rewrites `baseOffset` in place. The field is outside the CRC, so the
/// batch stays valid without re-checksumming.
///
/// # Panics
/// If `batch.len() < 8`.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets a finished batch's producer id, epoch and base sequence and
/// recomputes its CRC, which covers them. A buffer shorter than a batch
/// header is left alone.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    if batch.len() < HEADER_LEN {
        return;
    }
    put(batch, PRODUCER_ID_POS, &producer_id.to_be_bytes());
    put(batch, PRODUCER_EPOCH_POS, &epoch.to_be_bytes());
    put(batch, BASE_SEQUENCE_POS, &base_sequence.to_be_bytes());
    set_crc(batch);
}

/// A zero-copy, validated view over exactly one batch.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    /// Exactly `total_len()` bytes; at least [`HEADER_LEN`].
    buf: &'a [u8],
}

// Hand-written so logging a view prints its header, not a megabyte of bytes.
impl std::fmt::Debug for BatchView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchView")
            .field("base_offset", &self.base_offset())
            .field("total_len", &self.total_len())
            .field("record_count", &self.record_count())
            .field("compression", &self.compression())
            .field("crc", &self.crc())
            .finish_non_exhaustive()
    }
}

impl<'a> BatchView<'a> {
    /// Fully validates the batch at the start of `buf`: length bounds,
    /// magic, CRC-32C, record count against `lastOffsetDelta`, and for
    /// uncompressed batches every record (parsed without allocating; they
    /// must exactly fill the batch with offset deltas `0..count`).
    /// Compressed records are opaque and are only covered by the CRC.
    /// Bytes after the batch in `buf` are ignored.
    pub fn parse(buf: &'a [u8], max_batch_bytes: usize) -> Result<Self, BatchError> {
        let view = Self::frame(buf, max_batch_bytes)?;
        // CRC before the count checks: a corrupted batch reports corruption.
        view.verify_crc()?;
        view.check_counts()?;
        // The quick walk accepts only what the full one accepts; when it is
        // unsure (or the batch is bad), the full walk decides and names the
        // problem.
        if view.compression() == Compression::None && !records_surely_valid(view.records_area(), view.record_count()) {
            for record in view.record_iter() {
                record?;
            }
        }
        Ok(view)
    }

    /// Like [`parse`](Self::parse) without the CRC check and record walk,
    /// for bytes this broker already validated (e.g. read back from its log).
    pub fn parse_header(buf: &'a [u8], max_batch_bytes: usize) -> Result<Self, BatchError> {
        let view = Self::frame(buf, max_batch_bytes)?;
        view.check_counts()?;
        Ok(view)
    }

    /// Length and magic checks shared by both parsers.
    fn frame(buf: &'a [u8], max_batch_bytes: usize) -> Result<Self, BatchError> {
        let total = peek_batch_len(buf, max_batch_bytes)?.ok_or_else(|| truncated(LOG_OVERHEAD, buf.len()))?;
        let batch = buf.get(..total).ok_or_else(|| truncated(total, buf.len()))?;
        let view = BatchView { buf: batch };
        // Magic sits at the same position in every Kafka message format, so
        // an old-format batch is reported as such rather than as garbage.
        if view.magic() != MAGIC {
            return Err(BatchError::Magic(view.magic()));
        }
        Ok(view)
    }

    fn check_counts(&self) -> Result<(), BatchError> {
        let records_count = self.record_count();
        let last_offset_delta = self.last_offset_delta();
        let consistent = records_count >= 1
            && last_offset_delta >= 0
            && i64::from(records_count) == i64::from(last_offset_delta) + 1;
        if consistent {
            Ok(())
        } else {
            Err(BatchError::Count { records_count, last_offset_delta })
        }
    }

    /// Recomputes the CRC-32C over attributes..end and compares it with the
    /// stored one; lets a reader of a [`parse_header`](Self::parse_header)
    /// view scrub it later.
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let stored = self.crc();
        let computed = crc32c::crc32c(&self.buf[ATTRIBUTES_POS..]);
        if stored == computed {
            Ok(())
        } else {
            Err(BatchError::Crc { stored, computed })
        }
    }

    /// The whole batch, `total_len()` bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// 12 + batchLength.
    pub fn total_len(&self) -> usize {
        self.buf.len()
    }

    pub fn base_offset(&self) -> i64 {
        i64::from_be_bytes(bytes_at(self.buf, BASE_OFFSET_POS))
    }

    pub fn batch_length(&self) -> i32 {
        i32::from_be_bytes(bytes_at(self.buf, BATCH_LENGTH_POS))
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        i32::from_be_bytes(bytes_at(self.buf, PARTITION_LEADER_EPOCH_POS))
    }

    pub fn magic(&self) -> i8 {
        i8::from_be_bytes(bytes_at(self.buf, MAGIC_POS))
    }

    /// The stored CRC (not recomputed).
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes(bytes_at(self.buf, CRC_POS))
    }

    pub fn attributes(&self) -> i16 {
        i16::from_be_bytes(bytes_at(self.buf, ATTRIBUTES_POS))
    }

    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes())
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_FLAG != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_FLAG != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_FLAG != 0
    }

    pub fn last_offset_delta(&self) -> i32 {
        i32::from_be_bytes(bytes_at(self.buf, LAST_OFFSET_DELTA_POS))
    }

    /// `baseTimestamp`: record timestamps are deltas from it.
    pub fn first_timestamp(&self) -> i64 {
        i64::from_be_bytes(bytes_at(self.buf, BASE_TIMESTAMP_POS))
    }

    pub fn max_timestamp(&self) -> i64 {
        i64::from_be_bytes(bytes_at(self.buf, MAX_TIMESTAMP_POS))
    }

    pub fn producer_id(&self) -> i64 {
        i64::from_be_bytes(bytes_at(self.buf, PRODUCER_ID_POS))
    }

    pub fn producer_epoch(&self) -> i16 {
        i16::from_be_bytes(bytes_at(self.buf, PRODUCER_EPOCH_POS))
    }

    pub fn base_sequence(&self) -> i32 {
        i32::from_be_bytes(bytes_at(self.buf, BASE_SEQUENCE_POS))
    }

    pub fn record_count(&self) -> i32 {
        i32::from_be_bytes(bytes_at(self.buf, RECORDS_COUNT_POS))
    }

    /// Offset of the last record: `base_offset + last_offset_delta`
    /// (wrapping, since a hostile base offset must not panic the broker).
    pub fn last_offset(&self) -> i64 {
        self.base_offset().wrapping_add(i64::from(self.last_offset_delta()))
    }

    /// Iterates the records of an uncompressed batch.
    /// `Err(BatchError::Compressed)` for a compressed one.
    pub fn records(&self) -> Result<RecordIter<'a>, BatchError> {
        match self.compression() {
            Compression::None => Ok(self.record_iter()),
            other => Err(BatchError::Compressed(other)),
        }
    }

    fn record_iter(&self) -> RecordIter<'a> {
        self.records_in(&self.buf[RECORDS_POS..])
    }

    /// The records area as stored: compressed for a compressed batch.
    pub fn records_area(&self) -> &'a [u8] {
        &self.buf[RECORDS_POS..]
    }

    /// Iterates records laid out in `records` (this batch's records area,
    /// or what it inflates to) with this batch's base timestamp and count.
    pub fn records_in<'r>(&self, records: &'r [u8]) -> RecordIter<'r> {
        RecordIter {
            rest: records,
            base_timestamp: self.first_timestamp(),
            append_time: self.is_log_append_time().then(|| self.max_timestamp()),
            next_index: 0,
            // parse_header already rejected counts below 1.
            count: self.record_count(),
            done: false,
        }
    }

    /// A compressed batch's records area, inflated, refusing to pass
    /// `limit` bytes. (`None` compression: a copy.)
    pub fn inflate(&self, limit: usize) -> Result<Vec<u8>, BatchError> {
        compression::decompress(self.compression(), self.records_area(), limit).map_err(BatchError::Inflate)
    }

    /// What [`parse`](Self::parse) cannot check without inflating: that a
    /// compressed batch inflates within `limit` bytes to exactly its
    /// records. The inflated bytes are dropped; the batch is stored as
    /// produced. Uncompressed batches were checked by `parse` already.
    pub fn verify_compressed_records(&self, limit: usize) -> Result<(), BatchError> {
        if self.compression() == Compression::None {
            return Ok(());
        }
        let inflated = self.inflate(limit)?;
        for record in self.records_in(&inflated) {
            record?;
        }
        Ok(())
    }
}

/// The uncompressed batch `batch` with its records area compressed by
/// `codec`: same header fields, the codec in the attributes, new length and
/// CRC. `codec` `None` returns it unchanged.
pub fn compress_batch(batch: &[u8], codec: Compression) -> Result<Vec<u8>, BatchError> {
    let view = BatchView::parse(batch, usize::MAX)?;
    if view.compression() != Compression::None {
        return Err(BatchError::Compressed(view.compression()));
    }
    with_records(&view, view.records_area(), codec)
}

/// A batch (compressed or not) with its records stored under `codec`
/// instead: inflated within `limit` bytes, each record checked, compressed
/// again; same header fields, new length, attributes and CRC.
pub fn recompress_batch(view: &BatchView<'_>, codec: Compression, limit: usize) -> Result<Vec<u8>, BatchError> {
    let inflated = view.inflate(limit)?;
    for record in view.records_in(&inflated) {
        record?;
    }
    with_records(view, &inflated, codec)
}

/// Marks a batch's timestamps as log-append time `now` (Kafka's
/// `message.timestamp.type=LogAppendTime`): the timestamp-type bit and
/// `maxTimestamp` change, and the CRC is recomputed. Readers then take
/// `now` as every record's timestamp. A buffer shorter than a batch header
/// is left alone.
pub fn set_log_append_time(batch: &mut [u8], now: i64) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let attributes = i16::from_be_bytes(bytes_at(batch, ATTRIBUTES_POS)) | TIMESTAMP_TYPE_FLAG;
    put(batch, ATTRIBUTES_POS, &attributes.to_be_bytes());
    put(batch, MAX_TIMESTAMP_POS, &now.to_be_bytes());
    set_crc(batch);
}

/// `view`'s header with `records` (uncompressed records) stored under `codec`.
fn with_records(view: &BatchView<'_>, records: &[u8], codec: Compression) -> Result<Vec<u8>, BatchError> {
    let batch = view.as_bytes();
    let compressed = compression::compress(codec, records).map_err(BatchError::Inflate)?;
    let mut out = Vec::with_capacity(RECORDS_POS + compressed.len());
    out.extend_from_slice(&batch[..RECORDS_POS]);
    out.extend_from_slice(&compressed);
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| BatchError::Length(LengthProblem::TooLarge { total: out.len(), max: i32::MAX as usize }))?;
    let attributes = (view.attributes() & !COMPRESSION_MASK) | codec.code();
    put(&mut out, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
    put(&mut out, ATTRIBUTES_POS, &attributes.to_be_bytes());
    set_crc(&mut out);
    Ok(out)
}

/// Iterator over the records of one uncompressed batch. It checks what
/// [`BatchView::parse`] checks (each record parses, offset deltas run
/// `0..count`, records exactly fill the batch) and stops after the first
/// error, so it is also safe on views from [`BatchView::parse_header`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    base_timestamp: i64,
    /// The batch's log-append time, which replaces every record's own.
    append_time: Option<i64>,
    next_index: i32,
    count: i32,
    done: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

impl std::iter::FusedIterator for RecordIter<'_> {}

impl<'a> RecordIter<'a> {
    fn step(&mut self) -> Option<Result<RecordView<'a>, BatchError>> {
        let index = self.next_index;
        let fail = |problem| Some(Err(BatchError::Records { index, problem }));
        if index == self.count {
            if self.rest.is_empty() {
                return None;
            }
            return fail(RecordsProblem::TrailingBytes { bytes: self.rest.len() });
        }
        if self.rest.is_empty() {
            return fail(RecordsProblem::TooFew { expected: self.count, found: index });
        }
        let read = match quick_record(&mut self.rest, self.base_timestamp) {
            Some(record) => Ok(record),
            None => read_record(&mut self.rest, self.base_timestamp),
        };
        let record = match read {
            Ok(record) => RecordView { append_time: self.append_time, ..record },
            Err(problem) => return fail(problem),
        };
        if record.offset_delta != index {
            return fail(RecordsProblem::OffsetDelta { expected: index, found: record.offset_delta });
        }
        self.next_index += 1;
        Some(Ok(record))
    }
}

/// One record, borrowing its key, value and headers from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub attributes: i8,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Encoded headers, already validated by `read_record`.
    headers: &'a [u8],
    header_count: usize,
    base_timestamp: i64,
    append_time: Option<i64>,
}

impl<'a> RecordView<'a> {
    /// Iterates `(key, value)` pairs; a `None` value is a null header value.
    /// Keys are UTF-8 by the spec but are not checked (Kafka doesn't either),
    /// so they are returned as bytes.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { rest: self.headers, remaining: self.header_count, index: self.offset_delta }
    }

    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// Absolute timestamp: the batch's first timestamp plus this record's
    /// delta (wrapping, as the encoder does), or for a batch stamped with
    /// log-append time, that time.
    pub fn timestamp_ms(&self) -> i64 {
        self.append_time.unwrap_or(self.base_timestamp.wrapping_add(self.timestamp_delta))
    }
}

/// Iterator over one record's headers; stops after the first error.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: usize,
    /// Record index, for error reports.
    index: i32,
}

/// A header: key bytes and an optional (nullable) value.
pub type HeaderView<'a> = (&'a [u8], Option<&'a [u8]>);

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<HeaderView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match read_header(&mut self.rest) {
            Ok(header) => {
                self.remaining -= 1;
                Some(Ok(header))
            }
            Err(problem) => {
                self.remaining = 0;
                let index = self.index;
                Some(Err(BatchError::Records { index, problem }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl std::iter::FusedIterator for HeaderIter<'_> {}

/// Parses one record off the front of `input`, advancing it only on success.
fn read_record<'a>(input: &mut &'a [u8], base_timestamp: i64) -> Result<RecordView<'a>, RecordsProblem> {
    let mut rest = *input;
    let len = read_len(&mut rest, "record length")?;
    let mut body = take(&mut rest, len, "record length")?;
    let attributes = i8::from_be_bytes(bytes_at(take(&mut body, 1, "attributes")?, 0));
    let timestamp_delta = varint::read_varlong(&mut body).map_err(varint_problem("timestamp delta"))?;
    let offset_delta = varint::read_varint(&mut body).map_err(varint_problem("offset delta"))?;
    let key = read_nullable(&mut body, "key")?;
    let value = read_nullable(&mut body, "value")?;
    let header_count = read_len(&mut body, "header count")?;
    let head = RecordHead { attributes, timestamp_delta, offset_delta, key, value, header_count };
    let record = with_headers(head, body, base_timestamp)?;
    *input = rest;
    Ok(record)
}

/// A record's fields before its headers, as either reader decoded them.
struct RecordHead<'a> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: usize,
}

/// The record whose fields before the headers are `head` and whose
/// remaining bytes, `headers`, must be exactly its headers. Always inlined:
/// a call costs the quick reader a fifth of its instructions.
#[inline(always)]
fn with_headers<'a>(
    head: RecordHead<'a>,
    headers: &'a [u8],
    base_timestamp: i64,
) -> Result<RecordView<'a>, RecordsProblem> {
    let mut rest = headers;
    // Each header consumes at least two bytes or fails, so a huge count on a
    // short record ends quickly.
    for _ in 0..head.header_count {
        read_header(&mut rest)?;
    }
    if !rest.is_empty() {
        return Err(RecordsProblem::RecordTrailing { bytes: rest.len() });
    }
    Ok(RecordView {
        offset_delta: head.offset_delta,
        timestamp_delta: head.timestamp_delta,
        attributes: head.attributes,
        key: head.key,
        value: head.value,
        headers,
        header_count: head.header_count,
        base_timestamp,
        append_time: None,
    })
}

/// Whether `records` holds exactly `count` records that [`RecordIter`]
/// accepts, checked without building them: the validation walk on every
/// produce request, a large share of a shard's CPU for small records.
///
/// `true` only where the full walk would accept; `false` where it would
/// not, or where this walk does not know. It reads varints of up to three
/// bytes (21 bits: in range for every field, so none can be out of range
/// or overlong), and gives up on longer ones, which the full walk then
/// judges.
fn records_surely_valid(mut rest: &[u8], count: i32) -> bool {
    for index in 0..count {
        let Some(len) = quick_len(&mut rest) else { return false };
        let Some((mut body, after)) = rest.split_at_checked(len) else { return false };
        rest = after;
        // Attributes, then the timestamp delta (any value).
        let Some(after_attributes) = body.get(1..) else { return false };
        body = after_attributes;
        if quick_varint(&mut body).is_none()
            || quick_varint(&mut body) != Some(i64::from(index))
            || quick_nullable(&mut body).is_none()
            || quick_nullable(&mut body).is_none()
        {
            return false;
        }
        let Some(headers) = quick_len(&mut body) else { return false };
        for _ in 0..headers {
            let Some(key) = quick_len(&mut body) else { return false };
            let Some(after_key) = body.get(key..) else { return false };
            body = after_key;
            if quick_nullable(&mut body).is_none() {
                return false;
            }
        }
        if !body.is_empty() {
            return false;
        }
    }
    rest.is_empty()
}

/// A zigzag varint of one to three bytes; `None` for anything else
/// (longer, or cut short), leaving `input` as it was.
// Always inlined: the walks call it for every field of every record.
#[inline(always)]
fn quick_varint(input: &mut &[u8]) -> Option<i64> {
    let raw = match **input {
        [a, ..] if a < 0x80 => (1, u32::from(a)),
        [a, b, ..] if b < 0x80 => (2, u32::from(a & 0x7f) | u32::from(b) << 7),
        [a, b, c, ..] if c < 0x80 => (3, u32::from(a & 0x7f) | u32::from(b & 0x7f) << 7 | u32::from(c) << 14),
        _ => return None,
    };
    let (bytes, raw) = raw;
    *input = &input[bytes..];
    Some(i64::from(raw >> 1) ^ -i64::from(raw & 1))
}

/// A non-negative length or count.
#[inline]
fn quick_len(input: &mut &[u8]) -> Option<usize> {
    quick_varint(input).and_then(|len| usize::try_from(len).ok())
}

/// A nullable length and the bytes it covers; `None` (leaving `input` as
/// it was) where [`quick_varint`] gives up or the length is wrong.
#[inline]
fn quick_nullable<'a>(input: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let mut rest = *input;
    let len = quick_varint(&mut rest)?;
    if len == -1 {
        *input = rest;
        return Some(None);
    }
    let (bytes, after) = rest.split_at_checked(usize::try_from(len).ok()?)?;
    *input = after;
    Some(Some(bytes))
}

/// [`read_record`] for a record whose varints are one to three bytes each,
/// as nearly all are: the same record where it gives one, and `None`
/// (leaving `input` as it was) for anything else, which the full reader
/// then decodes or rejects. Three-byte varints are in range for every
/// field (see [`records_surely_valid`]), so there is nothing to check that
/// the full reader would and this one does not.
#[inline]
fn quick_record<'a>(input: &mut &'a [u8], base_timestamp: i64) -> Option<RecordView<'a>> {
    let mut rest = *input;
    let len = quick_len(&mut rest)?;
    let (record, after) = rest.split_at_checked(len)?;
    let (&attributes, mut body) = record.split_first()?;
    let attributes = i8::from_be_bytes([attributes]);
    let timestamp_delta = quick_varint(&mut body)?;
    // 21 bits at most: the cast keeps the value.
    let offset_delta = quick_varint(&mut body)? as i32;
    let key = quick_nullable(&mut body)?;
    let value = quick_nullable(&mut body)?;
    let header_count = quick_len(&mut body)?;
    let head = RecordHead { attributes, timestamp_delta, offset_delta, key, value, header_count };
    let record = with_headers(head, body, base_timestamp).ok()?;
    *input = after;
    Some(record)
}

#[inline]
fn read_header<'a>(input: &mut &'a [u8]) -> Result<HeaderView<'a>, RecordsProblem> {
    let len = read_len(input, "header key length")?;
    let key = take(input, len, "header key")?;
    let value = read_nullable(input, "header value")?;
    Ok((key, value))
}

#[inline]
fn varint_problem(field: &'static str) -> impl Fn(VarintError) -> RecordsProblem {
    move |error| RecordsProblem::Varint { field, error }
}

/// Reads a varint that must be a non-negative length or count.
#[inline]
fn read_len(input: &mut &[u8], field: &'static str) -> Result<usize, RecordsProblem> {
    let len = varint::read_varint(input).map_err(varint_problem(field))?;
    usize::try_from(len).map_err(|_| RecordsProblem::BadLength { field, len })
}

/// Reads a varint length (-1 = null) and the bytes it covers.
#[inline]
fn read_nullable<'a>(input: &mut &'a [u8], field: &'static str) -> Result<Option<&'a [u8]>, RecordsProblem> {
    let len = varint::read_varint(input).map_err(varint_problem(field))?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| RecordsProblem::BadLength { field, len })?;
    take(input, len, field).map(Some)
}

/// Splits `len` bytes off the front of `input`, or fails if there are fewer.
#[inline]
fn take<'a>(input: &mut &'a [u8], len: usize, field: &'static str) -> Result<&'a [u8], RecordsProblem> {
    let bytes: &'a [u8] = input;
    if len > bytes.len() {
        let available = bytes.len();
        return Err(RecordsProblem::Overrun { field, len, available });
    }
    let (head, tail) = bytes.split_at(len);
    *input = tail;
    Ok(head)
}

/// One record to encode with [`BatchBuilder::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'r> {
    pub timestamp_ms: i64,
    pub key: Option<&'r [u8]>,
    pub value: Option<&'r [u8]>,
    /// `(key, value)`; a `None` value encodes a null header value.
    pub headers: &'r [(&'r str, Option<&'r [u8]>)],
}

/// Header fields a [`BatchBuilder`] writes. `Default` is what a
/// non-idempotent producer sends before a broker assigns anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    /// Timestamp-type/transactional/control bits; the compression bits are
    /// cleared because the builder only writes uncompressed records.
    pub attributes: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            attributes: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
        }
    }
}

/// Builds an uncompressed batch into a caller-provided buffer, so a
/// producer can reuse one allocation for every batch it sends. For a batch
/// filled across calls, see [`OpenBatch`]; both use the same encoder.
#[derive(Debug)]
pub struct BatchBuilder<'b> {
    out: &'b mut Vec<u8>,
    first_timestamp: i64,
    max_timestamp: i64,
    count: i32,
}

impl<'b> BatchBuilder<'b> {
    /// Clears `out` and writes a header with [`BatchOptions::default`].
    pub fn new(out: &'b mut Vec<u8>, first_timestamp_ms: i64) -> Self {
        Self::with_options(out, first_timestamp_ms, BatchOptions::default())
    }

    /// Clears `out` and writes a header with the given fields; record
    /// timestamps are stored as deltas from `first_timestamp_ms`.
    pub fn with_options(out: &'b mut Vec<u8>, first_timestamp_ms: i64, options: BatchOptions) -> Self {
        write_header(out, first_timestamp_ms, options);
        BatchBuilder { out, first_timestamp: first_timestamp_ms, max_timestamp: i64::MIN, count: 0 }
    }

    /// Appends one record with offset delta = records pushed so far.
    ///
    /// # Panics
    /// If a key, value or header is longer than `i32::MAX` bytes, or the
    /// batch already holds `i32::MAX` records (neither is encodable).
    pub fn push(&mut self, record: &Record<'_>) {
        let measured = measure(record, self.first_timestamp, self.count)
            .expect("a record field or the record count exceeds i32::MAX, not encodable in a Kafka batch");
        write_record(self.out, record, self.first_timestamp, self.count, measured);
        self.max_timestamp = self.max_timestamp.max(record.timestamp_ms);
        self.count += 1;
    }

    pub fn record_count(&self) -> usize {
        // count is never negative.
        self.count as usize
    }

    /// Current encoded size, header included.
    pub fn len_bytes(&self) -> usize {
        self.out.len()
    }

    /// Fills in lastOffsetDelta, maxTimestamp, recordsCount, batchLength and
    /// the CRC, and returns the finished batch.
    ///
    /// # Panics
    /// If no record was pushed (Kafka batches are never empty) or the batch
    /// exceeds `i32::MAX + 12` bytes.
    pub fn finish(self) -> &'b [u8] {
        assert!(self.count > 0, "BatchBuilder::finish: no record was pushed");
        seal(self.out, self.count, self.max_timestamp).expect("batch length exceeds i32::MAX");
        set_crc(self.out);
        self.out
    }
}

/// A record's encoded size in one batch: its body (after the length
/// prefix) and its total bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    body: i32,
    pub total: usize,
}

/// A batch filled one record at a time across calls, in a buffer it owns:
/// the resumable form of [`BatchBuilder`] (whose borrow of its buffer
/// cannot outlive one call). The producer's accumulator keeps one per
/// partition while records arrive. Same encoder, same bytes.
#[derive(Debug)]
pub struct OpenBatch {
    buf: Vec<u8>,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    count: i32,
}

impl OpenBatch {
    /// Starts a batch in `buf` (cleared; its capacity is reused) with a
    /// non-idempotent producer's header.
    pub fn start(buf: Vec<u8>, first_timestamp_ms: i64) -> OpenBatch {
        OpenBatch::start_with(buf, first_timestamp_ms, BatchOptions::default())
    }

    pub fn start_with(mut buf: Vec<u8>, first_timestamp_ms: i64, options: BatchOptions) -> OpenBatch {
        write_header(&mut buf, first_timestamp_ms, options);
        OpenBatch { buf, first_timestamp_ms, max_timestamp_ms: i64::MIN, count: 0 }
    }

    /// The record's encoded size in this batch as it is now, for
    /// [`push_measured`](Self::push_measured); `None` if it cannot be
    /// encoded (a field longer than `i32::MAX` bytes, or the batch full).
    pub fn measure(&self, record: &Record<'_>) -> Option<Measured> {
        measure(record, self.first_timestamp_ms, self.count)
    }

    /// Appends a record measured by [`measure`](Self::measure) with no push
    /// in between (the size depends on the batch's record count), so the
    /// producer's hot path computes it once.
    pub fn push_measured(&mut self, record: &Record<'_>, measured: Measured) {
        debug_assert_eq!(self.measure(record), Some(measured));
        write_record(&mut self.buf, record, self.first_timestamp_ms, self.count, measured);
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
        // measure checked that this does not overflow.
        self.count += 1;
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn record_count(&self) -> usize {
        // count is never negative.
        self.count as usize
    }

    /// Fills in the header fields that depend on the records and returns the
    /// finished batch. Returns `None` for an empty batch (Kafka batches are
    /// never empty) or one longer than the format allows.
    pub fn finish(self) -> Option<Vec<u8>> {
        let mut batch = self.finish_for_stamping()?;
        set_crc(&mut batch);
        Some(batch)
    }

    /// [`finish`](Self::finish) without the CRC, for a batch that gets its
    /// producer fields next: [`set_producer`] computes the CRC over them.
    /// Until then the batch does not parse.
    pub fn finish_for_stamping(mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        seal(&mut self.buf, self.count, self.max_timestamp_ms)?;
        Some(self.buf)
    }

    /// Takes the buffer back (for reuse) without finishing the batch.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// Clears `out` and writes a batch header; the fields that depend on the
/// records are filled in by [`seal`].
fn write_header(out: &mut Vec<u8>, first_timestamp_ms: i64, options: BatchOptions) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    let attributes = options.attributes & !COMPRESSION_MASK;
    put(out, BASE_OFFSET_POS, &options.base_offset.to_be_bytes());
    put(out, PARTITION_LEADER_EPOCH_POS, &options.partition_leader_epoch.to_be_bytes());
    put(out, MAGIC_POS, &MAGIC.to_be_bytes());
    put(out, ATTRIBUTES_POS, &attributes.to_be_bytes());
    put(out, BASE_TIMESTAMP_POS, &first_timestamp_ms.to_be_bytes());
    put(out, PRODUCER_ID_POS, &options.producer_id.to_be_bytes());
    put(out, PRODUCER_EPOCH_POS, &options.producer_epoch.to_be_bytes());
    put(out, BASE_SEQUENCE_POS, &options.base_sequence.to_be_bytes());
}

/// A record's size as the `count`-th record of a batch whose first
/// timestamp is `first_timestamp_ms`; `None` if it is not encodable.
fn measure(record: &Record<'_>, first_timestamp_ms: i64, count: i32) -> Option<Measured> {
    count.checked_add(1)?;
    // Wrapping keeps any i64 pair encodable; the reader wraps back.
    let timestamp_delta = record.timestamp_ms.wrapping_sub(first_timestamp_ms);
    let mut headers = 0usize;
    for (key, value) in record.headers {
        headers = headers.checked_add(nullable_len(Some(key.as_bytes()))?)?.checked_add(nullable_len(*value)?)?;
    }
    let fixed = 1
        + varint::varlong_len(timestamp_delta)
        + varint::varint_len(count)
        + varint::varint_len(i32::try_from(record.headers.len()).ok()?);
    let body = fixed.checked_add(nullable_len(record.key)?)?.checked_add(nullable_len(record.value)?)?;
    let body = i32::try_from(body.checked_add(headers)?).ok()?;
    let total = varint::varint_len(body).checked_add(body as usize)?;
    Some(Measured { body, total })
}

/// Appends the `count`-th record of a batch, as [`measure`] sized it.
fn write_record(out: &mut Vec<u8>, record: &Record<'_>, first_timestamp_ms: i64, count: i32, measured: Measured) {
    let start = out.len();
    out.reserve(measured.total);
    // The fields up to the key's bytes (and, for a record without a key, up
    // to the value's) are put together first and copied once: four or five
    // varints and a byte, within `Packed::CAPACITY`.
    let mut head = varint::Packed::default();
    head.varint(measured.body);
    head.byte(0); // record attributes: unused in v2
    head.varlong(record.timestamp_ms.wrapping_sub(first_timestamp_ms));
    head.varint(count);
    // measure checked that every length below fits an i32.
    match record.key {
        None => {
            head.varint(-1);
            head.varint(record.value.map_or(-1, |value| value.len() as i32));
            out.extend_from_slice(head.as_slice());
            out.extend_from_slice(record.value.unwrap_or_default());
        }
        Some(key) => {
            head.varint(key.len() as i32);
            out.extend_from_slice(head.as_slice());
            out.extend_from_slice(key);
            write_nullable(out, record.value);
        }
    }
    varint::write_varint(out, record.headers.len() as i32);
    for (key, value) in record.headers {
        write_nullable(out, Some(key.as_bytes()));
        write_nullable(out, *value);
    }
    debug_assert_eq!(out.len() - start, measured.total);
}

/// Fills in the header fields that depend on the records, all but the CRC;
/// `None` if the batch is longer than the format allows.
fn seal(out: &mut [u8], count: i32, max_timestamp_ms: i64) -> Option<()> {
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD).ok()?;
    put(out, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
    put(out, LAST_OFFSET_DELTA_POS, &(count - 1).to_be_bytes());
    put(out, MAX_TIMESTAMP_POS, &max_timestamp_ms.to_be_bytes());
    put(out, RECORDS_COUNT_POS, &count.to_be_bytes());
    Some(())
}

/// Computes the CRC over attributes..end and stores it.
fn set_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_POS..]);
    put(batch, CRC_POS, &crc.to_be_bytes());
}

#[inline]
fn put(out: &mut [u8], pos: usize, bytes: &[u8]) {
    out[pos..pos + bytes.len()].copy_from_slice(bytes);
}

/// A nullable field's encoded size; `None` if its length does not fit an i32.
#[inline]
fn nullable_len(bytes: Option<&[u8]>) -> Option<usize> {
    match bytes {
        None => Some(varint::varint_len(-1)),
        Some(bytes) => Some(varint::varint_len(i32::try_from(bytes.len()).ok()?) + bytes.len()),
    }
}

/// Callers checked the length with `nullable_len`.
#[inline]
fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => varint::write_varint(out, -1),
        Some(bytes) => {
            varint::write_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn open_batch_records<'a>(headers: &'a [(&'a str, Option<&'a [u8]>)]) -> Vec<Record<'a>> {
        vec![
            Record { timestamp_ms: 1_700_000_000_000, key: Some(b"k1"), value: Some(b"v1"), headers: &[] },
            Record { timestamp_ms: 1_699_999_999_000, key: None, value: None, headers },
            Record { timestamp_ms: i64::MAX, key: Some(b""), value: Some(&[9u8; 300]), headers },
            Record { timestamp_ms: i64::MIN, key: None, value: Some(b"wrapping delta"), headers: &[] },
        ]
    }

    #[test]
    fn a_batch_finished_for_stamping_gets_its_crc_from_set_producer() {
        let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"abc"))];
        let fill = |open: &mut OpenBatch| {
            for record in &open_batch_records(headers) {
                let measured = open.measure(record).unwrap();
                open.push_measured(record, measured);
            }
        };
        let mut checksummed = OpenBatch::start(Vec::new(), 1_700_000_000_000);
        let mut unchecksummed = OpenBatch::start(Vec::new(), 1_700_000_000_000);
        fill(&mut checksummed);
        fill(&mut unchecksummed);
        let mut checksummed = checksummed.finish().unwrap();
        let mut unchecksummed = unchecksummed.finish_for_stamping().unwrap();
        assert!(BatchView::parse(&unchecksummed, MAX).is_err(), "no CRC yet");
        set_producer(&mut checksummed, 7, 1, 40);
        set_producer(&mut unchecksummed, 7, 1, 40);
        assert_eq!(unchecksummed, checksummed);
        assert_eq!(BatchView::parse(&unchecksummed, MAX).unwrap().producer_id(), 7);
        assert_eq!(OpenBatch::start(Vec::new(), 0).finish_for_stamping(), None, "empty");
    }

    #[test]
    fn open_batches_encode_exactly_like_the_batch_builder() {
        let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"abc")), ("empty", None)];
        let records = open_batch_records(headers);
        let mut expected = Vec::new();
        let mut builder = BatchBuilder::new(&mut expected, records[0].timestamp_ms);
        let mut open = OpenBatch::start(Vec::with_capacity(7), records[0].timestamp_ms);
        for record in &records {
            let before = open.len_bytes();
            let predicted = open.measure(record).unwrap();
            builder.push(record);
            open.push_measured(record, predicted);
            assert_eq!(open.len_bytes() - before, predicted.total);
            assert_eq!(open.len_bytes(), builder.len_bytes());
        }
        builder.finish();
        assert_eq!(open.record_count(), records.len());
        let finished = open.finish().unwrap();
        assert_eq!(finished, expected);
        let view = BatchView::parse(&finished, finished.len()).unwrap();
        assert_eq!(view.record_count(), 4);
    }

    #[test]
    fn empty_batches_are_never_finished_and_buffers_are_reused() {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(b"stale bytes from a previous batch");
        let open = OpenBatch::start(buf, 0);
        assert_eq!(open.len_bytes(), HEADER_LEN);
        let buf = open.into_buffer();
        assert!(buf.capacity() >= 4096);
        assert!(OpenBatch::start(buf, 0).finish().is_none());
    }

    fn build(records: &[Record<'_>], first_ts: i64, options: BatchOptions) -> Vec<u8> {
        let mut out = Vec::new();
        let mut builder = BatchBuilder::with_options(&mut out, first_ts, options);
        for record in records {
            builder.push(record);
        }
        builder.finish();
        out
    }

    fn simple(value: &[u8]) -> Record<'_> {
        Record { timestamp_ms: 1_000, key: None, value: Some(value), headers: &[] }
    }

    /// A batch around a hand-written record area, with consistent counts,
    /// length and CRC, so only the record walk can reject it.
    fn with_record_area(area: &[u8], count: i32) -> Vec<u8> {
        let mut out = build(&[simple(b"x")], 0, BatchOptions::default());
        out.truncate(HEADER_LEN);
        out.extend_from_slice(area);
        let batch_length = (out.len() - LOG_OVERHEAD) as i32;
        put(&mut out, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
        put(&mut out, RECORDS_COUNT_POS, &count.to_be_bytes());
        put(&mut out, LAST_OFFSET_DELTA_POS, &(count - 1).to_be_bytes());
        fix_crc(&mut out);
        out
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_POS..]);
        put(batch, CRC_POS, &crc.to_be_bytes());
    }

    /// Smallest record: null key and value, no headers; body is 6 bytes.
    fn tiny_record(offset_delta: u8) -> [u8; 7] {
        [0x0c, 0, 0, offset_delta * 2, 0x01, 0x01, 0]
    }

    #[test]
    fn the_quick_walk_reads_typical_batches_and_leaves_long_varints_to_the_full_one() {
        // 3000 records of 100 bytes with keys and a header: offset deltas
        // take up to two bytes, record lengths two; all quick.
        let value = [7u8; 100];
        let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"abc")), ("none", None)];
        let records: Vec<Record<'_>> = (0..3000)
            .map(|i| Record { timestamp_ms: 1_000 + i, key: Some(b"key"), value: Some(&value), headers })
            .collect();
        let batch = build(&records, 1_000, BatchOptions::default());
        let view = BatchView::parse(&batch, MAX).unwrap();
        assert!(records_surely_valid(view.records_area(), 3000));
        // A timestamp delta of a day needs a five-byte varlong: the quick walk
        // gives up, and parse still accepts the batch through the full walk.
        let late = Record { timestamp_ms: 1_000 + 86_400_000, ..simple(b"late") };
        let batch = build(&[simple(b"x"), late], 1_000, BatchOptions::default());
        let view = BatchView::parse(&batch, MAX).unwrap();
        assert!(!records_surely_valid(view.records_area(), 2));
        // Too few, too many, trailing bytes: not surely valid.
        let area = [tiny_record(0), tiny_record(1)].concat();
        assert!(records_surely_valid(&area, 2));
        assert!(!records_surely_valid(&area, 3));
        assert!(!records_surely_valid(&area, 1));
        assert!(!records_surely_valid(&[&area[..], &[0]].concat(), 2));
        // Each check of a record, broken on its own; the full walk refuses
        // each of these too.
        let broken: [(&str, Vec<u8>); 6] = [
            ("offset delta out of order", [tiny_record(0), tiny_record(2)].concat()),
            // Key length -2 (zigzag 0x03): neither null nor a length.
            ("key length below -1", vec![0x0c, 0, 0, 0, 0x03, 0x01, 0]),
            ("value longer than the record", vec![0x0c, 0, 0, 0, 0x01, 0x04, 0]),
            // Body of 7 bytes: one left after the header count.
            ("bytes after the headers", vec![0x0e, 0, 0, 0, 0x01, 0x01, 0, 9]),
            ("a header past the record", vec![0x0c, 0, 0, 0, 0x01, 0x01, 0x02]),
            ("record length past the area", vec![0x0e, 0, 0, 0, 0x01, 0x01, 0]),
        ];
        for (what, area) in broken {
            assert!(!records_surely_valid(&area, 1 + i32::from(what.starts_with("offset"))), "{what}");
            let batch = with_record_area(&area, 1 + i32::from(what.starts_with("offset")));
            assert!(BatchView::parse(&batch, MAX).is_err(), "{what}");
        }
    }

    #[test]
    fn the_quick_record_reader_leaves_every_broken_record_to_the_full_one() {
        let long_timestamp = [0x12, 0, 0x80, 0x80, 0x80, 0x01, 0, 0x01, 0x01, 0];
        // (what, bytes, whether the full reader accepts them)
        let cases: [(&str, &[u8], bool); 7] = [
            ("key length below -1", &[0x0c, 0, 0, 0, 0x03, 0x01, 0], false),
            ("value longer than the record", &[0x0c, 0, 0, 0, 0x01, 0x04, 0], false),
            ("bytes after the headers", &[0x0e, 0, 0, 0, 0x01, 0x01, 0, 9], false),
            ("a header past the record", &[0x0c, 0, 0, 0, 0x01, 0x01, 0x02], false),
            ("record length past the input", &[0x0e, 0, 0, 0, 0x01, 0x01, 0], false),
            ("negative record length", &[0x01, 0, 0, 0, 0x01, 0x01, 0], false),
            ("a four-byte timestamp delta", &long_timestamp, true),
        ];
        for (what, input, valid) in cases {
            let mut rest = input;
            assert_eq!(quick_record(&mut rest, 0), None, "{what}");
            assert_eq!(rest, input, "{what}: nothing consumed");
            let full = read_record(&mut rest, 0);
            assert_eq!(full.is_ok(), valid, "{what}: {full:?}");
        }
        let mut tiny = &tiny_record(3)[..];
        assert_eq!(quick_record(&mut tiny, 5).map(|record| (record.offset_delta, record.timestamp_ms())), Some((3, 5)));
        assert!(tiny.is_empty());
    }

    fn records_problem(batch: &[u8]) -> RecordsProblem {
        match BatchView::parse(batch, MAX) {
            Err(BatchError::Records { problem, .. }) => problem,
            other => panic!("expected a Records error, got {other:?}"),
        }
    }

    #[test]
    fn builder_round_trips_through_parse() {
        let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"abc")), ("nil", None)];
        let records = [
            Record { timestamp_ms: 1_005, key: Some(b"k1"), value: Some(b"v1"), headers },
            Record { timestamp_ms: 990, key: None, value: None, headers: &[] },
        ];
        let options = BatchOptions {
            base_offset: 77,
            partition_leader_epoch: 3,
            attributes: TRANSACTIONAL_FLAG | COMPRESSION_MASK,
            producer_id: 42,
            producer_epoch: 2,
            base_sequence: 9,
        };
        let bytes = build(&records, 1_000, options);
        let view = BatchView::parse(&bytes, MAX).unwrap();
        assert_eq!(view.total_len(), bytes.len());
        assert_eq!(view.batch_length() as usize, bytes.len() - LOG_OVERHEAD);
        assert_eq!(view.base_offset(), 77);
        assert_eq!(view.last_offset(), 78);
        assert_eq!(view.partition_leader_epoch(), 3);
        assert_eq!(view.magic(), MAGIC);
        // Compression bits are masked: the builder writes uncompressed records.
        assert_eq!(view.compression(), Compression::None);
        assert!(view.is_transactional() && !view.is_control() && !view.is_log_append_time());
        assert_eq!((view.first_timestamp(), view.max_timestamp()), (1_000, 1_005));
        assert_eq!((view.producer_id(), view.producer_epoch(), view.base_sequence()), (42, 2, 9));
        assert_eq!((view.record_count(), view.last_offset_delta()), (2, 1));
        let got: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].offset_delta, got[0].timestamp_delta), (0, 5));
        assert_eq!(got[0].timestamp_ms(), 1_005);
        assert_eq!((got[0].key, got[0].value), (Some(&b"k1"[..]), Some(&b"v1"[..])));
        let hdrs: Vec<_> = got[0].headers().map(Result::unwrap).collect();
        assert_eq!(hdrs, [(&b"trace"[..], Some(&b"abc"[..])), (&b"nil"[..], None)]);
        assert_eq!((got[1].offset_delta, got[1].timestamp_ms()), (1, 990));
        assert_eq!((got[1].key, got[1].value, got[1].header_count()), (None, None, 0));
    }

    #[test]
    fn builder_reuses_buffer_and_reports_size() {
        let mut out = vec![0xaa; 1000];
        let mut builder = BatchBuilder::new(&mut out, 5);
        assert_eq!((builder.len_bytes(), builder.record_count()), (HEADER_LEN, 0));
        builder.push(&simple(b"hello"));
        assert_eq!(builder.record_count(), 1);
        let len = builder.len_bytes();
        let batch = builder.finish();
        assert_eq!(batch.len(), len);
        let view = BatchView::parse(batch, MAX).unwrap();
        assert_eq!((view.base_offset(), view.partition_leader_epoch()), (0, -1));
        assert_eq!((view.producer_id(), view.producer_epoch(), view.base_sequence()), (-1, -1, -1));
    }

    #[test]
    #[should_panic(expected = "no record was pushed")]
    fn finishing_an_empty_batch_panics() {
        let mut out = Vec::new();
        BatchBuilder::new(&mut out, 0).finish();
    }

    #[test]
    fn set_base_offset_keeps_crc_valid() {
        let mut bytes = build(&[simple(b"a"), simple(b"b")], 0, BatchOptions::default());
        let crc = BatchView::parse(&bytes, MAX).unwrap().crc();
        set_base_offset(&mut bytes, 1 << 40);
        let view = BatchView::parse(&bytes, MAX).unwrap();
        assert_eq!((view.base_offset(), view.last_offset(), view.crc()), (1 << 40, (1 << 40) + 1, crc));
    }

    #[test]
    #[should_panic]
    fn set_base_offset_panics_on_short_buffer() {
        set_base_offset(&mut [0u8; 7], 1);
    }

    #[test]
    fn peek_batch_len_cases() {
        let bytes = build(&[simple(b"abc")], 0, BatchOptions::default());
        assert_eq!(peek_batch_len(&bytes[..11], MAX), Ok(None));
        assert_eq!(peek_batch_len(&bytes[..12], MAX), Ok(Some(bytes.len())));
        assert_eq!(peek_batch_len(&bytes, bytes.len()), Ok(Some(bytes.len())));
        let too_large = LengthProblem::TooLarge { total: bytes.len(), max: bytes.len() - 1 };
        assert_eq!(peek_batch_len(&bytes, bytes.len() - 1), Err(BatchError::Length(too_large)));
        let mut small = bytes.clone();
        for batch_length in [48i32, 0, -1, i32::MIN] {
            put(&mut small, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
            let err = BatchError::Length(LengthProblem::TooSmall(batch_length));
            assert_eq!(peek_batch_len(&small, MAX), Err(err.clone()));
            assert_eq!(BatchView::parse(&small, MAX).unwrap_err(), err);
        }
    }

    #[test]
    fn stream_of_batches_walks_with_peek_and_ignores_trailing_bytes() {
        let mut stream = build(&[simple(b"one")], 0, BatchOptions::default());
        let first_len = stream.len();
        stream.extend(build(&[simple(b"two"), simple(b"2")], 0, BatchOptions::default()));
        stream.extend_from_slice(&[0, 0, 0]);
        let first = BatchView::parse(&stream, MAX).unwrap();
        assert_eq!(first.as_bytes(), &stream[..first_len]);
        let rest = &stream[first_len..];
        let len = peek_batch_len(rest, MAX).unwrap().unwrap();
        assert_eq!(BatchView::parse(rest, MAX).unwrap().record_count(), 2);
        assert_eq!(peek_batch_len(&rest[len..], MAX), Ok(None));
    }

    #[test]
    fn magic_crc_and_count_errors() {
        let good = build(&[simple(b"abc")], 0, BatchOptions::default());
        let mut bad = good.clone();
        bad[MAGIC_POS] = 1;
        assert_eq!(BatchView::parse(&bad, MAX).unwrap_err(), BatchError::Magic(1));
        assert_eq!(BatchView::parse_header(&bad, MAX).unwrap_err().kind(), BatchErrorKind::Magic);

        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let err = BatchView::parse(&bad, MAX).unwrap_err();
        assert!(matches!(err, BatchError::Crc { .. }), "{err}");
        // parse_header trusts the CRC; verify_crc can still check it later.
        let view = BatchView::parse_header(&bad, MAX).unwrap();
        assert_eq!(view.verify_crc().unwrap_err().kind(), BatchErrorKind::Crc);

        for (count, last_delta) in [(0, -1), (-1, -2), (2, 0), (1, 1), (i32::MIN, i32::MAX)] {
            let mut bad = good.clone();
            put(&mut bad, RECORDS_COUNT_POS, &i32::to_be_bytes(count));
            put(&mut bad, LAST_OFFSET_DELTA_POS, &i32::to_be_bytes(last_delta));
            fix_crc(&mut bad);
            let err = BatchView::parse(&bad, MAX).unwrap_err();
            assert_eq!(err.kind(), BatchErrorKind::Records, "{count}/{last_delta}: {err}");
            assert_eq!(BatchView::parse_header(&bad, MAX).unwrap_err(), err);
        }
    }

    #[test]
    fn truncated_buffer_is_a_length_error() {
        let good = build(&[simple(b"abc")], 0, BatchOptions::default());
        let err = BatchView::parse(&good[..good.len() - 1], MAX).unwrap_err();
        let problem = LengthProblem::Truncated { needed: good.len(), available: good.len() - 1 };
        assert_eq!(err, BatchError::Length(problem));
        assert_eq!(BatchView::parse(&[], MAX).unwrap_err().kind(), BatchErrorKind::Length);
    }

    #[test]
    fn hand_written_record_area_is_accepted() {
        let mut area = tiny_record(0).to_vec();
        area.extend(tiny_record(1));
        let batch = with_record_area(&area, 2);
        let view = BatchView::parse(&batch, MAX).unwrap();
        assert_eq!(view.records().unwrap().count(), 2);
    }

    #[test]
    fn record_walk_errors() {
        use RecordsProblem::*;
        let mut two_zeros = tiny_record(0).to_vec();
        two_zeros.extend(tiny_record(0));
        let offset = records_problem(&with_record_area(&two_zeros, 2));
        assert_eq!(offset, OffsetDelta { expected: 1, found: 0 });

        let too_few = records_problem(&with_record_area(&tiny_record(0), 2));
        assert_eq!(too_few, TooFew { expected: 2, found: 1 });

        let mut trailing = tiny_record(0).to_vec();
        trailing.push(0);
        assert_eq!(records_problem(&with_record_area(&trailing, 1)), TrailingBytes { bytes: 1 });

        // Record claims 7 body bytes but its fields use 6.
        let inner = [0x0e, 0, 0, 0, 0x01, 0x01, 0, 0];
        assert_eq!(records_problem(&with_record_area(&inner, 1)), RecordTrailing { bytes: 1 });

        let overrun = records_problem(&with_record_area(&[0x7e, 0, 0, 0], 1));
        assert!(matches!(overrun, Overrun { len: 63, .. }), "{overrun:?}");

        let negative = records_problem(&with_record_area(&[0x03, 0, 0, 0], 1));
        assert_eq!(negative, BadLength { field: "record length", len: -2 });
    }

    #[test]
    fn record_field_errors() {
        use RecordsProblem::*;
        let cases: [(&[u8], RecordsProblem); 6] = [
            // key length -2
            (&[0x0c, 0, 0, 0, 0x03, 0x01, 0], BadLength { field: "key", len: -2 }),
            // value length 5 with 1 byte left
            (&[0x0c, 0, 0, 0, 0x01, 0x0a, 0], Overrun { field: "value", len: 5, available: 1 }),
            // header count -1
            (&[0x0c, 0, 0, 0, 0x01, 0x01, 0x01], BadLength { field: "header count", len: -1 }),
            // a header whose key is null
            (&[0x10, 0, 0, 0, 0x01, 0x01, 0x02, 0x01, 0x01], BadLength { field: "header key length", len: -1 }),
            // offset delta varint runs past the record body
            (&[0x06, 0, 0, 0x80], Varint { field: "offset delta", error: VarintError::Truncated }),
            // missing attributes byte
            (&[0x00], Overrun { field: "attributes", len: 1, available: 0 }),
        ];
        for (area, expected) in cases {
            assert_eq!(records_problem(&with_record_area(area, 1)), expected, "{area:02x?}");
        }
        let mut overlong = vec![0x1c, 0];
        overlong.extend([0xff; 10]);
        overlong.extend([0x01, 0x01, 0]);
        let problem = records_problem(&with_record_area(&overlong, 1));
        assert_eq!(problem, Varint { field: "timestamp delta", error: VarintError::Overlong });
    }

    #[test]
    fn header_iter_reports_errors_on_unvalidated_views() {
        let headers: &[(&str, Option<&[u8]>)] = &[("h", Some(b"v"))];
        let record = Record { headers, ..simple(b"x") };
        let mut bytes = build(&[record], 0, BatchOptions::default());
        // Corrupt the header value length (last 2 bytes: len 1, "v") to 2.
        let len_pos = bytes.len() - 2;
        bytes[len_pos] = 0x04;
        let view = BatchView::parse_header(&bytes, MAX).unwrap();
        let err = view.records().unwrap().next().unwrap().unwrap_err();
        assert_eq!(err.kind(), BatchErrorKind::Records);
    }

    #[test]
    fn compressed_batches_are_opaque() {
        let mut bytes = with_record_area(b"opaque compressed bytes", 3);
        put(&mut bytes, ATTRIBUTES_POS, &4i16.to_be_bytes());
        fix_crc(&mut bytes);
        let view = BatchView::parse(&bytes, MAX).unwrap();
        assert_eq!(view.compression(), Compression::Zstd);
        assert_eq!(view.records().unwrap_err(), BatchError::Compressed(Compression::Zstd));
        assert_eq!(view.records().unwrap_err().kind(), BatchErrorKind::Records);
        assert_eq!(Compression::from_attributes(0x0f), Compression::Unknown(7));
    }

    #[test]
    fn record_iter_is_fused_after_error() {
        let batch = with_record_area(&tiny_record(1), 1);
        let view = BatchView::parse_header(&batch, MAX).unwrap();
        let mut iter = view.records().unwrap();
        assert!(iter.next().unwrap().is_err());
        assert!(iter.next().is_none());
    }

    #[test]
    fn every_single_bit_flip_after_magic_is_caught() {
        let headers: &[(&str, Option<&[u8]>)] = &[("h", Some(b"v"))];
        let record = Record { headers, ..simple(b"value") };
        let good = build(&[record, simple(b"2")], 7, BatchOptions::default());
        for pos in CRC_POS..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[pos] ^= 1 << bit;
                assert!(BatchView::parse(&bad, MAX).is_err(), "flip {pos}:{bit}");
            }
        }
    }

    #[test]
    fn batches_recompress_between_codecs_keeping_header_and_records() {
        let options = BatchOptions { producer_id: 9, producer_epoch: 2, base_sequence: 40, ..BatchOptions::default() };
        let plain = build(&[simple(b"one"), simple(b"two"), simple(b"three")], 7, options);
        let gzip = compress_batch(&plain, Compression::Gzip).unwrap();
        for (from, to) in [(&plain, Compression::Zstd), (&gzip, Compression::Lz4), (&gzip, Compression::None)] {
            let view = BatchView::parse(from, MAX).unwrap();
            let again = recompress_batch(&view, to, 1 << 20).unwrap();
            let stored = BatchView::parse(&again, MAX).unwrap();
            assert_eq!(stored.compression(), to);
            assert_eq!((stored.producer_id(), stored.producer_epoch(), stored.base_sequence()), (9, 2, 40));
            assert_eq!((stored.record_count(), stored.max_timestamp()), (3, view.max_timestamp()));
            let inflated = stored.inflate(1 << 20).unwrap();
            let values: Vec<_> = stored.records_in(&inflated).map(|r| r.unwrap().value.unwrap()).collect();
            assert_eq!(values, vec![&b"one"[..], b"two", b"three"]);
        }
        // Damaged compressed records are refused, not recompressed.
        let mut damaged = gzip.clone();
        let last = damaged.len() - 3;
        damaged[last] ^= 0xff;
        let crc = crc32c::crc32c(&damaged[ATTRIBUTES_POS..]);
        damaged[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        let view = BatchView::parse_header(&damaged, MAX).unwrap();
        assert!(recompress_batch(&view, Compression::Zstd, 1 << 20).is_err());
    }

    #[test]
    fn log_append_time_stamps_every_record_and_keeps_the_batch_valid() {
        let records = [Record { timestamp_ms: 5, ..simple(b"a") }, Record { timestamp_ms: 9, ..simple(b"b") }];
        let mut batch = build(&records, 5, BatchOptions::default()).to_vec();
        set_log_append_time(&mut batch, 1_000_000);
        let view = BatchView::parse(&batch, MAX).expect("the CRC was recomputed");
        assert!(view.is_log_append_time());
        assert_eq!((view.first_timestamp(), view.max_timestamp()), (5, 1_000_000));
        let times: Vec<_> = view.records().unwrap().map(|r| r.unwrap().timestamp_ms()).collect();
        assert_eq!(times, vec![1_000_000, 1_000_000]);
        let mut short = vec![0u8; 10];
        set_log_append_time(&mut short, 1);
        assert_eq!(short, vec![0u8; 10], "too short to be a batch: untouched");
    }

    #[test]
    fn error_messages_are_informative() {
        let err = BatchError::Crc { stored: 1, computed: 2 };
        assert_eq!(err.to_string(), "batch CRC mismatch: stored 0x00000001, computed 0x00000002");
        let err = BatchError::Records { index: 3, problem: RecordsProblem::OffsetDelta { expected: 3, found: 5 } };
        assert_eq!(err.to_string(), "bad record 3: offsetDelta 5, expected 3");
    }

    // ---- properties ----

    type Header = (String, Option<Vec<u8>>);

    #[derive(Debug, Clone)]
    struct OwnedRecord {
        timestamp_ms: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<Header>,
    }

    fn bytes(max: usize) -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..max))
    }

    fn owned_record() -> impl Strategy<Value = OwnedRecord> {
        let header = (".{0,8}", bytes(16));
        let headers = proptest::collection::vec(header, 0..4);
        (any::<i64>(), bytes(200), bytes(300), headers).prop_map(|(timestamp_ms, key, value, headers)| OwnedRecord {
            timestamp_ms,
            key,
            value,
            headers,
        })
    }

    fn options() -> impl Strategy<Value = BatchOptions> {
        (any::<i64>(), any::<i32>(), any::<i16>(), any::<i64>(), any::<i16>(), any::<i32>()).prop_map(
            |(base_offset, partition_leader_epoch, attributes, producer_id, producer_epoch, base_sequence)| {
                BatchOptions {
                    base_offset,
                    partition_leader_epoch,
                    attributes,
                    producer_id,
                    producer_epoch,
                    base_sequence,
                }
            },
        )
    }

    fn build_owned(records: &[OwnedRecord], first_ts: i64, options: BatchOptions) -> Vec<u8> {
        let mut out = Vec::new();
        let mut builder = BatchBuilder::with_options(&mut out, first_ts, options);
        for r in records {
            let headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            builder.push(&Record {
                timestamp_ms: r.timestamp_ms,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
            });
        }
        builder.finish();
        out
    }

    fn arbitrary_batch() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(owned_record(), 1..6), any::<i64>(), options())
            .prop_map(|(records, ts, options)| build_owned(&records, ts, options))
    }

    /// Exercises every reader on `buf`; only its not panicking matters.
    fn read_everything(buf: &[u8]) {
        let _ = peek_batch_len(buf, MAX);
        let _ = BatchView::parse(buf, MAX);
        if let Ok(view) = BatchView::parse_header(buf, MAX) {
            let _ = (view.last_offset(), view.verify_crc(), format!("{view:?}"));
            for record in view.records().into_iter().flatten() {
                let Ok(record) = record else { break };
                let _ = (record.timestamp_ms(), record.headers().count());
            }
        }
    }

    proptest! {
        #[test]
        fn build_parse_round_trips(
            records in proptest::collection::vec(owned_record(), 1..12),
            first_ts: i64,
            options in options(),
        ) {
            let bytes = build_owned(&records, first_ts, options);
            let view = BatchView::parse(&bytes, MAX).unwrap();
            prop_assert_eq!(view.total_len(), bytes.len());
            prop_assert_eq!(view.base_offset(), options.base_offset);
            prop_assert_eq!(view.partition_leader_epoch(), options.partition_leader_epoch);
            prop_assert_eq!(view.attributes(), options.attributes & !COMPRESSION_MASK);
            prop_assert_eq!(view.producer_id(), options.producer_id);
            prop_assert_eq!(view.producer_epoch(), options.producer_epoch);
            prop_assert_eq!(view.base_sequence(), options.base_sequence);
            prop_assert_eq!(view.first_timestamp(), first_ts);
            let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap();
            prop_assert_eq!(view.max_timestamp(), max_ts);
            prop_assert_eq!(view.record_count() as usize, records.len());
            prop_assert_eq!(view.last_offset_delta() as usize, records.len() - 1);
            let parsed: Vec<_> = view.records().unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(parsed.len(), records.len());
            for (i, (got, want)) in parsed.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset_delta as usize, i);
                // A batch stamped with log-append time shows that time for every record.
                let time = if view.is_log_append_time() { max_ts } else { want.timestamp_ms };
                prop_assert_eq!(got.timestamp_ms(), time);
                prop_assert_eq!(got.attributes, 0);
                prop_assert_eq!(got.key, want.key.as_deref());
                prop_assert_eq!(got.value, want.value.as_deref());
                let headers: Vec<_> = got.headers().collect::<Result<_, _>>().unwrap();
                let expected: Vec<_> = want.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_deref())).collect();
                prop_assert_eq!(headers, expected);
            }
        }

        #[test]
        fn any_single_bit_flip_in_crc_or_covered_bytes_fails(
            batch in arbitrary_batch(),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bad = batch.clone();
            let pos = CRC_POS + pos.index(batch.len() - CRC_POS);
            bad[pos] ^= 1 << bit;
            prop_assert!(BatchView::parse(&bad, MAX).is_err());
        }

        #[test]
        fn truncation_is_always_a_length_error(batch in arbitrary_batch(), cut in any::<prop::sample::Index>()) {
            let len = cut.index(batch.len());
            let err = BatchView::parse(&batch[..len], MAX).unwrap_err();
            prop_assert_eq!(err.kind(), BatchErrorKind::Length);
            prop_assert_eq!(BatchView::parse_header(&batch[..len], MAX).unwrap_err().kind(), BatchErrorKind::Length);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            read_everything(&buf);
        }

        #[test]
        fn arbitrary_record_area_never_panics_and_parse_agrees_with_iteration(
            area in proptest::collection::vec(any::<u8>(), 0..200),
            count in 1i32..6,
        ) {
            let batch = with_record_area(&area, count);
            read_everything(&batch);
            let view = BatchView::parse_header(&batch, MAX).unwrap();
            let iterated_ok = view.records().unwrap().all(|r| r.is_ok());
            prop_assert_eq!(BatchView::parse(&batch, MAX).is_ok(), iterated_ok);
        }

        #[test]
        fn the_quick_walk_never_accepts_what_the_full_walk_refuses(
            records in proptest::collection::vec(owned_record(), 1..6),
            first_ts in -5_000i64..5_000,
            near_ts in proptest::collection::vec(-3_000i64..3_000, 6),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            count_change in -1i32..=1,
        ) {
            // Timestamps near the first one give the short varints the quick
            // walk reads; then a few bytes and maybe the count are changed.
            let mut records = records;
            for (record, ts) in records.iter_mut().zip(&near_ts) {
                record.timestamp_ms = first_ts + ts;
            }
            let built = build_owned(&records, first_ts, BatchOptions::default());
            let mut area = built[RECORDS_POS..].to_vec();
            for (at, byte) in &edits {
                let at = at.index(area.len());
                area[at] = *byte;
            }
            let count = (records.len() as i32 + count_change).max(1);
            let batch = with_record_area(&area, count);
            let view = BatchView::parse_header(&batch, MAX).unwrap();
            let fully_valid = view.records().unwrap().all(|r| r.is_ok());
            if records_surely_valid(view.records_area(), count) {
                prop_assert!(fully_valid);
            }
            if edits.is_empty() && count_change == 0 {
                prop_assert!(records_surely_valid(view.records_area(), count), "short varints only");
            }
            prop_assert_eq!(BatchView::parse(&batch, MAX).is_ok(), fully_valid);
        }

        #[test]
        fn the_quick_record_reader_agrees_with_the_full_one(
            records in proptest::collection::vec(owned_record(), 1..4),
            near_ts in proptest::collection::vec(-3_000i64..3_000, 4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            noise in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut records = records;
            for (record, ts) in records.iter_mut().zip(&near_ts) {
                record.timestamp_ms = 1_000 + ts;
            }
            let built = build_owned(&records, 1_000, BatchOptions::default());
            let mut area = built[RECORDS_POS..].to_vec();
            for (at, byte) in &edits {
                let at = at.index(area.len());
                area[at] = *byte;
            }
            for (input, unedited) in [(&area[..], edits.is_empty()), (&noise[..], false)] {
                let (mut quick_rest, mut full_rest) = (input, input);
                let mut read = 0;
                while let Some(quick) = quick_record(&mut quick_rest, 1_000) {
                    prop_assert_eq!(read_record(&mut full_rest, 1_000), Ok(quick));
                    prop_assert_eq!(quick_rest, full_rest);
                    read += 1;
                }
                // A record it leaves to the full reader is not consumed.
                prop_assert_eq!(quick_rest, full_rest);
                if unedited {
                    prop_assert_eq!(read, records.len(), "short varints only");
                }
            }
        }

        #[test]
        fn set_base_offset_never_invalidates(batch in arbitrary_batch(), base: i64) {
            let mut batch = batch;
            set_base_offset(&mut batch, base);
            prop_assert_eq!(BatchView::parse(&batch, MAX).unwrap().base_offset(), base);
        }
    }
}
