//! Reading a decrypted `Body` (its compression and dictionary fields, then `decompress`) on
//! arbitrary bytes must never panic, and never return more than `MAX_BODY_BYTES`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{decompress, pb, CompressionKind, CHAT_DICT_V1_ID, MAX_BODY_BYTES};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = pb::Body::decode(data) {
        if let Ok(kind) = CompressionKind::from_wire(body.compression, body.dictionary) {
            if let Ok(out) = decompress(kind, &body.content) {
                assert!(out.len() <= MAX_BODY_BYTES);
            }
        }
    }
    // The raw bytes as a frame of each kind, so zstd's decoder sees them directly.
    for kind in [
        CompressionKind::Zstd,
        CompressionKind::ZstdDict(CHAT_DICT_V1_ID),
    ] {
        if let Ok(out) = decompress(kind, data) {
            assert!(out.len() <= MAX_BODY_BYTES);
        }
    }
});
