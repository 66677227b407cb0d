//! `verify_record` on arbitrary bytes must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peercomm_wire::verify_record(data, 0);
    let _ = peercomm_wire::verify_record(data, 1_700_000_000_000);
});
