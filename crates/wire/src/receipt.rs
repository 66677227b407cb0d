//! Delivery receipts: the recipient's signed statement that it stored a message.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;

use crate::error::ReceiptError;
use crate::id::MessageId;
use crate::identity::{inline_ed25519_key, parse_peer_id, signing_input};
use crate::limits::{MAX_RECEIPT_BYTES, RECEIPT_SIG_DOMAIN, SIGNATURE_BYTES};
use crate::pb;

/// The content of a verified receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptInfo {
    /// The acknowledged message.
    pub id: MessageId,
    /// The acknowledged message's sender, as the recipient saw it.
    pub message_sender: PeerId,
    /// The recipient that stored the message (and signed the receipt).
    pub recipient: PeerId,
    /// When the recipient stored the message, Unix milliseconds.
    pub received_ms: u64,
}

/// Signs a receipt for message `id` from `message_sender`, stored at `received_ms` by the
/// owner of `recipient`, and returns it as a protobuf message (to put in a `MsgResponse`).
pub fn sign_receipt_message(
    recipient: &Keypair,
    id: MessageId,
    message_sender: &PeerId,
    received_ms: u64,
) -> Result<pb::SignedReceipt, ReceiptError> {
    let receipt = pb::Receipt {
        message_id: id.as_bytes().to_vec(),
        message_sender: message_sender.to_bytes(),
        recipient: recipient.public().to_peer_id().to_bytes(),
        received_ms,
    }
    .encode_to_vec();
    let signature = recipient
        .sign(&signing_input(&[RECEIPT_SIG_DOMAIN, &receipt]))
        .map_err(|e| ReceiptError::Sign(e.to_string()))?;
    let signed = pb::SignedReceipt { receipt, signature };
    let len = signed.encoded_len();
    if len > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "receipt",
            len,
            max: MAX_RECEIPT_BYTES,
        });
    }
    Ok(signed)
}

/// Like `sign_receipt_message`, but returns the encoded `SignedReceipt`.
pub fn sign_receipt(
    recipient: &Keypair,
    id: MessageId,
    message_sender: &PeerId,
    received_ms: u64,
) -> Result<Vec<u8>, ReceiptError> {
    sign_receipt_message(recipient, id, message_sender, received_ms).map(|r| r.encode_to_vec())
}

/// Decodes and verifies an encoded `SignedReceipt` that should come from `expected_signer`
/// and acknowledge `expected_id`.
pub fn verify_receipt(
    bytes: &[u8],
    expected_signer: &PeerId,
    expected_id: MessageId,
) -> Result<ReceiptInfo, ReceiptError> {
    expect(open_receipt(bytes)?, expected_signer, expected_id)
}

/// Verifies a decoded `SignedReceipt` (for example from a `MsgResponse`) that should come
/// from `expected_signer` and acknowledge `expected_id`.
pub fn verify_signed_receipt(
    signed: &pb::SignedReceipt,
    expected_signer: &PeerId,
    expected_id: MessageId,
) -> Result<ReceiptInfo, ReceiptError> {
    expect(open_signed_receipt(signed)?, expected_signer, expected_id)
}

/// `info`, if it is signed by `signer` and acknowledges `id`.
fn expect(info: ReceiptInfo, signer: &PeerId, id: MessageId) -> Result<ReceiptInfo, ReceiptError> {
    if info.recipient != *signer {
        return Err(ReceiptError::WrongSigner);
    }
    if info.id != id {
        return Err(ReceiptError::WrongMessage);
    }
    Ok(info)
}

/// Decodes and verifies an encoded `SignedReceipt` whatever it acknowledges: the signature
/// must be by the key inlined in the receipt's own `recipient` (a mailbox holding receipts
/// for others checks them this way).
pub fn open_receipt(bytes: &[u8]) -> Result<ReceiptInfo, ReceiptError> {
    if bytes.len() > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "receipt",
            len: bytes.len(),
            max: MAX_RECEIPT_BYTES,
        });
    }
    let signed = pb::SignedReceipt::decode(bytes)
        .map_err(|e| ReceiptError::Malformed(format!("signed receipt: {e}")))?;
    open_signed_receipt(&signed)
}

fn open_signed_receipt(signed: &pb::SignedReceipt) -> Result<ReceiptInfo, ReceiptError> {
    let len = signed.encoded_len();
    if len > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::TooLarge {
            what: "receipt",
            len,
            max: MAX_RECEIPT_BYTES,
        });
    }
    if signed.signature.len() != SIGNATURE_BYTES {
        return Err(ReceiptError::Malformed(format!(
            "signature must be {SIGNATURE_BYTES} bytes, got {}",
            signed.signature.len()
        )));
    }
    let receipt = pb::Receipt::decode(signed.receipt.as_slice())
        .map_err(|e| ReceiptError::Malformed(format!("receipt: {e}")))?;
    let id = MessageId::from_bytes(&receipt.message_id)
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let message_sender = parse_peer_id(&receipt.message_sender, "message sender")
        .map_err(ReceiptError::Malformed)?;
    let recipient =
        parse_peer_id(&receipt.recipient, "recipient").map_err(ReceiptError::Malformed)?;
    let key = inline_ed25519_key(&recipient).map_err(ReceiptError::BadKey)?;
    if !key.verify(
        &signing_input(&[RECEIPT_SIG_DOMAIN, &signed.receipt]),
        &signed.signature,
    ) {
        return Err(ReceiptError::BadSignature);
    }
    Ok(ReceiptInfo {
        id,
        message_sender,
        recipient,
        received_ms: receipt.received_ms,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::test_keys::{keypair, seeded_rng};

    #[test]
    fn sign_and_verify() {
        let mut rng = seeded_rng();
        let (alice, bob) = (keypair(&mut rng), keypair(&mut rng));
        let id = MessageId::random(&mut rng);
        let alice_id = alice.public().to_peer_id();
        let bob_id = bob.public().to_peer_id();
        let bytes = sign_receipt(&bob, id, &alice_id, 1234).unwrap();
        let info = verify_receipt(&bytes, &bob_id, id).unwrap();
        assert_eq!(
            info,
            ReceiptInfo {
                id,
                message_sender: alice_id,
                recipient: bob_id,
                received_ms: 1234
            }
        );
        // Opened without expectations, it says the same.
        assert_eq!(open_receipt(&bytes).unwrap(), info);
        let mut tampered = pb::SignedReceipt::decode(bytes.as_slice()).unwrap();
        tampered.signature[5] ^= 1;
        assert!(matches!(
            open_receipt(&tampered.encode_to_vec()),
            Err(ReceiptError::BadSignature)
        ));
        assert!(matches!(
            open_receipt(&[0; MAX_RECEIPT_BYTES + 1]),
            Err(ReceiptError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_wrong_signer_message_and_tampering() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (alice, bob, carol) = (keypair(&mut rng), keypair(&mut rng), keypair(&mut rng));
        let id = MessageId::random(&mut rng);
        let alice_id = alice.public().to_peer_id();
        let bob_id = bob.public().to_peer_id();
        let bytes = sign_receipt(&bob, id, &alice_id, 1).unwrap();

        let carol_id = carol.public().to_peer_id();
        assert!(matches!(
            verify_receipt(&bytes, &carol_id, id),
            Err(ReceiptError::WrongSigner)
        ));
        assert!(matches!(
            verify_receipt(&bytes, &bob_id, MessageId::random(&mut rng)),
            Err(ReceiptError::WrongMessage)
        ));

        // Carol signs a receipt that claims to be Bob's.
        let forged = pb::Receipt {
            message_id: id.as_bytes().to_vec(),
            message_sender: alice_id.to_bytes(),
            recipient: bob_id.to_bytes(),
            received_ms: 1,
        }
        .encode_to_vec();
        let signature = carol
            .sign(&signing_input(&[RECEIPT_SIG_DOMAIN, &forged]))
            .unwrap();
        let forged = pb::SignedReceipt {
            receipt: forged,
            signature,
        };
        assert!(matches!(
            verify_signed_receipt(&forged, &bob_id, id),
            Err(ReceiptError::BadSignature)
        ));

        // Changing received_ms breaks the signature.
        let mut signed = pb::SignedReceipt::decode(bytes.as_slice()).unwrap();
        let mut receipt = pb::Receipt::decode(signed.receipt.as_slice()).unwrap();
        receipt.received_ms = 2;
        signed.receipt = receipt.encode_to_vec();
        assert!(matches!(
            verify_signed_receipt(&signed, &bob_id, id),
            Err(ReceiptError::BadSignature)
        ));

        assert!(matches!(
            verify_receipt(&bytes[..bytes.len() - 1], &bob_id, id),
            Err(ReceiptError::Malformed(_))
        ));
        assert!(matches!(
            verify_receipt(&[0u8; MAX_RECEIPT_BYTES + 1], &bob_id, id),
            Err(ReceiptError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_hashed_peer_id_signer() {
        let mut rng = seeded_rng();
        let id = MessageId::random(&mut rng);
        // A SHA-256 PeerId cannot yield a key.
        let mut hashed = vec![0x12, 0x20];
        hashed.extend_from_slice(&[9; 32]);
        let hashed_id = PeerId::from_bytes(&hashed).unwrap();
        let signed = pb::SignedReceipt {
            receipt: pb::Receipt {
                message_id: id.as_bytes().to_vec(),
                message_sender: hashed.clone(),
                recipient: hashed,
                received_ms: 0,
            }
            .encode_to_vec(),
            signature: vec![0; 64],
        };
        assert!(matches!(
            verify_signed_receipt(&signed, &hashed_id, id),
            Err(ReceiptError::BadKey(_))
        ));
    }
}
