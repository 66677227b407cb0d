use std::time::Duration;

use peercomm_store::{NewOutgoing, Route};
use peercomm_wire::{sign_mail_ack, Draft, Kind, Priority};
use rand::SeedableRng;

use super::*;
use crate::Identity;

const NOW: u64 = 1_800_000_000_000;

struct World {
    store: Store,
    mailbox: Identity,
    alice: Identity,
    bob: Identity,
    config: MailboxConfig,
}

impl World {
    fn new() -> Self {
        Self {
            store: Store::open_in_memory().unwrap(),
            mailbox: Identity::generate(),
            alice: Identity::generate(),
            bob: Identity::generate(),
            config: MailboxConfig::default(),
        }
    }

    fn serve(&mut self, from: PeerId, request: MailboxRequest) -> Served {
        let cx = Context {
            me: self.mailbox.peer_id(),
            from,
            is_mailbox: true,
            config: &self.config,
            now_ms: NOW,
            groups: &crate::config::GroupsConfig::default(),
        };
        serve(&mut self.store, &cx, request)
    }
}

/// An envelope from `from` to `to` with id `[n; 16]`, living `ttl`.
fn envelope(from: &Identity, to: &Identity, n: u8, ttl: Duration) -> Vec<u8> {
    let draft = Draft {
        id: MessageId::from([n; 16]),
        recipient: to.peer_id(),
        created_ms: NOW - 1,
        expires_ms: NOW + u64::try_from(ttl.as_millis()).unwrap(),
        priority: Priority::Interactive,
        kind: Kind::Chat,
        body: b"hello",
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(n));
    peercomm_wire::seal(from.keypair(), &draft, to.box_keys().public(), &mut rng).unwrap()
}

fn code(served: &Served) -> MailDepositCode {
    match &served.response {
        MailboxResponse::Deposited { code, .. } => *code,
        other => panic!("not a deposit answer: {other:?}"),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn the_key_is_per_peer_and_stable() {
    let (a, b) = (PeerId::random(), PeerId::random());
    assert_eq!(mailbox_key(&a), mailbox_key(&a));
    assert_ne!(mailbox_key(&a), mailbox_key(&b));
    assert_eq!(mailbox_key(&a).len(), 32);
}

#[test]
fn a_deposit_is_stored_fetched_only_by_its_recipient_and_deleted_on_its_ack() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.peer_id(), w.bob.peer_id());
    let sealed = envelope(&w.alice, &w.bob, 1, DAY);
    let served = w.serve(
        alice,
        MailboxRequest::Deposit(MailPayload::Envelope(sealed.clone())),
    );
    assert_eq!(code(&served), MailDepositCode::MailDepositStored);
    assert_eq!(served.effect, Effect::StoredFor(bob));
    // Again: a duplicate, stored once.
    let again = w.serve(
        alice,
        MailboxRequest::Deposit(MailPayload::Envelope(sealed.clone())),
    );
    assert_eq!(code(&again), MailDepositCode::MailDepositDuplicate);

    // Alice cannot fetch bob's mail; bob can.
    let fetch = MailboxRequest::Fetch {
        after: 0,
        limit: 10,
    };
    let page = |served: Served| match served.response {
        MailboxResponse::Page { items, more } => (items, more),
        other => panic!("not a page: {other:?}"),
    };
    assert!(page(w.serve(alice, fetch.clone())).0.is_empty());
    let (items, more) = page(w.serve(bob, fetch.clone()));
    assert!(!more);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].payload, MailPayload::Envelope(sealed.clone()));

    // An ack signed by alice for bob's id deletes nothing of bob's.
    let forged = sign_mail_ack(w.alice.keypair(), &[MessageId::from([1; 16])], NOW).unwrap();
    let served = w.serve(alice, MailboxRequest::Ack(forged));
    assert_eq!(served.response, MailboxResponse::Acked { deleted: 0 });
    assert_eq!(page(w.serve(bob, fetch.clone())).0.len(), 1);
    // Bob's own ack, relayed by anyone, does.
    let signed = sign_mail_ack(w.bob.keypair(), &[MessageId::from([1; 16])], NOW).unwrap();
    let served = w.serve(alice, MailboxRequest::Ack(signed));
    assert_eq!(served.response, MailboxResponse::Acked { deleted: 1 });
    assert!(page(w.serve(bob, fetch)).0.is_empty());
    // A late replica is refused: bob has it.
    let late = w.serve(
        alice,
        MailboxRequest::Deposit(MailPayload::Envelope(sealed)),
    );
    assert_eq!(code(&late), MailDepositCode::MailDepositAcknowledged);
}

#[test]
fn bad_deposits_are_refused_with_a_reason() {
    let mut w = World::new();
    w.config.max_ttl = 7 * DAY;
    let alice = w.alice.peer_id();
    // Too long a life.
    let long = envelope(&w.alice, &w.bob, 1, 10 * DAY);
    let served = w.serve(alice, MailboxRequest::Deposit(MailPayload::Envelope(long)));
    assert_eq!(code(&served), MailDepositCode::MailDepositTtlTooLong);
    assert_eq!(served.effect, Effect::Refused);
    // Tampered.
    let mut bad = envelope(&w.alice, &w.bob, 2, DAY);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let served = w.serve(alice, MailboxRequest::Deposit(MailPayload::Envelope(bad)));
    assert_eq!(code(&served), MailDepositCode::MailDepositInvalid);
    // For the mailbox itself.
    let mine = envelope(&w.alice, &w.mailbox, 3, DAY);
    let served = w.serve(alice, MailboxRequest::Deposit(MailPayload::Envelope(mine)));
    assert_eq!(code(&served), MailDepositCode::MailDepositInvalid);
    // A garbage receipt.
    let served = w.serve(
        alice,
        MailboxRequest::Deposit(MailPayload::Receipt(vec![1, 2, 3])),
    );
    assert_eq!(code(&served), MailDepositCode::MailDepositInvalid);
    // Role off.
    let ok = envelope(&w.alice, &w.bob, 4, DAY);
    let config = w.config.clone();
    let cx = Context {
        me: w.mailbox.peer_id(),
        from: alice,
        is_mailbox: false,
        config: &config,
        now_ms: NOW,
        groups: &crate::config::GroupsConfig::default(),
    };
    let served = serve(
        &mut w.store,
        &cx,
        MailboxRequest::Deposit(MailPayload::Envelope(ok)),
    );
    assert_eq!(code(&served), MailDepositCode::MailDepositNotAMailbox);
    assert_eq!(w.store.mailbox_stats().unwrap().items, 0);
}

#[test]
fn a_flooding_sender_hits_its_quota_and_others_still_get_through() {
    let mut w = World::new();
    w.config.per_pair_items = 3;
    let alice = w.alice.peer_id();
    let mut refused = 0;
    for n in 1..=6 {
        let sealed = envelope(&w.alice, &w.bob, n, DAY);
        let served = w.serve(
            alice,
            MailboxRequest::Deposit(MailPayload::Envelope(sealed)),
        );
        if code(&served) == MailDepositCode::MailDepositQuota {
            refused += 1;
            let MailboxResponse::Deposited { reason, .. } = &served.response else {
                unreachable!()
            };
            assert!(reason.contains("for this recipient"), "{reason}");
        }
    }
    assert_eq!(refused, 3);
    let carol = Identity::generate();
    let sealed = envelope(&carol, &w.bob, 50, DAY);
    let served = w.serve(
        carol.peer_id(),
        MailboxRequest::Deposit(MailPayload::Envelope(sealed)),
    );
    assert_eq!(code(&served), MailDepositCode::MailDepositStored);
}

#[test]
fn pages_follow_the_cursor() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.peer_id(), w.bob.peer_id());
    for n in 1..=5 {
        let sealed = envelope(&w.alice, &w.bob, n, DAY);
        w.serve(
            alice,
            MailboxRequest::Deposit(MailPayload::Envelope(sealed)),
        );
    }
    let mut after = 0;
    let mut seen = 0;
    for round in 0..10 {
        let served = w.serve(bob, MailboxRequest::Fetch { after, limit: 2 });
        let MailboxResponse::Page { items, more } = served.response else {
            panic!("not a page")
        };
        seen += items.len();
        after = items.last().map_or(after, |i| i.seq);
        if !more {
            assert_eq!(round, 2);
            break;
        }
    }
    assert_eq!(seen, 5);
}

#[test]
fn offers_want_only_what_is_neither_held_nor_acknowledged() {
    let mut w = World::new();
    let (alice, bob) = (w.alice.peer_id(), w.bob.peer_id());
    let sealed = envelope(&w.alice, &w.bob, 1, DAY);
    w.serve(
        alice,
        MailboxRequest::Deposit(MailPayload::Envelope(sealed)),
    );
    let signed = sign_mail_ack(w.bob.keypair(), &[MessageId::from([2; 16])], NOW).unwrap();
    w.serve(bob, MailboxRequest::Ack(signed));
    let ids: Vec<MessageId> = (1..=3).map(|n| MessageId::from([n; 16])).collect();
    let served = w.serve(
        alice,
        MailboxRequest::Offer {
            recipient: bob,
            ids,
        },
    );
    assert_eq!(
        served.response,
        MailboxResponse::Wanted(vec![MessageId::from([3; 16])])
    );
}

#[test]
fn a_receipt_for_our_own_message_marks_it_delivered_and_others_are_held() {
    let mut w = World::new();
    // The "mailbox" here is the sender of message 9, to bob.
    let me = w.mailbox.peer_id();
    let bob = w.bob.peer_id();
    w.store
        .insert_outgoing(&NewOutgoing {
            id: [9; 16],
            recipient: bob.to_base58(),
            body: b"hi".to_vec(),
            priority: 2,
            kind: 1,
            created_ms: NOW,
            expires_ms: NOW + 1000,
            route: Route::Auto,
        })
        .unwrap();
    let receipt =
        peercomm_wire::sign_receipt(w.bob.keypair(), MessageId::from([9; 16]), &me, NOW).unwrap();
    let served = w.serve(
        bob,
        MailboxRequest::Deposit(MailPayload::Receipt(receipt.clone())),
    );
    assert_eq!(served.effect, Effect::Delivered(MessageId::from([9; 16])));
    let message = w.store.get_outgoing(&[9; 16]).unwrap().unwrap();
    assert_eq!(message.state, peercomm_store::DeliveryState::Delivered);
    // Again: nothing new.
    let served = w.serve(bob, MailboxRequest::Deposit(MailPayload::Receipt(receipt)));
    assert_eq!(served.effect, Effect::None);
    // A receipt for alice (offline) is held for her.
    let alice = w.alice.peer_id();
    let for_alice =
        peercomm_wire::sign_receipt(w.bob.keypair(), MessageId::from([7; 16]), &alice, NOW)
            .unwrap();
    let served = w.serve(
        bob,
        MailboxRequest::Deposit(MailPayload::Receipt(for_alice)),
    );
    assert_eq!(served.effect, Effect::StoredFor(alice));
    let served = w.serve(
        alice,
        MailboxRequest::Fetch {
            after: 0,
            limit: 10,
        },
    );
    let MailboxResponse::Page { items, .. } = served.response else {
        panic!("not a page")
    };
    assert!(matches!(items[0].payload, MailPayload::Receipt(_)));
}
