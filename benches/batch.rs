//! Throughput of the RecordBatch v2 codec: full validation (CRC + record
//! walk) is on every produce request's path, building is what the load
//! generator and tests do per batch, and iterating is what a consumer does
//! with each batch it fetched.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringbroker::protocol::batch::{BatchBuilder, BatchView, Record};

const TARGET_BATCH_BYTES: usize = 256 * 1024;
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Deterministic, incompressible-looking filler.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect()
}

/// Records of `value_len` bytes with a short key, enough to fill ~256 KiB.
fn build(out: &mut Vec<u8>, value: &[u8]) -> usize {
    let mut builder = BatchBuilder::new(out, 1_764_000_000_000);
    let key = b"key-00000";
    let mut i = 0;
    while builder.len_bytes() + value.len() + 32 <= TARGET_BATCH_BYTES {
        builder.push(&Record { timestamp_ms: 1_764_000_000_000 + i, key: Some(key), value: Some(value), headers: &[] });
        i += 1;
    }
    builder.finish().len()
}

fn bench_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for value_len in [1024, 100] {
        let value = payload(value_len);
        let mut batch = Vec::new();
        let len = build(&mut batch, &value);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("parse/{value_len}B-records"), |b| {
            b.iter(|| BatchView::parse(black_box(&batch), MAX_BATCH_BYTES).unwrap())
        });
        group.bench_function(format!("parse_header/{value_len}B-records"), |b| {
            b.iter(|| BatchView::parse_header(black_box(&batch), MAX_BATCH_BYTES).unwrap())
        });
        // What a consumer does per batch after parse: decode every record.
        let view = BatchView::parse(&batch, MAX_BATCH_BYTES).unwrap();
        group.bench_function(format!("iterate/{value_len}B-records"), |b| {
            b.iter(|| {
                black_box(&view)
                    .records()
                    .unwrap()
                    .map(|record| record.unwrap().value.map_or(0, <[u8]>::len))
                    .sum::<usize>()
            })
        });
        let mut out = Vec::with_capacity(TARGET_BATCH_BYTES);
        group.bench_function(format!("build/{value_len}B-records"), |b| b.iter(|| build(&mut out, black_box(&value))));
    }
    group.finish();
}

criterion_group!(benches, bench_batch);
criterion_main!(benches);
