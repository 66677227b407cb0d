//! End-to-end tests of the store through its public API, on real database files.

// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use peercomm_store::{
    DeliveryState, NewIncoming, NewOutgoing, OpenError, PeerRow, ReceiptRow, Route, Store,
    StoreError, UpsertOutcome, LATEST_VERSION, MAX_PAGE,
};
use proptest::prelude::*;

fn outgoing(n: u32, recipient: &str, priority: u8, created_ms: u64) -> NewOutgoing {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NewOutgoing {
        id,
        recipient: recipient.to_owned(),
        body: format!("message {n}").into_bytes(),
        priority,
        kind: 0,
        created_ms,
        expires_ms: created_ms + 60_000,
        route: Route::Auto,
    }
}

fn incoming(n: u32, sender: &str) -> NewIncoming {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NewIncoming {
        id,
        sender: sender.to_owned(),
        body: format!("hello {n}").into_bytes(),
        priority: 1,
        kind: 0,
        created_ms: 1_000,
        expires_ms: 2_000,
        received_ms: 1_500,
        envelope: vec![0; 32],
    }
}

fn migrations(path: &std::path::Path) -> Vec<(u32, String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT version, name, applied_ms FROM schema_migrations ORDER BY version")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn migrations_are_recorded_and_not_reapplied_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version(), LATEST_VERSION);
    drop(store);
    let first = migrations(&path);
    assert_eq!(first.len(), LATEST_VERSION as usize);
    assert_eq!(
        first.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=LATEST_VERSION).collect::<Vec<_>>()
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version(), LATEST_VERSION);
    drop(store);
    assert_eq!(
        migrations(&path),
        first,
        "reopening must not re-apply migrations"
    );
}

#[test]
fn newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_ms) \
         VALUES (?1, '29990101000000_from_the_future', 0)",
        [LATEST_VERSION + 7],
    )
    .unwrap();
    drop(conn);
    match Store::open(&path) {
        Err(err @ OpenError::TooNew { found, supported }) => {
            assert_eq!((found, supported), (LATEST_VERSION + 7, LATEST_VERSION));
            assert!(err.to_string().contains("newer than this build supports"));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn accepted_message_survives_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let m = outgoing(1, "bob", 0, 1_000);
    let mut store = Store::open(&path).unwrap();
    store.insert_outgoing(&m).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    let got = store.get_outgoing(&m.id).unwrap().unwrap();
    assert_eq!(got.state, DeliveryState::Queued);
    assert_eq!(got.body, m.body);
}

#[test]
fn route_and_hops_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let mut m = outgoing(3, "bob", 0, 1_000);
    m.route = Route::Multihop;
    let mut store = Store::open(&path).unwrap();
    store.insert_outgoing(&m).unwrap();
    store.set_hops(&m.id, 3, 1_100).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    let got = store.get_outgoing(&m.id).unwrap().unwrap();
    assert_eq!((got.route, got.hops), (Route::Multihop, Some(3)));
}

#[test]
fn accepted_message_survives_a_connection_that_is_never_closed() {
    // Like a crash: the first connection is leaked, never checkpointed or closed, so the
    // row exists only in the write-ahead log.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let m = outgoing(2, "bob", 0, 1_000);
    let mut store = Store::open(&path).unwrap();
    store.insert_outgoing(&m).unwrap();
    std::mem::forget(store);
    let store = Store::open(&path).unwrap();
    let got = store.get_outgoing(&m.id).unwrap().unwrap();
    assert_eq!(got.state, DeliveryState::Queued);
    assert_eq!(got.attempts, 0);
}

#[test]
fn checkpoint_then_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let mut store = Store::open(&path).unwrap();
    store.insert_outgoing(&outgoing(1, "bob", 0, 1)).unwrap();
    assert!(store.insert_incoming(&incoming(1, "alice")).unwrap());
    store.checkpoint().unwrap();
    drop(store);
    let counts = Store::open(&path).unwrap().counts().unwrap();
    assert_eq!(counts.outgoing["queued"], 1);
    assert_eq!((counts.incoming, counts.peers), (1, 0));
}

#[test]
fn incoming_is_deduplicated_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let mut store = Store::open(&path).unwrap();
    assert!(store.insert_incoming(&incoming(1, "alice")).unwrap());
    assert!(!store.insert_incoming(&incoming(1, "alice")).unwrap());
    drop(store);
    let mut store = Store::open(&path).unwrap();
    assert!(!store.insert_incoming(&incoming(1, "alice")).unwrap());
    assert!(store.insert_incoming(&incoming(1, "bob")).unwrap());
    assert_eq!(store.incoming_count().unwrap(), 2);
}

#[test]
fn duplicate_outgoing_is_an_error_and_changes_nothing() {
    let mut store = Store::open_in_memory().unwrap();
    let m = outgoing(1, "bob", 0, 10);
    store.insert_outgoing(&m).unwrap();
    let mut again = m.clone();
    again.body = b"other".to_vec();
    let err = store.insert_outgoing(&again).unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { id } if id == m.id));
    assert!(!err.is_retryable());
    assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().body, m.body);
}

#[test]
fn reads_are_capped_at_max_page() {
    let mut store = Store::open_in_memory().unwrap();
    let n = MAX_PAGE + 20;
    for i in 0..n {
        store.insert_outgoing(&outgoing(i, "bob", 0, 100)).unwrap();
        store.insert_incoming(&incoming(i, "alice")).unwrap();
    }
    let cap = MAX_PAGE as usize;
    assert_eq!(store.due_outgoing(1_000, u32::MAX).unwrap().len(), cap);
    assert_eq!(
        store.pending_for_recipient("bob", u32::MAX).unwrap().len(),
        cap
    );
    assert_eq!(
        store.list_outgoing(None, None, u32::MAX).unwrap().len(),
        cap
    );
    assert_eq!(store.inbox(None, None, u32::MAX).unwrap().len(), cap);
    assert_eq!(store.counts().unwrap().outgoing["queued"], u64::from(n));
    assert_eq!(store.incoming_count().unwrap(), u64::from(n));
}

#[test]
fn delivery_lifecycle() {
    let mut store = Store::open_in_memory().unwrap();
    let m = outgoing(1, "bob", 0, 1_000);
    store.insert_outgoing(&m).unwrap();
    assert_eq!(store.next_due_ms().unwrap(), Some(1_000));
    assert_eq!(store.due_outgoing(1_000, 10).unwrap().len(), 1);
    store.set_envelope(&m.id, b"sealed").unwrap();
    store
        .record_attempt(&m.id, 1_000, 3_000, Some("dial failed"))
        .unwrap();
    assert!(store.due_outgoing(2_000, 10).unwrap().is_empty());
    assert_eq!(store.next_due_ms().unwrap(), Some(3_000));
    assert_eq!(store.reschedule_recipient("bob", 2_000).unwrap(), 1);
    assert!(store.set_state(&m.id, DeliveryState::Sent, 2_001).unwrap());
    let receipt = ReceiptRow {
        message_id: m.id,
        recipient: "bob".into(),
        received_ms: 2_002,
        signed: vec![7; 64],
    };
    assert!(store.mark_delivered(&m.id, &receipt, 2_003).unwrap());
    assert!(!store.mark_delivered(&m.id, &receipt, 2_004).unwrap());
    assert_eq!(store.get_receipt(&m.id).unwrap(), Some(receipt));
    assert_eq!(store.next_due_ms().unwrap(), None);
    assert!(store.expire_due(u64::from(u32::MAX)).unwrap().is_empty());
    let got = store.get_outgoing(&m.id).unwrap().unwrap();
    assert_eq!(got.state, DeliveryState::Delivered);
    assert_eq!(got.envelope.as_deref(), Some(&b"sealed"[..]));
    assert_eq!(got.delivered_ms, Some(2_003));
    assert_eq!(store.counts().unwrap().outgoing["delivered"], 1);
}

#[test]
fn expire_due_expires_only_overdue_pending_rows() {
    let mut store = Store::open_in_memory().unwrap();
    for i in 0..5 {
        store
            .insert_outgoing(&outgoing(i, "bob", 0, u64::from(i) * 1_000))
            .unwrap();
    }
    store
        .set_state(&outgoing(0, "", 0, 0).id, DeliveryState::Failed, 1)
        .unwrap();
    // Expiries: 60_000 + i * 1_000; row 0 is failed already.
    let expired = store.expire_due(62_000).unwrap();
    let ids: BTreeSet<_> = expired.into_iter().collect();
    let want: BTreeSet<_> = [1, 2].map(|i| outgoing(i, "", 0, 0).id).into();
    assert_eq!(ids, want);
    assert_eq!(
        store
            .get_outgoing(&outgoing(0, "", 0, 0).id)
            .unwrap()
            .unwrap()
            .state,
        DeliveryState::Failed
    );
    assert_eq!(store.counts().unwrap().outgoing["expired"], 2);
    assert_eq!(store.next_due_ms().unwrap(), Some(3_000));
}

#[test]
fn peer_records_only_move_forward() {
    let mut store = Store::open_in_memory().unwrap();
    let row = |seq: u64, seen: u64| PeerRow {
        peer_id: "12D3KooWpeer".into(),
        record: seq.to_be_bytes().to_vec(),
        seq,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        box_key: [1; 32],
        first_seen_ms: seen,
        last_seen_ms: seen,
    };
    assert_eq!(
        store.upsert_peer(&row(2, 10)).unwrap(),
        UpsertOutcome::Inserted
    );
    assert_eq!(
        store.upsert_peer(&row(2, 20)).unwrap(),
        UpsertOutcome::Unchanged
    );
    assert_eq!(
        store.upsert_peer(&row(1, 30)).unwrap(),
        UpsertOutcome::Stale
    );
    assert_eq!(
        store.upsert_peer(&row(3, 40)).unwrap(),
        UpsertOutcome::Updated
    );
    let got = store.get_peer("12D3KooWpeer").unwrap().unwrap();
    assert_eq!((got.seq, got.first_seen_ms, got.last_seen_ms), (3, 10, 40));
    assert_eq!(store.counts().unwrap().peers, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Paging through the inbox and the outbox returns every row once, in order.
    #[test]
    fn paging_returns_every_row_once_in_order(
        senders in proptest::collection::vec(0usize..3, 0..40),
        limit in 1u32..=7,
        filter in proptest::option::of(0usize..3),
    ) {
        const PEERS: [&str; 3] = ["alice", "bob", "carol"];
        let mut store = Store::open_in_memory().unwrap();
        for (i, s) in senders.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            store.insert_incoming(&incoming(i, PEERS[*s])).unwrap();
            store.insert_outgoing(&outgoing(i, PEERS[*s], 0, 1)).unwrap();
        }
        let peer = filter.map(|f| PEERS[f]);
        let want: Vec<u32> = senders
            .iter()
            .enumerate()
            .filter(|(_, s)| filter.is_none_or(|f| f == **s))
            .map(|(i, _)| u32::try_from(i).unwrap())
            .collect();

        let mut got_in = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.inbox(peer, cursor, limit).unwrap();
            prop_assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            cursor = Some(last.seq);
            got_in.extend(page.iter().map(|m| u32::from_be_bytes(m.id[..4].try_into().unwrap())));
        }
        prop_assert_eq!(&got_in, &want);

        let mut got_out = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_outgoing(peer, cursor, limit).unwrap();
            prop_assert!(page.len() <= limit as usize);
            let Some((seq, _)) = page.last() else { break };
            cursor = Some(*seq);
            got_out.extend(page.iter().map(|(_, m)| u32::from_be_bytes(m.id[..4].try_into().unwrap())));
        }
        prop_assert_eq!(&got_out, &want);
    }

    /// Due messages come most urgent first, then earliest due, and only when due.
    #[test]
    fn due_outgoing_orders_by_priority_then_due_time(
        rows in proptest::collection::vec((0u8..4, 0u64..100), 1..30),
        now in 0u64..120,
        limit in 1u32..40,
    ) {
        let mut store = Store::open_in_memory().unwrap();
        for (i, (priority, created)) in rows.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            store.insert_outgoing(&outgoing(i, "bob", *priority, *created)).unwrap();
        }
        let due = store.due_outgoing(now, limit).unwrap();
        let mut want: Vec<(u8, u64, usize)> = rows
            .iter()
            .enumerate()
            .filter(|(_, (_, created))| *created <= now)
            .map(|(i, (p, c))| (*p, *c, i))
            .collect();
        want.sort();
        want.truncate(limit as usize);
        let got: Vec<(u8, u64, usize)> = due
            .iter()
            .map(|m| (m.priority, m.next_attempt_ms, u32::from_be_bytes(m.id[..4].try_into().unwrap()) as usize))
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Whatever sequence of transitions is attempted, a terminal state is never left.
    #[test]
    fn terminal_states_are_never_left(ops in proptest::collection::vec(0usize..10, 1..25)) {
        let mut store = Store::open_in_memory().unwrap();
        let m = outgoing(1, "bob", 0, 0);
        store.insert_outgoing(&m).unwrap();
        let mut model = DeliveryState::Queued;
        for (t, op) in ops.into_iter().enumerate() {
            let now = t as u64 + 1;
            let changed = match op {
                0..=7 => store.set_state(&m.id, DeliveryState::ALL[op], now).unwrap(),
                8 => {
                    let receipt = ReceiptRow {
                        message_id: m.id,
                        recipient: "bob".into(),
                        received_ms: now,
                        signed: vec![],
                    };
                    store.mark_delivered(&m.id, &receipt, now).unwrap()
                }
                _ => !store.expire_due(m.expires_ms + now).unwrap().is_empty(),
            };
            prop_assert_eq!(changed, !model.is_terminal());
            if !model.is_terminal() {
                model = match op {
                    0..=7 => DeliveryState::ALL[op],
                    8 => DeliveryState::Delivered,
                    _ => DeliveryState::Expired,
                };
            }
            prop_assert_eq!(store.get_outgoing(&m.id).unwrap().unwrap().state, model);
        }
    }

    /// The stored peer record always has the highest sequence number offered.
    #[test]
    fn peer_keeps_highest_seq(seqs in proptest::collection::vec(any::<u64>(), 1..20)) {
        let mut store = Store::open_in_memory().unwrap();
        let mut best: Option<u64> = None;
        for (t, seq) in seqs.iter().enumerate() {
            let row = PeerRow {
                peer_id: "p".into(),
                record: seq.to_be_bytes().to_vec(),
                seq: *seq,
                addrs: vec![format!("/seq/{seq}")],
                box_key: [0; 32],
                first_seen_ms: t as u64,
                last_seen_ms: t as u64,
            };
            let outcome = store.upsert_peer(&row).unwrap();
            let expected = match best {
                None => UpsertOutcome::Inserted,
                Some(b) if *seq > b => UpsertOutcome::Updated,
                Some(b) if *seq == b => UpsertOutcome::Unchanged,
                Some(_) => UpsertOutcome::Stale,
            };
            prop_assert_eq!(outcome, expected);
            best = Some(best.map_or(*seq, |b| b.max(*seq)));
            let got = store.get_peer("p").unwrap().unwrap();
            prop_assert_eq!(Some(got.seq), best);
            prop_assert_eq!(got.addrs, vec![format!("/seq/{}", got.seq)]);
        }
    }
}

#[test]
fn record_attempts_updates_a_whole_round_in_one_transaction() {
    let mut store = Store::open_in_memory().unwrap();
    for i in 0..3u8 {
        store
            .insert_outgoing(&NewOutgoing {
                id: [i; 16],
                recipient: "peer".into(),
                body: vec![i],
                priority: 2,
                kind: 1,
                created_ms: 1_000,
                expires_ms: 100_000,
                route: Route::Direct,
            })
            .unwrap();
    }
    let updates = vec![
        peercomm_store::AttemptUpdate {
            id: [0; 16],
            next_attempt_ms: 5_000,
            error: None,
            envelope: Some(vec![9, 9]),
        },
        peercomm_store::AttemptUpdate {
            id: [1; 16],
            next_attempt_ms: 6_000,
            error: Some("no record".into()),
            envelope: None,
        },
        peercomm_store::AttemptUpdate {
            id: [7; 16],
            next_attempt_ms: 6_000,
            error: None,
            envelope: None,
        },
    ];
    assert_eq!(store.record_attempts(2_000, &updates).unwrap(), 2);
    let m0 = store.get_outgoing(&[0; 16]).unwrap().unwrap();
    assert_eq!(
        (m0.attempts, m0.next_attempt_ms, m0.last_attempt_ms),
        (1, 5_000, Some(2_000))
    );
    assert_eq!(m0.envelope, Some(vec![9, 9]));
    let m1 = store.get_outgoing(&[1; 16]).unwrap().unwrap();
    assert_eq!(
        (m1.attempts, m1.last_error.as_deref()),
        (1, Some("no record"))
    );
    assert_eq!(m1.envelope, None);
    let m2 = store.get_outgoing(&[2; 16]).unwrap().unwrap();
    assert_eq!(m2.attempts, 0);
}
