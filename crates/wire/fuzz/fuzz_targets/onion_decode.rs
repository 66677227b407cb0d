//! The onion decoders (`OnionPacket`, `OnionAck`, `OnionPayload`) on
//! arbitrary bytes must never panic, and what decodes must re-encode to
//! something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{decode_onion_packet, encode_onion_packet, OnionAck, OnionContent};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = decode_onion_packet(data) {
        assert_eq!(decode_onion_packet(&encode_onion_packet(&packet)).ok(), Some(packet));
    }
    if let Ok(ack) = OnionAck::decode(data) {
        assert_eq!(OnionAck::decode(&ack.encode()).ok(), Some(ack));
    }
    if let Ok(content) = OnionContent::decode(data) {
        let again = content.encode().ok().and_then(|b| OnionContent::decode(&b).ok());
        assert_eq!(again, Some(content));
    }
});
