//! Shipped zstd dictionaries for message bodies: their bytes, their ids, and the
//! prepared (parsed once) forms the compressor and decompressor use.
//!
//! A dictionary is part of the protocol: a body compressed with one can only be read by
//! a peer that has the same bytes, so dictionaries are versioned files under `dict/`,
//! never changed once shipped, each named on the wire by its zstd dictionary id. A peer
//! lists the ids it has in its `PeerRecord.dictionaries`; a sender uses one only when the
//! recipient lists it ([`shared_dictionary`]).
//!
//! `chat-v1.zdict` (16 KiB) was made by
//! `cargo run --release -p peercomm-sim --bin train-dict -- crates/wire/dict/chat-v1.zdict`:
//! zstd's trainer on 20,000 messages of the synthetic chat corpus of
//! `peercomm_sim::corpus` (training seeds only), with its id then set to 32769, the
//! second id of RFC 8878's private range, which takes 3 bytes as a protobuf varint where
//! the trainer's random pick takes 5. The tool is deterministic: run again, it writes
//! the same bytes.

use std::sync::OnceLock;

use zstd::dict::{DecoderDictionary, EncoderDictionary};

use crate::limits::COMPRESS_LEVEL;

/// zstd dictionary id of `dict/chat-v1.zdict`, the chat dictionary of version 1 (a test
/// checks it against the file).
pub const CHAT_DICT_V1_ID: u32 = 32_769;

/// Ids of the dictionaries this build can compress and decompress with, newest first.
pub const SUPPORTED_DICTIONARIES: &[u32] = &[CHAT_DICT_V1_ID];

/// The bytes of `dict/chat-v1.zdict`.
const CHAT_DICT_V1: &[u8] = include_bytes!("../dict/chat-v1.zdict");

/// The bytes of dictionary `id`, if this build ships it.
pub fn dictionary_bytes(id: u32) -> Option<&'static [u8]> {
    match id {
        CHAT_DICT_V1_ID => Some(CHAT_DICT_V1),
        _ => None,
    }
}

/// The newest dictionary this build ships that a peer advertising `theirs` (its
/// `PeerRecord::dictionaries`) can decompress, if any.
pub fn shared_dictionary(theirs: &[u32]) -> Option<u32> {
    SUPPORTED_DICTIONARIES
        .iter()
        .copied()
        .find(|id| theirs.contains(id))
}

// Implementation notes: parsing a dictionary (entropy tables, match-finder tables for a
// level) costs far more than compressing a chat message with it, so each is prepared
// once per process. An `EncoderDictionary` is bound to a level: only `COMPRESS_LEVEL`
// is cached; other levels load the raw bytes per call (see `compress`).

/// Dictionary `id` prepared for compression at `COMPRESS_LEVEL`.
pub(crate) fn encoder(id: u32) -> Option<&'static EncoderDictionary<'static>> {
    static CHAT_V1: OnceLock<EncoderDictionary<'static>> = OnceLock::new();
    match id {
        CHAT_DICT_V1_ID => {
            Some(CHAT_V1.get_or_init(|| EncoderDictionary::copy(CHAT_DICT_V1, COMPRESS_LEVEL)))
        }
        _ => None,
    }
}

/// Dictionary `id` prepared for decompression.
pub(crate) fn decoder(id: u32) -> Option<&'static DecoderDictionary<'static>> {
    static CHAT_V1: OnceLock<DecoderDictionary<'static>> = OnceLock::new();
    match id {
        CHAT_DICT_V1_ID => Some(CHAT_V1.get_or_init(|| DecoderDictionary::copy(CHAT_DICT_V1))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_files() {
        for &id in SUPPORTED_DICTIONARIES {
            let bytes = dictionary_bytes(id).unwrap();
            let in_file = zstd::zstd_safe::get_dict_id_from_dict(bytes).map(|id| id.get());
            assert_eq!(in_file, Some(id), "dictionary {id}");
            // Private range of RFC 8878: 32768 ..= 2^31 - 1.
            assert!((32_768..1 << 31).contains(&id));
            assert!(encoder(id).is_some() && decoder(id).is_some());
        }
        assert!(SUPPORTED_DICTIONARIES.len() <= crate::limits::MAX_RECORD_DICTIONARIES);
        assert_eq!(dictionary_bytes(999), None);
        assert!(encoder(999).is_none() && decoder(999).is_none());
    }

    #[test]
    fn negotiation_picks_a_dictionary_both_sides_have() {
        assert_eq!(shared_dictionary(&[]), None);
        assert_eq!(shared_dictionary(&[999, 1_000_000]), None);
        assert_eq!(
            shared_dictionary(&[999, CHAT_DICT_V1_ID]),
            Some(CHAT_DICT_V1_ID)
        );
    }
}
