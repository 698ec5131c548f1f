//! The four codecs Kafka batches use, through their own crates (flate2,
//! snap, lz4_flex, zstd): what a compressed batch's records area holds,
//! inflated with a hard bound on the output, and deflated for producers.
//!
//! The formats are Kafka's: gzip streams; snappy either raw or in the
//! "xerial" framing the Java client writes (a magic header, then blocks
//! each prefixed by its big-endian length), both read, the framing
//! written; LZ4 frames; zstd frames.
//!
//! Inflating never allocates past `limit` (plus the growth slack of one
//! `Vec`): a batch that claims to expand beyond it (a zip bomb) is refused
//! with [`CompressionError::TooLarge`] once the limit is passed, whatever
//! its compressed size.

use std::io::{Read, Write};

/// Compression codec from attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// Codec ids 5-7, which Kafka does not define.
    Unknown(u8),
}

impl Compression {
    pub fn from_attributes(attributes: i16) -> Self {
        match attributes & COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            // The mask leaves 0..=7, so the cast is lossless.
            other => Compression::Unknown(other as u8),
        }
    }

    /// The codec's name as Kafka's `compression.type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Unknown(_) => "unknown",
        }
    }

    /// The codec's id in attribute bits 0-2.
    pub fn code(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
            Compression::Unknown(code) => i16::from(code) & COMPRESSION_MASK,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
            .into_iter()
            .find(|codec| codec.name() == name)
            .ok_or_else(|| format!("unknown compression {name:?}: one of none, gzip, snappy, lz4, zstd"))
    }
}

impl serde::Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Attribute bits 0-2 of a batch: the compression codec.
pub const COMPRESSION_MASK: i16 = 0x07;

/// The xerial snappy framing's header: magic, then version and minimum
/// compatible version (both 1), big-endian.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed bytes per xerial block when writing (the Java client's size).
const XERIAL_BLOCK_BYTES: usize = 32 << 10;
/// Kafka's default levels.
const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;
/// Read size while inflating through a stream decoder.
const INFLATE_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("inflates past the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("{codec:?} data does not decompress: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{0:?} cannot compress")]
    Unsupported(Compression),
}

/// Inflates `input`, compressed with `codec`, refusing to produce more
/// than `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let corrupt = |reason: String| CompressionError::Corrupt { codec, reason };
    match codec {
        Compression::None => bounded_copy(input, limit),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(input), limit, codec),
        Compression::Snappy if input.starts_with(&XERIAL_MAGIC) => snappy_xerial(input, limit),
        Compression::Snappy => {
            let mut out = Vec::new();
            snappy_raw_into(input, limit, &mut out)?;
            Ok(out)
        }
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input), limit, codec),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|error| corrupt(error.to_string()))?;
            read_bounded(decoder, limit, codec)
        }
        Compression::Unknown(code) => Err(CompressionError::UnknownCodec(code)),
    }
}

/// Deflates `input` with `codec` (Kafka's default level for each).
pub fn compress(codec: Compression, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let failed = |error: std::io::Error| CompressionError::Corrupt { codec, reason: error.to_string() };
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(input).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + snap::raw::max_compress_len(input.len()));
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|error| CompressionError::Corrupt { codec, reason: error.to_string() })?;
                let len = i32::try_from(compressed.len()).map_err(|_| CompressionError::TooLarge { limit: 0 })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).map_err(failed)?;
            encoder.finish().map_err(|error| CompressionError::Corrupt { codec, reason: error.to_string() })
        }
        Compression::Zstd => zstd::bulk::compress(input, ZSTD_LEVEL).map_err(failed),
        Compression::Unknown(code) => Err(CompressionError::UnknownCodec(code)),
    }
}

fn bounded_copy(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    if input.len() > limit {
        return Err(CompressionError::TooLarge { limit });
    }
    Ok(input.to_vec())
}

/// Reads a stream decoder to its end in chunks, stopping as soon as the
/// output would pass `limit`.
fn read_bounded(mut reader: impl Read, limit: usize, codec: Compression) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; INFLATE_CHUNK_BYTES];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CompressionError::Corrupt { codec, reason: error.to_string() }),
        };
        if out.len() + read > limit {
            return Err(CompressionError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk[..read]);
    }
}

/// One raw snappy block appended to `out`, its claimed length checked
/// against what `limit` leaves before anything is allocated.
fn snappy_raw_into(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), CompressionError> {
    let corrupt =
        |error: snap::Error| CompressionError::Corrupt { codec: Compression::Snappy, reason: error.to_string() };
    let len = snap::raw::decompress_len(input).map_err(corrupt)?;
    if out.len().saturating_add(len) > limit {
        return Err(CompressionError::TooLarge { limit });
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new().decompress(input, &mut out[start..]).map_err(corrupt)?;
    out.truncate(start + written);
    Ok(())
}

fn snappy_xerial(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let corrupt = |reason: String| CompressionError::Corrupt { codec: Compression::Snappy, reason };
    let mut rest = input.get(XERIAL_HEADER_LEN..).ok_or_else(|| corrupt("xerial header cut short".into()))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, after) =
            rest.split_first_chunk::<4>().ok_or_else(|| corrupt("xerial block length cut short".into()))?;
        let len =
            usize::try_from(i32::from_be_bytes(*len)).map_err(|_| corrupt("negative xerial block length".into()))?;
        let block = after.get(..len).ok_or_else(|| corrupt("xerial block cut short".into()))?;
        snappy_raw_into(block, limit, &mut out)?;
        rest = &after[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 4] = [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| format!("event {} of a compressible run;", i % 977).into_bytes()).collect()
    }

    #[test]
    fn every_codec_inflates_what_it_deflated() {
        let input = sample();
        for codec in CODECS {
            let compressed = compress(codec, &input).unwrap();
            assert!(compressed.len() < input.len() / 3, "{codec:?} compressed to {} bytes", compressed.len());
            assert_eq!(decompress(codec, &compressed, input.len()).unwrap(), input, "{codec:?}");
            assert_eq!(
                decompress(codec, &compressed, input.len() - 1),
                Err(CompressionError::TooLarge { limit: input.len() - 1 }),
                "{codec:?}: one byte over the limit"
            );
        }
        assert_eq!(decompress(Compression::None, b"abc", 3).unwrap(), b"abc");
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_is_read_too() {
        let input = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert!(!raw.starts_with(&XERIAL_MAGIC));
        assert_eq!(decompress(Compression::Snappy, &raw, input.len()).unwrap(), input);
        assert_eq!(decompress(Compression::Snappy, &raw, 1000), Err(CompressionError::TooLarge { limit: 1000 }));
    }

    /// A zip bomb: 32 MiB of zeros deflates to a small fraction in every
    /// codec. Inflating it under a 1 MiB limit stops at the limit.
    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; 32 << 20];
        let limit = 1 << 20;
        for codec in CODECS {
            let bomb = compress(codec, &zeros).unwrap();
            assert!(bomb.len() * 16 < zeros.len(), "{codec:?}: {} bytes", bomb.len());
            assert_eq!(decompress(codec, &bomb, limit), Err(CompressionError::TooLarge { limit }), "{codec:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for codec in CODECS {
            for garbage in [&b""[..], b"\x00", b"not compressed at all", &XERIAL_MAGIC, &[0xff; 40]] {
                let _ = decompress(codec, garbage, 1 << 20);
            }
            let mut compressed = compress(codec, &sample()).unwrap();
            let middle = compressed.len() / 2;
            compressed[middle] ^= 0x55;
            compressed.truncate(compressed.len() - 3);
            assert!(decompress(codec, &compressed, 64 << 20).is_err(), "{codec:?}: a cut, flipped stream");
        }
        assert_eq!(decompress(Compression::Unknown(6), b"x", 10), Err(CompressionError::UnknownCodec(6)));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid streams with bytes flipped, under
        /// every codec: an error or at most `limit` bytes, never a panic.
        #[test]
        fn any_input_inflates_within_the_limit_or_fails(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            flips in proptest::collection::vec((0usize..4096, 1u8..=255), 0..4),
            limit in 0usize..100_000,
        ) {
            for codec in CODECS {
                if let Ok(out) = decompress(codec, &garbage, limit) {
                    proptest::prop_assert!(out.len() <= limit);
                }
                let mut damaged = compress(codec, &garbage).unwrap();
                for (at, mask) in &flips {
                    let len = damaged.len();
                    damaged[at % len] ^= mask;
                }
                if let Ok(out) = decompress(codec, &damaged, limit) {
                    proptest::prop_assert!(out.len() <= limit);
                }
            }
        }
    }
}
