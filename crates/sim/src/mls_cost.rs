//! The cost of MLS (RFC 9420) group operations as the group grows: building
//! a group, adding a member, a rekey commit, processing it, joining from a
//! Welcome, and encrypting and decrypting one application message, with the
//! sizes of what goes on the wire.
//!
//! Runs OpenMLS with the node's ciphersuite
//! (`MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`) and
//! `OpenMlsRustCrypto` (in-memory storage), one provider per simulated
//! member, no network. Used by its test (small groups) and by
//! `peercomm bench mls`, which prints the figures.

// Implementation notes
//
// Only the owner and one observer hold a full group state. The owner builds
// an N-member group with one commit that adds the other N-1 key packages;
// the observer (member 1) joins from that commit's Welcome so it can process
// later commits and decrypt. The other N-2 members exist only as key
// packages: their own group state would cost memory and time and measure
// nothing new.
//
// Every timed step includes what its side of the wire really does: the
// sender creates, serializes and merges; a receiver deserializes, processes
// and merges (or joins). Key package generation happens on each member's own
// device, so it is not part of `build_ms`.
//
// The group configuration is the node's (`crates/node/src/groups/mls.rs`):
// pure-ciphertext wire format, 2 past epochs kept, and the ratchet tree sent
// beside the Welcome rather than inside it (no ratchet-tree extension). So a
// joiner receives `welcome_bytes + ratchet_tree_bytes`, the owner's add
// includes exporting and serializing the tree, and a join includes
// deserializing it. The node keeps MLS state in SQLite through
// `openmls_sqlite_storage` with a JSON codec; the in-memory storage here also
// serializes to JSON, but without SQLite's I/O.
//
// OpenMLS draws its randomness from the provider's own CSPRNG, which cannot
// be seeded: the seed fixes the members' identities (libp2p PeerIds made
// from seeded Ed25519 keys, as the node uses) and the message payloads.

use std::fmt::Debug;
use std::time::Instant;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, Size as _};
use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, GroupId, KeyPackage, LeafNodeParameters,
    MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsProvider,
    ProcessedMessageContent, RatchetTreeIn, Sender, SenderRatchetConfiguration, StagedWelcome,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The ciphersuite the node's groups use.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// Bytes in each measured application message.
pub const MESSAGE_BYTES: usize = 200;

/// Past epochs whose secrets are kept (as the node does).
pub const MAX_PAST_EPOCHS: usize = 2;

/// Out-of-order application messages tolerated per sender (as the node does).
pub const OUT_OF_ORDER_TOLERANCE: u32 = 64;

/// Generations a sender may skip ahead by (as the node does).
pub const MAX_FORWARD_DISTANCE: u32 = 10_000;

/// Fewest members a measured group may have: the owner and the observer.
pub const MIN_MEMBERS: usize = 2;

/// What to measure.
#[derive(Debug, Clone)]
pub struct MlsCostOptions {
    /// Group sizes (members, owner included), each measured on its own group.
    pub sizes: Vec<usize>,
    /// Samples of each operation; each figure is their median.
    pub samples: usize,
    /// Seed for the members' identities and the message payloads.
    pub seed: u64,
}

impl Default for MlsCostOptions {
    /// 50, 200 and 1,000 members, 5 samples, seed 0.
    fn default() -> Self {
        Self {
            sizes: vec![50, 200, 1000],
            samples: 5,
            seed: 0,
        }
    }
}

/// The cost of MLS operations in one group size. Times are medians over the
/// samples, measured on one thread.
#[derive(Debug, Clone, Serialize)]
pub struct MlsCost {
    /// Members when measuring starts (each add-member sample adds one, and
    /// they stay).
    pub members: usize,
    /// The owner creates the group and adds the other members' key packages
    /// in one commit, then merges it (one run, not a median).
    pub build_ms: f64,
    /// The owner adds one member: commit and Welcome created, serialized,
    /// merged.
    pub add_member_ms: f64,
    /// The owner commits a rekey (an update commit with a path): created,
    /// serialized, merged.
    pub commit_ms: f64,
    /// Another member deserializes, processes and merges that commit.
    pub process_commit_ms: f64,
    /// A new member joins from the Welcome and the ratchet tree sent with
    /// it: deserialized, verified, group state built.
    pub join_ms: f64,
    /// The owner encrypts and serializes one 200-byte application message.
    pub encrypt_us: f64,
    /// Another member deserializes and decrypts it.
    pub decrypt_us: f64,
    /// Serialized size of the rekey commit.
    pub commit_bytes: usize,
    /// Serialized size of the Welcome for one new member (the ratchet tree
    /// travels beside it, as in the node).
    pub welcome_bytes: usize,
    /// TLS-serialized size of the ratchet tree at `members` members (what a
    /// joiner receives besides the Welcome).
    pub ratchet_tree_bytes: usize,
}

/// The costs at each measured size.
#[derive(Debug, Clone, Serialize)]
pub struct MlsCostReport {
    /// One entry per size, in the order asked.
    pub sizes: Vec<MlsCost>,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum MlsCostError {
    /// The options cannot be measured (not worth retrying as they are).
    #[error("invalid options: {0}")]
    Options(String),
    /// An OpenMLS operation failed.
    #[error("{members} members: {step} failed: {reason}")]
    Mls {
        /// Group size being measured.
        members: usize,
        /// The operation.
        step: &'static str,
        /// OpenMLS's error.
        reason: String,
    },
    /// An operation succeeded but its result is wrong (a bug, not noise).
    #[error("{members} members: {what}")]
    Check {
        /// Group size being measured.
        members: usize,
        /// What did not hold.
        what: String,
    },
}

/// Measures MLS operation costs at each of `opts.sizes`.
pub fn mls_costs(opts: &MlsCostOptions) -> Result<MlsCostReport, MlsCostError> {
    if opts.samples == 0 {
        return Err(MlsCostError::Options("samples must be at least 1".into()));
    }
    if let Some(n) = opts.sizes.iter().find(|n| **n < MIN_MEMBERS) {
        return Err(MlsCostError::Options(format!(
            "a group needs at least {MIN_MEMBERS} members (got {n})"
        )));
    }
    let sizes = opts
        .sizes
        .iter()
        .map(|&n| measure(n, opts.samples, opts.seed))
        .collect::<Result<_, _>>()?;
    Ok(MlsCostReport { sizes })
}

/// One simulated member: its own provider (storage and CSPRNG) and keys.
struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Member {
    /// A member whose credential identity is the bytes of a PeerId made from
    /// a seeded Ed25519 key.
    fn new(rng: &mut StdRng, m: &Steps) -> Result<Self, MlsCostError> {
        let mut secret: [u8; 32] = rng.gen();
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
            .map_err(m.failed("peer key"))?;
        let identity = keypair.public().to_peer_id().to_bytes();
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(m.failed("signature key"))?;
        signer
            .store(provider.storage())
            .map_err(m.failed("store signature key"))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Ok(Self {
            provider,
            signer,
            credential,
        })
    }

    /// A fresh key package (its private half stays in this member's storage).
    fn key_package(&self, m: &Steps) -> Result<KeyPackage, MlsCostError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(m.failed("key package"))?;
        Ok(bundle.key_package().clone())
    }
}

/// Error context for one group size.
struct Steps {
    members: usize,
}

impl Steps {
    fn failed<E: Debug>(&self, step: &'static str) -> impl FnOnce(E) -> MlsCostError {
        let members = self.members;
        move |e| MlsCostError::Mls {
            members,
            step,
            reason: format!("{e:?}"),
        }
    }

    fn check(&self, holds: bool, what: impl FnOnce() -> String) -> Result<(), MlsCostError> {
        if holds {
            Ok(())
        } else {
            Err(MlsCostError::Check {
                members: self.members,
                what: what(),
            })
        }
    }

    /// Every group in `groups` is at `epoch` with `members` members and the
    /// same epoch authenticator (the same key schedule) as the first.
    fn in_step(
        &self,
        after: &str,
        groups: &[&MlsGroup],
        epoch: u64,
        members: usize,
    ) -> Result<(), MlsCostError> {
        let Some(first) = groups.first() else {
            return Ok(());
        };
        for (i, g) in groups.iter().enumerate() {
            let (e, n) = (g.epoch().as_u64(), g.members().count());
            self.check(e == epoch && n == members, || {
                format!("after {after}, group {i} is at epoch {e} with {n} members; want epoch {epoch} with {members}")
            })?;
            self.check(
                g.epoch_authenticator().as_slice() == first.epoch_authenticator().as_slice(),
                || format!("after {after}, group {i} disagrees with the owner's key schedule"),
            )?;
        }
        Ok(())
    }
}

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAX_FORWARD_DISTANCE)
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .use_ratchet_tree_extension(false)
        .build()
}

/// What the owner sends a new member: the Welcome and the ratchet tree
/// after the commit, both serialized.
fn welcome_and_tree(
    m: &Steps,
    group: &MlsGroup,
    welcome: &MlsMessageOut,
) -> Result<(Vec<u8>, Vec<u8>), MlsCostError> {
    let welcome = to_bytes(m, welcome, "encode welcome")?;
    let tree = group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(m.failed("encode ratchet tree"))?;
    Ok((welcome, tree))
}

fn to_bytes(m: &Steps, msg: &MlsMessageOut, what: &'static str) -> Result<Vec<u8>, MlsCostError> {
    msg.to_bytes().map_err(m.failed(what))
}

/// A member deserializes a commit, processes it and merges it.
fn receive_commit(
    m: &Steps,
    group: &mut MlsGroup,
    provider: &OpenMlsRustCrypto,
    bytes: &[u8],
) -> Result<(), MlsCostError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(m.failed("decode commit"))?;
    let message = message
        .try_into_protocol_message()
        .map_err(m.failed("commit as protocol message"))?;
    let processed = group
        .process_message(provider, message)
        .map_err(m.failed("process commit"))?;
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => group
            .merge_staged_commit(provider, *staged)
            .map_err(m.failed("merge commit")),
        other => Err(MlsCostError::Check {
            members: m.members,
            what: format!("a commit was processed as {other:?}"),
        }),
    }
}

/// A new member joins from a serialized Welcome and ratchet tree.
fn join(
    m: &Steps,
    member: &Member,
    (welcome, tree): &(Vec<u8>, Vec<u8>),
) -> Result<MlsGroup, MlsCostError> {
    let message =
        MlsMessageIn::tls_deserialize_exact(welcome).map_err(m.failed("decode welcome"))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(MlsCostError::Check {
            members: m.members,
            what: "the Welcome message is not a Welcome".into(),
        });
    };
    let tree =
        RatchetTreeIn::tls_deserialize_exact(tree).map_err(m.failed("decode ratchet tree"))?;
    StagedWelcome::new_from_welcome(&member.provider, &join_config(), welcome, Some(tree))
        .map_err(m.failed("stage welcome"))?
        .into_group(&member.provider)
        .map_err(m.failed("join from welcome"))
}

/// A serialized Welcome and the ratchet tree sent beside it.
type WelcomeAndTree = (Vec<u8>, Vec<u8>);

/// Build: the owner creates the group, adds `key_packages` in one commit
/// and merges it; returns the group and the serialized Welcome and tree.
fn build(
    m: &Steps,
    owner: &Member,
    key_packages: &[KeyPackage],
    rng: &mut StdRng,
) -> Result<(MlsGroup, WelcomeAndTree), MlsCostError> {
    let mut group_id = [0u8; 16];
    rng.fill(&mut group_id);
    let mut group = MlsGroup::builder()
        .ciphersuite(CIPHERSUITE)
        .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .use_ratchet_tree_extension(false)
        .with_group_id(GroupId::from_slice(&group_id))
        .build(&owner.provider, &owner.signer, owner.credential.clone())
        .map_err(m.failed("create group"))?;
    let (_, welcome, _) = group
        .add_members(&owner.provider, &owner.signer, key_packages)
        .map_err(m.failed("add all members"))?;
    group
        .merge_pending_commit(&owner.provider)
        .map_err(m.failed("merge build commit"))?;
    let welcome = welcome_and_tree(m, &group, &welcome)?;
    Ok((group, welcome))
}

/// An N-member group as two of its members hold it, for timing one
/// application message: the owner encrypts, the observer decrypts (the
/// criterion bench in `benches/mls.rs`).
pub struct MlsPair {
    steps: Steps,
    owner: Member,
    group: MlsGroup,
    observer: Member,
    observed: MlsGroup,
}

impl MlsPair {
    /// Builds an `n`-member group (at least [`MIN_MEMBERS`]); the observer
    /// joins from the Welcome.
    pub fn new(n: usize, seed: u64) -> Result<Self, MlsCostError> {
        let steps = Steps {
            members: n.max(MIN_MEMBERS),
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let owner = Member::new(&mut rng, &steps)?;
        let observer = Member::new(&mut rng, &steps)?;
        let mut key_packages = vec![observer.key_package(&steps)?];
        for _ in 2..steps.members {
            key_packages.push(Member::new(&mut rng, &steps)?.key_package(&steps)?);
        }
        let (group, welcome) = build(&steps, &owner, &key_packages, &mut rng)?;
        let observed = join(&steps, &observer, &welcome)?;
        Ok(Self {
            steps,
            owner,
            group,
            observer,
            observed,
        })
    }

    /// The owner encrypts `payload` as an application message, serialized.
    pub fn encrypt(&mut self, payload: &[u8]) -> Result<Vec<u8>, MlsCostError> {
        let m = &self.steps;
        let message = self
            .group
            .create_message(&self.owner.provider, &self.owner.signer, payload)
            .map_err(m.failed("encrypt"))?;
        to_bytes(m, &message, "encode message")
    }

    /// The observer deserializes and decrypts one of [`Self::encrypt`]'s
    /// messages; returns the plaintext.
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>, MlsCostError> {
        let m = &self.steps;
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(m.failed("decode message"))?
            .try_into_protocol_message()
            .map_err(m.failed("message as protocol message"))?;
        let processed = self
            .observed
            .process_message(&self.observer.provider, message)
            .map_err(m.failed("decrypt"))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(plain) => Ok(plain.into_bytes()),
            other => Err(MlsCostError::Check {
                members: m.members,
                what: format!("a message was processed as {other:?}"),
            }),
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn median_bytes(mut xs: Vec<usize>) -> usize {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or(0)
}

fn measure(n: usize, samples: usize, seed: u64) -> Result<MlsCost, MlsCostError> {
    let m = Steps { members: n };
    let mut rng = StdRng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));

    // Untimed: every member makes its key package on its own device.
    let owner = Member::new(&mut rng, &m)?;
    let observer = Member::new(&mut rng, &m)?;
    let mut key_packages = Vec::with_capacity(n - 1);
    key_packages.push(observer.key_package(&m)?);
    for _ in 2..n {
        // The member's provider (and private keys) are dropped: it never joins.
        key_packages.push(Member::new(&mut rng, &m)?.key_package(&m)?);
    }
    let joiners = (0..samples)
        .map(|_| Member::new(&mut rng, &m))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let (mut group, welcome) = build(&m, &owner, &key_packages, &mut rng)?;
    let build_ms = ms(started);
    drop(key_packages);

    let mut observed = join(&m, &observer, &welcome)?;
    let mut epoch = 1;
    m.in_step("the build commit", &[&group, &observed], epoch, n)?;
    let ratchet_tree_bytes = group.export_ratchet_tree().tls_serialized_len();
    m.check(ratchet_tree_bytes == welcome.1.len(), || {
        format!(
            "the tree measures {ratchet_tree_bytes} bytes but serialized to {}",
            welcome.1.len()
        )
    })?;
    drop(welcome);

    // Add one member per sample; the observer follows, the new member joins.
    let (mut add_member, mut join_ms, mut welcome_bytes) = (vec![], vec![], vec![]);
    for (k, joiner) in joiners.iter().enumerate() {
        let key_package = joiner.key_package(&m)?;
        let started = Instant::now();
        let (commit, welcome, _) = group
            .add_members(
                &owner.provider,
                &owner.signer,
                std::slice::from_ref(&key_package),
            )
            .map_err(m.failed("add member"))?;
        let commit = to_bytes(&m, &commit, "encode add commit")?;
        group
            .merge_pending_commit(&owner.provider)
            .map_err(m.failed("merge add commit"))?;
        let welcome = welcome_and_tree(&m, &group, &welcome)?;
        add_member.push(ms(started));
        welcome_bytes.push(welcome.0.len());

        receive_commit(&m, &mut observed, &observer.provider, &commit)?;
        let started = Instant::now();
        let joined = join(&m, joiner, &welcome)?;
        join_ms.push(ms(started));

        epoch += 1;
        m.in_step(
            &format!("add-member sample {k}"),
            &[&group, &observed, &joined],
            epoch,
            n + k + 1,
        )?;
        let own = joined.own_leaf_index();
        m.check(
            group
                .member(own)
                .is_some_and(|c| c == &joiner.credential.credential),
            || format!("the owner does not list the member added in sample {k}"),
        )?;
    }
    let members_now = n + samples;

    // Rekey commits by the owner, processed by the observer.
    let (mut commit_ms, mut process_ms, mut commit_bytes) = (vec![], vec![], vec![]);
    for k in 0..samples {
        let started = Instant::now();
        let bundle = group
            .self_update(
                &owner.provider,
                &owner.signer,
                LeafNodeParameters::default(),
            )
            .map_err(m.failed("rekey commit"))?;
        let commit = to_bytes(&m, bundle.commit(), "encode rekey commit")?;
        group
            .merge_pending_commit(&owner.provider)
            .map_err(m.failed("merge rekey commit"))?;
        commit_ms.push(ms(started));
        commit_bytes.push(commit.len());

        let started = Instant::now();
        receive_commit(&m, &mut observed, &observer.provider, &commit)?;
        process_ms.push(ms(started));

        epoch += 1;
        m.in_step(
            &format!("rekey sample {k}"),
            &[&group, &observed],
            epoch,
            members_now,
        )?;
    }

    // Application messages from the owner to the observer.
    let (mut encrypt_us, mut decrypt_us) = (vec![], vec![]);
    for k in 0..samples {
        let mut payload = vec![0u8; MESSAGE_BYTES];
        rng.fill(&mut payload[..]);
        let started = Instant::now();
        let message = group
            .create_message(&owner.provider, &owner.signer, &payload)
            .map_err(m.failed("encrypt"))?;
        let bytes = to_bytes(&m, &message, "encode message")?;
        encrypt_us.push(ms(started) * 1e3);

        let started = Instant::now();
        let message = MlsMessageIn::tls_deserialize_exact(&bytes)
            .map_err(m.failed("decode message"))?
            .try_into_protocol_message()
            .map_err(m.failed("message as protocol message"))?;
        let processed = observed
            .process_message(&observer.provider, message)
            .map_err(m.failed("decrypt"))?;
        decrypt_us.push(ms(started) * 1e3);

        let from_owner =
            matches!(processed.sender(), Sender::Member(i) if *i == group.own_leaf_index());
        m.check(from_owner, || {
            format!("message {k} is not attributed to the owner")
        })?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(plain) => m
                .check(plain.into_bytes() == payload, || {
                    format!("message {k} decrypted to other bytes")
                })?,
            other => m.check(false, || format!("message {k} was processed as {other:?}"))?,
        }
    }
    m.in_step("the messages", &[&group, &observed], epoch, members_now)?;

    Ok(MlsCost {
        members: n,
        build_ms,
        add_member_ms: median(add_member),
        commit_ms: median(commit_ms),
        process_commit_ms: median(process_ms),
        join_ms: median(join_ms),
        encrypt_us: median(encrypt_us),
        decrypt_us: median(decrypt_us),
        commit_bytes: median_bytes(commit_bytes),
        welcome_bytes: median_bytes(welcome_bytes),
        ratchet_tree_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_bytes(vec![5, 1, 3]), 3);
    }

    #[test]
    fn rejects_groups_too_small_to_measure() {
        let opts = MlsCostOptions {
            sizes: vec![1],
            ..MlsCostOptions::default()
        };
        assert!(matches!(mls_costs(&opts), Err(MlsCostError::Options(_))));
    }
}
