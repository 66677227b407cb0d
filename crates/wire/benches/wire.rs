//! Criterion benches of the wire hot paths: envelope seal and verify+open,
//! the length-prefixed frame codec, and body compression with the shipped
//! dictionary. `cargo bench -p peercomm-wire` (HTML reports are off; the
//! figures go to the terminal and `target/criterion`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peercomm_wire::{
    compress, decode_frame, decompress, encode_frame, seal_with, verify, BoxKeypair,
    CompressOptions, Draft, Keypair, Kind, MessageId, Priority, CHAT_DICT_V1_ID,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const NOW: u64 = 1_800_000_000_000;

/// A chat-like text of about `len` bytes (compresses as chat does).
fn chat(len: usize) -> Vec<u8> {
    let words = [
        "see", "you", "at", "the", "station", "tomorrow", "morning", "did", "get", "my", "message",
        "about", "dinner", "tonight", "sounds", "good", "thanks", "love", "it", "running", "late",
        "call", "me", "when", "free", "ok", "great", "photo", "from", "trip",
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(len as u64);
    let mut out = String::new();
    while out.len() < len {
        out.push_str(words[(rng.next_u32() as usize) % words.len()]);
        out.push(' ');
    }
    out.truncate(len);
    out.into_bytes()
}

fn random(len: usize) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn keypair(rng: &mut ChaCha20Rng) -> Keypair {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Keypair::ed25519_from_bytes(secret).expect("32 bytes make an ed25519 key")
}

fn envelopes(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (alice, bob) = (keypair(&mut rng), keypair(&mut rng));
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let bob_box = BoxKeypair::from_secret(secret);
    let opts = CompressOptions {
        dictionary: Some(CHAT_DICT_V1_ID),
        ..CompressOptions::default()
    };
    let mut group = c.benchmark_group("envelope");
    for (name, body) in [
        ("chat_200B", chat(200)),
        ("chat_2KiB", chat(2048)),
        ("random_16KiB", random(16 * 1024)),
    ] {
        let draft = Draft {
            id: MessageId::random(&mut rng),
            recipient: bob.public().to_peer_id(),
            created_ms: NOW,
            expires_ms: NOW + 60_000,
            priority: Priority::Interactive,
            kind: Kind::Chat,
            body: &body,
        };
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("seal", name), &draft, |b, draft| {
            b.iter(|| seal_with(&alice, draft, bob_box.public(), &opts, &mut rng).expect("seal"))
        });
        let sealed = seal_with(&alice, &draft, bob_box.public(), &opts, &mut rng).expect("seal");
        group.bench_with_input(
            BenchmarkId::new("verify_open", name),
            &sealed,
            |b, sealed| {
                b.iter(|| {
                    let env = verify(black_box(sealed), NOW).expect("verify");
                    env.open(&secret).expect("open")
                })
            },
        );
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for len in [1024usize, 64 * 1024] {
        let payload = random(len);
        let framed = encode_frame(&payload).expect("frame");
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("encode", len), &payload, |b, p| {
            b.iter(|| encode_frame(black_box(p)).expect("frame"))
        });
        group.bench_with_input(BenchmarkId::new("decode", len), &framed, |b, f| {
            b.iter(|| {
                decode_frame(black_box(f))
                    .expect("frame")
                    .map(|(p, n)| (p.len(), n))
            })
        });
    }
    group.finish();
}

fn compression(c: &mut Criterion) {
    let with_dict = CompressOptions {
        dictionary: Some(CHAT_DICT_V1_ID),
        ..CompressOptions::default()
    };
    let mut group = c.benchmark_group("compression");
    for (name, body, opts) in [
        ("chat_200B_dict", chat(200), with_dict),
        ("chat_2KiB_dict", chat(2048), with_dict),
        ("chat_2KiB_plain", chat(2048), CompressOptions::default()),
        ("random_16KiB_skipped", random(16 * 1024), with_dict),
    ] {
        let (kind, content) = compress(&body, &opts).expect("compress");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("compress", name), &body, |b, body| {
            b.iter(|| compress(black_box(body), &opts).expect("compress"))
        });
        group.bench_with_input(
            BenchmarkId::new("decompress", name),
            &content,
            |b, content| b.iter(|| decompress(kind, black_box(content)).expect("decompress")),
        );
    }
    group.finish();
}

criterion_group!(benches, envelopes, frames, compression);
criterion_main!(benches);
