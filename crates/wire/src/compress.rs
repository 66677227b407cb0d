//! Body compression: zstd, with or without a shipped dictionary, applied before a body is
//! sealed and undone after it is opened. `compress` decides whether compression pays;
//! `decompress` undoes it within `MAX_BODY_BYTES`, whatever the input claims.

use prost::encoding::encoded_len_varint;
use zstd::zstd_safe::CParameter;

use crate::dict;
use crate::error::{EnvelopeError, SealError};
use crate::limits::{COMPRESS_DICT_MIN_BYTES, COMPRESS_LEVEL, COMPRESS_MIN_BYTES, MAX_BODY_BYTES};
use crate::pb;

/// How a sender compresses bodies. The default is plain zstd at `COMPRESS_LEVEL` for
/// bodies of at least `COMPRESS_MIN_BYTES`, and no dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressOptions {
    /// Whether to compress at all; when false every body is sent as is.
    pub enabled: bool,
    /// zstd level, 1 (fastest) to 19; zstd clamps other values.
    pub level: i32,
    /// The shipped dictionary to compress with (an id of `SUPPORTED_DICTIONARIES`). Set it
    /// only when the recipient's peer record lists it (see `CompressOptions::for_recipient`):
    /// a recipient without it cannot read the body.
    pub dictionary: Option<u32>,
}

impl Default for CompressOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            level: COMPRESS_LEVEL,
            dictionary: None,
        }
    }
}

impl CompressOptions {
    /// Compression disabled: bodies travel as they are.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The defaults, plus the newest dictionary this build shares with a recipient whose
    /// peer record lists `their_dictionaries`.
    pub fn for_recipient(their_dictionaries: &[u32]) -> Self {
        Self {
            dictionary: dict::shared_dictionary(their_dictionaries),
            ..Self::default()
        }
    }
}

/// How a body's content is compressed: the `compression` and `dictionary` fields of a
/// `Body`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionKind {
    /// Stored as is.
    None,
    /// One zstd frame, no dictionary.
    Zstd,
    /// One zstd frame made with the dictionary of this id.
    ZstdDict(u32),
}

impl CompressionKind {
    /// The `compression` and `dictionary` field values that carry this kind (the
    /// dictionary is 0 unless a dictionary is used).
    pub fn to_wire(self) -> (pb::Compression, u32) {
        match self {
            Self::None => (pb::Compression::None, 0),
            Self::Zstd => (pb::Compression::Zstd, 0),
            Self::ZstdDict(id) => (pb::Compression::ZstdDict, id),
        }
    }

    /// Reads the `compression` and `dictionary` fields of a received message. An unknown
    /// compression, a dictionary id without `COMPRESSION_ZSTD_DICT`, or that compression
    /// with id 0, is `Malformed`. Whether this build has the dictionary is checked by
    /// `decompress`.
    pub fn from_wire(compression: i32, dictionary: u32) -> Result<Self, EnvelopeError> {
        let kind = match pb::Compression::try_from(compression) {
            Ok(pb::Compression::None) => Self::None,
            Ok(pb::Compression::Zstd) => Self::Zstd,
            Ok(pb::Compression::ZstdDict) if dictionary != 0 => {
                return Ok(Self::ZstdDict(dictionary))
            }
            Ok(pb::Compression::ZstdDict) => {
                return Err(EnvelopeError::Malformed(
                    "COMPRESSION_ZSTD_DICT without a dictionary id".into(),
                ))
            }
            Err(_) => {
                return Err(EnvelopeError::Malformed(format!(
                    "unknown compression {compression}"
                )))
            }
        };
        if dictionary != 0 {
            return Err(EnvelopeError::Malformed(format!(
                "dictionary {dictionary} without COMPRESSION_ZSTD_DICT"
            )));
        }
        Ok(kind)
    }

    /// Bytes the `compression` and `dictionary` fields of this kind add to an encoded
    /// message (fields at their default value are not encoded).
    fn field_bytes(self) -> usize {
        match self {
            Self::None => 0,
            Self::Zstd => 2,
            Self::ZstdDict(id) => 3 + encoded_len_varint(u64::from(id)),
        }
    }

    /// Encoded length of a `Body` of this kind whose content is `content_len` bytes.
    fn body_len(self, content_len: usize) -> usize {
        let content = match content_len {
            0 => 0,
            n => 1 + encoded_len_varint(n as u64) + n,
        };
        self.field_bytes() + content
    }
}

/// Compresses `body` as `opts` asks, when that makes the encoded message smaller.
///
/// Returns the kind and the content to send. Compression is skipped (kind `None`, the
/// body unchanged) when `opts.enabled` is false, when the body is shorter than
/// `COMPRESS_MIN_BYTES` (`COMPRESS_DICT_MIN_BYTES` with a dictionary), or when the
/// compressed content plus the `compression` and `dictionary` fields would not be smaller
/// than the body (incompressible data); so a compressed `Body` is never larger than an
/// uncompressed one. Fails with `BodyTooLarge` for a body over `MAX_BODY_BYTES` (which
/// `decompress` would refuse), with `UnknownDictionary` when `opts.dictionary` is not one
/// this build ships, and with `Compress` if zstd fails.
pub fn compress(
    body: &[u8],
    opts: &CompressOptions,
) -> Result<(CompressionKind, Vec<u8>), SealError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(SealError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let unchanged = || (CompressionKind::None, body.to_vec());
    if !opts.enabled {
        return Ok(unchanged());
    }
    let (kind, compressed) = match opts.dictionary {
        Some(id) => {
            if dict::dictionary_bytes(id).is_none() {
                return Err(SealError::UnknownDictionary(id));
            }
            if body.len() < COMPRESS_DICT_MIN_BYTES {
                return Ok(unchanged());
            }
            (
                CompressionKind::ZstdDict(id),
                zstd_with_dictionary(body, id, opts.level)?,
            )
        }
        None => {
            if body.len() < COMPRESS_MIN_BYTES {
                return Ok(unchanged());
            }
            let compressed = zstd::bulk::compress(body, opts.level)
                .map_err(|e| SealError::Compress(e.to_string()))?;
            (CompressionKind::Zstd, compressed)
        }
    };
    if kind.body_len(compressed.len()) < CompressionKind::None.body_len(body.len()) {
        Ok((kind, compressed))
    } else {
        Ok(unchanged())
    }
}

fn zstd_with_dictionary(body: &[u8], id: u32, level: i32) -> Result<Vec<u8>, SealError> {
    let fail = |e: std::io::Error| SealError::Compress(e.to_string());
    let prepared = match level {
        COMPRESS_LEVEL => dict::encoder(id),
        _ => None,
    };
    let mut compressor = match (prepared, dict::dictionary_bytes(id)) {
        (Some(prepared), _) => zstd::bulk::Compressor::with_prepared_dictionary(prepared),
        (None, Some(bytes)) => zstd::bulk::Compressor::with_dictionary(level, bytes),
        (None, None) => return Err(SealError::UnknownDictionary(id)),
    }
    .map_err(fail)?;
    // Implementation notes: the Body names the dictionary, so the frame need not (4 bytes
    // saved on messages of a few dozen). A receiver that finds an id in the frame anyway
    // has zstd check it against the dictionary it loaded.
    compressor
        .set_parameter(CParameter::DictIdFlag(false))
        .map_err(fail)?;
    compressor.compress(body).map_err(fail)
}

/// Undoes `compress`: the original body, at most `MAX_BODY_BYTES`.
///
/// Fails with `UnknownDictionary` for a dictionary this build does not have, with
/// `Decompress` when the content is not a valid zstd frame for its dictionary or inflates
/// beyond `MAX_BODY_BYTES` (a zstd bomb costs at most that much memory), and with
/// `TooLarge` for uncompressed content over `MAX_BODY_BYTES`.
pub fn decompress(kind: CompressionKind, content: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let fail = |e: std::io::Error| EnvelopeError::Decompress(e.to_string());
    // Implementation notes: bulk decompression writes into a buffer of MAX_BODY_BYTES and
    // fails instead of growing it.
    match kind {
        CompressionKind::None => {
            if content.len() > MAX_BODY_BYTES {
                return Err(EnvelopeError::TooLarge {
                    what: "body",
                    len: content.len(),
                    max: MAX_BODY_BYTES,
                });
            }
            Ok(content.to_vec())
        }
        CompressionKind::Zstd => zstd::bulk::decompress(content, MAX_BODY_BYTES).map_err(fail),
        CompressionKind::ZstdDict(id) => {
            let prepared = dict::decoder(id).ok_or(EnvelopeError::UnknownDictionary(id))?;
            zstd::bulk::Decompressor::with_prepared_dictionary(prepared)
                .map_err(fail)?
                .decompress(content, MAX_BODY_BYTES)
                .map_err(fail)
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::dict::{dictionary_bytes, CHAT_DICT_V1_ID};

    const TEXT: &[u8] = b"hey, are we still on for dinner at the thai place on Friday at 7?";

    #[test]
    fn kinds_roundtrip_through_the_wire_fields() {
        for kind in [
            CompressionKind::None,
            CompressionKind::Zstd,
            CompressionKind::ZstdDict(CHAT_DICT_V1_ID),
            CompressionKind::ZstdDict(999),
        ] {
            let (compression, dictionary) = kind.to_wire();
            assert_eq!(
                CompressionKind::from_wire(compression.into(), dictionary).unwrap(),
                kind
            );
        }
        for (compression, dictionary) in [(2, 0), (1, 5), (0, 5), (3, 0), (-1, 0)] {
            assert!(matches!(
                CompressionKind::from_wire(compression, dictionary),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn body_len_is_the_encoded_length() {
        for kind in [
            CompressionKind::None,
            CompressionKind::Zstd,
            CompressionKind::ZstdDict(CHAT_DICT_V1_ID),
            CompressionKind::ZstdDict(u32::MAX),
        ] {
            for len in [0, 1, 127, 128, 20_000] {
                let (compression, dictionary) = kind.to_wire();
                let body = pb::Body {
                    compression: compression.into(),
                    content: vec![7; len],
                    dictionary,
                };
                assert_eq!(kind.body_len(len), body.encoded_len(), "{kind:?} {len}");
            }
        }
    }

    #[test]
    fn dictionary_frames_omit_the_dictionary_id() {
        let opts = CompressOptions::for_recipient(&[CHAT_DICT_V1_ID]);
        for level in [COMPRESS_LEVEL, 1] {
            let (kind, content) = compress(TEXT, &CompressOptions { level, ..opts }).unwrap();
            assert_eq!(kind, CompressionKind::ZstdDict(CHAT_DICT_V1_ID));
            assert_eq!(zstd::zstd_safe::get_dict_id_from_frame(&content), None);
            assert_eq!(decompress(kind, &content).unwrap(), TEXT);
            // Undecodable without the dictionary.
            assert!(decompress(CompressionKind::Zstd, &content).is_err());
        }
        assert!(dictionary_bytes(CHAT_DICT_V1_ID).is_some());
    }

    #[test]
    fn compressed_is_never_larger_than_plain() {
        let opts = CompressOptions::for_recipient(&[CHAT_DICT_V1_ID]);
        for len in 0..200 {
            let body: Vec<u8> = TEXT.iter().copied().cycle().take(len).collect();
            for opts in [opts, CompressOptions::default()] {
                let (kind, content) = compress(&body, &opts).unwrap();
                assert!(kind.body_len(content.len()) <= CompressionKind::None.body_len(len));
                assert_eq!(decompress(kind, &content).unwrap(), body);
            }
        }
    }

    #[test]
    fn decompress_bounds_plain_content() {
        assert!(matches!(
            decompress(CompressionKind::None, &vec![0; MAX_BODY_BYTES + 1]),
            Err(EnvelopeError::TooLarge { what: "body", .. })
        ));
        assert_eq!(
            decompress(CompressionKind::None, &[1; MAX_BODY_BYTES])
                .unwrap()
                .len(),
            MAX_BODY_BYTES
        );
        assert!(matches!(
            decompress(CompressionKind::ZstdDict(999), b"x"),
            Err(EnvelopeError::UnknownDictionary(999))
        ));
        assert!(matches!(
            compress(
                TEXT,
                &CompressOptions {
                    dictionary: Some(999),
                    ..CompressOptions::default()
                }
            ),
            Err(SealError::UnknownDictionary(999))
        ));
        assert!(matches!(
            compress(&vec![0; MAX_BODY_BYTES + 1], &CompressOptions::disabled()),
            Err(SealError::BodyTooLarge { .. })
        ));
        // Disabled compression does not look at the dictionary.
        let off = CompressOptions {
            dictionary: Some(999),
            ..CompressOptions::disabled()
        };
        assert_eq!(
            compress(TEXT, &off).unwrap(),
            (CompressionKind::None, TEXT.to_vec())
        );
    }
}
