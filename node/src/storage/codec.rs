//! Encoding of everything Cairn writes to disk or sends between nodes: bincode
//! (serde) with a size limit on decode, and a CRC32 in front of every stored
//! record so corruption is detected on read instead of being served.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest value `decode` accepts; a bound on allocations driven by untrusted bytes.
pub const DECODE_LIMIT_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record of {0} bytes is too short to hold a checksum")]
    Truncated(usize),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    #[error("a stored document has {found} bytes where its header announces {announced}")]
    DocLength { announced: u64, found: u64 },
    #[error("a stored document's tail part {found} is where part {expected} belongs")]
    DocPart { expected: u32, found: u32 },
    #[error("{found} records where {said} were announced")]
    RecordCount { found: u64, said: u64 },
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Encoding plain in-memory data into a Vec cannot fail except on a value
    // above the limit, which every caller bounds earlier.
    bincode::serde::encode_to_vec(value, config()).expect("encoding a bounded in-memory value")
}

pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Serde adapter for a list of byte-string pairs (keys and values), encoded as
/// byte strings rather than sequences of `u8`: the same bytes on the wire and
/// on disk (bincode writes both as a length and the bytes), but copied in one
/// go instead of decoded byte by byte.
pub mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Keys and values, in order.
    pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(pairs: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let pairs = Vec::<(ByteBuf, ByteBuf)>::deserialize(d)?;
        Ok(pairs.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect())
    }
}

/// Appends `value` to `out` (no length prefix: records concatenated).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, config()).expect("encoding a bounded in-memory value");
}

/// Decodes one value borrowing from the front of `bytes`; returns it and the
/// bytes it used (the rest may hold further values).
pub fn decode_borrowed_prefix<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, usize), CodecError> {
    Ok(bincode::serde::borrow_decode_from_slice(bytes, config())?)
}

/// [`decode_sealed`] into a type borrowing from `record`; the whole payload
/// must be used.
pub fn decode_sealed_borrowed<'a, T: serde::Deserialize<'a>>(record: &'a [u8]) -> Result<T, CodecError> {
    let payload = unseal(record)?;
    let (value, used) = decode_borrowed_prefix(payload)?;
    if used != payload.len() {
        return Err(CodecError::Trailing(payload.len() - used));
    }
    Ok(value)
}

/// `crc32(payload) || payload`.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies and strips the checksum written by [`seal`].
pub fn unseal(record: &[u8]) -> Result<&[u8], CodecError> {
    if record.len() < 4 {
        return Err(CodecError::Truncated(record.len()));
    }
    let (crc, payload) = record.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

pub fn encode_sealed<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    seal(&encode(value))
}

pub fn decode_sealed<T: DeserializeOwned>(record: &[u8]) -> Result<T, CodecError> {
    decode(unseal(record)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_strings_encode_like_sequences_of_bytes() {
        // Records written before fields were marked as byte strings must decode
        // unchanged: the two encodings are the same bytes.
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct AsSeq {
            a: Vec<u8>,
            pairs: Vec<(Vec<u8>, Vec<u8>)>,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct AsBytes {
            #[serde(with = "serde_bytes")]
            a: Vec<u8>,
            #[serde(with = "super::byte_pairs")]
            pairs: Vec<(Vec<u8>, Vec<u8>)>,
        }
        let long: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let seq = AsSeq { a: long.clone(), pairs: vec![(b"k".to_vec(), long.clone()), (vec![], vec![0xff])] };
        let bytes = AsBytes { a: seq.a.clone(), pairs: seq.pairs.clone() };
        assert_eq!(encode(&seq), encode(&bytes));
        let back: AsBytes = decode(&encode(&seq)).unwrap();
        assert_eq!(back, bytes);
    }

    #[test]
    fn sealed_round_trip_and_corruption() {
        let v = (7u64, "doc".to_string(), vec![1u8, 2, 3]);
        let mut bytes = encode_sealed(&v);
        assert_eq!(decode_sealed::<(u64, String, Vec<u8>)>(&bytes).unwrap(), v);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(matches!(decode_sealed::<(u64, String, Vec<u8>)>(&bytes), Err(CodecError::Checksum { .. })));
        assert!(matches!(unseal(&[1, 2]), Err(CodecError::Truncated(2))));
    }

    #[test]
    fn decode_rejects_trailing_bytes_and_huge_lengths() {
        let mut bytes = encode(&5u32);
        bytes.push(0);
        assert!(decode::<u32>(&bytes).is_err());
        // A length prefix claiming 2^60 bytes must fail, not allocate.
        let evil = encode(&(1u64 << 60));
        assert!(decode::<Vec<u8>>(&evil).is_err());
    }
}
