//! Error types, one per operation. Each variant says what was wrong; the doc line says
//! whether sending the same bytes again could succeed.

use crate::pb::RejectCode;

/// Why `seal` refused to build an envelope. All are caller errors except `Encrypt` and
/// `Sign`, which mean the keys given were unusable; none is fixed by retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The body is longer than `MAX_BODY_BYTES`.
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A part of the envelope would exceed its limit (for example a very long recipient id).
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The draft breaks a rule receivers enforce (for example `expires_ms <= created_ms`).
    #[error("invalid draft: {0}")]
    InvalidDraft(String),
    /// The sender keypair is not Ed25519.
    #[error("the sender keypair is not Ed25519")]
    NotEd25519,
    /// zstd failed to compress the body.
    #[error("compression failed: {0}")]
    Compress(String),
    /// The options name a dictionary this build does not ship.
    #[error("no compression dictionary with id {0}")]
    UnknownDictionary(u32),
    /// HPKE refused the recipient's box key (for example a low-order point).
    #[error("sealing failed: {0}")]
    Encrypt(String),
    /// The keypair failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why an envelope was refused by `verify`, `VerifiedEnvelope::open` or
/// `VerifiedEnvelope::check_recipient`. Only the time-window variants (`Expired`,
/// `FromFuture`) depend on the receiver's state; the rest are final for these bytes.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The envelope or a part of it exceeds its size limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part ("envelope", "header", "body", …).
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not decode, or a field has the wrong size or an unknown value.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// `Header.version` is not `PROTOCOL_VERSION`.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u32),
    /// The sender's signature does not verify.
    #[error("bad envelope signature")]
    BadSignature,
    /// The sender's Ed25519 key cannot be read from its PeerId.
    #[error("unusable sender key: {0}")]
    BadKey(String),
    /// `expires_ms` is not after `now_ms`.
    #[error("envelope expired")]
    Expired,
    /// `created_ms` lies more than `MAX_CLOCK_SKEW_MS` after `now_ms`.
    #[error("envelope created in the future")]
    FromFuture,
    /// The envelope is addressed to another peer.
    #[error("envelope addressed to another peer")]
    WrongRecipient,
    /// The ciphertext does not open with the given box key (or was tampered with).
    #[error("envelope cannot be decrypted")]
    Undecryptable,
    /// The compressed body is invalid or inflates beyond `MAX_BODY_BYTES`.
    #[error("body decompression failed: {0}")]
    Decompress(String),
    /// The body is compressed with a dictionary this build does not have (the sender
    /// used one the recipient's record does not list). Sealing it again without that
    /// dictionary would succeed.
    #[error("body compressed with unknown dictionary {0}")]
    UnknownDictionary(u32),
}

impl EnvelopeError {
    /// The code a receiver puts in its `Reject` for this error.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::TooLarge { .. } => RejectCode::RejectTooLarge,
            Self::Malformed(_) | Self::Decompress(_) => RejectCode::RejectMalformed,
            Self::UnsupportedVersion(_) => RejectCode::RejectUnsupportedVersion,
            Self::BadSignature | Self::BadKey(_) => RejectCode::RejectBadSignature,
            Self::Expired | Self::FromFuture => RejectCode::RejectExpired,
            Self::WrongRecipient => RejectCode::RejectWrongRecipient,
            Self::Undecryptable | Self::UnknownDictionary(_) => RejectCode::RejectUndecryptable,
        }
    }
}

/// Why a receipt could not be signed or was refused by `verify_receipt`.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt or a part of it exceeds its size limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not decode or a field has the wrong size.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The signer's Ed25519 key cannot be read from its PeerId.
    #[error("unusable signer key: {0}")]
    BadKey(String),
    /// The signature does not verify.
    #[error("bad receipt signature")]
    BadSignature,
    /// `Receipt.recipient` is not the expected signer.
    #[error("receipt not issued by the expected peer")]
    WrongSigner,
    /// The receipt acknowledges another message.
    #[error("receipt for another message")]
    WrongMessage,
    /// The keypair failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a peer record could not be signed or was refused by `verify_record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record or a part of it exceeds its limit (size or count).
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// Which part ("record", "addrs", "roles", …).
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not decode or a field has the wrong size.
    #[error("malformed peer record: {0}")]
    Malformed(String),
    /// The public key does not decode or is not Ed25519.
    #[error("unusable record key: {0}")]
    BadKey(String),
    /// The key does not belong to the record's `peer_id` (or, when signing, the keypair
    /// is not the record's peer).
    #[error("record signed by another peer")]
    WrongSigner,
    /// The signature does not verify.
    #[error("bad record signature")]
    BadSignature,
    /// `expires_ms` is not after `now_ms`; a fresher record may exist.
    #[error("peer record expired")]
    Expired,
    /// An address is not a valid binary multiaddr.
    #[error("invalid address: {0}")]
    InvalidAddr(String),
    /// The keypair failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a frame length prefix (or a frame) was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced payload length exceeds `MAX_FRAME_BYTES`.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced or given length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The varint prefix is longer than `MAX_FRAME_PREFIX_BYTES`.
    #[error("frame length prefix too long")]
    PrefixTooLong,
    /// The varint prefix is not in its shortest form.
    #[error("frame length prefix not minimally encoded")]
    NotMinimal,
}

/// Why a `MsgResponse` did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The response exceeds `MAX_FRAME_BYTES`, or a part exceeds its own limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not decode, or neither (or an unknown) result is set.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// Why a string or byte slice is not a `MessageId`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// Not exactly 16 bytes (or 32 hex characters).
    #[error("message id must be 16 bytes, got {0}")]
    WrongLength(usize),
    /// Not lowercase or uppercase hexadecimal.
    #[error("message id is not hexadecimal")]
    NotHex,
}

/// A name or protobuf value that maps to no known `Priority` or `Kind`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what}: {value}")]
pub struct UnknownValue {
    /// Which enum ("priority" or "kind").
    pub what: &'static str,
    /// The rejected value, as text.
    pub value: String,
}
