//! Compressed batches against the real binary: each of Kafka's four codecs
//! produced by the native client and the CLI, stored as produced and read
//! back by the client and the CLI; a batch that claims a codec but does not
//! inflate, and one that inflates past the frame limit (a zip bomb), are
//! refused and leave the partition serving.

mod support;

use bytes::BytesMut;
use ringbroker::client::{decode_records, Client, ClientOptions};
use ringbroker::protocol::batch::{
    compress_batch, BatchBuilder, BatchView, Compression, Record, ATTRIBUTES_POS, CRC_POS,
};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::ErrorCode;
use support::broker::BrokerProcess;
use support::{batch, cli, run, temp_dir};

const CODECS: [Compression; 4] = [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

#[test]
fn every_codec_is_stored_as_produced_and_read_back() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let lines: Vec<String> = (0..300).map(|i| format!("event {i}: the same words again and again, ünïcode")).collect();
    let input = lines.join("\n") + "\n";
    for codec in CODECS {
        let topic = format!("squeezed-{}", codec.name());
        cli(broker.addr, &["topic", "create", &topic, "--partitions", "1"], "");
        cli(broker.addr, &["produce", &topic, "--partition", "0", "--compression", codec.name()], &input);
        let read = cli(
            broker.addr,
            &["consume", &topic, "--partition", "0", "--from", "earliest", "--idle-exit-ms", "500"],
            "",
        );
        assert_eq!(read, input, "{codec:?}: the CLI reads back what it produced");
    }
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        for codec in CODECS {
            let topic = format!("squeezed-{}", codec.name());
            let (_, payload) = client.fetch(&topic, PartitionId(0), Offset::ZERO, 1 << 20, 0).await.unwrap();
            // Stored as produced: the batches on disk carry the codec.
            let first = BatchView::parse(&payload, usize::MAX).unwrap();
            assert_eq!(first.compression(), codec);
            let mut records = Vec::new();
            decode_records(&payload, Offset::ZERO, &mut records).unwrap();
            assert_eq!(records.len(), 300, "{codec:?}");
            assert_eq!(
                records[299].value.as_deref(),
                Some("event 299: the same words again and again, ünïcode".as_bytes())
            );
        }
    });
    assert!(broker.terminate().success());
}

#[test]
fn batches_that_do_not_inflate_or_inflate_too_far_are_refused() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = Client::connect(addr, ClientOptions::default()).await.unwrap();
        client.create_topic("guarded", 1).await.unwrap();
        let partition = PartitionId(0);

        // Claims gzip, holds plain records; the CRC is right.
        let mut liar = batch(&[b"plain", b"records"]);
        liar[ATTRIBUTES_POS + 1] |= Compression::Gzip.code() as u8;
        let crc = crc32c::crc32c(&liar[ATTRIBUTES_POS..]);
        liar[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        let refused = client.produce_raw("guarded", partition, &liar, AckLevel::Durable).await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::INVALID_BATCH), "{refused}");

        // A zip bomb: one 17 MiB record of zeros, compressed to well under
        // the 1 MiB batch limit in every codec, past the broker's 16 MiB
        // frame limit once inflated.
        let zeros = vec![0u8; 17 << 20];
        let mut plain = Vec::new();
        let mut builder = BatchBuilder::new(&mut plain, 1_764_000_000_000);
        builder.push(&Record { timestamp_ms: 1_764_000_000_000, key: None, value: Some(&zeros), headers: &[] });
        builder.finish();
        for codec in CODECS {
            let bomb = compress_batch(&plain, codec).unwrap();
            assert!(bomb.len() < 1 << 20, "{codec:?}: {} bytes, refused for its size alone", bomb.len());
            let refused = client
                .produce_raw("guarded", partition, &BytesMut::from(&bomb[..]), AckLevel::Durable)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Some(ErrorCode::BATCH_TOO_LARGE), "{codec:?}: {refused}");
        }

        // Nothing of them was stored; the partition serves on.
        let good = BytesMut::from(&compress_batch(&batch(&[b"after"]), Compression::Zstd).unwrap()[..]);
        let stored = client.produce_raw("guarded", partition, &good, AckLevel::Durable).await.unwrap();
        assert_eq!(stored.base_offset, Offset::ZERO);
        let (_, payload) = client.fetch("guarded", partition, Offset::ZERO, 1 << 20, 0).await.unwrap();
        let mut records = Vec::new();
        decode_records(&payload, Offset::ZERO, &mut records).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value.as_deref(), Some(&b"after"[..]));
    });
    assert!(broker.terminate().success());
}
