//! The record batch parser and record iterator on arbitrary bytes, and
//! the bounded inflation of compressed batches (every codec, whatever the
//! attributes claim).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbroker::protocol::batch::{peek_batch_len, BatchView, Compression};
use ringbroker::protocol::compression::decompress;

fuzz_target!(|data: &[u8]| {
    let _ = peek_batch_len(data, 1 << 20);
    if let Ok(view) = BatchView::parse_header(data, 1 << 20) {
        if let Ok(records) = view.records() {
            for record in records.flatten() {
                for header in record.headers() {
                    let _ = header;
                }
            }
        }
    }
    let _ = BatchView::parse(data, 1 << 20);
    if let Ok(view) = BatchView::parse_header(data, 1 << 20) {
        let _ = view.verify_compressed_records(1 << 20);
    }
    for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let _ = decompress(codec, data, 1 << 20);
    }
});
