//! The mailbox decoders (`MailboxRequest`, `MailboxResponse`, `SignedMailAck`)
//! on arbitrary bytes must never panic, and what decodes must re-encode to
//! something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercomm_wire::{verify_mail_ack, MailboxRequest, MailboxResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = MailboxRequest::decode(data) {
        assert_eq!(MailboxRequest::decode(&request.encode()).ok(), Some(request));
    }
    if let Ok(response) = MailboxResponse::decode(data) {
        assert_eq!(MailboxResponse::decode(&response.encode()).ok(), Some(response));
    }
    let _ = verify_mail_ack(data);
});
