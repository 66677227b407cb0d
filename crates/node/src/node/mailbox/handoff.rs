//! Re-replication: a mailbox offers what it holds for each recipient to the
//! recipient's current mailbox set, copies what the members lack, and drops
//! its own copies once R nearer mailboxes hold them.
//!
//! [`Handoff`] is the plan for one recipient, with no I/O: it walks the
//! peers nearest the recipient's mailbox key (this node in its own place),
//! asks as many as are needed to make R holders, falls back to the next
//! peer when one refuses or fails, and says at the end whether this node
//! is outside the set and may release its copies.

use std::collections::{HashMap, VecDeque};

use std::time::Instant;

use libp2p::PeerId;
use peercomm_store::MailKind;
use peercomm_wire::{MailPayload, MailboxRequest, MailboxResponse, MessageId};

use super::{Outbound, Placement};
use crate::config::Role;
use crate::mailbox::{by_distance, mailbox_key};
use crate::node::{EventLoop, Internal};

/// Peers beyond R a handoff may fall back to.
const SPARES: usize = 4;

/// Where one asked peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    /// The offer is out.
    Offered,
    /// Copying `left` items; `ok` while every copy so far was taken.
    Copying { left: usize, ok: bool },
}

/// One recipient's items on their way to the recipient's mailbox set.
#[derive(Debug)]
pub(super) struct Handoff {
    pub(super) recipient: PeerId,
    pub(super) ids: Vec<MessageId>,
    /// Peers still to ask, nearest first; `None` is this node's own place.
    order: VecDeque<Option<PeerId>>,
    asking: HashMap<PeerId, Asking>,
    /// Holders counted: this node (if within the set) and peers that
    /// confirmed they hold every item.
    holders: usize,
    /// This node is one of the R nearest mailboxes.
    within: bool,
    /// Items copied to peers that lacked them.
    pub(super) copied: u64,
}

/// How a handoff ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Peers (and this node) that hold every item.
    pub(super) holders: usize,
    /// This node is outside the R nearest holders: it may drop its copies.
    pub(super) release: bool,
}

impl Handoff {
    /// A handoff of `recipient`'s `ids`, before its mailbox set is known.
    pub(super) fn new(recipient: PeerId, ids: Vec<MessageId>) -> Self {
        Self {
            recipient,
            ids,
            order: VecDeque::new(),
            asking: HashMap::new(),
            holders: 0,
            within: false,
            copied: 0,
        }
    }

    /// The recipient's mailbox set is `peers` (the DHT's answer for `key`,
    /// the recipient's mailbox key, in any order); this node is `me`.
    pub(super) fn place(&mut self, me: PeerId, key: &[u8], peers: Vec<PeerId>, r: usize) {
        let recipient = self.recipient;
        let peers = peers
            .into_iter()
            .filter(|p| *p != me && *p != recipient)
            .chain(std::iter::once(me))
            .collect();
        self.order = by_distance(key, peers)
            .into_iter()
            .take(r + SPARES + 1)
            .map(|p| (p != me).then_some(p))
            .collect();
    }

    /// The peers to offer the items to now: enough, with those already
    /// asked and the holders counted, to make `r`.
    pub(super) fn next_offers(&mut self, r: usize) -> Vec<PeerId> {
        let mut offers = Vec::new();
        while self.holders + self.asking.len() < r {
            match self.order.pop_front() {
                Some(None) => {
                    self.within = true;
                    self.holders += 1;
                }
                Some(Some(peer)) => {
                    self.asking.insert(peer, Asking::Offered);
                    offers.push(peer);
                }
                None => break,
            }
        }
        offers
    }

    /// `peer` answered the offer: the ids it lacks (only those offered are
    /// kept), or `None` if it refused or failed.
    pub(super) fn on_offer(
        &mut self,
        peer: PeerId,
        wanted: Option<Vec<MessageId>>,
    ) -> Vec<MessageId> {
        if self.asking.get(&peer) != Some(&Asking::Offered) {
            return Vec::new();
        }
        match wanted {
            None => {
                self.asking.remove(&peer);
                Vec::new()
            }
            Some(wanted) => {
                let wanted: Vec<MessageId> = wanted
                    .into_iter()
                    .filter(|id| self.ids.contains(id))
                    .collect();
                self.copying(peer, wanted.len());
                wanted
            }
        }
    }

    /// `count` copies are on their way to `peer` (fewer than it wanted if
    /// some items expired meanwhile).
    pub(super) fn copying(&mut self, peer: PeerId, count: usize) {
        if count == 0 {
            self.asking.remove(&peer);
            self.holders += 1;
        } else {
            self.asking.insert(
                peer,
                Asking::Copying {
                    left: count,
                    ok: true,
                },
            );
        }
    }

    /// `peer` answered one copy: it took it, or not.
    pub(super) fn on_copy(&mut self, peer: PeerId, took: bool) {
        let Some(Asking::Copying { left, ok }) = self.asking.get_mut(&peer) else {
            return;
        };
        *left -= 1;
        *ok &= took;
        if took {
            self.copied += 1;
        }
        if *left == 0 {
            let ok = *ok;
            self.asking.remove(&peer);
            if ok {
                self.holders += 1;
            }
        }
    }

    /// The end, once nothing is outstanding and R holders are counted or
    /// no peer is left to ask.
    pub(super) fn outcome(&self, r: usize) -> Option<Outcome> {
        if !self.asking.is_empty() || (self.holders < r && !self.order.is_empty()) {
            return None;
        }
        Some(Outcome {
            holders: self.holders,
            release: !self.within && self.holders >= r,
        })
    }
}

// ---- the event loop's side ---------------------------------------------------

/// Recipients read per page of a pass.
const PASS_PAGE: u32 = 16;

/// A page of a re-replication pass: recipients with the ids held for each.
#[derive(Debug)]
pub(in crate::node) struct HandoffPage {
    pub(in crate::node) batch: Vec<(PeerId, Vec<MessageId>)>,
    /// Where the next page starts, if there is one.
    pub(in crate::node) next: Option<String>,
}

impl EventLoop {
    /// Starts a re-replication pass when one is due and none is running.
    pub(super) fn handoff_tick(&mut self) {
        let every = self.shared.config.mailbox.replicate_interval;
        let state = &self.mailbox;
        let due = state.replicated_at.is_none_or(|at| at.elapsed() >= every);
        if !self.dht.joined
            || !due
            || state.passing
            || self.shutdown.is_some()
            || !self.shared.config.has_role(Role::Mailbox)
        {
            return;
        }
        self.mailbox.replicated_at = Some(Instant::now());
        self.mailbox.passing = true;
        self.read_handoff_page(None);
    }

    fn read_handoff_page(&mut self, after: Option<String>) {
        let now = self.now_ms();
        self.background(move |store| {
            let recipients = match store.mailbox_recipients(after.as_deref(), PASS_PAGE) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("re-replication: cannot list recipients: {e}");
                    Vec::new()
                }
            };
            let next = (recipients.len() == PASS_PAGE as usize)
                .then(|| recipients.last().cloned())
                .flatten();
            let batch = recipients
                .into_iter()
                .filter_map(|r| {
                    let peer = r.parse::<PeerId>().ok()?;
                    let ids = store
                        .mailbox_ids(&r, now, peercomm_wire::MAX_MAIL_IDS as u32)
                        .ok()?;
                    let ids: Vec<MessageId> = ids.into_iter().map(MessageId::from).collect();
                    (!ids.is_empty()).then_some((peer, ids))
                })
                .collect();
            Some(Internal::MailboxHandoffPage(HandoffPage { batch, next }))
        });
    }

    pub(in crate::node) fn on_handoff_page(&mut self, page: HandoffPage) {
        self.mailbox.pass_next = page.next;
        if page.batch.is_empty() || self.shutdown.is_some() {
            self.end_of_page();
            return;
        }
        for (recipient, ids) in page.batch {
            let job = self.mailbox.next_handoff;
            self.mailbox.next_handoff += 1;
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_peers(mailbox_key(&recipient));
            self.mailbox.lookups.insert(query, Placement::Handoff(job));
            self.mailbox
                .handoffs
                .insert(job, Handoff::new(recipient, ids));
        }
    }

    /// The page's handoffs are done: read the next page, or end the pass.
    fn end_of_page(&mut self) {
        if !self.mailbox.handoffs.is_empty() {
            return;
        }
        match self.mailbox.pass_next.take() {
            Some(after) if self.shutdown.is_none() => self.read_handoff_page(Some(after)),
            _ => self.mailbox.passing = false,
        }
    }

    /// The recipient's mailbox set is known: offer the items.
    pub(super) fn on_handoff_placement(&mut self, job: u64, peers: Vec<PeerId>) {
        let r = self.shared.config.mailbox.replicas;
        let me = self.shared.peer_id;
        let Some(plan) = self.mailbox.handoffs.get_mut(&job) else {
            return;
        };
        let key = mailbox_key(&plan.recipient);
        plan.place(me, &key, peers, r);
        self.handoff_step(job);
    }

    /// Sends the offers the plan asks for, or finishes it.
    fn handoff_step(&mut self, job: u64) {
        let r = self.shared.config.mailbox.replicas;
        let Some(plan) = self.mailbox.handoffs.get_mut(&job) else {
            return;
        };
        let offers = plan.next_offers(r);
        let (recipient, ids) = (plan.recipient, plan.ids.clone());
        for peer in offers {
            let offer = MailboxRequest::Offer {
                recipient,
                ids: ids.clone(),
            };
            self.mailbox_request(peer, offer, Outbound::Offer { job });
        }
        let Some(plan) = self.mailbox.handoffs.get(&job) else {
            return;
        };
        let Some(outcome) = plan.outcome(r) else {
            return;
        };
        let Some(plan) = self.mailbox.handoffs.remove(&job) else {
            return;
        };
        let stats = self.shared.stats.clone();
        stats
            .mailbox_replicated
            .fetch_add(plan.copied, std::sync::atomic::Ordering::Relaxed);
        if outcome.release {
            let recipient = plan.recipient.to_base58();
            let ids: Vec<[u8; 16]> = plan.ids.iter().map(|id| *id.as_bytes()).collect();
            self.background(move |store| {
                match store.mailbox_release(&recipient, &ids) {
                    Ok(n) => {
                        stats
                            .mailbox_released
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("re-replication: cannot release copies: {e}"),
                }
                None
            });
        } else if outcome.holders < r {
            tracing::debug!(
                recipient = %plan.recipient,
                holders = outcome.holders,
                "fewer mailboxes than wanted hold a recipient's items"
            );
        }
        self.end_of_page();
    }

    /// A peer answered an offer.
    pub(super) fn on_offer_answer(&mut self, job: u64, peer: PeerId, response: MailboxResponse) {
        let Some(plan) = self.mailbox.handoffs.get_mut(&job) else {
            return;
        };
        let wanted = match response {
            MailboxResponse::Wanted(ids) => Some(ids),
            other => {
                tracing::debug!(%peer, ?other, "offer refused");
                None
            }
        };
        let wanted = plan.on_offer(peer, wanted);
        if wanted.is_empty() {
            self.handoff_step(job);
            return;
        }
        let recipient = plan.recipient.to_base58();
        let now = self.now_ms();
        self.background(move |store| {
            let ids: Vec<[u8; 16]> = wanted.iter().map(|id| *id.as_bytes()).collect();
            let items = store
                .mailbox_items(&recipient, &ids, now)
                .unwrap_or_else(|e| {
                    tracing::warn!("re-replication: cannot read items: {e}");
                    Vec::new()
                })
                .into_iter()
                .map(|item| match item.kind {
                    MailKind::Envelope => MailPayload::Envelope(item.item),
                    MailKind::Receipt => MailPayload::Receipt(item.item),
                })
                .collect();
            Some(Internal::MailboxHandoffItems { job, peer, items })
        });
    }

    /// The items `peer` lacked, read: copy them.
    pub(in crate::node) fn on_handoff_items(
        &mut self,
        job: u64,
        peer: PeerId,
        items: Vec<MailPayload>,
    ) {
        let Some(plan) = self.mailbox.handoffs.get_mut(&job) else {
            return;
        };
        plan.copying(peer, items.len());
        for payload in items {
            let deposit = MailboxRequest::Deposit(payload);
            self.mailbox_request(peer, deposit, Outbound::Copy { job });
        }
        self.handoff_step(job);
    }

    /// A peer answered one copy.
    pub(super) fn on_copy_answer(&mut self, job: u64, peer: PeerId, took: bool) {
        let Some(plan) = self.mailbox.handoffs.get_mut(&job) else {
            return;
        };
        plan.on_copy(peer, took);
        self.handoff_step(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a mailbox key";

    /// `n + 1` random peers nearest first to `KEY`: the one at `rank` is
    /// "me", the rest are the network.
    fn network(n: usize, rank: usize) -> (PeerId, Vec<PeerId>) {
        let mut all = by_distance(KEY, (0..=n).map(|_| PeerId::random()).collect());
        let me = all.remove(rank);
        (me, all)
    }

    fn plan(
        me: PeerId,
        recipient: PeerId,
        ids: Vec<MessageId>,
        others: &[PeerId],
        r: usize,
    ) -> Handoff {
        let mut plan = Handoff::new(recipient, ids);
        plan.place(me, KEY, others.to_vec(), r);
        plan
    }

    fn id(n: u8) -> MessageId {
        MessageId::from([n; 16])
    }

    #[test]
    fn a_holder_within_the_set_asks_only_the_other_members_and_keeps_its_copies() {
        let (me, others) = network(8, 0);
        let mut plan = plan(me, PeerId::random(), vec![id(1)], &others, 4);
        let offers = plan.next_offers(4);
        assert_eq!(offers, others[..3].to_vec(), "the 3 nearest besides me");
        for p in &offers {
            assert!(plan.outcome(4).is_none(), "answers outstanding");
            assert!(plan.on_offer(*p, Some(Vec::new())).is_empty());
        }
        assert_eq!(
            plan.outcome(4),
            Some(Outcome {
                holders: 4,
                release: false
            })
        );
    }

    #[test]
    fn a_holder_outside_the_set_copies_what_is_missing_and_releases() {
        let (me, others) = network(8, 6);
        let mut plan = plan(me, PeerId::random(), vec![id(1), id(2)], &others, 4);
        let offers = plan.next_offers(4);
        assert_eq!(offers, others[..4].to_vec());
        // Two hold both; two lack one each (and ask for an id never offered).
        plan.on_offer(offers[0], Some(Vec::new()));
        plan.on_offer(offers[1], Some(Vec::new()));
        let wanted = plan.on_offer(offers[2], Some(vec![id(2), id(9)]));
        assert_eq!(wanted, vec![id(2)], "only offered ids are sent");
        plan.on_offer(offers[3], Some(vec![id(1)]));
        assert!(plan.outcome(4).is_none(), "copies outstanding");
        plan.on_copy(offers[2], true);
        plan.on_copy(offers[3], true);
        assert_eq!(plan.copied, 2);
        assert_eq!(
            plan.outcome(4),
            Some(Outcome {
                holders: 4,
                release: true
            })
        );
    }

    #[test]
    fn a_peer_that_refuses_is_replaced_by_the_next_one() {
        let (me, others) = network(8, 7);
        let mut plan = plan(me, PeerId::random(), vec![id(1)], &others, 2);
        let offers = plan.next_offers(2);
        assert_eq!(offers, others[..2].to_vec());
        plan.on_offer(offers[0], None);
        plan.on_offer(offers[1], Some(Vec::new()));
        assert_eq!(plan.next_offers(2), vec![others[2]]);
        plan.on_offer(others[2], Some(Vec::new()));
        assert_eq!(
            plan.outcome(2),
            Some(Outcome {
                holders: 2,
                release: true
            })
        );
    }

    #[test]
    fn when_a_copy_fails_this_node_stays_a_holder() {
        // Me third of three, R = 2: the two nearer peers are asked.
        let (me, others) = network(2, 2);
        let mut plan = plan(me, PeerId::random(), vec![id(1)], &others, 2);
        let offers = plan.next_offers(2);
        assert_eq!(offers, others);
        plan.on_offer(offers[0], Some(vec![id(1)]));
        plan.on_offer(offers[1], Some(vec![id(1)]));
        plan.on_copy(offers[0], false);
        plan.on_copy(offers[1], true);
        // One holder short: this node's own place is next, so it keeps its copy.
        assert!(plan.next_offers(2).is_empty());
        assert_eq!(
            plan.outcome(2),
            Some(Outcome {
                holders: 2,
                release: false
            })
        );
    }

    #[test]
    fn the_recipient_is_never_asked_and_too_few_peers_release_nothing() {
        let (me, others) = network(3, 3);
        let recipient = others[0];
        let mut plan = plan(me, recipient, vec![id(1)], &others, 4);
        let offers = plan.next_offers(4);
        assert_eq!(offers, others[1..].to_vec());
        for p in offers {
            plan.on_offer(p, Some(Vec::new()));
        }
        assert_eq!(
            plan.outcome(4),
            Some(Outcome {
                holders: 3,
                release: false
            })
        );
    }
}
