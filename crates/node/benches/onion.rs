//! Criterion benches of onion packets: building a Sphinx packet along 3 and
//! 5 hops, and peeling one layer (parse, header check, replay tag, key
//! derivation). `cargo bench -p peercomm-node --bench onion`.

use std::cell::RefCell;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use peercomm_node::bench_support::OnionPath;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn onion(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let payload = vec![7u8; 1024];
    let mut group = c.benchmark_group("onion");
    for hops in [3usize, 5] {
        // Setup builds with it and the routine peels with it, one after
        // the other.
        let path = RefCell::new(OnionPath::new(hops, &mut rng));
        group.bench_function(BenchmarkId::new("build_1KiB", hops), |b| {
            b.iter(|| path.borrow().build(&payload, &mut rng))
        });
        let mut setup_rng = ChaCha8Rng::seed_from_u64(hops as u64);
        group.bench_function(BenchmarkId::new("peel", hops), |b| {
            b.iter_batched(
                || path.borrow().build(&payload, &mut setup_rng),
                |packet| assert!(path.borrow_mut().peel_first(&packet)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, onion);
criterion_main!(benches);
