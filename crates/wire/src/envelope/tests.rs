//! Unit tests of sealing, verifying and opening envelopes, one per error path.

use libp2p_identity::{Keypair, PeerId};
use prost::Message;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::boxkey::BoxKeypair;
use crate::dict::{dictionary_bytes, CHAT_DICT_V1_ID};
use crate::limits::{COMPRESS_DICT_MIN_BYTES, COMPRESS_MIN_BYTES};
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

fn seal_to_bob(f: &mut Fixture, d: &Draft<'_>) -> Vec<u8> {
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
    let bytes = seal_to_bob(f, &d);
    let env = pb::Envelope::decode(bytes.as_slice()).unwrap();
    let mut header = pb::Header::decode(env.header.as_slice()).unwrap();
    edit(&mut header);
    let header = header.encode_to_vec();
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(f.bob_box.public()).unwrap();
    let body = compress_body(b"hi", &CompressOptions::default())
        .unwrap()
        .encode_to_vec();
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
    // Compression happened: the envelope is much smaller than the body.
    assert!(bytes.len() < body.len() / 4);
    let env = verify(&bytes, NOW).unwrap();
    assert_eq!(env.open(f.bob_box.secret()).unwrap(), body);
}

#[test]
fn incompressible_and_small_bodies_are_stored_as_is() {
    let plain = CompressOptions::default();
    let with_dict = CompressOptions::for_recipient(&[CHAT_DICT_V1_ID]);
    let mut small = vec![0u8; COMPRESS_MIN_BYTES - 1];
    assert_eq!(compress_body(&small, &plain).unwrap().compression, 0);
    small.push(0);
    assert_eq!(
        compress_body(&small, &plain).unwrap().compression,
        pb::Compression::Zstd as i32
    );
    let mut noise = vec![0u8; 4096];
    ChaCha20Rng::seed_from_u64(1).fill_bytes(&mut noise);
    for opts in [plain, with_dict] {
        let body = compress_body(&noise, &opts).unwrap();
        assert_eq!((body.compression, body.dictionary), (0, 0));
        assert_eq!(body.content, noise);
    }
    let short = vec![0u8; COMPRESS_DICT_MIN_BYTES - 1];
    assert_eq!(compress_body(&short, &with_dict).unwrap().compression, 0);
}

/// Chat messages a person might send; none of them is in the training corpus verbatim.
const CHAT: &[&str] = &[
    "are you free tomorrow night?",
    "running 10 minutes late, sorry!",
    "hey, are we still on for lunch on Friday?",
    "can you pick up some milk and bread on the way home?",
    "I'll be at the station around 6:30, call me when you get there",
];

fn sealed_len(f: &mut Fixture, body: &[u8], opts: &CompressOptions) -> (Vec<u8>, usize) {
    let d = draft(f, body);
    let key = *f.bob_box.public();
    let bytes = seal_with(&f.alice, &d, &key, opts, &mut f.rng).unwrap();
    let len = bytes.len();
    (bytes, len)
}

#[test]
fn roundtrip_with_dictionary() {
    let mut f = fixture();
    let opts = CompressOptions::for_recipient(&[CHAT_DICT_V1_ID]);
    assert_eq!(opts.dictionary, Some(CHAT_DICT_V1_ID));
    let long = CHAT.join(" ").repeat(40);
    for body in CHAT
        .iter()
        .map(|s| s.as_bytes())
        .chain([long.as_bytes(), b"" as &[u8]])
    {
        let (bytes, _) = sealed_len(&mut f, body, &opts);
        let env = verify(&bytes, NOW).unwrap();
        assert_eq!(env.open(f.bob_box.secret()).unwrap(), body);
    }
    // Other levels load the dictionary per call; same result on the wire.
    for level in [1, 19] {
        let opts = CompressOptions { level, ..opts };
        let (bytes, _) = sealed_len(&mut f, long.as_bytes(), &opts);
        let env = verify(&bytes, NOW).unwrap();
        assert_eq!(env.open(f.bob_box.secret()).unwrap(), long.as_bytes());
    }
}

#[test]
fn short_chat_compresses_only_with_the_dictionary() {
    let mut f = fixture();
    let with_dict = CompressOptions::for_recipient(&[CHAT_DICT_V1_ID]);
    for text in CHAT {
        let body = text.as_bytes();
        let (_, none) = sealed_len(&mut f, body, &CompressOptions::disabled());
        let (_, plain) = sealed_len(&mut f, body, &CompressOptions::default());
        let (_, dict) = sealed_len(&mut f, body, &with_dict);
        // Without a dictionary a short message is sent as is.
        assert_eq!(plain, none, "{text:?}");
        assert!(
            dict < none,
            "{text:?}: {dict} with the dictionary, {none} without"
        );
        let compressed = compress_body(body, &with_dict).unwrap();
        assert_eq!(
            (compressed.compression, compressed.dictionary),
            (pb::Compression::ZstdDict as i32, CHAT_DICT_V1_ID),
            "{text:?}"
        );
        assert!(
            compressed.encoded_len()
                < compress_body(body, &CompressOptions::default())
                    .unwrap()
                    .encoded_len()
        );
    }
    // Over all of them the dictionary saves about a third of the body bytes.
    let total = |opts: &CompressOptions| -> usize {
        CHAT.iter()
            .map(|t| compress_body(t.as_bytes(), opts).unwrap().encoded_len())
            .sum()
    };
    let (plain, dict) = (total(&CompressOptions::default()), total(&with_dict));
    assert!(
        dict * 10 < plain * 8,
        "{dict} with the dictionary, {plain} without"
    );
}

#[test]
fn disabled_compression_sends_bodies_as_is() {
    let body = "hello peercomm ".repeat(500).into_bytes();
    let b = compress_body(&body, &CompressOptions::disabled()).unwrap();
    assert_eq!((b.compression, b.dictionary), (0, 0));
    assert_eq!(b.content, body);
    // Without a dictionary, plain zstd (never COMPRESSION_ZSTD_DICT).
    let b = compress_body(&body, &CompressOptions::for_recipient(&[])).unwrap();
    assert_eq!(
        (b.compression, b.dictionary),
        (pb::Compression::Zstd as i32, 0)
    );
}

#[test]
fn seal_refuses_a_dictionary_it_does_not_ship() {
    let mut f = fixture();
    let d = draft(&mut f, b"hello there, how are you doing today?");
    let key = *f.bob_box.public();
    let opts = CompressOptions {
        dictionary: Some(999),
        ..CompressOptions::default()
    };
    assert!(matches!(
        seal_with(&f.alice, &d, &key, &opts, &mut f.rng),
        Err(SealError::UnknownDictionary(999))
    ));
}

#[test]
fn max_body_roundtrips_and_larger_is_refused() {
    let mut f = fixture();
    let mut body = vec![0u8; MAX_BODY_BYTES];
    f.rng.fill_bytes(&mut body);
    let d = draft(&mut f, &body);
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(&mut f, &d);
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
    let bytes = seal_to_bob(f, &d);
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
            dictionary: 0,
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
            dictionary: 0,
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
            dictionary: 0,
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
            dictionary: 0,
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::TooLarge { what: "body", .. })
    ));
}

#[test]
fn bad_dictionary_bodies_are_refused_on_open() {
    let mut f = fixture();
    let secret = *f.bob_box.secret();
    let text = b"are you coming to the party tomorrow night?";
    let framed = |dictionary| {
        let (kind, content) =
            compress(text, &CompressOptions::for_recipient(&[dictionary])).unwrap();
        assert_eq!(kind, CompressionKind::ZstdDict(dictionary));
        content
    };
    let content = framed(CHAT_DICT_V1_ID);

    // A dictionary id this build does not have: a clean error, counted as undecryptable.
    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::ZstdDict.into(),
            content: content.clone(),
            dictionary: 999,
        },
    );
    let err = env.open(&secret).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::UnknownDictionary(999)),
        "{err}"
    );
    assert_eq!(err.reject_code(), pb::RejectCode::RejectUndecryptable);

    // COMPRESSION_ZSTD_DICT without an id, or an id with another compression.
    for (compression, dictionary) in [
        (pb::Compression::ZstdDict, 0),
        (pb::Compression::Zstd, CHAT_DICT_V1_ID),
        (pb::Compression::None, CHAT_DICT_V1_ID),
    ] {
        let env = seal_raw_body(
            &mut f,
            pb::Body {
                compression: compression.into(),
                content: content.clone(),
                dictionary,
            },
        );
        assert!(
            matches!(env.open(&secret), Err(EnvelopeError::Malformed(_))),
            "{compression:?} with dictionary {dictionary}"
        );
    }

    // A dictionary frame sent as plain zstd does not decode without its dictionary.
    let mut with_id =
        zstd::bulk::Compressor::with_dictionary(3, dictionary_bytes(CHAT_DICT_V1_ID).unwrap())
            .unwrap();
    let content_with_id = with_id.compress(text).unwrap();
    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::Zstd.into(),
            content: content_with_id.clone(),
            dictionary: 0,
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::Decompress(_))
    ));
    // A frame that names its dictionary in its header decodes too (the id matches).
    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::ZstdDict.into(),
            content: content_with_id,
            dictionary: CHAT_DICT_V1_ID,
        },
    );
    assert_eq!(env.open(&secret).unwrap(), text);

    // A zstd bomb made with the dictionary stops at MAX_BODY_BYTES too.
    let bomb =
        zstd::bulk::Compressor::with_dictionary(3, dictionary_bytes(CHAT_DICT_V1_ID).unwrap())
            .unwrap()
            .compress(&vec![b'a'; MAX_BODY_BYTES + 1])
            .unwrap();
    assert!(bomb.len() < 1024);
    let env = seal_raw_body(
        &mut f,
        pb::Body {
            compression: pb::Compression::ZstdDict.into(),
            content: bomb,
            dictionary: CHAT_DICT_V1_ID,
        },
    );
    assert!(matches!(
        env.open(&secret),
        Err(EnvelopeError::Decompress(_))
    ));
}

#[test]
fn signature_input_matches_the_spec() {
    let mut f = fixture();
    let d = draft(&mut f, b"spec");
    let bytes = seal_to_bob(&mut f, &d);
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
        dictionary: 0,
    };
    assert_eq!(env.ciphertext.len(), body.encoded_len() + 16);
}
