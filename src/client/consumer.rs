//! A consumer of one partition: long-poll fetches from a position it keeps.
//!
//! Every fetched batch is fully validated, CRC included — the consumer is the
//! last place corruption (on disk, in memory, on the wire) can be caught
//! before it reaches the application. Records are handed out as `Bytes`
//! slices of the fetched payload, so consuming copies nothing.
//!
//! A fetch returns whole batches starting with the one containing the
//! requested offset, so records before the position are skipped here.

use std::time::Duration;

use bytes::Bytes;

use super::cluster::{duration_ms, Client};
use super::error::ClientError;
use super::transport::Transport;
use crate::protocol::batch::{peek_batch_len, BatchView, Compression, HeaderIter, RecordView};
use crate::protocol::types::{Offset, PartitionId};
use crate::protocol::wire::OffsetSpec;

/// Default bytes asked for per fetch.
const FETCH_BYTES_DEFAULT: u32 = 1 << 20;

/// Where a [`PartitionConsumer`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The first record the partition still holds.
    Earliest,
    /// The end of the partition: only records produced from now on.
    Latest,
    Offset(Offset),
}

/// One record as consumed. `key`, `value` and header values share the
/// fetched payload's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: Offset,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Reads one partition in order from a position it advances.
///
/// Generic over its [`Transport`]: the native [`Client`] by default.
#[derive(Debug)]
pub struct PartitionConsumer<T: Transport = Client> {
    client: T,
    topic: String,
    partition: PartitionId,
    start: StartPosition,
    /// `None` until `Earliest`/`Latest` is resolved by the first poll.
    position: Option<Offset>,
    max_bytes: u32,
    high_watermark: Option<Offset>,
}

impl<T: Transport> PartitionConsumer<T> {
    pub fn new(client: T, topic: impl Into<String>, partition: PartitionId, start: StartPosition) -> Self {
        let position = match start {
            StartPosition::Offset(offset) => Some(offset),
            StartPosition::Earliest | StartPosition::Latest => None,
        };
        PartitionConsumer {
            client,
            topic: topic.into(),
            partition,
            start,
            position,
            max_bytes: FETCH_BYTES_DEFAULT,
            high_watermark: None,
        }
    }

    /// Bytes asked for per fetch (the broker still returns a first batch
    /// larger than this whole).
    pub fn with_max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The offset of the next record to return; `None` before the first
    /// poll resolved `Earliest` or `Latest`.
    pub fn position(&self) -> Option<Offset> {
        self.position
    }

    /// Continues from `offset` on the next poll.
    pub fn seek(&mut self, offset: Offset) {
        self.position = Some(offset);
    }

    /// The end of the visible log at the last fetch.
    pub fn high_watermark(&self) -> Option<Offset> {
        self.high_watermark
    }

    /// Records between the position and the high watermark at the last fetch.
    pub fn lag(&self) -> Option<u64> {
        Some(self.high_watermark?.distance_from(self.position?))
    }

    /// Fetches the records from the position on, waiting up to `max_wait`
    /// for some to arrive; an empty vector means none came in time. An
    /// `OFFSET_OUT_OF_RANGE` broker error is returned as is: the caller
    /// decides whether to [`seek`](Self::seek) to the start or the end.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let (payload, from) = self.fetch(max_wait).await?;
        let mut records = Vec::new();
        let next = decode_records(&payload, from, &mut records)?;
        self.advance(from, next);
        Ok(records)
    }

    /// Like [`poll`](Self::poll), but hands each record to `visit` as a view
    /// of the fetched bytes instead of collecting owned records: nothing is
    /// allocated per record. Returns how many records were visited.
    pub async fn poll_with(
        &mut self,
        max_wait: Duration,
        mut visit: impl FnMut(RecordRef<'_>),
    ) -> Result<usize, ClientError> {
        let (payload, from) = self.fetch(max_wait).await?;
        let mut visited = 0;
        let next = visit_records(&payload, from, |record, _| {
            visited += 1;
            visit(record);
            Ok(())
        })?;
        self.advance(from, next);
        Ok(visited)
    }

    /// One fetch from the position: its payload and the offset it asked for.
    async fn fetch(&mut self, max_wait: Duration) -> Result<(Bytes, Offset), ClientError> {
        let from = match self.position {
            Some(offset) => offset,
            None => self.resolve_start().await?,
        };
        let (result, payload) =
            self.client.fetch(&self.topic, self.partition, from, self.max_bytes, duration_ms(max_wait)).await?;
        self.high_watermark = Some(result.high_watermark);
        Ok((payload, from))
    }

    /// Moves past the batches a fetch from `from` returned (`next`: the
    /// offset after them, `None` if it held none).
    fn advance(&mut self, from: Offset, next: Option<Offset>) {
        if let Some(next) = next {
            // Never move backwards, even if a broker returned only old batches.
            self.position = Some(next.max(from));
        }
    }

    async fn resolve_start(&mut self) -> Result<Offset, ClientError> {
        let spec = match self.start {
            StartPosition::Offset(offset) => return Ok(offset),
            StartPosition::Earliest => OffsetSpec::Earliest,
            StartPosition::Latest => OffsetSpec::Latest,
        };
        let offset = self.client.list_offsets(&self.topic, self.partition, spec).await?.ok_or_else(|| {
            ClientError::UnexpectedResponse(format!("no {spec:?} offset for {}/{}", self.topic, self.partition))
        })?;
        self.position = Some(offset);
        Ok(offset)
    }
}

/// One record of a fetch, borrowing key, value and headers from the
/// fetched bytes; see [`PartitionConsumer::poll_with`].
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: Offset,
    view: RecordView<'a>,
}

impl<'a> RecordRef<'a> {
    pub fn timestamp_ms(&self) -> i64 {
        self.view.timestamp_ms()
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        self.view.key
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        self.view.value
    }

    /// The record's headers as `(key, value)` byte pairs. They were
    /// validated with the batch, so no item is an error in practice.
    pub fn headers(&self) -> HeaderIter<'a> {
        self.view.headers()
    }

    /// An owned copy sharing the payload's memory. `payload` must be the
    /// bytes this record was read from.
    fn to_consumed(self, payload: &Bytes) -> Result<ConsumedRecord, ClientError> {
        let mut headers = Vec::with_capacity(self.view.header_count());
        for header in self.headers() {
            let (key, value) = header.map_err(|error| corrupt(self.offset, &error))?;
            headers.push((String::from_utf8_lossy(key).into_owned(), value.map(|value| payload.slice_ref(value))));
        }
        Ok(ConsumedRecord {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms(),
            key: self.key().map(|key| payload.slice_ref(key)),
            value: self.value().map(|value| payload.slice_ref(value)),
            headers,
        })
    }
}

/// Parses the batches of a fetch payload and appends their records at or
/// after `from` to `out`. Returns the offset after the last complete batch
/// (`None` if the payload holds none). Every batch is fully validated, CRC
/// included; a batch cut off at the end of the payload is ignored (the next
/// fetch starts at it). Compressed batches (any of Kafka's four codecs) are
/// inflated, to at most [`INFLATED_BYTES_MAX`]; their records then share
/// the inflated copy's memory.
pub fn decode_records(
    payload: &Bytes,
    from: Offset,
    out: &mut Vec<ConsumedRecord>,
) -> Result<Option<Offset>, ClientError> {
    visit_records(payload, from, |record, backing| {
        out.push(record.to_consumed(backing)?);
        Ok(())
    })
}

/// The most one compressed batch may inflate to in this client.
pub const INFLATED_BYTES_MAX: usize = 64 << 20;

/// [`decode_records`] handing each record to `visit` as a view instead,
/// with the bytes it borrows from (the payload, or a compressed batch's
/// inflated records). A batch is validated whole before any of its records
/// is visited.
pub(crate) fn visit_records(
    payload: &Bytes,
    from: Offset,
    mut visit: impl FnMut(RecordRef<'_>, &Bytes) -> Result<(), ClientError>,
) -> Result<Option<Offset>, ClientError> {
    let mut rest: &[u8] = payload;
    let mut next = None;
    while !rest.is_empty() {
        // No limit of its own: the frame limit already bounded the payload.
        let total = match peek_batch_len(rest, usize::MAX) {
            Ok(Some(total)) if total <= rest.len() => total,
            Ok(_) => break,
            Err(error) => return Err(corrupt(next.unwrap_or(from), &error)),
        };
        let view = BatchView::parse(&rest[..total], total).map_err(|error| corrupt(next.unwrap_or(from), &error))?;
        let base = Offset::from_wire(view.base_offset()).ok_or_else(|| {
            ClientError::UnexpectedResponse(format!("batch with negative base offset {}", view.base_offset()))
        })?;
        // Control batches (transaction markers) hold no application records.
        if view.is_control() {
        } else if view.compression() == Compression::None {
            visit_batch(&view, view.records_area(), base, from, &mut |record| visit(record, payload))?;
        } else {
            let inflated = Bytes::from(view.inflate(INFLATED_BYTES_MAX).map_err(|error| corrupt(base, &error))?);
            visit_batch(&view, &inflated, base, from, &mut |record| visit(record, &inflated))?;
        }
        // parse checked last_offset_delta >= 0.
        next = Some(base.plus(u64::from(view.last_offset_delta().unsigned_abs()) + 1));
        rest = &rest[total..];
    }
    Ok(next)
}

fn visit_batch<'r>(
    view: &BatchView<'_>,
    records: &'r [u8],
    base: Offset,
    from: Offset,
    visit: &mut impl FnMut(RecordRef<'r>) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    for record in view.records_in(records) {
        let record = record.map_err(|error| corrupt(base, &error))?;
        // parse checked offset deltas run 0..count.
        let offset = base.plus(u64::from(record.offset_delta.unsigned_abs()));
        if offset < from {
            continue;
        }
        visit(RecordRef { offset, view: record })?;
    }
    Ok(())
}

fn corrupt(offset: Offset, error: &dyn std::fmt::Display) -> ClientError {
    ClientError::UnexpectedResponse(format!("invalid batch at or after offset {offset}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_broker::{executor, FakeBroker};
    use crate::client::{ClientOptions, Producer, ProducerConfig, ProducerRecord};
    use crate::protocol::batch::{set_base_offset, BatchBuilder, Record, ATTRIBUTES_POS, CRC_POS};
    use crate::protocol::types::AckLevel;

    fn batch(base: i64, values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let headers: &[(&str, Option<&[u8]>)] = &[("h", Some(b"hv")), ("null", None)];
        let mut builder = BatchBuilder::new(&mut out, 5_000);
        for (index, value) in values.iter().enumerate() {
            let key = format!("k{index}");
            let record = Record {
                timestamp_ms: 5_000 + index as i64,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                headers,
            };
            builder.push(&record);
        }
        builder.finish();
        set_base_offset(&mut out, base);
        out
    }

    fn offset(value: u64) -> Offset {
        Offset::new(value).unwrap()
    }

    #[test]
    fn records_before_the_position_are_skipped_and_values_are_slices() {
        let mut payload = batch(10, &["a", "b", "c"]);
        payload.extend(batch(13, &["d", "e"]));
        let payload = Bytes::from(payload);
        let mut records = Vec::new();
        let next = decode_records(&payload, offset(11), &mut records).unwrap();
        assert_eq!(next, Some(offset(15)));
        let offsets: Vec<u64> = records.iter().map(|record| record.offset.get()).collect();
        assert_eq!(offsets, [11, 12, 13, 14]);
        let first = &records[0];
        assert_eq!(first.value.as_deref(), Some(&b"b"[..]));
        assert_eq!(first.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(first.timestamp_ms, 5_001);
        assert_eq!(first.headers, vec![("h".to_string(), Some(Bytes::from_static(b"hv"))), ("null".to_string(), None)]);
        // Zero-copy: the value points into the payload.
        let value = first.value.as_ref().unwrap();
        let inside = payload.as_ptr_range();
        assert!(inside.contains(&value.as_ptr()));
    }

    #[test]
    fn a_batch_cut_off_at_the_end_is_left_for_the_next_fetch() {
        let mut payload = batch(0, &["a"]);
        let second = batch(1, &["b", "c"]);
        payload.extend_from_slice(&second[..second.len() - 3]);
        let mut records = Vec::new();
        assert_eq!(decode_records(&Bytes::from(payload), offset(0), &mut records).unwrap(), Some(offset(1)));
        assert_eq!(records.len(), 1);
        let mut none = Vec::new();
        assert_eq!(decode_records(&Bytes::new(), offset(0), &mut none).unwrap(), None);
    }

    #[test]
    fn compressed_batches_of_every_codec_decode_to_the_same_records() {
        use crate::protocol::batch::{compress_batch, Compression};
        let values: Vec<String> = (0..50).map(|i| format!("value {i} value {i} value {i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let plain = batch(10, &refs);
        let mut expected = Vec::new();
        decode_records(&Bytes::from(plain.clone()), offset(15), &mut expected).unwrap();
        assert_eq!(expected.len(), 45);
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let compressed = compress_batch(&plain, codec).unwrap();
            assert!(compressed.len() < plain.len(), "{codec:?}");
            // Two batches in one payload: the compressed one, then a plain one.
            let mut payload = compressed;
            payload.extend_from_slice(&batch(60, &["after"]));
            let mut records = Vec::new();
            let next = decode_records(&Bytes::from(payload), offset(15), &mut records).unwrap();
            assert_eq!(next, Some(offset(61)), "{codec:?}");
            assert_eq!(&records[..45], &expected[..], "{codec:?}");
            assert_eq!(records[45].value.as_deref(), Some(&b"after"[..]));
        }
    }

    #[test]
    fn corrupt_and_compressed_batches_are_refused() {
        let mut corrupted = batch(0, &["payload"]);
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0xff;
        let error = decode_records(&Bytes::from(corrupted), offset(0), &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("CRC") || error.to_string().contains("crc"), "{error}");

        // Mark the batch gzip-compressed and fix the CRC: its records do not
        // inflate.
        let mut compressed = batch(0, &["payload"]);
        compressed[ATTRIBUTES_POS + 1] |= 1;
        let crc = crc32c::crc32c(&compressed[ATTRIBUTES_POS..]);
        compressed[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        match decode_records(&Bytes::from(compressed), offset(0), &mut Vec::new()) {
            Err(ClientError::UnexpectedResponse(message)) => assert!(message.contains("compressed"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn produced_records_come_back_in_order() {
        executor().run(async {
            let broker = FakeBroker::start(&[("events", 1)]);
            let client = crate::client::Client::connect(broker.addr(), ClientOptions::default()).await.unwrap();
            let config = ProducerConfig { batch_bytes: 256, acks: AckLevel::Written, ..ProducerConfig::default() };
            let producer = Producer::new(client.clone(), config).unwrap();
            let mut futures = Vec::new();
            for index in 0..50u32 {
                let value = index.to_be_bytes();
                futures.push(producer.send(ProducerRecord::new("events", &value)).await.unwrap());
            }
            producer.flush().await;
            let mut consumer =
                PartitionConsumer::new(client, "events", PartitionId(0), StartPosition::Earliest).with_max_bytes(300);
            let mut seen = Vec::new();
            while seen.len() < 50 {
                let records = consumer.poll(Duration::from_millis(10)).await.unwrap();
                assert!(!records.is_empty(), "stalled at {:?}", consumer.position());
                seen.extend(records);
            }
            for (index, record) in seen.iter().enumerate() {
                assert_eq!(record.offset.get(), index as u64);
                assert_eq!(record.value.as_deref(), Some(&(index as u32).to_be_bytes()[..]));
            }
            assert_eq!(consumer.position(), Some(offset(50)));
            assert_eq!(consumer.lag(), Some(0));
            consumer.seek(offset(51));
            let error = consumer.poll(Duration::from_millis(10)).await.unwrap_err();
            assert_eq!(error.code(), Some(crate::protocol::wire::ErrorCode::OFFSET_OUT_OF_RANGE));
        });
    }

    #[test]
    fn poll_with_visits_exactly_what_poll_returns() {
        executor().run(async {
            let broker = FakeBroker::start(&[("events", 1)]);
            let client = crate::client::Client::connect(broker.addr(), ClientOptions::default()).await.unwrap();
            let config = ProducerConfig { batch_bytes: 200, acks: AckLevel::Written, ..ProducerConfig::default() };
            let producer = Producer::new(client.clone(), config).unwrap();
            let headers: &[(&str, Option<&[u8]>)] = &[("trace", Some(b"t1")), ("none", None)];
            for index in 0..40u32 {
                let value = index.to_be_bytes();
                let record = ProducerRecord { headers, ..ProducerRecord::new("events", &value).with_key(b"key") };
                drop(producer.send(record).await.unwrap());
            }
            producer.flush().await;
            let start = StartPosition::Offset(offset(3));
            let mut owned = PartitionConsumer::new(client.clone(), "events", PartitionId(0), start).with_max_bytes(300);
            let mut viewed = PartitionConsumer::new(client, "events", PartitionId(0), start).with_max_bytes(300);
            let mut expected = Vec::new();
            while expected.len() < 37 {
                expected.extend(owned.poll(Duration::from_millis(10)).await.unwrap());
            }
            let mut seen = Vec::new();
            while seen.len() < 37 {
                let visited = viewed
                    .poll_with(Duration::from_millis(10), |record| {
                        let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
                            .headers()
                            .map(|header| header.unwrap())
                            .map(|(key, value)| (key.to_vec(), value.map(<[u8]>::to_vec)))
                            .collect();
                        let key = record.key().map(<[u8]>::to_vec);
                        let value = record.value().map(<[u8]>::to_vec);
                        seen.push((record.offset, record.timestamp_ms(), key, value, headers));
                    })
                    .await
                    .unwrap();
                assert!(visited > 0, "stalled at {:?}", viewed.position());
            }
            assert_eq!(viewed.position(), owned.position());
            assert_eq!(seen.len(), expected.len());
            for (view, record) in seen.iter().zip(&expected) {
                assert_eq!(view.0, record.offset);
                assert_eq!(view.1, record.timestamp_ms);
                assert_eq!(view.2.as_deref(), record.key.as_deref());
                assert_eq!(view.3.as_deref(), record.value.as_deref());
                let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
                    .headers
                    .iter()
                    .map(|(key, value)| (key.as_bytes().to_vec(), value.as_ref().map(|value| value.to_vec())))
                    .collect();
                assert_eq!(view.4, headers);
            }
            assert_eq!(seen[0].0, offset(3));
        });
    }
}
