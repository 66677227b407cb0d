//! `decode_frame_len` and `decode_frame` on arbitrary bytes must never panic, and any
//! length they accept respects the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{decode_frame, decode_frame_len, encode_frame, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, prefix))) = decode_frame_len(data) {
        assert!(len <= MAX_FRAME_BYTES);
        assert!((1..=3).contains(&prefix));
        // Re-encoding gives back the same (minimal) prefix.
        if let Some(payload) = data.get(prefix..prefix + len) {
            let frame = encode_frame(payload).expect("len is within the limit");
            assert_eq!(frame[..prefix], data[..prefix]);
        }
    }
    let _ = decode_frame(data);
});
