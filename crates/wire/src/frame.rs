//! Stream framing: every message on a peercomm stream is an unsigned LEB128 varint length
//! followed by that many bytes of protobuf. These helpers are pure; the async codec that
//! reads and writes streams lives in the node.

use crate::error::FrameError;
use crate::limits::{MAX_FRAME_BYTES, MAX_FRAME_PREFIX_BYTES};

/// Prefixes `payload` with its length. Fails if it exceeds `MAX_FRAME_BYTES`, which the
/// peer would refuse anyway.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let mut out = Vec::with_capacity(MAX_FRAME_PREFIX_BYTES + payload.len());
    let mut len = payload.len();
    loop {
        // Low 7 bits per byte, least significant group first; the high bit says "more".
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads a length prefix from the start of `buf`. Returns `Ok(None)` if `buf` ends before
/// the prefix does (read more), or `Ok(Some((payload_len, prefix_len)))`. Refuses prefixes
/// longer than `MAX_FRAME_PREFIX_BYTES`, non-minimal prefixes and lengths above
/// `MAX_FRAME_BYTES`, so a reader never allocates more than the limit.
pub fn decode_frame_len(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len: usize = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i >= MAX_FRAME_PREFIX_BYTES {
            return Err(FrameError::PrefixTooLong);
        }
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of zero adds nothing: the same length has a shorter encoding.
            if byte == 0 && i > 0 {
                return Err(FrameError::NotMinimal);
            }
            if len > MAX_FRAME_BYTES {
                return Err(FrameError::TooLarge {
                    len,
                    max: MAX_FRAME_BYTES,
                });
            }
            return Ok(Some((len, i + 1)));
        }
    }
    if buf.len() >= MAX_FRAME_PREFIX_BYTES {
        // Exactly `MAX_FRAME_PREFIX_BYTES` bytes, all saying "more".
        return Err(FrameError::PrefixTooLong);
    }
    Ok(None)
}

/// Splits one complete frame off the start of `buf`: `Ok(Some((payload, consumed)))`, or
/// `Ok(None)` if more bytes are needed.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((len, prefix)) = decode_frame_len(buf)? else {
        return Ok(None);
    };
    Ok(buf
        .get(prefix..prefix + len)
        .map(|payload| (payload, prefix + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lengths_as_leb128() {
        assert_eq!(encode_frame(&[]).unwrap(), vec![0]);
        assert_eq!(encode_frame(&[7; 127]).unwrap()[..1], [0x7f]);
        assert_eq!(encode_frame(&[7; 128]).unwrap()[..2], [0x80, 0x01]);
        assert_eq!(encode_frame(&[7; 300]).unwrap()[..2], [0xac, 0x02]);
        let max = encode_frame(&vec![0; MAX_FRAME_BYTES]).unwrap();
        assert_eq!(max[..3], [0x80, 0x80, 0x08]);
        assert_eq!(decode_frame_len(&max).unwrap(), Some((MAX_FRAME_BYTES, 3)));
        assert_eq!(
            encode_frame(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_BYTES + 1,
                max: MAX_FRAME_BYTES
            })
        );
    }

    #[test]
    fn decodes_partial_and_complete_frames() {
        let frame = encode_frame(b"hello").unwrap();
        assert_eq!(decode_frame_len(&[]), Ok(None));
        assert_eq!(decode_frame_len(&[0x80]), Ok(None));
        assert_eq!(decode_frame_len(&[0x80, 0x80]), Ok(None));
        assert_eq!(decode_frame(&frame[..3]), Ok(None));
        assert_eq!(decode_frame(&frame), Ok(Some((&b"hello"[..], 6))));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert_eq!(
            decode_frame_len(&[0x80, 0x80, 0x80]),
            Err(FrameError::PrefixTooLong)
        );
        assert_eq!(
            decode_frame_len(&[0xff; 11]),
            Err(FrameError::PrefixTooLong)
        );
        assert_eq!(decode_frame_len(&[0x81, 0x00]), Err(FrameError::NotMinimal));
        assert_eq!(
            decode_frame_len(&[0x81, 0x80, 0x08]),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_BYTES + 1,
                max: MAX_FRAME_BYTES
            })
        );
        assert!(matches!(
            decode_frame_len(&[0xff, 0xff, 0x7f]),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
