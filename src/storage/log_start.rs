//! The log start file: the first offset a partition still holds after
//! records were deleted below it (Kafka's DeleteRecords).
//!
//! Whole segments below the new start are deleted at once; the start of the
//! oldest remaining segment can lie below it, so the offset itself must be
//! kept, or a restart would show deleted records again. The file is small
//! and rewritten whole (temp file, fdatasync, rename, directory sync).
//!
//! Layout: magic `RBLS` | version u16 LE | offset u64 LE | CRC-32C u32 LE of
//! the offset bytes.

use std::path::{Path, PathBuf};

use crate::protocol::types::Offset;

use super::io::{Storage, StorageFile};

const MAGIC: [u8; 4] = *b"RBLS";
const VERSION: u16 = 1;
/// The file's exact size.
pub(crate) const FILE_BYTES: usize = 4 + 2 + 8 + 4;
const FILE_NAME: &str = "log-start";

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Ends in `.tmp`, so recovery removes a leftover.
pub(crate) fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FILE_NAME}.tmp"))
}

pub(crate) fn encode(start: Offset) -> Vec<u8> {
    let offset = start.get().to_le_bytes();
    let mut out = Vec::with_capacity(FILE_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&offset);
    out.extend_from_slice(&crc32c::crc32c(&offset).to_le_bytes());
    out
}

/// Why a log start file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogStartError {
    #[error("{0} bytes, not {FILE_BYTES}")]
    Size(u64),
    #[error("bad magic")]
    BadMagic,
    #[error("truncated")]
    Truncated,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u16),
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Offset, LogStartError> {
    if bytes.len() != FILE_BYTES {
        return Err(LogStartError::Size(bytes.len() as u64));
    }
    let rest = bytes.strip_prefix(&MAGIC).ok_or(LogStartError::BadMagic)?;
    let (version, rest) = rest.split_first_chunk::<2>().ok_or(LogStartError::Truncated)?;
    if u16::from_le_bytes(*version) != VERSION {
        return Err(LogStartError::UnsupportedVersion(u16::from_le_bytes(*version)));
    }
    let (offset, crc) = rest.split_first_chunk::<8>().ok_or(LogStartError::Truncated)?;
    if crc32c::crc32c(offset).to_le_bytes() != crc {
        return Err(LogStartError::ChecksumMismatch);
    }
    Offset::new(u64::from_le_bytes(*offset)).ok_or(LogStartError::OffsetOutOfRange)
}

/// The start recorded in `dir`, if there is an intact file. A damaged one
/// is ignored with a warning: the deleted records below it show again,
/// which loses nothing.
pub(crate) async fn read<S: Storage>(storage: &S, dir: &Path) -> Option<Offset> {
    let path = path(dir);
    let file = storage.open(&path).await.ok()?;
    let mut bytes = Vec::new();
    let read = match file.size().await {
        Ok(size) if size == FILE_BYTES as u64 => {
            file.read_into(0, FILE_BYTES, &mut bytes).await.map(drop).map_err(LogStartError::Io)
        }
        Ok(size) => Err(LogStartError::Size(size)),
        Err(error) => Err(LogStartError::Io(error)),
    };
    let _ = file.close().await;
    let decoded = read.and_then(|()| decode(&bytes));
    match decoded {
        Ok(start) => Some(start),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "a damaged log start file: ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let start = Offset::new(123_456_789).unwrap();
        let bytes = encode(start);
        assert_eq!(bytes.len(), FILE_BYTES);
        assert_eq!(decode(&bytes).ok(), Some(start));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            assert!(decode(&damaged).is_err(), "flip at {at}");
        }
    }
}
