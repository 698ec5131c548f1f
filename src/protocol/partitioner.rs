//! Which partition a keyed record goes to: Kafka's default partitioner.
//!
//! A key's partition is `(murmur2(key) & 0x7fff_ffff) % partitions`, exactly
//! what the Java client's `BuiltInPartitioner` and librdkafka's
//! `murmur2_random` partitioner compute. Keys therefore land on the same
//! partitions whether they are produced through ringbroker's own client, its
//! CLI, or (through the Kafka API) a Kafka client, and a key's records stay
//! in order in one partition for as long as the partition count does not
//! change. The hash is part of the contract and must never change; the
//! tests pin it to the values Kafka's own tests publish.
//!
//! Records without a key are not hashed: producers batch them "sticky", one
//! partition per batch (see `client::producer`).

/// The partition of a record with `key` in a topic of `partitions`
/// partitions. `partitions` must be positive (a count of 0 is treated as 1
/// so that the result is always a valid index).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// MurmurHash2, 32-bit, with Kafka's seed (0x9747b28c). Words are read
/// little-endian; the trailing 1 to 3 bytes are mixed in as Kafka does.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes keys of any length; lengths past u32 wrap as in Java's int.
    let mut h = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(first) = tail.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Kafka's `UtilsTest.testMurmur2` asserts (as Java ints),
    /// plus the empty key, cross-checked against kafka-python's murmur2.
    const KAFKA_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
        (b"", 275_646_681),
    ];

    #[test]
    fn murmur2_matches_kafkas_published_values() {
        for (key, expected) in KAFKA_VECTORS {
            assert_eq!(murmur2(key) as i32, *expected, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keys_land_where_kafka_clients_put_them() {
        // (key, partitions, partition) computed with kafka-python 2.x's
        // DefaultPartitioner semantics: (murmur2 & 0x7fffffff) % n.
        let cases: &[(&[u8], u32, u32)] =
            &[(b"21", 4, 0), (b"foobar", 4, 2), (b"abc", 4, 3), (b"k1", 4, 1), (b"k2", 4, 1), (b"account-42", 4, 0)];
        for (key, partitions, expected) in cases {
            assert_eq!(partition_for_key(key, *partitions), *expected);
        }
    }

    #[test]
    fn partitions_are_in_range_and_keys_spread() {
        for partitions in [1u32, 2, 3, 7, 64, 1000] {
            for key in 0..500u32 {
                assert!(partition_for_key(&key.to_be_bytes(), partitions) < partitions);
            }
        }
        let used: std::collections::HashSet<u32> =
            (0..1000u32).map(|key| partition_for_key(format!("key-{key}").as_bytes(), 8)).collect();
        assert_eq!(used.len(), 8, "keys spread over every partition");
    }
}
