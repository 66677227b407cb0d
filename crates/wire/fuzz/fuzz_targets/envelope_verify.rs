//! `verify` and, when it succeeds, `open` on arbitrary bytes must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A fixed "now" inside the window fuzzed envelopes are likely to claim.
const NOW_MS: u64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes (when present) pick the clock, so time checks are fuzzed too.
    let (now_ms, bytes) = match data.split_first_chunk::<8>() {
        Some((now, rest)) if data.len() % 2 == 1 => (u64::from_le_bytes(*now), rest),
        _ => (NOW_MS, data),
    };
    if let Ok(envelope) = peercomm_wire::verify(bytes, now_ms) {
        let _ = envelope.open(&[7; 32]);
    }
    let _ = peercomm_wire::MsgResponse::decode(data);
});
