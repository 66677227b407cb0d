//! Announce-and-pull for large group posts (with gossip tuning).
//!
//! Gossipsub pushes every post to every mesh peer of every member that has
//! it: in a group whose members each keep `D` mesh peers, a post crosses
//! about `N × (D − 1)` links to reach `N − 1` members, and IDONTWANT stops
//! few of those copies when the links are fast. For a post of
//! [`PULL_FROM_BYTES`] or more the author publishes a small announcement
//! instead ([`peercomm_wire::group::PostAnnounce`]). A member that hears it
//! asks the peer that forwarded it for the post (`GroupGet`), checks it
//! against the announcement, and only then lets gossipsub forward the
//! announcement, so whoever forwards it holds the post. The post crosses
//! `N − 1` links; only the announcement is duplicated.
//!
//! This module holds the parts without I/O: the bounded cache of posts a
//! node can serve, and the bounded table of pulls under way.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::gossipsub::MessageId;
use libp2p::PeerId;
use peercomm_wire::group::PostAnnounce;

/// Posts at least this large (encoded) are announced, not pushed. An
/// announcement costs about 250 bytes per mesh link (gossipsub's signed
/// frame included) and a pull about 300 bytes of stream set-up per member;
/// from about 1 KiB the copies saved outweigh both in a group of 8 with
/// `D = 6`, and the saving grows with the post and with the group.
pub(crate) const PULL_FROM_BYTES: usize = 1024;
/// Bytes of posts kept to serve pulls, at most.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// How long a post is served after it was published or pulled: far longer
/// than an announcement takes to cross a mesh, or gossipsub's message cache
/// keeps it for IWANT.
const CACHE_FOR: Duration = Duration::from_secs(120);
/// Pulls under way, at most; announcements past it are left to catch-up.
pub(crate) const MAX_PULLS: usize = 256;

/// Posts this node can serve to members that heard their announcement.
#[derive(Debug, Default)]
pub(crate) struct PostCache {
    posts: HashMap<[u8; 16], ([u8; 16], Vec<u8>)>,
    /// Insertion order, oldest first, with when each came.
    order: VecDeque<([u8; 16], Instant)>,
    bytes: usize,
}

impl PostCache {
    /// Keeps `encoded` (post `post_id` of group `group`) to serve.
    pub(crate) fn insert(
        &mut self,
        group: [u8; 16],
        post_id: [u8; 16],
        encoded: Vec<u8>,
        now: Instant,
    ) {
        self.prune(now);
        if encoded.len() > CACHE_BYTES || self.posts.contains_key(&post_id) {
            return;
        }
        self.bytes += encoded.len();
        self.posts.insert(post_id, (group, encoded));
        self.order.push_back((post_id, now));
        while self.bytes > CACHE_BYTES {
            self.pop_oldest();
        }
    }

    /// Post `post_id` of group `group`, if held.
    pub(crate) fn get(&self, group: &[u8; 16], post_id: &[u8; 16]) -> Option<&[u8]> {
        self.posts
            .get(post_id)
            .filter(|(g, _)| g == group)
            .map(|(_, encoded)| encoded.as_slice())
    }

    /// Drops what is older than [`CACHE_FOR`].
    pub(crate) fn prune(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > CACHE_FOR)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            if let Some((_, encoded)) = self.posts.remove(&id) {
                self.bytes -= encoded.len();
            }
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A pull under way: the announcement waits, unvalidated, until the post
/// arrives.
#[derive(Debug)]
pub(crate) struct Pull {
    /// What was announced.
    pub(crate) announce: PostAnnounce,
    /// The announcement's gossipsub id, to validate it.
    pub(crate) message_id: MessageId,
    /// Who forwarded it (and is asked first).
    pub(crate) source: PeerId,
    /// Who else to ask if the first does not have it: the author.
    pub(crate) fallback: Option<PeerId>,
}

/// What to do with a post announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnAnnounce {
    /// We hold the post: accept the announcement (gossipsub passes it on).
    Accept,
    /// A pull of this post is under way (another member announced it
    /// too): that pull fetches it; this announcement is dropped, and
    /// nothing failed.
    AlreadyPulling,
    /// Too many pulls at once: a failed pull; catch up from the group's
    /// mailboxes instead.
    Busy,
    /// Fetch the post from whoever announced it.
    Pull,
}

/// The decision for an announcement of a post we `hold` or not, with a pull
/// of it `pulling` or not, and `pulls` pulls under way.
pub(crate) fn on_announce(hold: bool, pulling: bool, pulls: usize) -> OnAnnounce {
    if hold {
        OnAnnounce::Accept
    } else if pulling {
        OnAnnounce::AlreadyPulling
    } else if pulls >= MAX_PULLS {
        OnAnnounce::Busy
    } else {
        OnAnnounce::Pull
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_announcement_of_a_post_being_pulled_is_not_a_failure() {
        assert_eq!(on_announce(true, false, MAX_PULLS), OnAnnounce::Accept);
        assert_eq!(on_announce(false, false, 0), OnAnnounce::Pull);
        assert_eq!(on_announce(false, true, 1), OnAnnounce::AlreadyPulling);
        // Even with the pulls full, one already under way is not "busy".
        assert_eq!(
            on_announce(false, true, MAX_PULLS),
            OnAnnounce::AlreadyPulling
        );
        assert_eq!(on_announce(false, false, MAX_PULLS), OnAnnounce::Busy);
        assert_eq!(on_announce(false, false, MAX_PULLS - 1), OnAnnounce::Pull);
    }

    #[test]
    fn the_cache_serves_by_group_and_id_and_forgets_old_posts() {
        let t0 = Instant::now();
        let mut cache = PostCache::default();
        cache.insert([1; 16], [9; 16], vec![5; 2000], t0);
        assert_eq!(cache.get(&[1; 16], &[9; 16]), Some(&[5u8; 2000][..]));
        // Another group's member cannot have it by guessing the id.
        assert_eq!(cache.get(&[2; 16], &[9; 16]), None);
        // A second insert of the same post changes nothing.
        cache.insert([1; 16], [9; 16], vec![5; 2000], t0);
        assert_eq!(cache.bytes(), 2000);
        cache.prune(t0 + CACHE_FOR);
        assert!(cache.get(&[1; 16], &[9; 16]).is_some());
        cache.prune(t0 + CACHE_FOR + Duration::from_secs(1));
        assert_eq!(cache.get(&[1; 16], &[9; 16]), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_cache_keeps_to_its_byte_bound_dropping_the_oldest() {
        let t0 = Instant::now();
        let mut cache = PostCache::default();
        let post = 100 * 1024;
        let fits = CACHE_BYTES / post;
        for i in 0..fits + 10 {
            let id = (i as u128).to_be_bytes();
            cache.insert([1; 16], id, vec![0; post], t0);
        }
        assert!(cache.bytes() <= CACHE_BYTES);
        assert_eq!(cache.get(&[1; 16], &0u128.to_be_bytes()), None);
        let newest = ((fits + 9) as u128).to_be_bytes();
        assert!(cache.get(&[1; 16], &newest).is_some());
    }
}
