//! Node configuration, layered with figment:
//! defaults < `<data-dir>/config.toml` < `PEERCOMM_*` environment < flags.
//!
//! Durations are written the human way (`30s`, `5m`, `14d`). Unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Name of the configuration file inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";
/// Prefix of the environment variables that configure the node.
pub const ENV_PREFIX: &str = "PEERCOMM_";
/// Environment variables with the prefix that are not configuration keys
/// (they are read by the binary before the configuration is loaded).
const ENV_NOT_CONFIG: &[&str] = &["data_dir", "log", "log_format", "api_token"];

/// Messages one batched request may carry, at most.
pub const MAX_BATCH_MESSAGES: usize = 64;

/// Everything a node can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, dialled on start to join the network, each with its
    /// `/p2p/<peer-id>` suffix. Any one that answers is enough.
    pub bootstrap: Vec<Multiaddr>,
    /// Outgoing message delivery.
    pub delivery: DeliveryConfig,
    /// Connection handling.
    pub network: NetworkConfig,
    /// The daemon's local HTTP API.
    pub api: ApiSettings,
    /// Peer discovery through the Kademlia DHT.
    pub dht: DhtConfig,
    /// What this node does for others: `relay` (forwards routed messages
    /// within the `routing` quotas), `mailbox` (holds messages for offline
    /// peers). Both by default, as every Kademlia node stores records; turn
    /// them off on a phone or a metered link. Announced in the peer record.
    pub roles: Vec<Role>,
    /// Multi-hop routing.
    pub routing: RoutingConfig,
    /// Onion routing (Sphinx packets through relays).
    pub onion: OnionConfig,
    /// Mailboxes for offline peers (what this node keeps for others, and
    /// how it uses others' mailboxes).
    pub mailbox: MailboxConfig,
    /// MLS groups: multicast mesh, catch-up, key packages.
    pub groups: GroupsConfig,
    /// Bandwidth adaptation: compression, priorities, congestion control,
    /// batching, adaptive retry, idle tuning.
    pub bandwidth: BandwidthConfig,
}

/// Bandwidth adaptation. `adaptive = false` turns every mechanism off (the
/// baseline `peercomm bench bandwidth` compares with); otherwise each can be
/// turned off on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthConfig {
    /// Master switch for every mechanism below.
    pub adaptive: bool,
    /// zstd before sealing, with the shipped dictionary when the recipient
    /// has it, skipped when it does not pay.
    pub compression: bool,
    /// Per-peer priority queues and congestion control: higher classes
    /// first, ephemeral traffic shed and bulk deferred while congested.
    pub priorities: bool,
    /// Several messages per request to a peer, their receipts in one answer
    /// (what is queued for a peer when a request slot frees leaves together).
    pub batching: bool,
    /// Retry by what is known of the peer (online history, mailbox state,
    /// round trip) rather than one fixed schedule.
    pub adaptive_retry: bool,
    /// Gossip without waste: IHAVE to D_lazy peers only, IDONTWANT.
    pub gossip_tuning: bool,
    /// Stretch keepalives and group catch-up polling when
    /// nothing needs them.
    pub idle_tuning: bool,
    /// No redundant DHT traffic: the mailboxes of a recipient are looked up
    /// once and reused for a while (and one lookup serves every message
    /// waiting on it), not once per deposit.
    pub dht_tuning: bool,
    /// Upload budget in bytes per second (0 = none), everything the node
    /// sends counted at the transport: once spent, the node defers bulk
    /// messages and sheds ephemeral ones until it recovers; control,
    /// interactive and group traffic always go. Holds even with
    /// `adaptive = false`.
    pub budget_bytes_per_sec: u64,
    /// Messages per request, at most.
    pub max_batch: usize,
}

impl Default for BandwidthConfig {
    fn default() -> Self {
        Self {
            adaptive: true,
            compression: true,
            priorities: true,
            batching: true,
            adaptive_retry: true,
            gossip_tuning: true,
            idle_tuning: true,
            dht_tuning: true,
            budget_bytes_per_sec: 0,
            max_batch: 32,
        }
    }
}

impl BandwidthConfig {
    /// Every mechanism off: the node as it was before adaptation.
    pub fn off() -> Self {
        Self {
            adaptive: false,
            ..Self::default()
        }
    }

    /// Compression is on.
    pub fn compression_on(&self) -> bool {
        self.adaptive && self.compression
    }
    /// Priority scheduling and congestion control are on.
    pub fn priorities_on(&self) -> bool {
        self.adaptive && self.priorities
    }
    /// Batching is on.
    pub fn batching_on(&self) -> bool {
        self.adaptive && self.batching
    }
    /// Adaptive retry is on.
    pub fn adaptive_retry_on(&self) -> bool {
        self.adaptive && self.adaptive_retry
    }
    /// Gossip tuning is on.
    pub fn gossip_tuning_on(&self) -> bool {
        self.adaptive && self.gossip_tuning
    }
    /// Idle tuning is on.
    pub fn idle_tuning_on(&self) -> bool {
        self.adaptive && self.idle_tuning
    }
    /// DHT tuning is on.
    pub fn dht_tuning_on(&self) -> bool {
        self.adaptive && self.dht_tuning
    }
    /// An upload budget is set. It is the user's limit, so it holds even
    /// with `adaptive = false`.
    pub fn budget_on(&self) -> bool {
        self.budget_bytes_per_sec > 0
    }
}

/// Groups (MLS over gossipsub, with catch-up from group mailboxes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Join a group at once when a Welcome arrives (otherwise it waits as
    /// an invitation for `group join`).
    pub auto_join: bool,
    /// Gossipsub mesh degree D: peers each member forwards a post to.
    pub mesh_n: usize,
    /// Below this many mesh peers, gossipsub grafts more (D_low).
    pub mesh_n_low: usize,
    /// Above this many, it prunes (D_high).
    pub mesh_n_high: usize,
    /// Peers told about recent posts by gossip (IHAVE) each heartbeat (D_lazy).
    pub gossip_lazy: usize,
    /// Gossipsub heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Members of each group this node keeps a connection to, so that it
    /// is in the group's mesh (at least `mesh_n`).
    pub connect_members: usize,
    /// Fetch missed posts from each group's mailboxes this often (and at
    /// start, on joining, and when a post shows a gap).
    #[serde(with = "humantime_serde")]
    pub catch_up_interval: Duration,
    /// Posts per catch-up page.
    pub catch_up_page: u32,
    /// How long a group mailbox keeps a post (members offline longer
    /// miss what is older).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Posts a group mailbox holds for one group, at most.
    pub max_posts_per_group: u64,
    /// Single-use key packages published in the DHT (plus a last-resort one).
    pub key_packages: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            auto_join: false,
            mesh_n: 6,
            mesh_n_low: 4,
            mesh_n_high: 12,
            gossip_lazy: 6,
            heartbeat: Duration::from_secs(1),
            connect_members: 6,
            catch_up_interval: Duration::from_secs(60),
            catch_up_page: 64,
            retention: Duration::from_secs(14 * 24 * 3600),
            max_posts_per_group: 20_000,
            key_packages: 8,
        }
    }
}

/// A service a node offers others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Forwards routed messages for others.
    Relay,
    /// Holds messages for peers that are offline.
    Mailbox,
}

impl Config {
    /// Whether this node offers `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl Role {
    /// The name used in config and in peer records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Mailbox => "mailbox",
        }
    }
}

/// Multi-hop routing (`/peercomm/route/1.0.0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Hops a routed message may take unless the sender says otherwise.
    pub default_ttl: u32,
    /// Most hops any routed message may take (a larger TTL is cut to this).
    pub max_ttl: u32,
    /// Routed messages forwarded per previous hop per minute (0 = no limit).
    pub forward_per_peer_per_minute: u32,
    /// Bytes forwarded per previous hop per minute (0 = no limit).
    pub forward_bytes_per_peer_per_minute: u64,
    /// Transmissions remembered by the duplicate filter.
    pub seen_capacity: usize,
    /// How long the duplicate filter remembers a transmission.
    #[serde(with = "humantime_serde")]
    pub seen_ttl: Duration,
    /// How long a learned route is trusted without being refreshed.
    #[serde(with = "humantime_serde")]
    pub route_ttl: Duration,
    /// Next hops remembered per destination.
    pub max_routes: usize,
    /// Next hops tried for one message before giving up on it (the
    /// sender's retry takes over then).
    pub max_candidates: usize,
    /// How long a hop may take to answer (the destination's receipt
    /// included).
    #[serde(with = "humantime_serde")]
    pub hop_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_ttl: 8,
            max_ttl: 16,
            forward_per_peer_per_minute: 600,
            forward_bytes_per_peer_per_minute: 16 * 1024 * 1024,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(10 * 60),
            route_ttl: Duration::from_secs(10 * 60),
            max_routes: 4,
            max_candidates: 4,
            hop_timeout: Duration::from_secs(30),
        }
    }
}

/// Onion routing (`/peercomm/onion/1.0.0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnionConfig {
    /// Relays on each onion path (1 to 4).
    pub hops: usize,
    /// A path is replaced by a fresh one after this long.
    #[serde(with = "humantime_serde")]
    pub path_rotation: Duration,
    /// How long a relay that failed stays out of new paths.
    #[serde(with = "humantime_serde")]
    pub failed_relay_for: Duration,
    /// How long a path check may take before the path counts as failed.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// How long the sender waits for the answer (the receipt) to a message
    /// sent on a path before it drops the path and retries on a fresh one.
    #[serde(with = "humantime_serde")]
    pub answer_timeout: Duration,
    /// How long a node waits for the next hop to acknowledge a packet.
    #[serde(with = "humantime_serde")]
    pub hop_timeout: Duration,
    /// A new onion key is made this often (and published).
    #[serde(with = "humantime_serde")]
    pub key_rotation: Duration,
    /// The previous onion key keeps working this long after a rotation.
    #[serde(with = "humantime_serde")]
    pub key_grace: Duration,
    /// Replay tags kept per key epoch; a full epoch makes a new key at once.
    pub max_replay_tags: usize,
    /// Packets relayed per previous hop per minute (0 = no limit).
    pub forward_per_peer_per_minute: u32,
    /// Packets this node relays at once, waiting for their next hop.
    pub max_pending: usize,
    /// Keep a record of each relayed packet's previous and next hop (the
    /// last 1,024), for tests and debugging. Off by default: a relay that
    /// remembers who talked to whom is what onion routing is meant to avoid.
    pub keep_hop_log: bool,
}

impl Default for OnionConfig {
    fn default() -> Self {
        Self {
            hops: 3,
            path_rotation: Duration::from_secs(10 * 60),
            failed_relay_for: Duration::from_secs(10 * 60),
            check_timeout: Duration::from_secs(20),
            answer_timeout: Duration::from_secs(60),
            hop_timeout: Duration::from_secs(10),
            key_rotation: Duration::from_secs(24 * 3600),
            key_grace: Duration::from_secs(3600),
            max_replay_tags: 250_000,
            forward_per_peer_per_minute: 600,
            max_pending: 1024,
            keep_hop_log: false,
        }
    }
}

/// Mailboxes (`/peercomm/mailbox/1.0.0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// Mailboxes a message for an offline peer is deposited at (R).
    pub replicas: usize,
    /// The longest a mailbox keeps an item: deposits expiring later are refused.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Items held for one recipient, at most (0 = no limit).
    pub per_recipient_items: u64,
    /// Bytes held for one recipient, at most (0 = no limit).
    pub per_recipient_bytes: u64,
    /// Items held from one sender over all recipients, at most (0 = no limit).
    pub per_sender_items: u64,
    /// Bytes held from one sender over all recipients, at most (0 = no limit).
    pub per_sender_bytes: u64,
    /// Items one sender may have waiting for one recipient (0 = no limit).
    pub per_pair_items: u64,
    /// Bytes the mailbox holds in all, at most (0 = no limit).
    pub total_bytes: u64,
    /// Mailbox requests one peer may make per minute (0 = no limit).
    pub requests_per_peer_per_minute: u32,
    /// Items fetched per page when draining our mailboxes.
    pub fetch_page: u32,
    /// A message still on its way through relays this long after the
    /// recipient could not be dialled is deposited at its mailboxes too
    /// (an offline recipient's messages then wait there, not in the outbox).
    #[serde(with = "humantime_serde")]
    pub deposit_after: Duration,
    /// Our mailboxes are drained this often (and at start, and when one
    /// tells us it holds something).
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
    /// Held items are re-replicated to the recipient's current mailbox set
    /// this often.
    #[serde(with = "humantime_serde")]
    pub replicate_interval: Duration,
    /// Expired items, tombstones and messages are purged this often.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            replicas: 4,
            // As long as a sender may ask (`delivery.max_ttl`): a message
            // that lives longer than its mailboxes keep it is refused there.
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            per_recipient_items: 10_000,
            per_recipient_bytes: 64 * 1024 * 1024,
            per_sender_items: 10_000,
            per_sender_bytes: 64 * 1024 * 1024,
            per_pair_items: 1_000,
            total_bytes: 1024 * 1024 * 1024,
            requests_per_peer_per_minute: 600,
            fetch_page: 64,
            deposit_after: Duration::from_secs(3),
            drain_interval: Duration::from_secs(5 * 60),
            replicate_interval: Duration::from_secs(10 * 60),
            cleanup_interval: Duration::from_secs(60),
        }
    }
}

impl MailboxConfig {
    /// The quotas the store enforces on deposits.
    pub fn quotas(&self) -> peercomm_store::MailboxQuotas {
        peercomm_store::MailboxQuotas {
            per_recipient_items: self.per_recipient_items,
            per_recipient_bytes: self.per_recipient_bytes,
            per_depositor_items: self.per_sender_items,
            per_depositor_bytes: self.per_sender_bytes,
            per_pair_items: self.per_pair_items,
            total_bytes: self.total_bytes,
        }
    }
}

/// Peer discovery through the Kademlia DHT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtConfig {
    /// Bucket size and replication factor (Kademlia's k).
    pub k: usize,
    /// Lookup parallelism (Kademlia's α).
    pub alpha: usize,
    /// Give up on a lookup after this long.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Refresh the routing table (a bootstrap lookup) this often.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Publish our own peer record again this often (and at once when our
    /// addresses change).
    #[serde(with = "humantime_serde")]
    pub republish_interval: Duration,
    /// Re-bootstrap when the routing table holds fewer peers than this.
    pub low_watermark: usize,
    /// How long `find_peer` answers from its cache before asking the network.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Use disjoint lookup paths (S/Kademlia), harder to eclipse, more traffic.
    pub disjoint_paths: bool,
    /// At most this many peers of one IPv4 /24 or IPv6 /48 per bucket
    /// (0 = no limit). Loopback addresses are exempt.
    pub max_peers_per_subnet: usize,
    /// Records a single peer may store on us per minute; more are dropped
    /// and counted.
    pub max_puts_per_peer_per_minute: u32,
    /// Inbound DHT requests (any kind) one peer may make per minute, with
    /// bursts of a quarter of that; more are dropped and counted, and a
    /// peer that keeps going is disconnected (0 = no limit).
    pub max_requests_per_peer_per_minute: u32,
    /// `server` answers DHT queries (reachable nodes), `client` only asks.
    pub mode: DhtMode,
}

/// Whether a node answers DHT queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Answer queries and hold records (reachable nodes).
    Server,
    /// Only ask (phones, nodes behind NAT).
    Client,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            query_timeout: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(5 * 60),
            republish_interval: Duration::from_secs(60 * 60),
            low_watermark: 4,
            cache_ttl: Duration::from_secs(5 * 60),
            disjoint_paths: false,
            max_peers_per_subnet: 2,
            max_puts_per_peer_per_minute: 60,
            max_requests_per_peer_per_minute: 600,
            mode: DhtMode::Server,
        }
    }
}

/// The daemon's local HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Address the API listens on (`host:port`); keep it on loopback unless
    /// you put an authenticating proxy in front of it.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".into(),
            max_body_bytes: 256 * 1024,
        }
    }
}

/// How outgoing messages are delivered and retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Growth of the delay per attempt (≥ 1.0).
    pub retry_factor: f64,
    /// Largest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_cap: Duration,
    /// Random spread of each delay, as a fraction (0.0 to 1.0).
    pub retry_jitter: f64,
    /// Lifetime of a message when the sender gives none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime a sender may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Messages taken from the outbox per scheduling round.
    pub batch: usize,
    /// How often the outbox is checked for due retries and expiry.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Delivered, expired and failed outgoing messages (with their receipts)
    /// are deleted this long after they reached that state.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Group commit: the writes that acknowledge something (a message
    /// accepted, an envelope stored, a receipt recorded) that wait at the
    /// same time share one commit (one fsync). Off, each commits on its own.
    pub group_commit: bool,
}

/// Connection handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Close a connection that carried nothing for this long.
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
    /// Give up on a request (a message awaiting its receipt) after this long.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Measure each connection's round trip (libp2p ping) this often.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Concurrent message streams per connection.
    pub max_concurrent_streams: usize,
    /// Lifetime of our signed peer record; it is re-signed well before.
    #[serde(with = "humantime_serde")]
    pub record_ttl: Duration,
    /// Addresses others can reach us at that we do not listen on (a port
    /// forward, a public address in front of NAT): announced in our peer
    /// record beside the listen addresses and those peers confirm.
    pub external_addrs: Vec<Multiaddr>,
    /// Throttle this node's link to this many bytes per second each way
    /// (0 = no limit): simulates a slow or congested access link.
    pub link_rate_bytes_per_sec: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001"
                    .parse()
                    .expect("valid default multiaddr"),
                "/ip4/0.0.0.0/udp/4001/quic-v1"
                    .parse()
                    .expect("valid default multiaddr"),
            ],
            bootstrap: Vec::new(),
            delivery: DeliveryConfig::default(),
            network: NetworkConfig::default(),
            api: ApiSettings::default(),
            dht: DhtConfig::default(),
            roles: vec![Role::Relay, Role::Mailbox],
            routing: RoutingConfig::default(),
            onion: OnionConfig::default(),
            mailbox: MailboxConfig::default(),
            groups: GroupsConfig::default(),
            bandwidth: BandwidthConfig::default(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(2),
            retry_factor: 2.0,
            retry_cap: Duration::from_secs(10 * 60),
            retry_jitter: 0.2,
            default_ttl: Duration::from_secs(14 * 24 * 3600),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            batch: 128,
            tick: Duration::from_millis(250),
            retention: Duration::from_secs(30 * 24 * 3600),
            group_commit: true,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            idle_connection_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(20),
            ping_interval: Duration::from_secs(15),
            max_concurrent_streams: 128,
            record_ttl: Duration::from_secs(24 * 3600),
            external_addrs: Vec::new(),
            link_rate_bytes_per_sec: 0,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, or a value has the wrong type or format.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// Values that parse but cannot work together.
    #[error("invalid configuration: `{key}`: {problem}")]
    Value {
        /// The offending key, dotted (`delivery.retry_factor`).
        key: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
}

impl Config {
    /// Loads the layers: defaults, `<data_dir>/config.toml` (if present),
    /// `PEERCOMM_*` environment variables (nested keys joined by `__`, e.g.
    /// `PEERCOMM_DELIVERY__RETRY_BASE=5s`), then `overrides` (the flags).
    pub fn load(data_dir: &Path, overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        Self::figment(data_dir, overrides).and_then(|f| {
            let config: Config = f.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))?;
            config.validate()?;
            Ok(config)
        })
    }

    fn figment(data_dir: &Path, overrides: &ConfigOverrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(data_dir.join(CONFIG_FILE)))
            .merge(Env::prefixed(ENV_PREFIX).split("__").ignore(ENV_NOT_CONFIG));
        if !overrides.listen.is_empty() {
            figment = figment.merge(Serialized::default("listen", &overrides.listen));
        }
        if !overrides.bootstrap.is_empty() {
            figment = figment.merge(Serialized::default("bootstrap", &overrides.bootstrap));
        }
        if let Some(api) = &overrides.api_listen {
            figment = figment.merge(Serialized::default("api.listen", api));
        }
        Ok(figment)
    }

    /// Checks values that each parse but must also make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        if !(d.retry_factor >= 1.0 && d.retry_factor <= 16.0) {
            return Err(ConfigError::Value {
                key: "delivery.retry_factor",
                problem: format!("{} is out of range; expected 1.0 to 16.0", d.retry_factor),
            });
        }
        if !(0.0..=1.0).contains(&d.retry_jitter) {
            return Err(ConfigError::Value {
                key: "delivery.retry_jitter",
                problem: format!("{} is out of range; expected 0.0 to 1.0", d.retry_jitter),
            });
        }
        if d.retry_base.is_zero() || d.retry_cap < d.retry_base {
            return Err(ConfigError::Value {
                key: "delivery.retry_cap",
                problem: "expected retry_base > 0 and retry_cap >= retry_base".into(),
            });
        }
        if d.default_ttl.is_zero() || d.default_ttl > d.max_ttl {
            return Err(ConfigError::Value {
                key: "delivery.default_ttl",
                problem: format!(
                    "{} must be above zero and at most delivery.max_ttl ({})",
                    humantime::format_duration(d.default_ttl),
                    humantime::format_duration(d.max_ttl)
                ),
            });
        }
        if d.batch == 0 || d.batch > 500 {
            return Err(ConfigError::Value {
                key: "delivery.batch",
                problem: format!("{} is out of range; expected 1 to 500", d.batch),
            });
        }
        if d.tick.is_zero() {
            return Err(ConfigError::Value {
                key: "delivery.tick",
                problem: "expected a duration above zero, e.g. `250ms`".into(),
            });
        }
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Value {
                key: "api.listen",
                problem: format!(
                    "`{}` is not a socket address; expected host:port, e.g. `127.0.0.1:7700`",
                    self.api.listen
                ),
            });
        }
        if self.api.max_body_bytes < 1024 {
            return Err(ConfigError::Value {
                key: "api.max_body_bytes",
                problem: "expected at least 1024".into(),
            });
        }
        let dht = &self.dht;
        if !(1..=64).contains(&dht.k) {
            return Err(ConfigError::Value {
                key: "dht.k",
                problem: format!("{} is out of range; expected 1 to 64", dht.k),
            });
        }
        if !(1..=16).contains(&dht.alpha) {
            return Err(ConfigError::Value {
                key: "dht.alpha",
                problem: format!("{} is out of range; expected 1 to 16", dht.alpha),
            });
        }
        for (key, d) in [
            ("dht.query_timeout", dht.query_timeout),
            ("dht.refresh_interval", dht.refresh_interval),
            ("dht.republish_interval", dht.republish_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected a duration above zero".into(),
                });
            }
        }
        let r = &self.routing;
        if !(1..=peercomm_wire::MAX_ROUTE_TTL).contains(&r.max_ttl) {
            return Err(ConfigError::Value {
                key: "routing.max_ttl",
                problem: format!(
                    "{} is out of range; expected 1 to {}",
                    r.max_ttl,
                    peercomm_wire::MAX_ROUTE_TTL
                ),
            });
        }
        if r.default_ttl == 0 || r.default_ttl > r.max_ttl {
            return Err(ConfigError::Value {
                key: "routing.default_ttl",
                problem: format!(
                    "{} must be at least 1 and at most routing.max_ttl ({})",
                    r.default_ttl, r.max_ttl
                ),
            });
        }
        for (key, v) in [
            ("routing.seen_capacity", r.seen_capacity),
            ("routing.max_routes", r.max_routes),
            ("routing.max_candidates", r.max_candidates),
        ] {
            if v == 0 {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected at least 1".into(),
                });
            }
        }
        for (key, d) in [
            ("routing.seen_ttl", r.seen_ttl),
            ("routing.route_ttl", r.route_ttl),
            ("routing.hop_timeout", r.hop_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected a duration above zero".into(),
                });
            }
        }
        let o = &self.onion;
        if !(1..=4).contains(&o.hops) {
            return Err(ConfigError::Value {
                key: "onion.hops",
                problem: format!("{} is out of range; expected 1 to 4", o.hops),
            });
        }
        for (key, v) in [
            ("onion.max_replay_tags", o.max_replay_tags),
            ("onion.max_pending", o.max_pending),
        ] {
            if v == 0 {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected at least 1".into(),
                });
            }
        }
        for (key, d) in [
            ("onion.path_rotation", o.path_rotation),
            ("onion.check_timeout", o.check_timeout),
            ("onion.answer_timeout", o.answer_timeout),
            ("onion.hop_timeout", o.hop_timeout),
            ("onion.key_rotation", o.key_rotation),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected a duration above zero".into(),
                });
            }
        }
        let m = &self.mailbox;
        if !(1..=20).contains(&m.replicas) {
            return Err(ConfigError::Value {
                key: "mailbox.replicas",
                problem: format!("{} is out of range; expected 1 to 20", m.replicas),
            });
        }
        if !(1..=peercomm_wire::MAX_MAIL_PAGE_ITEMS as u32).contains(&m.fetch_page) {
            return Err(ConfigError::Value {
                key: "mailbox.fetch_page",
                problem: format!(
                    "{} is out of range; expected 1 to {}",
                    m.fetch_page,
                    peercomm_wire::MAX_MAIL_PAGE_ITEMS
                ),
            });
        }
        for (key, d) in [
            ("mailbox.max_ttl", m.max_ttl),
            ("mailbox.drain_interval", m.drain_interval),
            ("mailbox.deposit_after", m.deposit_after),
            ("mailbox.replicate_interval", m.replicate_interval),
            ("mailbox.cleanup_interval", m.cleanup_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected a duration above zero".into(),
                });
            }
        }
        let g = &self.groups;
        if !(g.mesh_n_low <= g.mesh_n && g.mesh_n <= g.mesh_n_high && g.mesh_n_low >= 1) {
            return Err(ConfigError::Value {
                key: "groups.mesh_n",
                problem: format!(
                    "expected 1 <= mesh_n_low ({}) <= mesh_n ({}) <= mesh_n_high ({})",
                    g.mesh_n_low, g.mesh_n, g.mesh_n_high
                ),
            });
        }
        if !(1..=peercomm_wire::group::MAX_GROUP_PAGE_POSTS as u32).contains(&g.catch_up_page) {
            return Err(ConfigError::Value {
                key: "groups.catch_up_page",
                problem: format!(
                    "{} is out of range; expected 1 to {}",
                    g.catch_up_page,
                    peercomm_wire::group::MAX_GROUP_PAGE_POSTS
                ),
            });
        }
        if !(1..=peercomm_wire::group::MAX_KEY_PACKAGES).contains(&g.key_packages) {
            return Err(ConfigError::Value {
                key: "groups.key_packages",
                problem: format!(
                    "{} is out of range; expected 1 to {}",
                    g.key_packages,
                    peercomm_wire::group::MAX_KEY_PACKAGES
                ),
            });
        }
        for (key, d) in [
            ("groups.heartbeat", g.heartbeat),
            ("groups.catch_up_interval", g.catch_up_interval),
            ("groups.retention", g.retention),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Value {
                    key,
                    problem: "expected a duration above zero".into(),
                });
            }
        }
        let b = &self.bandwidth;
        if !(1..=MAX_BATCH_MESSAGES).contains(&b.max_batch) {
            return Err(ConfigError::Value {
                key: "bandwidth.max_batch",
                problem: format!(
                    "{} is out of range; expected 1 to {MAX_BATCH_MESSAGES}",
                    b.max_batch
                ),
            });
        }
        if b.budget_bytes_per_sec != 0 && b.budget_bytes_per_sec < 1024 {
            return Err(ConfigError::Value {
                key: "bandwidth.budget_bytes_per_sec",
                problem: "expected 0 (no budget) or at least 1024".into(),
            });
        }
        let n = &self.network;
        if n.ping_interval < Duration::from_secs(1) {
            return Err(ConfigError::Value {
                key: "network.ping_interval",
                problem: "expected at least `1s`".into(),
            });
        }
        if n.max_concurrent_streams == 0 {
            return Err(ConfigError::Value {
                key: "network.max_concurrent_streams",
                problem: "expected at least 1".into(),
            });
        }
        if n.record_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Value {
                key: "network.record_ttl",
                problem: "expected at least `1m`".into(),
            });
        }
        Ok(())
    }
}

/// Values given as command-line flags: they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--listen`, replaces `listen` when not empty.
    pub listen: Vec<Multiaddr>,
    /// `--bootstrap`, replaces `bootstrap` when not empty.
    pub bootstrap: Vec<Multiaddr>,
    /// `--api`, replaces `api.listen`.
    pub api_listen: Option<String>,
}

/// The commented `config.toml` written by `peercomm init`.
pub fn commented_default_toml() -> String {
    let d = Config::default();
    format!(
        r#"# peercomm node configuration.
# Layers, lowest first: built-in defaults < this file < PEERCOMM_* environment
# variables (nested keys joined by `__`, e.g. PEERCOMM_DELIVERY__RETRY_BASE=5s)
# < command-line flags. Durations are written like 250ms, 30s, 5m, 14d.

# Addresses to listen on (TCP and QUIC).
listen = [{listen}]

# Bootstrap peers dialled at start to join the network, each ending in
# /p2p/<peer-id>. Any one that answers is enough; after the first run the node
# also re-joins through the peers it remembers.
bootstrap = []

# What this node does for others: "relay" forwards routed messages (within the
# [routing] quotas), "mailbox" holds messages for offline peers. Remove either
# on a phone or a metered link.
roles = ["relay", "mailbox"]

[delivery]
retry_base = "{rb}"        # delay before the first retry
retry_factor = {rf:.1}       # growth per attempt
retry_cap = "{rc}"        # longest delay between attempts
retry_jitter = {rj:.1}       # random spread, fraction of the delay
default_ttl = "{dt}"      # lifetime of a message unless the sender says otherwise
max_ttl = "{mt}"          # longest lifetime a sender may ask for
retention = "{rtn}"        # finished outgoing messages are deleted after this
group_commit = {gc}       # concurrent acknowledging writes share one commit (fsync)

[network]
idle_connection_timeout = "{ic}"
request_timeout = "{rt}"
ping_interval = "{pi}"           # round-trip probes per connection
external_addrs = []              # e.g. ["/ip4/203.0.113.7/tcp/4001"] behind a port forward

[api]
listen = "{al}"           # the local HTTP API; keep it on loopback
max_body_bytes = {mb}

[dht]
k = {k}                        # bucket size / replication factor
alpha = {alpha}                     # lookup parallelism
refresh_interval = "{ri}"      # routing table refresh
republish_interval = "{rp}"    # re-publish our peer record
max_peers_per_subnet = {mps}      # per bucket, per IPv4 /24 or IPv6 /48 (0 = no limit)
max_requests_per_peer_per_minute = {mrq}  # inbound DHT requests per peer (0 = no limit)
mode = "server"               # "client" on nodes others cannot reach

[routing]
default_ttl = {rdt}                 # hops a routed message may take
max_ttl = {rmt}                    # cap on any routed message's TTL
forward_per_peer_per_minute = {rfp}      # relayed messages per previous hop (0 = no limit)
forward_bytes_per_peer_per_minute = {rfb}  # relayed bytes per previous hop (0 = no limit)
route_ttl = "{rrt}"               # how long a learned route is trusted
hop_timeout = "{rht}"             # how long a hop may take to answer

[onion]
hops = {oh}                          # relays per onion path (1 to 4)
path_rotation = "{opr}"            # replace a path after this long
key_rotation = "{okr}"               # make (and publish) a new onion key this often
key_grace = "{okg}"                   # the previous key keeps working this long
max_replay_tags = {omr}         # per key epoch; a full epoch rotates the key at once
forward_per_peer_per_minute = {ofp}   # relayed packets per previous hop (0 = no limit)

[mailbox]
replicas = {mr}                      # mailboxes each message for an offline peer goes to
max_ttl = "{mmt}"                  # the longest this node keeps an item for others
per_recipient_items = {mpri}        # quotas at this node's mailbox (0 = no limit)
per_recipient_bytes = {mprb}
per_sender_items = {mpsi}
per_sender_bytes = {mpsb}
per_pair_items = {mppi}              # one sender's items waiting for one recipient
total_bytes = {mtb}
requests_per_peer_per_minute = {mrpm}
drain_interval = "{mdi}"            # fetch from our own mailboxes this often
deposit_after = "{mda}"              # deposit a message still relayed after this long
replicate_interval = "{mri}"       # offer what this mailbox holds to the current set

[groups]
auto_join = {gaj}                  # join at once on a Welcome (else `peercomm group join`)
mesh_n = {gmn}                          # gossipsub mesh degree (D); mesh_n_low/mesh_n_high bound it
mesh_n_low = {gml}
mesh_n_high = {gmh}
gossip_lazy = {ggl}
heartbeat = "{ghb}"
connect_members = {gcm}                 # members of each group kept connected
catch_up_interval = "{gci}"           # fetch missed posts from group mailboxes this often
catch_up_page = {gcp}
retention = "{grt}"                  # how long group mailboxes keep posts
max_posts_per_group = {gmp}
key_packages = {gkp}                    # single-use MLS key packages published in the DHT

[bandwidth]
adaptive = {bad}                    # false turns every mechanism below off
compression = {bco}                 # zstd (+ shipped dictionary) before sealing
priorities = {bpr}                  # priority queues per peer, congestion control
batching = {bba}                    # several messages per request, receipts together
adaptive_retry = {bar}              # retry by what is known of the peer
gossip_tuning = {bgt}               # IHAVE to D_lazy peers only, IDONTWANT
idle_tuning = {bit}                 # stretch keepalives and catch-up polls when idle
dht_tuning = {bdt}                  # mailbox lookups reused, not repeated per message
budget_bytes_per_sec = {bbu}           # upload budget (0 = none)
max_batch = {bmb}                     # messages per request
"#,
        listen = d
            .listen
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", "),
        bad = d.bandwidth.adaptive,
        bco = d.bandwidth.compression,
        bpr = d.bandwidth.priorities,
        bba = d.bandwidth.batching,
        bar = d.bandwidth.adaptive_retry,
        bgt = d.bandwidth.gossip_tuning,
        bit = d.bandwidth.idle_tuning,
        bdt = d.bandwidth.dht_tuning,
        bbu = d.bandwidth.budget_bytes_per_sec,
        bmb = d.bandwidth.max_batch,
        rb = humantime::format_duration(d.delivery.retry_base),
        rf = d.delivery.retry_factor,
        rc = humantime::format_duration(d.delivery.retry_cap),
        rj = d.delivery.retry_jitter,
        dt = humantime::format_duration(d.delivery.default_ttl),
        mt = humantime::format_duration(d.delivery.max_ttl),
        rtn = humantime::format_duration(d.delivery.retention),
        gc = d.delivery.group_commit,
        ic = humantime::format_duration(d.network.idle_connection_timeout),
        rt = humantime::format_duration(d.network.request_timeout),
        pi = humantime::format_duration(d.network.ping_interval),
        al = d.api.listen,
        mb = d.api.max_body_bytes,
        k = d.dht.k,
        alpha = d.dht.alpha,
        ri = humantime::format_duration(d.dht.refresh_interval),
        rp = humantime::format_duration(d.dht.republish_interval),
        mps = d.dht.max_peers_per_subnet,
        mrq = d.dht.max_requests_per_peer_per_minute,
        rdt = d.routing.default_ttl,
        rmt = d.routing.max_ttl,
        rfp = d.routing.forward_per_peer_per_minute,
        rfb = d.routing.forward_bytes_per_peer_per_minute,
        rrt = humantime::format_duration(d.routing.route_ttl),
        rht = humantime::format_duration(d.routing.hop_timeout),
        oh = d.onion.hops,
        opr = humantime::format_duration(d.onion.path_rotation),
        okr = humantime::format_duration(d.onion.key_rotation),
        okg = humantime::format_duration(d.onion.key_grace),
        omr = d.onion.max_replay_tags,
        ofp = d.onion.forward_per_peer_per_minute,
        mr = d.mailbox.replicas,
        mmt = humantime::format_duration(d.mailbox.max_ttl),
        mpri = d.mailbox.per_recipient_items,
        mprb = d.mailbox.per_recipient_bytes,
        mpsi = d.mailbox.per_sender_items,
        mpsb = d.mailbox.per_sender_bytes,
        mppi = d.mailbox.per_pair_items,
        mtb = d.mailbox.total_bytes,
        mrpm = d.mailbox.requests_per_peer_per_minute,
        mdi = humantime::format_duration(d.mailbox.drain_interval),
        mda = humantime::format_duration(d.mailbox.deposit_after),
        mri = humantime::format_duration(d.mailbox.replicate_interval),
        gaj = d.groups.auto_join,
        gmn = d.groups.mesh_n,
        gml = d.groups.mesh_n_low,
        gmh = d.groups.mesh_n_high,
        ggl = d.groups.gossip_lazy,
        ghb = humantime::format_duration(d.groups.heartbeat),
        gcm = d.groups.connect_members,
        gci = humantime::format_duration(d.groups.catch_up_interval),
        gcp = d.groups.catch_up_page,
        grt = humantime::format_duration(d.groups.retention),
        gmp = d.groups.max_posts_per_group,
        gkp = d.groups.key_packages,
    )
}

/// The default data dir for this user (`$XDG_DATA_HOME/peercomm` on Linux).
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "peercomm").map(|d| d.data_dir().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by every test that reads the process environment: the one test
    /// that sets `PEERCOMM_*` variables would otherwise leak them into others
    /// running at the same time.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_guard() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load_with(toml: &str) -> Result<Config, ConfigError> {
        let _env = env_guard();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), toml).unwrap();
        Config::load(dir.path(), &ConfigOverrides::default())
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let _env = env_guard();
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path(), &ConfigOverrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_commented_default_file_loads_to_the_defaults() {
        let c = load_with(&commented_default_toml()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn durations_are_human() {
        let c = load_with("[delivery]\nretry_base = \"30s\"\ndefault_ttl = \"14d\"\n").unwrap();
        assert_eq!(c.delivery.retry_base, Duration::from_secs(30));
        assert_eq!(c.delivery.default_ttl, Duration::from_secs(14 * 86400));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_with("[delivery]\nretry_bsae = \"30s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry_bsae"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key_and_what_was_expected() {
        let err = load_with("[delivery]\nretry_base = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry_base"), "{err}");
        let err = load_with("listen = [\"not-a-multiaddr\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        let err = load_with("[delivery]\nretry_jitter = 3.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery.retry_jitter") && err.contains("0.0 to 1.0"),
            "{err}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let _env = env_guard();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = [\"/ip4/127.0.0.1/tcp/1000\"]\n",
        )
        .unwrap();
        let flag: Multiaddr = "/ip4/127.0.0.1/tcp/2000".parse().unwrap();
        let c = Config::load(
            dir.path(),
            &ConfigOverrides {
                listen: vec![flag.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen, vec![flag]);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the error type
    fn environment_wins_over_the_file_and_loses_to_flags() {
        // figment::Jail isolates the process environment for this test.
        let _env = env_guard();
        figment::Jail::expect_with(|jail| {
            jail.create_file(CONFIG_FILE, "[delivery]\nretry_base = \"1s\"\n")?;
            jail.set_env("PEERCOMM_DELIVERY__RETRY_BASE", "7s");
            let c = Config::load(jail.directory(), &ConfigOverrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.delivery.retry_base, Duration::from_secs(7));
            jail.set_env("PEERCOMM_DELIVERY__RETRY_BSAE", "7s");
            let err = Config::load(jail.directory(), &ConfigOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("retry_bsae"), "{err}");
            Ok(())
        });
    }
}
