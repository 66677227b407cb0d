//! Criterion benches of the store's hot paths on a real SQLite file (WAL,
//! as the node runs it): a message into the outbox (the write a send makes
//! durable before it is acknowledged), a received message into the inbox,
//! and reading them back; and 32 writes each committed on its own against the
//! same 32 under one commit (`Store::in_one_commit`, the node's group commit).
//! `cargo bench -p peercomm-store`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use peercomm_store::{NewIncoming, NewOutgoing, Route, Store};

const NOW: u64 = 1_800_000_000_000;
const SENDER: &str = "12D3KooWGRUVh2a6C1fETd5JSYbqYpWAVgTbbQjnLeUtw8RoFnWb";

fn id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

fn outgoing(n: u64) -> NewOutgoing {
    NewOutgoing {
        id: id(n),
        recipient: SENDER.to_string(),
        body: vec![b'x'; 300],
        priority: 1,
        kind: 0,
        created_ms: NOW,
        expires_ms: NOW + 86_400_000,
        route: Route::Auto,
    }
}

fn incoming(n: u64) -> NewIncoming {
    NewIncoming {
        id: id(n),
        sender: SENDER.to_string(),
        body: vec![b'y'; 300],
        priority: 1,
        kind: 0,
        created_ms: NOW,
        expires_ms: NOW + 86_400_000,
        received_ms: NOW,
        envelope: vec![0u8; 500],
    }
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(dir.path().join("bench.db")).expect("open");
    let mut next = 0u64;
    let mut group = c.benchmark_group("store");
    group.bench_function("insert_outgoing", |b| {
        b.iter_batched(
            || {
                next += 1;
                outgoing(next)
            },
            |m| store.insert_outgoing(&m).expect("insert"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("get_outgoing", |b| {
        let mut n = 0;
        b.iter(|| {
            n = n % next + 1;
            store.get_outgoing(black_box(&id(n))).expect("get")
        })
    });
    let mut received = 1u64 << 40;
    group.bench_function("insert_incoming", |b| {
        b.iter_batched(
            || {
                received += 1;
                incoming(received)
            },
            |m| store.insert_incoming(&m).expect("insert"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inbox_page_50", |b| {
        b.iter(|| store.inbox(None, Some(0), 50).expect("inbox"))
    });
    // 32 received messages: what a busy node's committer finds waiting.
    let mut burst = 1u64 << 50;
    let mut next_burst = || {
        burst += 32;
        (burst - 32..burst).map(incoming).collect::<Vec<_>>()
    };
    group.bench_function("insert_incoming_32_own_commits", |b| {
        b.iter_batched(
            &mut next_burst,
            |ms| {
                for m in &ms {
                    store.insert_incoming(m).expect("insert");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("insert_incoming_32_one_commit", |b| {
        b.iter_batched(
            &mut next_burst,
            |ms| {
                let ((), committed) = store.in_one_commit(|s| {
                    for m in &ms {
                        s.insert_incoming(m).expect("insert");
                    }
                });
                committed.expect("commit")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
