//! Envelopes: a message sealed with HPKE to the recipient's box key and signed with the
//! sender's Ed25519 identity. `seal` builds one (`seal_with` chooses how the body is
//! compressed); `verify` checks everything a relay, mailbox or recipient can check without
//! the box secret; `VerifiedEnvelope::open` decrypts it for the recipient.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use rand::{CryptoRng, RngCore};

use crate::boxkey::HpkeRng;
use crate::class::{Kind, Priority};
use crate::compress::{compress, decompress, CompressOptions, CompressionKind};
use crate::error::{EnvelopeError, SealError};
use crate::id::MessageId;
use crate::identity::{inline_ed25519_key, len_be, parse_peer_id, signing_input};
use crate::limits::{
    BOX_KEY_BYTES, ENVELOPE_HPKE_INFO, ENVELOPE_SIG_DOMAIN, MAX_BODY_BYTES, MAX_CLOCK_SKEW_MS,
    MAX_ENVELOPE_BYTES, MAX_HEADER_BYTES, MAX_PEER_ID_BYTES, MESSAGE_ID_BYTES, PROTOCOL_VERSION,
    SIGNATURE_BYTES,
};
use crate::pb;

type Kem = X25519HkdfSha256;

/// Length of the ChaCha20-Poly1305 tag at the end of every ciphertext.
const AEAD_TAG_BYTES: usize = 16;

/// Everything needed to seal a message, except the keys.
#[derive(Clone, Debug)]
pub struct Draft<'a> {
    /// Fresh id for this message.
    pub id: MessageId,
    /// Who the message is for.
    pub recipient: PeerId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Expiry time, Unix milliseconds; must be after `created_ms`.
    pub expires_ms: u64,
    /// Scheduling class.
    pub priority: Priority,
    /// What the body contains.
    pub kind: Kind,
    /// The plaintext body, at most `MAX_BODY_BYTES`.
    pub body: &'a [u8],
}

/// The checked, decoded header of a verified envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Message id.
    pub id: MessageId,
    /// Sender; its signature has been verified.
    pub sender: PeerId,
    /// Intended recipient.
    pub recipient: PeerId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Expiry time, Unix milliseconds.
    pub expires_ms: u64,
    /// Scheduling class.
    pub priority: Priority,
    /// What the body contains.
    pub kind: Kind,
}

/// An envelope whose structure, limits, validity window and signature have been checked.
/// It keeps the bytes as received, so it can be stored or forwarded unchanged.
#[derive(Clone, Debug)]
pub struct VerifiedEnvelope {
    /// The decoded header.
    pub header: EnvelopeHeader,
    encoded: Vec<u8>,
    parts: pb::Envelope,
}

/// Seals `draft.body` to `recipient_box_key`, signs the result as `sender` and returns the
/// encoded `Envelope`. The body is compressed as `CompressOptions::default()` says: plain
/// zstd, no dictionary.
pub fn seal<R: RngCore + CryptoRng + ?Sized>(
    sender: &Keypair,
    draft: &Draft<'_>,
    recipient_box_key: &[u8; BOX_KEY_BYTES],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    seal_with(
        sender,
        draft,
        recipient_box_key,
        &CompressOptions::default(),
        rng,
    )
}

/// `seal`, with the body compressed as `opts` says (see `compress`). A dictionary in
/// `opts` must be one the recipient's peer record lists (`CompressOptions::for_recipient`).
pub fn seal_with<R: RngCore + CryptoRng + ?Sized>(
    sender: &Keypair,
    draft: &Draft<'_>,
    recipient_box_key: &[u8; BOX_KEY_BYTES],
    opts: &CompressOptions,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if draft.body.len() > MAX_BODY_BYTES {
        return Err(SealError::BodyTooLarge {
            len: draft.body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    if draft.expires_ms <= draft.created_ms {
        return Err(SealError::InvalidDraft(
            "expires_ms must be after created_ms".into(),
        ));
    }
    if sender.public().try_into_ed25519().is_err() {
        return Err(SealError::NotEd25519);
    }
    let recipient = draft.recipient.to_bytes();
    if recipient.len() > MAX_PEER_ID_BYTES {
        return Err(SealError::TooLarge {
            what: "recipient PeerId",
            len: recipient.len(),
            max: MAX_PEER_ID_BYTES,
        });
    }

    let body = compress_body(draft.body, opts)?.encode_to_vec();
    let header = pb::Header {
        version: PROTOCOL_VERSION,
        id: draft.id.as_bytes().to_vec(),
        sender: sender.public().to_peer_id().to_bytes(),
        recipient,
        created_ms: draft.created_ms,
        expires_ms: draft.expires_ms,
        priority: draft.priority.into(),
        kind: draft.kind.into(),
    }
    .encode_to_vec();
    if header.len() > MAX_HEADER_BYTES {
        return Err(SealError::TooLarge {
            what: "header",
            len: header.len(),
            max: MAX_HEADER_BYTES,
        });
    }

    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_box_key)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        ENVELOPE_HPKE_INFO,
        &body,
        &header,
        &mut HpkeRng(rng),
    )
    .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let enc = enc.to_bytes().to_vec();

    let signature = sender
        .sign(&envelope_signing_input(&header, &enc, &ciphertext))
        .map_err(|e| SealError::Sign(e.to_string()))?;

    let envelope = pb::Envelope {
        header,
        enc,
        ciphertext,
        signature,
    }
    .encode_to_vec();
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(SealError::TooLarge {
            what: "envelope",
            len: envelope.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(envelope)
}

/// Checks an encoded envelope received from the network at `now_ms`: sizes, structure,
/// version, ids, validity window and the sender's signature. It does not decrypt and
/// does not check that the envelope is for us (see `VerifiedEnvelope::check_recipient`).
pub fn verify(bytes: &[u8], now_ms: u64) -> Result<VerifiedEnvelope, EnvelopeError> {
    check_len("envelope", bytes.len(), MAX_ENVELOPE_BYTES)?;
    let parts = pb::Envelope::decode(bytes)
        .map_err(|e| EnvelopeError::Malformed(format!("envelope: {e}")))?;
    check_len("header", parts.header.len(), MAX_HEADER_BYTES)?;
    if parts.enc.len() != BOX_KEY_BYTES {
        return Err(EnvelopeError::Malformed(format!(
            "enc must be {BOX_KEY_BYTES} bytes, got {}",
            parts.enc.len()
        )));
    }
    if parts.signature.len() != SIGNATURE_BYTES {
        return Err(EnvelopeError::Malformed(format!(
            "signature must be {SIGNATURE_BYTES} bytes, got {}",
            parts.signature.len()
        )));
    }
    if parts.ciphertext.len() < AEAD_TAG_BYTES {
        return Err(EnvelopeError::Malformed(format!(
            "ciphertext shorter than the {AEAD_TAG_BYTES}-byte tag"
        )));
    }

    let header = decode_header(&parts.header, now_ms)?;

    let key = inline_ed25519_key(&header.sender).map_err(EnvelopeError::BadKey)?;
    let input = envelope_signing_input(&parts.header, &parts.enc, &parts.ciphertext);
    if !key.verify(&input, &parts.signature) {
        return Err(EnvelopeError::BadSignature);
    }

    Ok(VerifiedEnvelope {
        header,
        encoded: bytes.to_vec(),
        parts,
    })
}

impl VerifiedEnvelope {
    /// Fails with `WrongRecipient` unless the envelope is addressed to `local`.
    pub fn check_recipient(&self, local: &PeerId) -> Result<(), EnvelopeError> {
        if self.header.recipient == *local {
            Ok(())
        } else {
            Err(EnvelopeError::WrongRecipient)
        }
    }

    /// Decrypts the body with the recipient's box secret and undoes compression.
    pub fn open(
        &self,
        recipient_box_secret: &[u8; BOX_KEY_BYTES],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(recipient_box_secret)
            .map_err(|_| EnvelopeError::Undecryptable)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&self.parts.enc)
            .map_err(|e| EnvelopeError::Malformed(format!("enc: {e}")))?;
        let plaintext = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            ENVELOPE_HPKE_INFO,
            &self.parts.ciphertext,
            &self.parts.header,
        )
        .map_err(|_| EnvelopeError::Undecryptable)?;
        let body = pb::Body::decode(plaintext.as_slice())
            .map_err(|e| EnvelopeError::Malformed(format!("body: {e}")))?;
        decompress_body(body)
    }

    /// The envelope exactly as received, to store or forward.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// Consumes the envelope, returning the bytes as received.
    pub fn into_bytes(self) -> Vec<u8> {
        self.encoded
    }

    /// The encoded `Header`, as signed.
    pub fn header_bytes(&self) -> &[u8] {
        &self.parts.header
    }

    /// The HPKE encapsulated key.
    pub fn enc(&self) -> &[u8] {
        &self.parts.enc
    }

    /// The HPKE ciphertext, tag included.
    pub fn ciphertext(&self) -> &[u8] {
        &self.parts.ciphertext
    }

    /// The sender's Ed25519 signature.
    pub fn signature(&self) -> &[u8] {
        &self.parts.signature
    }
}

/// `"peercomm/v1/envelope-sig" || u32be(len(header)) || header || u32be(len(enc)) || enc ||
/// ciphertext`. The lengths make the split between the parts unambiguous.
fn envelope_signing_input(header: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    signing_input(&[
        ENVELOPE_SIG_DOMAIN,
        &len_be(header),
        header,
        &len_be(enc),
        enc,
        ciphertext,
    ])
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EnvelopeError> {
    if len > max {
        Err(EnvelopeError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

fn decode_header(bytes: &[u8], now_ms: u64) -> Result<EnvelopeHeader, EnvelopeError> {
    let h =
        pb::Header::decode(bytes).map_err(|e| EnvelopeError::Malformed(format!("header: {e}")))?;
    if h.version != PROTOCOL_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(h.version));
    }
    let id = MessageId::from_bytes(&h.id).map_err(|_| {
        EnvelopeError::Malformed(format!(
            "id must be {MESSAGE_ID_BYTES} bytes, got {}",
            h.id.len()
        ))
    })?;
    let sender = parse_peer_id(&h.sender, "sender").map_err(EnvelopeError::Malformed)?;
    let recipient = parse_peer_id(&h.recipient, "recipient").map_err(EnvelopeError::Malformed)?;
    let priority =
        Priority::try_from(h.priority).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let kind = Kind::try_from(h.kind).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if h.expires_ms <= h.created_ms {
        return Err(EnvelopeError::Malformed(
            "expires_ms must be after created_ms".into(),
        ));
    }
    if h.expires_ms <= now_ms {
        return Err(EnvelopeError::Expired);
    }
    if h.created_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(EnvelopeError::FromFuture);
    }
    Ok(EnvelopeHeader {
        id,
        sender,
        recipient,
        created_ms: h.created_ms,
        expires_ms: h.expires_ms,
        priority,
        kind,
    })
}

/// The `Body` of `body`, compressed as `opts` says when that makes it smaller.
fn compress_body(body: &[u8], opts: &CompressOptions) -> Result<pb::Body, SealError> {
    let (kind, content) = compress(body, opts)?;
    let (compression, dictionary) = kind.to_wire();
    Ok(pb::Body {
        compression: compression.into(),
        content,
        dictionary,
    })
}

fn decompress_body(body: pb::Body) -> Result<Vec<u8>, EnvelopeError> {
    let kind = CompressionKind::from_wire(body.compression, body.dictionary)?;
    decompress(kind, &body.content)
}

#[cfg(test)]
mod tests;
