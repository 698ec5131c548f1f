//! The producer's batching decisions and batch encoding, as plain functions
//! over plain data so they are tested without sockets or timers.
//!
//! [`OpenBatch`] is a RecordBatch v2 filled one record at a time, across
//! calls, in a buffer it owns. `protocol::batch::BatchBuilder` cannot do
//! that: it borrows its buffer for its whole life, and a producer's batch
//! outlives every `send` call that adds to it. So `OpenBatch` lets
//! `BatchBuilder` write the header, appends records in the same encoding
//! itself, and seals the batch like `BatchBuilder::finish`; a test checks
//! that both produce identical bytes.

use crate::protocol::batch::{
    BatchBuilder, Record, ATTRIBUTES_POS, BATCH_LENGTH_POS, CRC_POS, HEADER_LEN, LAST_OFFSET_DELTA_POS, LOG_OVERHEAD,
    MAX_TIMESTAMP_POS, RECORDS_COUNT_POS,
};
use crate::protocol::varint;

/// A record's encoded size in one batch: its body (after the length
/// prefix) and its total bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Measured {
    body: i32,
    pub(crate) total: usize,
}

/// A batch being filled. Invariant: `buf` holds a header written by
/// `BatchBuilder` followed by `count` encoded records; the header's count,
/// length, timestamps and CRC are filled in by [`OpenBatch::finish`].
#[derive(Debug)]
pub(crate) struct OpenBatch {
    buf: Vec<u8>,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    count: i32,
}

impl OpenBatch {
    /// Starts a batch in `buf` (cleared; its capacity is reused).
    pub(crate) fn start(mut buf: Vec<u8>, first_timestamp_ms: i64) -> OpenBatch {
        // Writes the 61-byte header with a non-idempotent producer's fields.
        BatchBuilder::new(&mut buf, first_timestamp_ms);
        debug_assert_eq!(buf.len(), HEADER_LEN);
        OpenBatch { buf, first_timestamp_ms, max_timestamp_ms: i64::MIN, count: 0 }
    }

    /// The record's encoded size in this batch as it is now, for
    /// [`push_measured`](Self::push_measured); `None` if it cannot be
    /// encoded (a field longer than `i32::MAX` bytes, or the batch full).
    pub(crate) fn measure(&self, record: &Record<'_>) -> Option<Measured> {
        let body = i32::try_from(self.body_len(record)?).ok()?;
        self.count.checked_add(1)?;
        let total = varint::varint_len(body).checked_add(body as usize)?;
        Some(Measured { body, total })
    }

    /// Appends a record measured by [`measure`](Self::measure) with no push
    /// in between (the size depends on the batch's record count), so the
    /// producer's hot path computes it once.
    pub(crate) fn push_measured(&mut self, record: &Record<'_>, measured: Measured) {
        debug_assert_eq!(self.measure(record), Some(measured));
        let Measured { body, total } = measured;
        let start = self.buf.len();
        self.buf.reserve(total);
        let timestamp_delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let out = &mut self.buf;
        varint::write_varint(out, body);
        out.push(0); // record attributes: unused in v2
        varint::write_varlong(out, timestamp_delta);
        varint::write_varint(out, self.count);
        write_nullable(out, record.key);
        write_nullable(out, record.value);
        // body_len checked every length below fits an i32.
        varint::write_varint(out, record.headers.len() as i32);
        for (key, value) in record.headers {
            write_nullable(out, Some(key.as_bytes()));
            write_nullable(out, *value);
        }
        debug_assert_eq!(out.len() - start, total);
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
        // measure checked that this does not overflow.
        self.count += 1;
    }

    pub(crate) fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn record_count(&self) -> usize {
        // count is never negative.
        self.count as usize
    }

    /// Fills in the header fields that depend on the records and returns the
    /// finished batch. Returns `None` for an empty batch (Kafka batches are
    /// never empty) or one longer than the format allows.
    pub(crate) fn finish(self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        let mut out = self.buf;
        let batch_length = i32::try_from(out.len() - LOG_OVERHEAD).ok()?;
        put(&mut out, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
        put(&mut out, LAST_OFFSET_DELTA_POS, &(self.count - 1).to_be_bytes());
        put(&mut out, MAX_TIMESTAMP_POS, &self.max_timestamp_ms.to_be_bytes());
        put(&mut out, RECORDS_COUNT_POS, &self.count.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_POS..]);
        put(&mut out, CRC_POS, &crc.to_be_bytes());
        Some(out)
    }

    /// Takes the buffer back (for reuse) without finishing the batch.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Encoded size of a record after its length prefix (mirrors
    /// `BatchBuilder::push`); `None` if a length does not fit an i32.
    fn body_len(&self, record: &Record<'_>) -> Option<usize> {
        let timestamp_delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let mut headers = 0usize;
        for (key, value) in record.headers {
            headers = headers.checked_add(nullable_len(Some(key.as_bytes()))?)?.checked_add(nullable_len(*value)?)?;
        }
        let fixed = 1
            + varint::varlong_len(timestamp_delta)
            + varint::varint_len(self.count)
            + varint::varint_len(i32::try_from(record.headers.len()).ok()?);
        let body = fixed.checked_add(nullable_len(record.key)?)?.checked_add(nullable_len(record.value)?)?;
        let body = body.checked_add(headers)?;
        i32::try_from(body).ok()?;
        Some(body)
    }
}

fn put(out: &mut [u8], pos: usize, bytes: &[u8]) {
    out[pos..pos + bytes.len()].copy_from_slice(bytes);
}

fn nullable_len(bytes: Option<&[u8]>) -> Option<usize> {
    match bytes {
        None => Some(varint::varint_len(-1)),
        Some(bytes) => Some(varint::varint_len(i32::try_from(bytes.len()).ok()?) + bytes.len()),
    }
}

/// Callers checked the length with `nullable_len`.
fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => varint::write_varint(out, -1),
        Some(bytes) => {
            varint::write_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
    }
}

/// Whether a record of `record_bytes` goes into the open batch of
/// `open_bytes` holding `open_records`, or the open batch must be sealed
/// first. A record alone in a batch always fits, however large: it then
/// travels as a batch of one (the broker's size limit decides).
pub(crate) fn must_seal_before(
    open_bytes: usize,
    open_records: usize,
    record_bytes: usize,
    batch_bytes: usize,
) -> bool {
    open_records > 0 && open_bytes.saturating_add(record_bytes) > batch_bytes
}

/// Whether a batch is full and should be sent without waiting for linger.
pub(crate) fn is_full(open_bytes: usize, batch_bytes: usize) -> bool {
    open_bytes >= batch_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::BatchView;

    fn records<'a>(headers: &'a [(&'a str, Option<&'a [u8]>)]) -> Vec<Record<'a>> {
        vec![
            Record { timestamp_ms: 1_700_000_000_000, key: Some(b"k1"), value: Some(b"v1"), headers: &[] },
            Record { timestamp_ms: 1_699_999_999_000, key: None, value: None, headers },
            Record { timestamp_ms: i64::MAX, key: Some(b""), value: Some(&[9u8; 300]), headers },
            Record { timestamp_ms: i64::MIN, key: None, value: Some(b"wrapping delta"), headers: &[] },
        ]
    }

    #[test]
    fn open_batches_encode_exactly_like_the_batch_builder() {
        let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"abc")), ("empty", None)];
        let records = records(headers);
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

    #[test]
    fn batches_seal_when_the_next_record_would_overflow_them() {
        // An empty batch takes any record, even one larger than the limit.
        assert!(!must_seal_before(HEADER_LEN, 0, 1 << 20, 1024));
        assert!(!must_seal_before(1000, 3, 24, 1024));
        assert!(must_seal_before(1000, 3, 25, 1024));
        assert!(!is_full(1023, 1024));
        assert!(is_full(1024, 1024));
    }
}
