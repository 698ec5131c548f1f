//! Zigzag-encoded base-128 varints, as used inside Kafka v2 records.
//!
//! Kafka stores every per-record length, delta and count as a signed
//! varint (i32, at most 5 bytes) or varlong (i64, at most 10 bytes): the
//! value is zigzag-mapped so small negative numbers (the `-1` that means
//! "null") stay one byte, then written 7 bits at a time, least significant
//! group first, with the high bit of each byte meaning "more follows".
//!
//! The readers take their input from the network, so they are strict:
//! a truncated encoding, one longer than the type's maximum, or one whose
//! last byte carries bits the type cannot hold is an error, never a panic
//! and never a silently wrapped value. Non-minimal encodings (e.g. `0x80 0x00`
//! for zero) are accepted, as Kafka itself accepts them.

/// Most bytes a zigzag varint encoding of an `i32` may take.
pub const MAX_VARINT_LEN: usize = 5;
/// Most bytes a zigzag varlong encoding of an `i64` may take.
pub const MAX_VARLONG_LEN: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The input ended before the last byte of the encoding.
    #[error("truncated varint")]
    Truncated,
    /// The encoding continues past the type's maximum length.
    #[error("varint longer than its type allows")]
    Overlong,
    /// The final byte carries bits beyond the type's width.
    #[error("varint value out of range for its type")]
    OutOfRange,
}

/// Reads a zigzag varint (`i32`) from the front of `input` and advances it.
/// On error `input` is left unchanged.
#[inline]
pub fn read_varint(input: &mut &[u8]) -> Result<i32, VarintError> {
    let raw = read_unsigned(input, MAX_VARINT_LEN, u32::BITS)?;
    // read_unsigned rejected any bit above 32, so the cast keeps every bit.
    let raw = raw as u32;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zigzag varlong (`i64`) from the front of `input` and advances it.
/// On error `input` is left unchanged.
#[inline]
pub fn read_varlong(input: &mut &[u8]) -> Result<i64, VarintError> {
    let raw = read_unsigned(input, MAX_VARLONG_LEN, u64::BITS)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// Decodes an unsigned base-128 value of at most `max_len` bytes whose
/// value must fit in `bits` bits.
#[inline]
fn read_unsigned(input: &mut &[u8], max_len: usize, bits: u32) -> Result<u64, VarintError> {
    let bytes: &[u8] = input;
    // Fast path: most deltas, lengths and counts in a batch fit in one byte.
    if let Some((&first, rest)) = bytes.split_first() {
        if first < 0x80 {
            *input = rest;
            return Ok(u64::from(first));
        }
    }
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(max_len).enumerate() {
        let shift = 7 * i as u32;
        let payload = u64::from(byte & 0x7f);
        if i + 1 == max_len {
            // The last byte the type allows: it must end the encoding and
            // may only fill the bits the type has left.
            if byte & 0x80 != 0 {
                return Err(VarintError::Overlong);
            }
            if payload >> (bits - shift) != 0 {
                return Err(VarintError::OutOfRange);
            }
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            *input = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err(VarintError::Truncated)
}

/// Appends the zigzag varint encoding of `value`.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned(out, u64::from(zigzag32(value)));
}

/// Appends the zigzag varlong encoding of `value`.
#[inline]
pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned(out, zigzag64(value));
}

#[inline]
fn write_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation to the low 7 bits is the point of the cast.
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Varints and single bytes put together on the stack, then appended to a
/// buffer with one copy: a push per byte costs a capacity check each, which
/// is most of the cost of encoding a small record. Holds up to
/// [`Packed::CAPACITY`] bytes, six varints at most; more panics.
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    bytes: [u8; Packed::CAPACITY],
    len: usize,
}

impl Default for Packed {
    fn default() -> Self {
        Packed { bytes: [0; Packed::CAPACITY], len: 0 }
    }
}

impl Packed {
    /// A varlong and five varints.
    pub const CAPACITY: usize = MAX_VARLONG_LEN + 5 * MAX_VARINT_LEN;

    #[inline]
    pub fn varint(&mut self, value: i32) {
        self.unsigned(u64::from(zigzag32(value)));
    }

    #[inline]
    pub fn varlong(&mut self, value: i64) {
        self.unsigned(zigzag64(value));
    }

    #[inline]
    pub fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    #[inline]
    fn unsigned(&mut self, mut value: u64) {
        while value >= 0x80 {
            // Truncation to the low 7 bits is the point of the cast.
            self.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Bytes [`write_varint`] produces for `value` (1..=5).
#[inline]
pub fn varint_len(value: i32) -> usize {
    unsigned_len(u64::from(zigzag32(value)))
}

/// Bytes [`write_varlong`] produces for `value` (1..=10).
#[inline]
pub fn varlong_len(value: i64) -> usize {
    unsigned_len(zigzag64(value))
}

#[inline]
fn unsigned_len(value: u64) -> usize {
    // Lengths, deltas and counts are nearly always under 2^14: two
    // predictable comparisons instead of a bit scan and a division.
    if value < 1 << 7 {
        return 1;
    }
    if value < 1 << 14 {
        return 2;
    }
    let significant_bits = (u64::BITS - value.leading_zeros()) as usize;
    significant_bits.div_ceil(7)
}

#[inline]
fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

#[inline]
fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        out
    }

    fn enc64(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varlong(&mut out, v);
        out
    }

    #[test]
    fn known_encodings_match_kafka() {
        assert_eq!(enc32(0), [0x00]);
        assert_eq!(enc32(-1), [0x01]);
        assert_eq!(enc32(1), [0x02]);
        assert_eq!(enc32(63), [0x7e]);
        assert_eq!(enc32(-64), [0x7f]);
        assert_eq!(enc32(64), [0x80, 0x01]);
        assert_eq!(enc32(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc32(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc64(i64::MIN).len(), MAX_VARLONG_LEN);
        assert_eq!(*enc64(i64::MIN).last().unwrap(), 0x01);
    }

    #[test]
    fn extremes_round_trip() {
        for v in [0, 1, -1, 63, -64, 64, -65, i32::MAX, i32::MIN] {
            let bytes = enc32(v);
            assert_eq!(bytes.len(), varint_len(v));
            let mut input = &bytes[..];
            assert_eq!(read_varint(&mut input), Ok(v));
            assert!(input.is_empty());
        }
        for v in [0, -1, i64::from(i32::MAX) + 1, i64::MAX, i64::MIN] {
            let bytes = enc64(v);
            assert_eq!(bytes.len(), varlong_len(v));
            let mut input = &bytes[..];
            assert_eq!(read_varlong(&mut input), Ok(v));
            assert!(input.is_empty());
        }
    }

    #[test]
    fn truncated_is_an_error_and_leaves_input() {
        let empty: &[u8] = &[];
        let mut input = empty;
        assert_eq!(read_varint(&mut input), Err(VarintError::Truncated));
        let bytes = [0x80u8, 0x80];
        let mut input = &bytes[..];
        assert_eq!(read_varint(&mut input), Err(VarintError::Truncated));
        assert_eq!(input.len(), 2);
        let mut input = &enc64(i64::MIN)[..9];
        assert_eq!(read_varlong(&mut input), Err(VarintError::Truncated));
    }

    #[test]
    fn overlong_is_an_error() {
        let mut input = &[0x80u8, 0x80, 0x80, 0x80, 0x80, 0x00][..];
        assert_eq!(read_varint(&mut input), Err(VarintError::Overlong));
        let mut input = &[0xffu8; 11][..];
        assert_eq!(read_varlong(&mut input), Err(VarintError::Overlong));
    }

    #[test]
    fn out_of_range_is_an_error() {
        // 5th byte may only use 4 bits for an i32.
        let mut input = &[0xffu8, 0xff, 0xff, 0xff, 0x1f][..];
        assert_eq!(read_varint(&mut input), Err(VarintError::OutOfRange));
        // 10th byte may only use 1 bit for an i64.
        let mut bytes = vec![0xffu8; 9];
        bytes.push(0x02);
        assert_eq!(read_varlong(&mut &bytes[..]), Err(VarintError::OutOfRange));
    }

    #[test]
    fn non_minimal_encoding_is_accepted() {
        let mut input = &[0x80u8, 0x00, 0x07][..];
        assert_eq!(read_varint(&mut input), Ok(0));
        assert_eq!(input, [0x07]);
    }

    #[test]
    fn packed_bytes_are_the_same_as_written_ones() {
        let mut packed = Packed::default();
        let mut written = Vec::new();
        packed.varlong(i64::MIN);
        write_varlong(&mut written, i64::MIN);
        for value in [i32::MIN, i32::MAX, i32::MIN, i32::MAX, i32::MIN] {
            packed.varint(value);
            write_varint(&mut written, value);
        }
        assert_eq!(packed.as_slice(), written);
        assert_eq!(packed.as_slice().len(), Packed::CAPACITY);
        let mut small = Packed::default();
        small.byte(7);
        for value in [-1, 0, 300] {
            small.varint(value);
        }
        assert_eq!(small.as_slice(), [7, 0x01, 0x00, 0xd8, 0x04]);
    }

    #[test]
    fn every_one_and_two_byte_encoding_round_trips_and_decodes_by_the_definition() {
        for v in -8192..8192 {
            let bytes = enc32(v);
            assert!(bytes.len() <= 2);
            let mut input = &bytes[..];
            assert_eq!(read_varint(&mut input), Ok(v));
            assert!(input.is_empty());
        }
        // Every two-byte input whose second byte ends the encoding: low
        // seven bits first, then the next seven, zigzag-mapped.
        for first in 0x80..=0xffu8 {
            for second in 0..0x80u8 {
                let raw = u32::from(first & 0x7f) | u32::from(second) << 7;
                let expected = ((raw >> 1) as i32) ^ -((raw & 1) as i32);
                let mut input = &[first, second, 0xff][..];
                assert_eq!(read_varint(&mut input), Ok(expected));
                assert_eq!(input, [0xff]);
                let mut input = &[first, second][..];
                assert_eq!(read_varlong(&mut input), Ok(i64::from(expected)));
            }
        }
    }

    proptest! {
        #[test]
        fn varint_round_trips(v: i32, tail: Vec<u8>) {
            let mut bytes = enc32(v);
            prop_assert_eq!(bytes.len(), varint_len(v));
            bytes.extend_from_slice(&tail);
            let mut input = &bytes[..];
            prop_assert_eq!(read_varint(&mut input), Ok(v));
            prop_assert_eq!(input, &tail[..]);
        }

        #[test]
        fn varlong_round_trips(v: i64, tail: Vec<u8>) {
            let mut bytes = enc64(v);
            prop_assert_eq!(bytes.len(), varlong_len(v));
            bytes.extend_from_slice(&tail);
            let mut input = &bytes[..];
            prop_assert_eq!(read_varlong(&mut input), Ok(v));
            prop_assert_eq!(input, &tail[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let mut input = &bytes[..];
            if read_varint(&mut input).is_ok() {
                prop_assert!(bytes.len() - input.len() <= MAX_VARINT_LEN);
            }
            let mut input = &bytes[..];
            if read_varlong(&mut input).is_ok() {
                prop_assert!(bytes.len() - input.len() <= MAX_VARLONG_LEN);
            }
        }
    }
}
