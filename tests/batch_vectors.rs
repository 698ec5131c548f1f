//! Golden vectors for the RecordBatch v2 codec, produced by an independent
//! implementation (kafka-python), so the codec is checked against bytes real
//! producers send rather than only against its own round trips.
//! `tests/vectors/kafka-record-batch-v2/cases.json` describes every file.

use std::path::PathBuf;

use ringbroker::protocol::batch::{
    peek_batch_len, BatchBuilder, BatchErrorKind, BatchOptions, BatchView, Compression, Record, RecordView,
};
use serde_json::Value;

const MAX_BATCH_BYTES: usize = 1 << 20;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/kafka-record-batch-v2")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(vector_dir().join("cases.json")).expect("read cases.json");
    let doc: Value = serde_json::from_str(&text).expect("parse cases.json");
    let cases = doc["cases"].as_array().expect("cases array").clone();
    assert!(!cases.is_empty());
    cases
}

fn file_bytes(case: &Value) -> Vec<u8> {
    let name = case["file"].as_str().expect("file name");
    std::fs::read(vector_dir().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn name(case: &Value) -> &str {
    case["file"].as_str().unwrap()
}

fn valid_cases() -> impl Iterator<Item = Value> {
    cases().into_iter().filter(|c| c["valid"].as_bool().unwrap())
}

fn int(case: &Value, field: &str) -> i64 {
    case[field].as_i64().unwrap_or_else(|| panic!("{}: {field} not an integer", name(case)))
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd-length hex");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit")).collect()
}

/// A JSON hex string, or `null` for an absent (null) field.
fn nullable_hex(value: &Value) -> Option<Vec<u8>> {
    value.as_str().map(hex)
}

/// A listed record, decoded to owned bytes.
struct Expected {
    offset_delta: i32,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn expected_records(case: &Value) -> Option<Vec<Expected>> {
    let records = case["records"].as_array()?;
    let decode = |r: &Value| Expected {
        offset_delta: r["offset_delta"].as_i64().unwrap() as i32,
        timestamp_ms: r["timestamp_ms"].as_i64().unwrap(),
        key: nullable_hex(&r["key_hex"]),
        value: nullable_hex(&r["value_hex"]),
        headers: r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().to_owned(), nullable_hex(&h[1])))
            .collect(),
    };
    Some(records.iter().map(decode).collect())
}

fn assert_record_matches(file: &str, got: &RecordView<'_>, want: &Expected) {
    assert_eq!(got.offset_delta, want.offset_delta, "{file}");
    assert_eq!(got.timestamp_ms(), want.timestamp_ms, "{file}");
    assert_eq!(got.key, want.key.as_deref(), "{file}");
    assert_eq!(got.value, want.value.as_deref(), "{file}");
    let headers: Vec<_> = got.headers().collect::<Result<_, _>>().unwrap();
    let expected: Vec<_> = want.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_deref())).collect();
    assert_eq!(headers, expected, "{file}");
}

#[test]
fn valid_vectors_parse_to_listed_header_fields() {
    for case in valid_cases() {
        let bytes = file_bytes(&case);
        let file = name(&case);
        let view = BatchView::parse(&bytes, MAX_BATCH_BYTES).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(view.total_len(), bytes.len(), "{file}");
        assert_eq!(view.base_offset(), 0, "{file}");
        assert_eq!(i64::from(view.batch_length()), int(&case, "batch_length"), "{file}");
        assert_eq!(i64::from(view.magic()), int(&case, "magic"), "{file}");
        assert_eq!(i64::from(view.crc()), int(&case, "crc32c"), "{file}");
        assert_eq!(i64::from(view.attributes()), int(&case, "attributes"), "{file}");
        let last_delta = int(&case, "last_offset_delta");
        assert_eq!(i64::from(view.last_offset_delta()), last_delta, "{file}");
        assert_eq!(view.last_offset(), last_delta, "{file}");
        assert_eq!(view.first_timestamp(), int(&case, "first_timestamp_ms"), "{file}");
        assert_eq!(view.max_timestamp(), int(&case, "max_timestamp_ms"), "{file}");
        assert_eq!(view.producer_id(), int(&case, "producer_id"), "{file}");
        assert_eq!(i64::from(view.producer_epoch()), int(&case, "producer_epoch"), "{file}");
        assert_eq!(i64::from(view.base_sequence()), int(&case, "base_sequence"), "{file}");
        assert_eq!(i64::from(view.record_count()), int(&case, "record_count"), "{file}");
        assert_eq!(peek_batch_len(&bytes, MAX_BATCH_BYTES), Ok(Some(bytes.len())));
        let header_only = BatchView::parse_header(&bytes, MAX_BATCH_BYTES).unwrap();
        assert_eq!(header_only.as_bytes(), view.as_bytes(), "{file}");
    }
}

#[test]
fn valid_vectors_yield_listed_records() {
    let mut checked = 0;
    for case in valid_cases() {
        let bytes = file_bytes(&case);
        let file = name(&case);
        let view = BatchView::parse(&bytes, MAX_BATCH_BYTES).unwrap();
        let Some(expected) = expected_records(&case) else {
            // Only compressed batches come without a record listing.
            assert_ne!(view.compression(), Compression::None, "{file}");
            assert_eq!(view.records().unwrap_err().kind(), BatchErrorKind::Records);
            continue;
        };
        let got: Vec<_> = view.records().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), expected.len(), "{file}");
        for (got, want) in got.iter().zip(&expected) {
            assert_record_matches(file, got, want);
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} cases had records");
}

#[test]
fn gzip_vector_is_accepted_opaquely() {
    let case = valid_cases().find(|c| name(c) == "gzip.bin").expect("gzip case");
    let bytes = file_bytes(&case);
    let view = BatchView::parse(&bytes, MAX_BATCH_BYTES).unwrap();
    assert_eq!(view.compression(), Compression::Gzip);
    assert_eq!(view.record_count(), 50);
}

#[test]
fn invalid_vectors_are_rejected_with_listed_kind() {
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| !c["valid"].as_bool().unwrap()) {
        let bytes = file_bytes(&case);
        let file = name(&case);
        let want = match case["expect_error"].as_str().unwrap() {
            "crc" => BatchErrorKind::Crc,
            "magic" => BatchErrorKind::Magic,
            "length" => BatchErrorKind::Length,
            "records" => BatchErrorKind::Records,
            other => panic!("{file}: unknown expect_error {other}"),
        };
        let err = BatchView::parse(&bytes, MAX_BATCH_BYTES).expect_err(file);
        assert_eq!(err.kind(), want, "{file}: {err}");
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn length_vectors_are_rejected_by_peek_before_reading_the_batch() {
    for file in ["huge-length.bin", "tiny-length.bin"] {
        let bytes = std::fs::read(vector_dir().join(file)).unwrap();
        let err = peek_batch_len(&bytes, MAX_BATCH_BYTES).unwrap_err();
        assert_eq!(err.kind(), BatchErrorKind::Length, "{file}");
    }
}

#[test]
fn concatenated_vectors_walk_as_a_stream() {
    let batches: Vec<Vec<u8>> = valid_cases().map(|c| file_bytes(&c)).collect();
    let stream = batches.concat();
    let mut rest = &stream[..];
    for expected in &batches {
        let len = peek_batch_len(rest, MAX_BATCH_BYTES).unwrap().unwrap();
        let view = BatchView::parse(rest, MAX_BATCH_BYTES).unwrap();
        assert_eq!(view.as_bytes(), &expected[..]);
        rest = &rest[len..];
    }
    assert_eq!(peek_batch_len(rest, MAX_BATCH_BYTES), Ok(None));
}

/// Rebuilding each uncompressed vector from its listed records with the
/// same header fields must give kafka-python's bytes exactly: same varint
/// choices, same maxTimestamp, same CRC.
#[test]
fn builder_reproduces_uncompressed_vectors_byte_for_byte() {
    let mut rebuilt = 0;
    let mut out = Vec::new();
    for case in valid_cases() {
        let Some(records) = expected_records(&case) else {
            continue;
        };
        let bytes = file_bytes(&case);
        let view = BatchView::parse(&bytes, MAX_BATCH_BYTES).unwrap();
        let options = BatchOptions {
            base_offset: view.base_offset(),
            partition_leader_epoch: view.partition_leader_epoch(),
            attributes: view.attributes(),
            producer_id: view.producer_id(),
            producer_epoch: view.producer_epoch(),
            base_sequence: view.base_sequence(),
        };
        let mut builder = BatchBuilder::with_options(&mut out, view.first_timestamp(), options);
        for r in &records {
            let headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            builder.push(&Record {
                timestamp_ms: r.timestamp_ms,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
            });
        }
        assert_eq!(builder.finish(), &bytes[..], "{}", name(&case));
        rebuilt += 1;
    }
    assert!(rebuilt >= 5);
}
