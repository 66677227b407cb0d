//! The MLS engine: OpenMLS 0.9 with its state in the node's SQLite
//! database, signing with the node's own Ed25519 key.
//!
//! A member's MLS credential is a basic credential holding its PeerId, and
//! its MLS signature key is the Ed25519 key inside that PeerId: a leaf
//! binds to a peer with no extra certificate ([`leaf_peer`]). Every call
//! takes the connection it works in, so the caller can commit MLS state and
//! its own tables in one transaction.
//!
//! Implementation notes: commits and application messages are MLS
//! `PrivateMessage`s (pure ciphertext wire format), so a mailbox holding a
//! group's posts learns neither contents nor membership changes. Past
//! epochs' secrets are kept for [`MAX_PAST_EPOCHS`] epochs so an
//! application message sent just before a commit still opens after it.

use libp2p::PeerId;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::storage::StorageProvider as _;
use peercomm_store::Connection;

use super::{GroupError, GroupId};

/// The ciphersuite of every group: X25519, ChaCha20-Poly1305, SHA-256, Ed25519.
pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
/// Past epochs whose secrets still open application messages.
pub(crate) const MAX_PAST_EPOCHS: usize = 2;
/// Application messages from one sender that may arrive out of order.
const OUT_OF_ORDER_TOLERANCE: u32 = 64;
/// Generations a sender may skip ahead by (lost messages).
const MAX_FORWARD_DISTANCE: u32 = 10_000;

/// serde_json as the storage codec.
#[derive(Debug, Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// OpenMLS's view of the node for one operation: our crypto, and storage
/// in the given connection.
pub(crate) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

macro_rules! mls {
    ($what:expr, $e:expr) => {
        $e.map_err(|e| GroupError::Internal(format!("{}: {e:?}", $what)))
    };
}

/// The peer a leaf belongs to: its credential's PeerId, if the leaf's
/// signature key is that PeerId's Ed25519 key.
pub(crate) fn leaf_peer(credential: &Credential, signature_key: &[u8]) -> Option<PeerId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let peer = PeerId::from_bytes(basic.identity()).ok()?;
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    (ed.to_bytes().as_slice() == signature_key).then_some(peer)
}

fn credential_peer(credential: &Credential) -> Option<PeerId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    PeerId::from_bytes(basic.identity()).ok()
}

/// A commit made by the owner.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The epoch the commit was made in (it moves the group to `epoch + 1`).
    pub(crate) epoch: u64,
    /// The commit (MLSMessage, TLS encoding).
    pub(crate) commit: Vec<u8>,
    /// The Welcome for added members, with the ratchet tree it needs.
    pub(crate) welcome: Option<(Vec<u8>, Vec<u8>)>,
    /// The members after the commit.
    pub(crate) members: Vec<PeerId>,
}

/// What processing one MLS message did.
#[derive(Debug, Clone)]
pub(crate) enum Processed {
    /// An application message.
    Application {
        /// Its author.
        sender: PeerId,
        /// The decrypted content.
        plaintext: Vec<u8>,
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// A commit, merged.
    Commit {
        /// Its authenticated data (the group's metadata).
        aad: Vec<u8>,
        /// The epoch after it.
        epoch: u64,
        /// Whether it removed this node.
        removed_me: bool,
        /// The members after it.
        members: Vec<PeerId>,
    },
    /// Our own message coming back (nothing to do).
    Own,
    /// A proposal, stored for the next commit.
    Proposal {
        /// Its author.
        sender: PeerId,
        /// Whether it is the sender removing itself.
        self_remove: bool,
    },
}

/// This node's MLS identity.
#[derive(Debug)]
pub(crate) struct Mls {
    crypto: RustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    peer: PeerId,
}

impl Mls {
    /// The engine for the node whose key is `keypair` (Ed25519).
    pub(crate) fn new(keypair: &libp2p::identity::Keypair) -> Result<Self, GroupError> {
        let ed = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| GroupError::Internal("the node key is not Ed25519".into()))?;
        let public = ed.public().to_bytes().to_vec();
        let secret = ed.secret().as_ref().to_vec();
        let peer = keypair.public().to_peer_id();
        let signer = SignatureKeyPair::from_raw(SignatureScheme::ED25519, secret, public.clone());
        let credential = CredentialWithKey {
            credential: BasicCredential::new(peer.to_bytes()).into(),
            signature_key: public.into(),
        };
        Ok(Self {
            crypto: RustCrypto::default(),
            signer,
            credential,
            peer,
        })
    }

    /// Creates OpenMLS's tables (its own migrations) if they are missing.
    pub(crate) fn migrate(conn: &mut Connection) -> Result<(), GroupError> {
        let mut storage = SqliteStorageProvider::<JsonCodec, &mut Connection>::new(conn);
        storage
            .run_migrations()
            .map_err(|e| GroupError::Internal(format!("MLS storage migrations: {e}")))
    }

    fn provider<'a>(&'a self, c: &'a Connection) -> Provider<'a> {
        Provider {
            crypto: &self.crypto,
            storage: SqliteStorageProvider::new(c),
        }
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .use_ratchet_tree_extension(false)
            .build()
    }

    /// Makes `fresh` single-use key packages (and a last-resort one if
    /// `last_resort`); returns `(TLS-encoded hash_ref, TLS-encoded KeyPackage, last_resort)`.
    pub(crate) fn make_key_packages(
        &self,
        c: &Connection,
        fresh: usize,
        last_resort: bool,
    ) -> Result<Vec<super::store::KeyPackageRow>, GroupError> {
        let provider = self.provider(c);
        let mut out = Vec::new();
        for lr in std::iter::repeat_n(false, fresh).chain(last_resort.then_some(true)) {
            let mut builder = KeyPackage::builder();
            if lr {
                builder = builder.mark_as_last_resort();
            }
            let bundle = mls!(
                "key package",
                builder.build(
                    CIPHERSUITE,
                    &provider,
                    &self.signer,
                    self.credential.clone()
                )
            )?;
            let kp = bundle.key_package();
            let hash = mls!("key package ref", kp.hash_ref(provider.crypto()))?;
            let bytes = mls!("key package encoding", kp.tls_serialize_detached())?;
            let hash = mls!("key package ref encoding", hash.tls_serialize_detached())?;
            out.push((hash, bytes, lr));
        }
        Ok(out)
    }

    /// Whether the private part of one of our key packages is still held
    /// (a Welcome consumes a single-use one).
    pub(crate) fn has_key_package(&self, c: &Connection, hash_ref: &[u8]) -> bool {
        let provider = self.provider(c);
        let Ok(r) = KeyPackageRef::tls_deserialize_exact(hash_ref) else {
            return false;
        };
        provider
            .storage()
            .key_package::<KeyPackageRef, KeyPackageBundle>(&r)
            .ok()
            .flatten()
            .is_some()
    }

    /// Checks a key package fetched for `peer`: valid, our ciphersuite,
    /// and bound to `peer`.
    pub(crate) fn check_key_package(
        &self,
        bytes: &[u8],
        peer: PeerId,
    ) -> Result<KeyPackage, String> {
        let kp = KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| e.to_string())?;
        let kp = kp
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(|e| format!("{e:?}"))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err("unsupported ciphersuite".into());
        }
        let leaf = kp.leaf_node();
        match leaf_peer(leaf.credential(), leaf.signature_key().as_slice()) {
            Some(p) if p == peer => Ok(kp),
            _ => Err(format!("the key package is not bound to {peer}")),
        }
    }

    /// Creates a group with this node as its only member.
    pub(crate) fn create(&self, c: &Connection, id: GroupId) -> Result<u64, GroupError> {
        let provider = self.provider(c);
        let group = mls!(
            "create group",
            MlsGroup::builder()
                .with_group_id(openmls::group::GroupId::from_slice(id.as_bytes()))
                .ciphersuite(CIPHERSUITE)
                .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                    OUT_OF_ORDER_TOLERANCE,
                    MAX_FORWARD_DISTANCE,
                ))
                .use_ratchet_tree_extension(false)
                .build(&provider, &self.signer, self.credential.clone())
        )?;
        Ok(group.epoch().as_u64())
    }

    fn load(&self, provider: &Provider<'_>, id: GroupId) -> Result<MlsGroup, GroupError> {
        mls!(
            "load group",
            MlsGroup::load(
                provider.storage(),
                &openmls::group::GroupId::from_slice(id.as_bytes())
            )
        )?
        .ok_or(GroupError::NotFound(id))
    }

    /// Forgets a group's MLS state.
    pub(crate) fn delete(&self, c: &Connection, id: GroupId) -> Result<(), GroupError> {
        let provider = self.provider(c);
        if let Ok(mut g) = self.load(&provider, id) {
            mls!("delete group", g.delete(provider.storage()))?;
        }
        Ok(())
    }

    /// The members of a group.
    #[cfg(test)]
    pub(crate) fn members(&self, c: &Connection, id: GroupId) -> Result<Vec<PeerId>, GroupError> {
        let provider = self.provider(c);
        let g = self.load(&provider, id)?;
        Ok(members_of(&g))
    }

    /// The group's epoch.
    #[cfg(test)]
    pub(crate) fn epoch(&self, c: &Connection, id: GroupId) -> Result<u64, GroupError> {
        let provider = self.provider(c);
        Ok(self.load(&provider, id)?.epoch().as_u64())
    }

    /// The exporter secret of the current epoch (the group's "shared key").
    #[cfg(test)]
    pub(crate) fn epoch_secret(&self, c: &Connection, id: GroupId) -> Result<Vec<u8>, GroupError> {
        let provider = self.provider(c);
        let g = self.load(&provider, id)?;
        mls!(
            "export secret",
            g.export_secret(provider.crypto(), "peercomm group key", &[], 32)
        )
    }

    fn finish_commit(
        &self,
        provider: &Provider<'_>,
        g: &mut MlsGroup,
        epoch: u64,
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
    ) -> Result<Committed, GroupError> {
        mls!("merge commit", g.merge_pending_commit(provider))?;
        let commit = mls!("encode commit", commit.tls_serialize_detached())?;
        let welcome = match welcome {
            Some(w) => Some((
                mls!("encode welcome", w.tls_serialize_detached())?,
                mls!(
                    "encode tree",
                    g.export_ratchet_tree().tls_serialize_detached()
                )?,
            )),
            None => None,
        };
        Ok(Committed {
            epoch,
            commit,
            welcome,
            members: members_of(g),
        })
    }

    /// Adds members (owner): commit + Welcome, merged. `aad` is the
    /// group's metadata after the change.
    pub(crate) fn add(
        &self,
        c: &Connection,
        id: GroupId,
        key_packages: &[KeyPackage],
        aad: Vec<u8>,
    ) -> Result<Committed, GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let epoch = g.epoch().as_u64();
        g.set_aad(aad);
        let (commit, welcome, _) = mls!(
            "add members",
            g.add_members(&provider, &self.signer, key_packages)
        )?;
        self.finish_commit(&provider, &mut g, epoch, commit, Some(welcome))
    }

    /// Removes members (owner).
    pub(crate) fn remove(
        &self,
        c: &Connection,
        id: GroupId,
        peers: &[PeerId],
        aad: Vec<u8>,
    ) -> Result<Committed, GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let epoch = g.epoch().as_u64();
        let leaves: Vec<LeafNodeIndex> = g
            .members()
            .filter(|m| credential_peer(&m.credential).is_some_and(|p| peers.contains(&p)))
            .map(|m| m.index)
            .collect();
        if leaves.is_empty() {
            return Err(GroupError::Invalid("none of them is a member".into()));
        }
        g.set_aad(aad);
        let (commit, welcome, _) = mls!(
            "remove members",
            g.remove_members(&provider, &self.signer, &leaves)
        )?;
        self.finish_commit(&provider, &mut g, epoch, commit, welcome)
    }

    /// Commits what is pending (proposals stored, or nothing: a rekey
    /// carrying new metadata).
    pub(crate) fn commit_pending(
        &self,
        c: &Connection,
        id: GroupId,
        aad: Vec<u8>,
    ) -> Result<Committed, GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let epoch = g.epoch().as_u64();
        g.set_aad(aad);
        let (commit, welcome, _) = mls!(
            "commit",
            g.commit_to_pending_proposals(&provider, &self.signer)
        )?;
        self.finish_commit(&provider, &mut g, epoch, commit, welcome)
    }

    /// Our self-remove proposal (MLSMessage, TLS encoding).
    pub(crate) fn leave_proposal(
        &self,
        c: &Connection,
        id: GroupId,
    ) -> Result<Vec<u8>, GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let msg = mls!("leave", g.leave_group(&provider, &self.signer))?;
        mls!("encode proposal", msg.tls_serialize_detached())
    }

    /// Encrypts an application message; returns its epoch and the
    /// MLSMessage.
    pub(crate) fn encrypt(
        &self,
        c: &Connection,
        id: GroupId,
        plaintext: &[u8],
    ) -> Result<(u64, Vec<u8>), GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let epoch = g.epoch().as_u64();
        let msg = mls!(
            "encrypt",
            g.create_message(&provider, &self.signer, plaintext)
        )?;
        Ok((epoch, mls!("encode message", msg.tls_serialize_detached())?))
    }

    /// Processes an MLS message (application, proposal or commit) of a
    /// group. A commit is merged at once; `Err` leaves the state unchanged.
    pub(crate) fn process(
        &self,
        c: &Connection,
        id: GroupId,
        bytes: &[u8],
        committer: PeerId,
    ) -> Result<Processed, GroupError> {
        let provider = self.provider(c);
        let mut g = self.load(&provider, id)?;
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| GroupError::Invalid(format!("not an MLS message: {e}")))?;
        let protocol: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|e| GroupError::Invalid(format!("not a group message: {e:?}")))?;
        let processed = g
            .process_message(&provider, protocol)
            .map_err(|e| GroupError::Invalid(format!("cannot process: {e:?}")))?;
        let sender = credential_peer(processed.credential())
            .ok_or_else(|| GroupError::Invalid("the sender's credential is not a PeerId".into()))?;
        let epoch = processed.epoch().as_u64();
        let aad = processed.aad().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(Processed::Application {
                sender,
                plaintext: m.into_bytes(),
                epoch,
            }),
            ProcessedMessageContent::ProposalMessage(p) => {
                let self_remove = match p.proposal() {
                    Proposal::Remove(r) => {
                        matches!(p.sender(), Sender::Member(i) if *i == r.removed())
                    }
                    _ => false,
                };
                mls!(
                    "store proposal",
                    g.store_pending_proposal(provider.storage(), *p)
                )?;
                Ok(Processed::Proposal {
                    sender,
                    self_remove,
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                if sender != committer {
                    return Err(GroupError::Invalid(format!(
                        "a commit from {sender}, not the owner {committer}"
                    )));
                }
                let removed_me = staged.self_removed();
                mls!("merge commit", g.merge_staged_commit(&provider, *staged))?;
                Ok(Processed::Commit {
                    aad,
                    epoch: g.epoch().as_u64(),
                    removed_me,
                    members: members_of(&g),
                })
            }
            ProcessedMessageContent::OwnPendingCommit
            | ProcessedMessageContent::OwnPrivateMessage => Ok(Processed::Own),
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(GroupError::Invalid(
                "external joins are not accepted".into(),
            )),
        }
    }

    /// Joins a group from a Welcome and its ratchet tree; returns the
    /// group id, epoch and members.
    pub(crate) fn join(
        &self,
        c: &Connection,
        welcome: &[u8],
        tree: &[u8],
    ) -> Result<(GroupId, u64, Vec<PeerId>), GroupError> {
        let provider = self.provider(c);
        let msg = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| GroupError::Invalid(format!("not an MLS message: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(GroupError::Invalid("not a Welcome".into()));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree)
            .map_err(|e| GroupError::Invalid(format!("not a ratchet tree: {e}")))?;
        let staged =
            StagedWelcome::new_from_welcome(&provider, &Self::join_config(), welcome, Some(tree))
                .map_err(|e| GroupError::Invalid(format!("cannot join from the Welcome: {e:?}")))?;
        let g = mls!("join", staged.into_group(&provider))?;
        // Every leaf must be bound to the PeerId it names.
        for m in g.members() {
            if leaf_peer(&m.credential, &m.signature_key).is_none() {
                return Err(GroupError::Invalid(
                    "a member's signature key is not its PeerId's key".into(),
                ));
            }
        }
        let id = GroupId::from_slice(g.group_id().as_slice())
            .ok_or_else(|| GroupError::Invalid("the group id is not 16 bytes".into()))?;
        Ok((id, g.epoch().as_u64(), members_of(&g)))
    }

    /// This node's PeerId.
    pub(crate) fn peer(&self) -> PeerId {
        self.peer
    }
}

fn members_of(g: &MlsGroup) -> Vec<PeerId> {
    g.members()
        .filter_map(|m| credential_peer(&m.credential))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercomm_store::Store;

    struct Member {
        mls: Mls,
        store: Store,
    }

    fn member() -> Member {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut store = Store::open_in_memory().unwrap();
        Mls::migrate(store.connection_mut()).unwrap();
        Member {
            mls: Mls::new(&key).unwrap(),
            store,
        }
    }

    impl Member {
        fn c(&self) -> &Connection {
            self.store.connection()
        }
        fn key_package(&self) -> Vec<u8> {
            self.mls
                .make_key_packages(self.c(), 1, false)
                .unwrap()
                .remove(0)
                .1
        }
    }

    fn add(owner: &Member, id: GroupId, m: &Member) -> Committed {
        let kp = owner
            .mls
            .check_key_package(&m.key_package(), m.mls.peer())
            .unwrap();
        let committed = owner.mls.add(owner.c(), id, &[kp], Vec::new()).unwrap();
        let (welcome, tree) = committed.welcome.clone().unwrap();
        let (joined, epoch, _) = m.mls.join(m.c(), &welcome, &tree).unwrap();
        assert_eq!((joined, epoch), (id, committed.epoch + 1));
        committed
    }

    #[test]
    fn members_share_the_epoch_key_and_a_removed_member_reads_nothing_after() {
        let (owner, alice, bob) = (member(), member(), member());
        let id = GroupId::from([7; 16]);
        owner.mls.create(owner.c(), id).unwrap();
        add(&owner, id, &alice);
        let second = add(&owner, id, &bob);
        // Alice applies the commit that added Bob.
        match alice
            .mls
            .process(alice.c(), id, &second.commit, owner.mls.peer())
            .unwrap()
        {
            Processed::Commit { epoch, members, .. } => {
                assert_eq!(epoch, 2);
                assert_eq!(members.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        let key = owner.mls.epoch_secret(owner.c(), id).unwrap();
        assert_eq!(alice.mls.epoch_secret(alice.c(), id).unwrap(), key);
        assert_eq!(bob.mls.epoch_secret(bob.c(), id).unwrap(), key);
        // A message reaches both.
        let (_, msg) = owner.mls.encrypt(owner.c(), id, b"one").unwrap();
        for m in [&alice, &bob] {
            match m.mls.process(m.c(), id, &msg, owner.mls.peer()).unwrap() {
                Processed::Application {
                    plaintext, sender, ..
                } => {
                    assert_eq!(plaintext, b"one");
                    assert_eq!(sender, owner.mls.peer());
                }
                other => panic!("{other:?}"),
            }
        }
        // Bob is removed: the group rekeys, Bob learns it and cannot read on.
        let removal = owner
            .mls
            .remove(owner.c(), id, &[bob.mls.peer()], Vec::new())
            .unwrap();
        assert!(matches!(
            alice
                .mls
                .process(alice.c(), id, &removal.commit, owner.mls.peer())
                .unwrap(),
            Processed::Commit {
                removed_me: false,
                ..
            }
        ));
        assert!(matches!(
            bob.mls
                .process(bob.c(), id, &removal.commit, owner.mls.peer())
                .unwrap(),
            Processed::Commit {
                removed_me: true,
                ..
            }
        ));
        let new_key = owner.mls.epoch_secret(owner.c(), id).unwrap();
        assert_ne!(new_key, key);
        assert_eq!(alice.mls.epoch_secret(alice.c(), id).unwrap(), new_key);
        assert_eq!(owner.mls.members(owner.c(), id).unwrap().len(), 2);
        assert_eq!(owner.mls.epoch(owner.c(), id).unwrap(), 3);
        let (_, after) = owner.mls.encrypt(owner.c(), id, b"two").unwrap();
        assert!(alice
            .mls
            .process(alice.c(), id, &after, owner.mls.peer())
            .is_ok());
        assert!(bob
            .mls
            .process(bob.c(), id, &after, owner.mls.peer())
            .is_err());
    }

    #[test]
    fn a_commit_from_anyone_but_the_owner_is_refused_and_changes_nothing() {
        let (owner, alice, bob) = (member(), member(), member());
        let id = GroupId::from([9; 16]);
        owner.mls.create(owner.c(), id).unwrap();
        add(&owner, id, &alice);
        let second = add(&owner, id, &bob);
        alice
            .mls
            .process(alice.c(), id, &second.commit, owner.mls.peer())
            .unwrap();
        // Alice commits on her own (a rekey): Bob refuses it, as it is not
        // from the owner, and stays in his epoch.
        let rogue = alice.mls.commit_pending(alice.c(), id, Vec::new()).unwrap();
        let epoch = bob.mls.epoch(bob.c(), id).unwrap();
        assert!(bob
            .mls
            .process(bob.c(), id, &rogue.commit, owner.mls.peer())
            .is_err());
        assert_eq!(bob.mls.epoch(bob.c(), id).unwrap(), epoch);
    }

    #[test]
    fn a_key_package_must_be_bound_to_the_peer_it_is_for() {
        let (owner, alice) = (member(), member());
        let kp = alice.key_package();
        assert!(owner.mls.check_key_package(&kp, alice.mls.peer()).is_ok());
        let other = libp2p::PeerId::random();
        assert!(owner.mls.check_key_package(&kp, other).is_err());
        assert!(owner
            .mls
            .check_key_package(b"junk", alice.mls.peer())
            .is_err());
    }
}
