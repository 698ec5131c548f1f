//! A bounds check of Kafka request bodies, run before they are decoded.
//!
//! Requests are decoded with the `kafka-protocol` crate, which sizes every
//! array from the count on the wire before it reads an element
//! (`Vec::with_capacity(n)` with `n` up to 2^31). A twenty-byte request
//! announcing two billion topics would make it ask the allocator for
//! hundreds of gigabytes, and a refused allocation aborts the process. So
//! every request body is first walked here against a description of its
//! fields ([`Field`], one table per API in `schemas.rs`): each length and
//! each array count must fit the bytes that are left (an element takes at
//! least one byte), and the walk must end exactly at the end of the body.
//! Only then does the crate decode it, and every array it allocates is
//! bounded by the frame.
//!
//! The tables describe the wire layout only (which fields exist at which
//! versions, and their types); a test encodes every request at every
//! supported version with the crate and checks that the walk consumes
//! exactly what was encoded, so a table cannot drift from the crate.

use std::fmt;

/// How a field is laid out on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Int8,
    Int16,
    Int32,
    Int64,
    Float64,
    Uuid,
    Bool,
    /// STRING or NULLABLE_STRING: an int16 length (-1: null), or in
    /// flexible versions an unsigned varint length + 1 (0: null).
    String,
    /// BYTES, NULLABLE_BYTES or RECORDS: an int32 length (-1: null), or an
    /// unsigned varint length + 1.
    Bytes,
    /// An array of structs: an int32 count (-1: null), or an unsigned
    /// varint count + 1. In flexible versions each struct ends with its
    /// tagged fields.
    Structs(&'static [Field]),
    /// An array of a primitive (`[int32]`, `[string]`).
    Primitives(&'static Shape),
}

/// A field and the versions it exists in (inclusive).
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub since: i16,
    pub until: i16,
    pub shape: Shape,
}

/// A field in every version of its message.
pub const fn always(shape: Shape) -> Field {
    Field { since: 0, until: i16::MAX, shape }
}

/// A field in versions `since` and later.
pub const fn since(since: i16, shape: Shape) -> Field {
    Field { since, until: i16::MAX, shape }
}

/// A field in versions `since` to `until`.
pub const fn between(since: i16, until: i16, shape: Shape) -> Field {
    Field { since, until, shape }
}

/// The body of one request type.
#[derive(Debug, Clone, Copy)]
pub struct RequestSchema {
    pub api_key: i16,
    /// The versions the broker serves.
    pub min_version: i16,
    pub max_version: i16,
    /// The first flexible version (compact lengths, tagged fields).
    pub flexible_from: i16,
    pub fields: &'static [Field],
}

/// Why a request body does not fit its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundsError {
    /// A field needs more bytes than are left.
    Truncated { at: usize },
    /// A length or count is negative (other than -1 for null) or does not
    /// fit the bytes that are left.
    BadLength { at: usize, len: i64 },
    /// A varint runs past five bytes.
    BadVarint { at: usize },
}

impl fmt::Display for BoundsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundsError::Truncated { at } => write!(f, "request truncated at byte {at}"),
            BoundsError::BadLength { at, len } => write!(f, "length or count {len} at byte {at} does not fit"),
            BoundsError::BadVarint { at } => write!(f, "malformed varint at byte {at}"),
        }
    }
}

impl std::error::Error for BoundsError {}

/// Checks a request body (after its header) against `schema` at `version`.
/// Bytes after the last field are ignored, as Kafka's own brokers ignore
/// them: librdkafka 2.16 sends a v12 Metadata request (listing every
/// topic) with three such bytes. Every field is still checked to lie
/// within the body.
pub fn check_body(schema: &RequestSchema, version: i16, body: &[u8]) -> Result<(), BoundsError> {
    walked_len(schema, version, body).map(drop)
}

/// How many bytes of `body` the fields of `schema` at `version` take.
pub fn walked_len(schema: &RequestSchema, version: i16, body: &[u8]) -> Result<usize, BoundsError> {
    let mut walk = Walk { bytes: body, at: 0, flexible: version >= schema.flexible_from, version };
    walk.fields(schema.fields)?;
    Ok(walk.at)
}

/// Bytes a request header takes (v1: api key, version, correlation id,
/// client id; v2 adds tagged fields), so the body can be found. The client
/// id stays a classic int16-length string even in header v2.
pub fn header_len(bytes: &[u8], flexible: bool) -> Result<usize, BoundsError> {
    let mut walk = Walk { bytes, at: 0, flexible: false, version: 0 };
    walk.take(8)?;
    walk.string()?;
    if flexible {
        walk.tagged_fields()?;
    }
    Ok(walk.at)
}

struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    flexible: bool,
    version: i16,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BoundsError> {
        if n > self.left() {
            return Err(BoundsError::Truncated { at: self.at });
        }
        let start = self.at;
        self.at += n;
        Ok(&self.bytes[start..self.at])
    }

    fn int16(&mut self) -> Result<i64, BoundsError> {
        let b = self.take(2)?;
        Ok(i64::from(i16::from_be_bytes([b[0], b[1]])))
    }

    fn int32(&mut self) -> Result<i64, BoundsError> {
        let b = self.take(4)?;
        Ok(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    }

    fn uvarint(&mut self) -> Result<u64, BoundsError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BoundsError::BadVarint { at: start })
    }

    /// A length: `None` for null, else checked against what is left when
    /// `per_item` bytes are the least each counted item takes.
    fn length(
        &mut self,
        classic: fn(&mut Self) -> Result<i64, BoundsError>,
        per_item: usize,
    ) -> Result<usize, BoundsError> {
        let at = self.at;
        let len = if self.flexible {
            // Compact: length + 1, 0 for null.
            self.uvarint()? as i64 - 1
        } else {
            classic(self)?
        };
        if len == -1 {
            return Ok(0);
        }
        if len < 0 || (len as u64).saturating_mul(per_item as u64) > self.left() as u64 {
            return Err(BoundsError::BadLength { at, len });
        }
        Ok(len as usize)
    }

    fn string(&mut self) -> Result<(), BoundsError> {
        let len = if self.flexible { self.length(Self::int16, 1)? } else { self.classic_string_len()? };
        self.take(len).map(drop)
    }

    fn classic_string_len(&mut self) -> Result<usize, BoundsError> {
        let at = self.at;
        let len = self.int16()?;
        if len == -1 {
            return Ok(0);
        }
        if len < 0 || len as usize > self.left() {
            return Err(BoundsError::BadLength { at, len });
        }
        Ok(len as usize)
    }

    fn tagged_fields(&mut self) -> Result<(), BoundsError> {
        let at = self.at;
        let count = self.uvarint()?;
        if count > self.left() as u64 {
            return Err(BoundsError::BadLength { at, len: count as i64 });
        }
        for _ in 0..count {
            self.uvarint()?;
            let at = self.at;
            let size = self.uvarint()?;
            if size > self.left() as u64 {
                return Err(BoundsError::BadLength { at, len: size as i64 });
            }
            self.take(size as usize)?;
        }
        Ok(())
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), BoundsError> {
        let version = self.version;
        for field in fields.iter().filter(|field| (field.since..=field.until).contains(&version)) {
            self.shape(&field.shape)?;
        }
        if self.flexible {
            self.tagged_fields()?;
        }
        Ok(())
    }

    fn shape(&mut self, shape: &Shape) -> Result<(), BoundsError> {
        match shape {
            Shape::Int8 | Shape::Bool => self.take(1).map(drop),
            Shape::Int16 => self.take(2).map(drop),
            Shape::Int32 => self.take(4).map(drop),
            Shape::Int64 | Shape::Float64 => self.take(8).map(drop),
            Shape::Uuid => self.take(16).map(drop),
            Shape::String => self.string(),
            Shape::Bytes => {
                let len = self.length(Self::int32, 1)?;
                self.take(len).map(drop)
            }
            Shape::Structs(fields) => {
                let count = self.length(Self::int32, 1)?;
                for _ in 0..count {
                    self.fields(fields)?;
                }
                Ok(())
            }
            Shape::Primitives(element) => {
                let count = self.length(Self::int32, 1)?;
                for _ in 0..count {
                    self.shape(element)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTITION: &[Field] = &[always(Shape::Int32), always(Shape::Bytes)];
    const TOPIC: &[Field] = &[always(Shape::String), always(Shape::Structs(PARTITION))];
    const SCHEMA: RequestSchema = RequestSchema {
        api_key: 0,
        min_version: 3,
        max_version: 9,
        flexible_from: 9,
        fields: &[always(Shape::String), always(Shape::Int16), always(Shape::Int32), always(Shape::Structs(TOPIC))],
    };

    #[test]
    fn a_huge_array_count_is_refused_before_anything_is_allocated() {
        // null transactional id, acks, timeout, then 2^31 - 1 topics.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30];
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(check_body(&SCHEMA, 3, &body), Err(BoundsError::BadLength { at: 8, len: i32::MAX as i64 }));
        // The same in compact form: count + 1 as a varint.
        let mut flexible = vec![0, 0, 1, 0, 0, 0x75, 0x30];
        flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]);
        assert!(matches!(check_body(&SCHEMA, 9, &flexible), Err(BoundsError::BadLength { .. })));
    }

    #[test]
    fn lengths_truncation_and_varints_are_checked_and_trailing_bytes_ignored() {
        let good = [0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        check_body(&SCHEMA, 3, &good).unwrap();
        let mut trailing = good.to_vec();
        trailing.push(7);
        assert_eq!(check_body(&SCHEMA, 3, &trailing), Ok(()), "bytes after the last field are ignored");
        assert_eq!(check_body(&SCHEMA, 3, &good[..11]), Err(BoundsError::Truncated { at: 8 }));
        let long_string = [0x7f, 0xff, 0, 0];
        assert!(matches!(check_body(&SCHEMA, 3, &long_string), Err(BoundsError::BadLength { at: 0, .. })));
        let negative = [0xff, 0xfe];
        assert!(matches!(check_body(&SCHEMA, 3, &negative), Err(BoundsError::BadLength { len: -2, .. })));
        let endless_varint = [0x80; 8];
        assert_eq!(check_body(&SCHEMA, 9, &endless_varint), Err(BoundsError::BadVarint { at: 0 }));
    }

    #[test]
    fn the_header_is_measured_in_both_versions() {
        // api key, version, correlation id, client id "ab", then body.
        let header = [0, 0, 0, 9, 0, 0, 0, 1, 0, 2, b'a', b'b', 0xee];
        assert_eq!(header_len(&header, false), Ok(12));
        assert_eq!(header_len(&header[..12], true), Err(BoundsError::Truncated { at: 12 }));
        let flexible = [0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0xee];
        assert_eq!(header_len(&flexible, true), Ok(11));
    }
}
