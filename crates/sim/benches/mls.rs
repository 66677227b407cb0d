//! Criterion benches of MLS application messages (OpenMLS, the node's
//! ciphersuite and group configuration): the owner encrypting a 200-byte
//! message, and a member decrypting one, in groups of 2, 50 and 1,000.
//! `cargo bench -p peercomm-sim --bench mls`. (`peercomm bench mls` measures
//! every group operation, commits and joins included.)

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use peercomm_sim::mls_cost::{MlsPair, MESSAGE_BYTES};

const SIZES: [usize; 3] = [2, 50, 1000];

fn mls(c: &mut Criterion) {
    let payload = vec![7u8; MESSAGE_BYTES];
    let mut group = c.benchmark_group("mls");
    for n in SIZES {
        let mut pair = MlsPair::new(n, 1).expect("an MLS group");
        group.bench_function(format!("encrypt/{n}"), |b| {
            b.iter(|| pair.encrypt(black_box(&payload)).expect("encrypt"))
        });
        // Every message opens once: encrypt untimed, then time the opening
        // of each, in order. A fresh pair: the encrypt bench's messages were
        // never opened, and a receiver refuses one further ahead than its
        // forward window (`TooDistantInTheFuture`).
        let mut pair = MlsPair::new(n, 1).expect("an MLS group");
        group.bench_function(format!("decrypt/{n}"), |b| {
            b.iter_custom(|iters| {
                let messages: Vec<Vec<u8>> = (0..iters)
                    .map(|_| pair.encrypt(&payload).expect("encrypt"))
                    .collect();
                let started = Instant::now();
                for m in &messages {
                    let plain = pair.decrypt(black_box(m)).expect("decrypt");
                    assert_eq!(plain.len(), MESSAGE_BYTES);
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = mls
}
criterion_main!(benches);
