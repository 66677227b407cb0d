//! Versions and size limits. Every decoder in this crate enforces these before it
//! allocates; senders must stay within them or receivers reject their messages.

/// Envelope format version written into `Header.version`; the only one accepted.
pub const PROTOCOL_VERSION: u32 = 1;

/// Length of a message id in bytes (128 bits).
pub const MESSAGE_ID_BYTES: usize = 16;

/// Longest binary PeerId accepted in any field (an inlined Ed25519 key takes 38).
pub const MAX_PEER_ID_BYTES: usize = 64;

/// Largest message body, before compression and sealing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest encoded `Header`.
pub const MAX_HEADER_BYTES: usize = 512;

/// Largest encoded `Envelope`.
pub const MAX_ENVELOPE_BYTES: usize = 96 * 1024;

/// Largest payload of any length-prefixed frame on a stream.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// Longest length prefix of a frame: a LEB128 varint of at most `MAX_FRAME_BYTES` takes 3 bytes.
pub const MAX_FRAME_PREFIX_BYTES: usize = 3;

/// Largest encoded `SignedPeerRecord`.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// Most addresses in one peer record.
pub const MAX_RECORD_ADDRS: usize = 32;

/// Longest binary multiaddr in a peer record.
pub const MAX_ADDR_BYTES: usize = 256;

/// Most roles in one peer record.
pub const MAX_ROLES: usize = 8;

/// Longest role name in a peer record, in bytes of UTF-8.
pub const MAX_ROLE_BYTES: usize = 32;

/// Largest encoded `SignedReceipt`.
pub const MAX_RECEIPT_BYTES: usize = 512;

/// Longest `Reject.reason`, in bytes of UTF-8.
pub const MAX_REJECT_REASON_BYTES: usize = 256;

/// How far in the future a `created_ms` may lie before the envelope is refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// Bodies shorter than this are not compressed without a dictionary (zstd's frame overhead
/// would not pay; on chat text plain zstd never wins below it).
pub const COMPRESS_MIN_BYTES: usize = 64;

/// zstd level used when sealing: fast, and most of the gain of higher levels on chat text.
pub const COMPRESS_LEVEL: i32 = 3;

/// Bodies shorter than this are not compressed with a dictionary. Measured on held-out
/// synthetic chat (`train-dict`), the dictionary never pays below 22 bytes: the
/// `compression` and `dictionary` fields (6 bytes) and the smallest zstd frame (9 bytes)
/// cost more than it saves.
pub const COMPRESS_DICT_MIN_BYTES: usize = 20;

/// Most dictionary ids in one peer record.
pub const MAX_RECORD_DICTIONARIES: usize = 8;

/// Length of an X25519 public or secret key, and of the HPKE encapsulated key.
pub const BOX_KEY_BYTES: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// HPKE `info` string for envelopes.
pub const ENVELOPE_HPKE_INFO: &[u8] = b"peercomm/v1/envelope";

/// Domain separation prefix of the envelope signature input.
pub const ENVELOPE_SIG_DOMAIN: &[u8] = b"peercomm/v1/envelope-sig";

/// Domain separation prefix of the receipt signature input.
pub const RECEIPT_SIG_DOMAIN: &[u8] = b"peercomm/v1/receipt-sig";

/// Domain separation prefix of the peer record signature input.
pub const RECORD_SIG_DOMAIN: &[u8] = b"peercomm/v1/peer-record-sig";
