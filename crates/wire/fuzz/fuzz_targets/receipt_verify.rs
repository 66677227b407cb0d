//! `verify_receipt` on arbitrary bytes must never panic, whoever the expected signer is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{Keypair, MessageId, PeerId};

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes (when present) are the expected id, so a match is reachable.
    let id = data
        .first_chunk::<16>()
        .map(|id| MessageId::from(*id))
        .unwrap_or(MessageId::from([0; 16]));
    let signer = match Keypair::ed25519_from_bytes([1u8; 32]) {
        Ok(keypair) => keypair.public().to_peer_id(),
        Err(_) => PeerId::random(),
    };
    let _ = peercomm_wire::verify_receipt(data, &signer, id);
});
