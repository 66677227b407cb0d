//! Property tests: every wire type survives encode/decode, and every decoder survives
//! arbitrary bytes without panicking. Keys come from a proptest-chosen seed, which proptest
//! prints (with the other inputs) when a case fails.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use peercomm_wire::pb;
use peercomm_wire::{
    compress, decode_frame, decode_frame_len, decompress, encode_frame, seal, seal_with,
    sign_receipt, verify, verify_receipt, verify_record, BoxKeypair, CompressOptions,
    CompressionKind, Draft, Keypair, Kind, MessageId, MsgResponse, Multiaddr, PeerId, PeerRecord,
    Priority, CHAT_DICT_V1_ID, MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_RECORD_ADDRS,
    MAX_RECORD_DICTIONARIES, MAX_ROLES,
};
use proptest::prelude::*;
use prost::Message;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const NOW: u64 = 1_700_000_000_000;

fn keypair(rng: &mut ChaCha20Rng) -> Keypair {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Keypair::ed25519_from_bytes(secret).unwrap()
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Arbitrary input for the no-panic properties, up to ~200 KiB so size checks trigger too.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![bytes(512), bytes(16 * 1024), bytes(200 * 1024)]
}

fn priority() -> impl Strategy<Value = Priority> {
    prop::sample::select(Priority::ALL.to_vec())
}

fn multiaddr() -> impl Strategy<Value = Multiaddr> {
    (any::<[u8; 4]>(), any::<u16>(), any::<bool>()).prop_map(|(ip, port, quic)| {
        let ip = std::net::Ipv4Addr::from(ip);
        let s = if quic {
            format!("/ip4/{ip}/udp/{port}/quic-v1")
        } else {
            format!("/ip4/{ip}/tcp/{port}")
        };
        s.parse().unwrap()
    })
}

/// Any way a sender may compress: off, plain zstd or the shipped dictionary, at a few levels.
fn compress_options() -> impl Strategy<Value = CompressOptions> {
    (
        any::<bool>(),
        prop::sample::select(vec![1, 3, 9]),
        any::<bool>(),
    )
        .prop_map(|(enabled, level, dict)| CompressOptions {
            enabled,
            level,
            dictionary: dict.then_some(CHAT_DICT_V1_ID),
        })
}

/// Chat-like text: words from a small vocabulary, so the dictionary has something to match.
fn chat_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "hey",
            "are",
            "you",
            "free",
            "tomorrow",
            "night",
            "?",
            "lol",
            "ok",
            "the",
            "at",
            "7:30",
            "https://example.org/x",
            "👍",
            "let's",
            "meet",
        ]),
        0..120,
    )
    .prop_map(|words| words.join(" ").into_bytes())
}

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let decoded = M::decode(m.encode_to_vec().as_slice()).unwrap();
    assert_eq!(&decoded, m);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pb_messages_roundtrip(
        a in bytes(600), b in bytes(64), c in bytes(2000), d in bytes(80),
        n in any::<u64>(), m in any::<u64>(), v in any::<u32>(), e in 0i32..10,
        addrs in prop::collection::vec(bytes(40), 0..5),
        roles in prop::collection::vec("[a-z]{0,12}", 0..4),
        reason in ".{0,40}",
    ) {
        roundtrip(&pb::Envelope { header: a.clone(), enc: b.clone(), ciphertext: c.clone(), signature: d.clone() });
        roundtrip(&pb::Header {
            version: v, id: b.clone(), sender: d.clone(), recipient: a.clone(),
            created_ms: n, expires_ms: m, priority: e, kind: e,
        });
        roundtrip(&pb::Body { compression: e, content: c.clone(), dictionary: v });
        roundtrip(&pb::Receipt { message_id: b.clone(), message_sender: d.clone(), recipient: a.clone(), received_ms: n });
        let signed_receipt = pb::SignedReceipt { receipt: a.clone(), signature: d.clone() };
        roundtrip(&signed_receipt);
        roundtrip(&pb::PeerRecord {
            protocol_version: v, peer_id: d.clone(), addrs, box_key: b.clone(),
            seq: n, expires_ms: m, roles, onion_key: b.clone(), onion_epoch: m,
            dictionaries: vec![v, 0, u32::MAX],
        });
        roundtrip(&pb::OnionPacket { packet: c.clone() });
        roundtrip(&pb::OnionAck { code: e, distance: v, reason: reason.clone() });
        roundtrip(&pb::OnionPayload { content: Some(pb::onion_payload::Content::Message(pb::OnionMessage { envelope: c.clone(), surb: a.clone() })) });
        roundtrip(&pb::OnionPayload { content: Some(pb::onion_payload::Content::Probe(b.clone())) });
        roundtrip(&pb::SignedPeerRecord { public_key: b.clone(), record: c.clone(), signature: d.clone() });
        roundtrip(&pb::MsgResponse { result: Some(pb::msg_response::Result::Receipt(signed_receipt)) });
        roundtrip(&pb::MsgResponse { result: Some(pb::msg_response::Result::Reject(pb::Reject { code: e, reason: reason.clone() })) });
        roundtrip(&pb::Reject { code: e, reason });
    }

    #[test]
    fn message_ids_roundtrip(raw in any::<[u8; 16]>()) {
        let id = MessageId::from(raw);
        prop_assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        prop_assert_eq!(MessageId::from_bytes(id.as_bytes()).unwrap(), id);
    }

    #[test]
    fn frames_roundtrip(payload in prop_oneof![bytes(300), bytes(MAX_FRAME_BYTES + 1)], extra in bytes(16)) {
        match encode_frame(&payload) {
            Ok(mut frame) => {
                let prefix = frame.len() - payload.len();
                prop_assert_eq!(decode_frame_len(&frame).unwrap(), Some((payload.len(), prefix)));
                frame.extend_from_slice(&extra);
                let (decoded, used) = decode_frame(&frame).unwrap().unwrap();
                prop_assert_eq!(decoded, payload.as_slice());
                prop_assert_eq!(used, prefix + payload.len());
                // Any strict prefix of the frame asks for more bytes.
                prop_assert_eq!(decode_frame(&frame[..used - 1]).unwrap(), None);
            }
            Err(_) => prop_assert!(payload.len() > MAX_FRAME_BYTES),
        }
    }

    #[test]
    fn msg_responses_roundtrip(code in 0i32..9, reason in ".{0,60}", receipt in bytes(200), sig in bytes(64)) {
        let reject = MsgResponse::reject(pb::RejectCode::try_from(code).unwrap(), reason);
        prop_assert_eq!(MsgResponse::decode(&reject.encode()).unwrap(), reject);
        let ok = MsgResponse::Receipt(pb::SignedReceipt { receipt, signature: sig });
        prop_assert_eq!(MsgResponse::decode(&ok.encode()).unwrap(), ok);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn envelopes_roundtrip(
        seed in any::<u64>(),
        body in prop_oneof![bytes(200), "[a-c ]{0,5000}".prop_map(String::into_bytes), bytes(MAX_BODY_BYTES), chat_text()],
        opts in compress_options(),
        priority in priority(),
        created_ms in NOW - 1000..NOW + 1000,
        ttl_ms in 1u64..1_000_000,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (alice, bob) = (keypair(&mut rng), keypair(&mut rng));
        let bob_box = BoxKeypair::generate(&mut rng);
        let draft = Draft {
            id: MessageId::random(&mut rng),
            recipient: bob.public().to_peer_id(),
            created_ms,
            expires_ms: created_ms + ttl_ms,
            priority,
            kind: Kind::Chat,
            body: &body,
        };
        let sealed = if opts == CompressOptions::default() {
            seal(&alice, &draft, bob_box.public(), &mut rng).unwrap()
        } else {
            seal_with(&alice, &draft, bob_box.public(), &opts, &mut rng).unwrap()
        };
        let env = verify(&sealed, created_ms).unwrap();
        prop_assert_eq!(env.header.id, draft.id);
        prop_assert_eq!(env.header.sender, alice.public().to_peer_id());
        prop_assert_eq!(env.header.recipient, draft.recipient);
        prop_assert_eq!(env.header.priority, priority);
        prop_assert_eq!(env.header.expires_ms, draft.expires_ms);
        prop_assert_eq!(env.open(bob_box.secret()).unwrap(), body.clone());

        // Flipping any single byte never yields a different valid message.
        let i = (seed as usize) % sealed.len();
        let mut flipped = sealed.clone();
        flipped[i] ^= 1 << (seed % 8);
        if let Ok(env) = verify(&flipped, created_ms) {
            // Only a change outside the signed parts (protobuf framing) could still verify,
            // and then the content must be unchanged.
            prop_assert_eq!(env.open(bob_box.secret()).unwrap(), body);
        }
    }

    #[test]
    fn records_roundtrip(
        seed in any::<u64>(),
        addrs in prop::collection::vec(multiaddr(), 0..MAX_RECORD_ADDRS),
        roles in prop::collection::vec("[a-z]{1,32}", 0..MAX_ROLES),
        seq in any::<u64>(),
        ttl_ms in 1u64..u64::MAX - NOW,
        version in any::<u32>(),
        dictionaries in prop::collection::vec(1u32.., 0..=MAX_RECORD_DICTIONARIES),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let kp = keypair(&mut rng);
        let record = PeerRecord {
            peer_id: kp.public().to_peer_id(),
            addrs,
            box_key: *BoxKeypair::generate(&mut rng).public(),
            protocol_version: version,
            seq,
            expires_ms: NOW + ttl_ms,
            roles,
            onion: (seq % 2 == 0).then_some(peercomm_wire::OnionKey { key: [seq as u8; 32], epoch: seq }),
            dictionaries,
        };
        let signed = record.sign(&kp).unwrap();
        prop_assert_eq!(verify_record(&signed, NOW).unwrap(), record);
    }

    #[test]
    fn compression_roundtrips_and_never_grows(
        body in prop_oneof![chat_text(), bytes(2000), "[a-c ]{0,5000}".prop_map(String::into_bytes)],
        opts in compress_options(),
    ) {
        let (kind, content) = compress(&body, &opts).unwrap();
        if !opts.enabled {
            prop_assert_eq!(kind, CompressionKind::None);
        }
        if opts.dictionary.is_none() {
            prop_assert!(!matches!(kind, CompressionKind::ZstdDict(_)));
        }
        let (compression, dictionary) = kind.to_wire();
        let encoded = pb::Body { compression: compression.into(), content: content.clone(), dictionary }.encoded_len();
        let plain = pb::Body { content: body.clone(), ..Default::default() }.encoded_len();
        prop_assert!(encoded <= plain);
        prop_assert_eq!(decompress(CompressionKind::from_wire(compression.into(), dictionary).unwrap(), &content).unwrap(), body);
    }

    #[test]
    fn receipts_roundtrip(seed in any::<u64>(), received_ms in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (alice, bob) = (keypair(&mut rng), keypair(&mut rng));
        let id = MessageId::random(&mut rng);
        let bob_id = bob.public().to_peer_id();
        let signed = sign_receipt(&bob, id, &alice.public().to_peer_id(), received_ms).unwrap();
        let info = verify_receipt(&signed, &bob_id, id).unwrap();
        prop_assert_eq!(info.id, id);
        prop_assert_eq!(info.recipient, bob_id);
        prop_assert_eq!(info.message_sender, alice.public().to_peer_id());
        prop_assert_eq!(info.received_ms, received_ms);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoders_never_panic(input in hostile(), now_ms in any::<u64>(), id in any::<[u8; 16]>()) {
        let _ = verify(&input, now_ms);
        let _ = verify_record(&input, now_ms);
        let _ = verify_receipt(&input, &PeerId::random(), MessageId::from(id));
        let _ = decode_frame_len(&input);
        let _ = decode_frame(&input);
        let _ = MsgResponse::decode(&input);
        let _ = pb::Envelope::decode(input.as_slice());
        let _ = pb::Header::decode(input.as_slice());
        let _ = pb::Body::decode(input.as_slice());
        let _ = pb::Receipt::decode(input.as_slice());
        let _ = pb::SignedReceipt::decode(input.as_slice());
        let _ = pb::PeerRecord::decode(input.as_slice());
        let _ = pb::SignedPeerRecord::decode(input.as_slice());
        let _ = pb::MsgResponse::decode(input.as_slice());
        for kind in [CompressionKind::None, CompressionKind::Zstd, CompressionKind::ZstdDict(CHAT_DICT_V1_ID), CompressionKind::ZstdDict(id[0].into())] {
            let _ = decompress(kind, &input);
        }
        let _ = CompressionKind::from_wire(i32::from(id[1]) - 1, u32::from(id[2]));
    }

    /// Well-formed outer messages with arbitrary insides reach the deeper checks.
    #[test]
    fn nested_decoders_never_panic(
        header in bytes(600), enc in bytes(40), ciphertext in bytes(300), signature in bytes(70),
        record in bytes(600), key in bytes(60), now_ms in any::<u64>(),
    ) {
        let envelope = pb::Envelope { header, enc, ciphertext, signature: signature.clone() }.encode_to_vec();
        let _ = verify(&envelope, now_ms);
        let signed = pb::SignedPeerRecord { public_key: key, record: record.clone(), signature: signature.clone() }.encode_to_vec();
        let _ = verify_record(&signed, now_ms);
        let receipt = pb::SignedReceipt { receipt: record, signature }.encode_to_vec();
        let _ = verify_receipt(&receipt, &PeerId::random(), MessageId::from([0; 16]));
    }
}
