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
