//! Unit tests of sealing, verifying and opening envelopes, one per error path.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::boxkey::BoxKeypair;
use crate::test_keys::{keypair, seeded_rng};

const NOW: u64 = 1_700_000_000_000;

struct Fixture {
    alice: Keypair,
    bob: Keypair,
    bob_box: BoxKeypair,
    rng: ChaCha20Rng,
}

fn fixture() -> Fixture {
    let mut rng = seeded_rng();
    Fixture {
        alice: keypair(&mut rng),
        bob: keypair(&mut rng),
        bob_box: BoxKeypair::generate(&mut rng),
        rng,
    }
}

fn draft<'a>(f: &mut Fixture, body: &'a [u8]) -> Draft<'a> {
    Draft {
        id: MessageId::random(&mut f.rng),
        recipient: f.bob.public().to_peer_id(),
        created_ms: NOW,
        expires_ms: NOW + 60_000,
        priority: Priority::Interactive,
        kind: Kind::Chat,
        body,
    }
}

fn seal_with(f: &mut Fixture, d: &Draft<'_>) -> Vec<u8> {
    let key = *f.bob_box.public();
    seal(&f.alice, d, &key, &mut f.rng).unwrap()
}

/// Re-signs modified envelope parts as `signer`, so only the check under test fails.
fn resign(signer: &Keypair, mut env: pb::Envelope) -> Vec<u8> {
    env.signature = signer
        .sign(&envelope_signing_input(
            &env.header,
            &env.enc,
            &env.ciphertext,
        ))
        .unwrap();
    env.encode_to_vec()
}

/// Seals a draft whose header is rewritten by `edit` before encryption and signing.
fn seal_with_header(f: &mut Fixture, edit: impl FnOnce(&mut pb::Header)) -> Vec<u8> {
    let d = draft(f, b"hi");
    let bytes = seal_with(f, &d);
    let env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    let mut header = pb::Header::decode(env.header.as_slice()).unwrap();
    edit(&mut header);
    let header = header.encode_to_vec();
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(f.bob_box.public()).unwrap();
    let body = compress_body(b"hi").unwrap().encode_to_vec();
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        ENVELOPE_HPKE_INFO,
        &body,
        &header,
        &mut HpkeRng(&mut f.rng),
    )
    .unwrap();
    resign(
        &f.alice,
        pb::Envelope {
            header,
            enc: enc.to_bytes().to_vec(),
            ciphertext,
            signature: Vec::new(),
        },
    )
}

#[test]
fn roundtrip_without_compression() {
    let mut f = fixture();
    let d = draft(&mut f, b"short");
    let bytes = seal_with(&mut f, &d);
    let env = verify(&bytes, NOW).unwrap();
    assert_eq!(
        env.header,
        EnvelopeHeader {
            id: d.id,
            sender: f.alice.public().to_peer_id(),
            recipient: d.recipient,
            created_ms: d.created_ms,
            expires_ms: d.expires_ms,
            priority: d.priority,
            kind: d.kind,
        }
    );
    env.check_recipient(&f.bob.public().to_peer_id()).unwrap();
    assert_eq!(env.open(f.bob_box.secret()).unwrap(), b"short");
    assert_eq!(env.as_bytes(), bytes.as_slice());

    let parts = pb::Envelope::decode(bytes.as_slice()).unwrap();
    assert_eq!(env.header_bytes(), parts.header.as_slice());
    assert_eq!(env.enc().len(), 32);
    assert_eq!(env.signature().len(), 64);
    assert_eq!(env.ciphertext(), parts.ciphertext.as_slice());
}

#[test]
fn roundtrip_with_compression() {
    let mut f = fixture();
    let body = "hello peercomm ".repeat(500).into_bytes();
    let d = draft(&mut f, &body);
    let bytes = seal_with(&mut f, &d);
    // Compression happened: the envelope is much smaller than the body.
    assert!(bytes.len() < body.len() / 4);
    let env = verify(&bytes, NOW).unwrap();
    assert_eq!(env.open(f.bob_box.secret()).unwrap(), body);
}

#[test]
fn incompressible_and_small_bodies_are_stored_as_is() {
    let mut small = vec![0u8; COMPRESS_MIN_BYTES - 1];
    assert_eq!(compress_body(&small).unwrap().compression, 0);
    small.push(0);
    assert_eq!(
        compress_body(&small).unwrap().compression,
        pb::Compression::Zstd as i32
    );
    let mut noise = vec![0u8; 4096];
    ChaCha20Rng::seed_from_u64(1).fill_bytes(&mut noise);
    let body = compress_body(&noise).unwrap();
    assert_eq!(body.compression, 0);
    assert_eq!(body.content, noise);
}

#[test]
fn max_body_roundtrips_and_larger_is_refused() {
    let mut f = fixture();
    let mut body = vec![0u8; MAX_BODY_BYTES];
    f.rng.fill_bytes(&mut body);
    let d = draft(&mut f, &body);
    let bytes = seal_with(&mut f, &d);
    assert!(bytes.len() <= MAX_ENVELOPE_BYTES);
    let env = verify(&bytes, NOW).unwrap();
    assert_eq!(env.open(f.bob_box.secret()).unwrap(), body);

    body.push(0);
    let d = draft(&mut f, &body);
    let key = *f.bob_box.public();
    assert!(matches!(
        seal(&f.alice, &d, &key, &mut f.rng),
        Err(SealError::BodyTooLarge { .. })
    ));
}

#[test]
fn seal_refuses_bad_drafts_and_keys() {
    let mut f = fixture();
    let key = *f.bob_box.public();
    let mut d = draft(&mut f, b"x");
    d.expires_ms = d.created_ms;
    assert!(matches!(
        seal(&f.alice, &d, &key, &mut f.rng),
        Err(SealError::InvalidDraft(_))
    ));
    // The all-zero point gives an all-zero shared secret, which HPKE refuses.
    let d = draft(&mut f, b"x");
    assert!(matches!(
        seal(&f.alice, &d, &[0; 32], &mut f.rng),
        Err(SealError::Encrypt(_))
    ));
}

#[test]
fn tampered_parts_are_refused() {
    let mut f = fixture();
    let d = draft(&mut f, b"tamper with me");
    let bytes = seal_with(&mut f, &d);
    let env = pb::Envelope::decode(bytes.as_slice()).unwrap();

    let mut header = env.clone();
    let mut h = pb::Header::decode(header.header.as_slice()).unwrap();
    h.priority = Priority::Control.into();
    header.header = h.encode_to_vec();
    assert!(matches!(
        verify(&header.encode_to_vec(), NOW),
        Err(EnvelopeError::BadSignature)
    ));

    let mut ct = env.clone();
    ct.ciphertext[0] ^= 1;
    assert!(matches!(
        verify(&ct.encode_to_vec(), NOW),
        Err(EnvelopeError::BadSignature)
    ));

    let mut enc = env.clone();
    enc.enc[0] ^= 1;
    assert!(matches!(
        verify(&enc.encode_to_vec(), NOW),
        Err(EnvelopeError::BadSignature)
    ));

    let mut sig = env.clone();
    sig.signature[10] ^= 1;
    assert!(matches!(
        verify(&sig.encode_to_vec(), NOW),
        Err(EnvelopeError::BadSignature)
    ));

    // A ciphertext changed and re-signed by the sender still fails authentication.
    let mut ct = env.clone();
    ct.ciphertext[0] ^= 1;
    let resigned = verify(&resign(&f.alice, ct), NOW).unwrap();
    assert!(matches!(
        resigned.open(f.bob_box.secret()),
        Err(EnvelopeError::Undecryptable)
    ));

    // A header changed and re-signed no longer matches the HPKE additional data.
    let mut header = env.clone();
    let mut h = pb::Header::decode(header.header.as_slice()).unwrap();
    h.priority = Priority::Control.into();
    header.header = h.encode_to_vec();
    let resigned = verify(&resign(&f.alice, header), NOW).unwrap();
    assert!(matches!(
        resigned.open(f.bob_box.secret()),
        Err(EnvelopeError::Undecryptable)
    ));
}

#[test]
fn another_signer_is_refused() {
    let mut f = fixture();
    let d = draft(&mut f, b"x");
    let bytes = seal_with(&mut f, &d);
    let env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    // Bob signs an envelope whose header names Alice as sender.
    assert!(matches!(
        verify(&resign(&f.bob, env), NOW),
        Err(EnvelopeError::BadSignature)
    ));
}

#[test]
fn wrong_box_key_and_wrong_recipient_are_refused() {
    let mut f = fixture();
    let d = draft(&mut f, b"for bob only");
    let bytes = seal_with(&mut f, &d);
    let env = verify(&bytes, NOW).unwrap();
    let other = BoxKeypair::generate(&mut f.rng);
    assert!(matches!(
        env.open(other.secret()),
        Err(EnvelopeError::Undecryptable)
    ));
    assert!(matches!(
        env.check_recipient(&f.alice.public().to_peer_id()),
        Err(EnvelopeError::WrongRecipient)
    ));
}

#[test]
fn validity_window_is_enforced() {
    let mut f = fixture();
    let d = draft(&mut f, b"x");
    let bytes = seal_with(&mut f, &d);
    assert!(verify(&bytes, d.expires_ms - 1).is_ok());
    assert!(matches!(
        verify(&bytes, d.expires_ms),
        Err(EnvelopeError::Expired)
    ));
    assert!(verify(&bytes, d.created_ms - MAX_CLOCK_SKEW_MS).is_ok());
    assert!(matches!(
        verify(&bytes, d.created_ms - MAX_CLOCK_SKEW_MS - 1),
        Err(EnvelopeError::FromFuture)
    ));
    let e = verify(&bytes, d.expires_ms).unwrap_err();
    assert_eq!(e.reject_code(), pb::RejectCode::RejectExpired);

    let bad = seal_with_header(&mut f, |h| h.expires_ms = h.created_ms);
    assert!(matches!(verify(&bad, 0), Err(EnvelopeError::Malformed(_))));
}

#[test]
fn unknown_version_is_refused() {
    let mut f = fixture();
    let bytes = seal_with_header(&mut f, |h| h.version = 2);
    let e = verify(&bytes, NOW).unwrap_err();
    assert!(matches!(e, EnvelopeError::UnsupportedVersion(2)));
    assert_eq!(e.reject_code(), pb::RejectCode::RejectUnsupportedVersion);
}

#[test]
fn bad_header_fields_are_refused() {
    let mut f = fixture();
    type Edit = Box<dyn FnOnce(&mut pb::Header)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("short id", Box::new(|h| h.id.truncate(15))),
        ("no priority", Box::new(|h| h.priority = 0)),
        ("unknown priority", Box::new(|h| h.priority = 42)),
        ("unknown kind", Box::new(|h| h.kind = 42)),
        (
            "garbage recipient",
            Box::new(|h| h.recipient = vec![1, 2, 3]),
        ),
        ("long recipient", Box::new(|h| h.recipient = vec![0; 65])),
        ("garbage sender", Box::new(|h| h.sender = vec![0xff; 10])),
    ];
    for (name, edit) in cases {
        let bytes = seal_with_header(&mut f, edit);
        let e = verify(&bytes, NOW).unwrap_err();
        assert!(matches!(e, EnvelopeError::Malformed(_)), "{name}: {e:?}");
        assert_eq!(e.reject_code(), pb::RejectCode::RejectMalformed);
    }
}

#[test]
fn senders_without_an_inline_ed25519_key_are_refused() {
    let mut f = fixture();
    // A SHA-256 multihash PeerId (as used for RSA keys): no key to check against.
    let mut hashed = vec![0x12, 0x20];
    hashed.extend_from_slice(&[7; 32]);
    let bytes = seal_with_header(&mut f, |h| h.sender = hashed);
    assert!(matches!(verify(&bytes, NOW), Err(EnvelopeError::BadKey(_))));

    // An identity multihash whose digest is not a protobuf public key.
    let random = PeerId::random().to_bytes();
    let bytes = seal_with_header(&mut f, |h| h.sender = random);
    let e = verify(&bytes, NOW).unwrap_err();
    assert!(matches!(e, EnvelopeError::BadKey(_)), "{e:?}");
    assert_eq!(e.reject_code(), pb::RejectCode::RejectBadSignature);
}

#[test]
fn truncated_and_oversized_inputs_are_refused() {
    let mut f = fixture();
    let d = draft(&mut f, b"x");
    let bytes = seal_with(&mut f, &d);
    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(verify(&bytes[..cut], NOW).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        verify(&bytes[..bytes.len() - 1], NOW),
        Err(EnvelopeError::Malformed(_))
    ));
    let e = verify(&vec![0; MAX_ENVELOPE_BYTES + 1], NOW).unwrap_err();
    assert!(matches!(
        e,
        EnvelopeError::TooLarge {
            what: "envelope",
            ..
        }
    ));
    assert_eq!(e.reject_code(), pb::RejectCode::RejectTooLarge);

    let mut env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    env.header = vec![0; MAX_HEADER_BYTES + 1];
    assert!(matches!(
        verify(&env.encode_to_vec(), NOW),
        Err(EnvelopeError::TooLarge { what: "header", .. })
    ));
    let mut env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    env.enc.pop();
    assert!(matches!(
        verify(&env.encode_to_vec(), NOW),
        Err(EnvelopeError::Malformed(_))
    ));
    let mut env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    env.signature.push(0);
    assert!(matches!(
        verify(&env.encode_to_vec(), NOW),
        Err(EnvelopeError::Malformed(_))
    ));
    let mut env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    env.ciphertext.truncate(15);
    assert!(matches!(
        verify(&env.encode_to_vec(), NOW),
        Err(EnvelopeError::Malformed(_))
    ));
}

/// Seals an arbitrary `Body` message (bypassing `seal`'s own compression).
fn seal_raw_body(f: &mut Fixture, body: pb::Body) -> VerifiedEnvelope {
    let d = draft(f, b"x");
    let bytes = seal_with(f, &d);
    let mut env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(f.bob_box.public()).unwrap();
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        ENVELOPE_HPKE_INFO,
        &body.encode_to_vec(),
        &env.header,
        &mut HpkeRng(&mut f.rng),
    )
    .unwrap();
    env.enc = enc.to_bytes().to_vec();
    env.ciphertext = ciphertext;
    verify(&resign(&f.alice, env), NOW).unwrap()
}

#[test]
fn bad_bodies_are_refused_on_open() {
    let mut f = fixture();
    let secret = *f.bob_box.secret();

    // A zstd bomb: a small frame that inflates past MAX_BODY_BYTES.
    let bomb = zstd::bulk::compress(&vec![0u8; MAX_BODY_BYTES + 1], 3).unwrap();
    assert!(bomb.len() < 1024);
    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::Zstd.into(),
            content: bomb,
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::Decompress(_))
    ));

    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::Zstd.into(),
            content: b"not zstd".to_vec(),
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::Decompress(_))
    ));

    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: 7,
            content: b"x".to_vec(),
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::Malformed(_))
    ));

    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: 0,
            content: vec![0; MAX_BODY_BYTES + 1],
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::TooLarge { what: "body", .. })
    ));
}

#[test]
fn signature_input_matches_the_spec() {
    let mut f = fixture();
    let d = draft(&mut f, b"spec");
    let bytes = seal_with(&mut f, &d);
    let env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    // Built exactly as docs/PROTOCOL.md section 3.1 step 4 writes it.
    let mut input = b"peercomm/v1/envelope-sig".to_vec();
    input.extend_from_slice(&(env.header.len() as u32).to_be_bytes());
    input.extend_from_slice(&env.header);
    input.extend_from_slice(&32u32.to_be_bytes());
    input.extend_from_slice(&env.enc);
    input.extend_from_slice(&env.ciphertext);
    assert!(f.alice.public().verify(&input, &env.signature));
    // The ciphertext is the Body plus a 16-byte tag.
    let body = pb::Body {
        compression: 0,
        content: b"spec".to_vec(),
    };
    assert_eq!(env.ciphertext.len(), body.encoded_len() + 16);
}
