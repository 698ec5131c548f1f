//! Producer ids for idempotent producers (Kafka's InitProducerId).
//!
//! Each shard hands out ids from a space of its own (its index in the top
//! bits, a counter below), so shards never coordinate and no two shards can
//! hand out one id, whatever the shard count was when. The counter is
//! reserved a block at a time in `internal/producer-ids-<shard>`, written
//! durably (temp file, fdatasync, rename, directory fsync) before any id of
//! the block is used: an id is never handed out twice, across restarts and
//! crashes, and the unused rest of a block is skipped.
//!
//! File layout: magic `RBPI` | next unreserved counter u64 LE | CRC-32C u32
//! LE of the eight counter bytes.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};

use glommio::sync::Semaphore;

const MAGIC: [u8; 4] = *b"RBPI";
const FILE_BYTES: usize = 16;
/// Ids reserved per durable write.
const BLOCK: u64 = 1000;
/// Bits of the counter; the shard index sits above them.
const COUNTER_BITS: u32 = 48;

/// One shard's producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    shard: u16,
    next: Cell<u64>,
    end: Cell<u64>,
    /// One reservation at a time.
    reserving: Semaphore,
}

impl ProducerIds {
    pub fn new(data_dir: &Path, shard: u16) -> ProducerIds {
        ProducerIds {
            path: data_dir.join("internal").join(format!("producer-ids-{shard}")),
            shard,
            next: Cell::new(0),
            end: Cell::new(0),
            reserving: Semaphore::new(1),
        }
    }

    /// A producer id no one was given before.
    pub async fn next(&self) -> io::Result<i64> {
        let _permit = self.reserving.acquire_permit(1).await.map_err(|error| io::Error::other(error.to_string()))?;
        if self.next.get() >= self.end.get() {
            let path = self.path.clone();
            let start = glommio::executor().spawn_blocking(move || reserve(&path, BLOCK)).await?;
            self.next.set(start);
            self.end.set(start + BLOCK);
        }
        let counter = self.next.get();
        if counter >= 1 << COUNTER_BITS {
            return Err(io::Error::other(format!("shard {} has handed out all its producer ids", self.shard)));
        }
        self.next.set(counter + 1);
        Ok(((i64::from(self.shard)) << COUNTER_BITS) | counter as i64)
    }
}

/// Reads the next unreserved counter (0 without a file), writes it plus
/// `block` durably, and returns the first counter of the reserved block.
fn reserve(path: &Path, block: u64) -> io::Result<u64> {
    use std::io::Write;
    let start = match std::fs::read(path) {
        Ok(bytes) => decode(&bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}: damaged", path.display())))?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let dir = path.parent().ok_or_else(|| io::Error::other("a producer id file needs a directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&encode(start + block))?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(start)
}

fn encode(next: u64) -> [u8; FILE_BYTES] {
    let mut out = [0u8; FILE_BYTES];
    out[..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&next.to_le_bytes());
    let crc = crc32c::crc32c(&out[4..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; FILE_BYTES] = bytes.try_into().ok()?;
    if bytes[..4] != MAGIC || crc32c::crc32c(&bytes[4..12]).to_le_bytes() != bytes[12..] {
        return None;
    }
    Some(u64::from_le_bytes(bytes[4..12].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_handed_out_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ids: Vec<i64> = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut ids = Vec::new();
                for _restart in 0..3 {
                    let producer_ids = ProducerIds::new(&path, 3);
                    for _ in 0..1500 {
                        ids.push(producer_ids.next().await.unwrap());
                    }
                }
                ids
            })
            .unwrap()
            .join()
            .unwrap();
        let distinct: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "no id twice");
        assert!(ids.iter().all(|id| *id >> COUNTER_BITS == 3), "in shard 3's space");
        // Each run started past everything reserved before it.
        assert_eq!(ids[1500] & ((1 << COUNTER_BITS) - 1), 2000);
    }

    #[test]
    fn a_damaged_file_is_refused() {
        assert_eq!(decode(&encode(42)), Some(42));
        let mut damaged = encode(42);
        damaged[5] ^= 1;
        assert_eq!(decode(&damaged), None);
        assert_eq!(decode(&[0; 3]), None);
    }
}
