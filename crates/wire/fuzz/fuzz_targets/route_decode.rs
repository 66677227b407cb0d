//! `Routed::decode` and `RouteResponse::decode` on arbitrary bytes must never
//! panic, and what decodes must re-encode to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{RouteResponse, Routed};

fuzz_target!(|data: &[u8]| {
    if let Ok(routed) = Routed::decode(data) {
        assert_eq!(Routed::decode(&routed.encode()).ok(), Some(routed));
    }
    if let Ok(response) = RouteResponse::decode(data) {
        assert_eq!(RouteResponse::decode(&response.encode()).ok(), Some(response));
    }
});
