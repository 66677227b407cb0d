//! The node's identity: an Ed25519 key (its libp2p `PeerId`) and an X25519
//! box key (what senders seal messages to), kept in `<data-dir>/identity.key`.
//!
//! The file is created once, with mode 0600, and never overwritten. A file
//! that is corrupt or readable by other users stops start-up with a message
//! that says what is wrong and how to fix it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::PeerId;
use peercomm_wire::BoxKeypair;

/// Name of the identity file inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Magic first line of the identity file, naming its format version.
const MAGIC: &[u8] = b"PEERCOMM-IDENTITY-1\n";
const SECRET_BYTES: usize = 32;
const FILE_BYTES: usize = MAGIC.len() + 2 * SECRET_BYTES;

/// The node's long-term keys.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    box_keys: BoxKeypair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried to do.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not a valid identity.
    #[error(
        "{path} is not a valid peercomm identity ({problem}). It may be damaged: restore it from \
         a backup, or move it away and run `peercomm init` to create a new identity (a new \
         identity is a new PeerId: peers will not recognise this node)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Other users can read the secret key.
    #[error(
        "{path} is readable by other users (mode {mode:o}); it holds this node's secret keys. \
         Fix it with `chmod 600 {path}` and start again"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `create` was asked to make an identity where one exists.
    #[error("{path} already exists; an existing identity is never overwritten")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl Identity {
    /// A fresh identity, not yet saved.
    pub fn generate() -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
            box_keys: BoxKeypair::generate(&mut rand::thread_rng()),
        }
    }

    /// The node's libp2p keypair.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The X25519 key pair messages to this node are sealed to.
    pub fn box_keys(&self) -> &BoxKeypair {
        &self.box_keys
    }

    /// Loads `<data_dir>/identity.key`, creating it (and the data dir) if it
    /// does not exist. Returns the identity and whether it was created now.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        match Self::load(&path) {
            Ok(id) => Ok((id, false)),
            Err(IdentityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let id = Self::generate();
                id.create(data_dir)?;
                Ok((id, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an identity file, refusing one that is exposed or corrupt.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |action, source| IdentityError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(|e| io("read", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let corrupt = |problem: String| IdentityError::Corrupt {
            path: path.to_path_buf(),
            problem,
        };
        if meta.len() != FILE_BYTES as u64 {
            return Err(corrupt(format!(
                "it is {} bytes long, expected {FILE_BYTES}",
                meta.len()
            )));
        }
        let bytes = fs::read(path).map_err(|e| io("read", e))?;
        if bytes.len() != FILE_BYTES || !bytes.starts_with(MAGIC) {
            return Err(corrupt("it does not start with the identity header".into()));
        }
        let mut ed = [0u8; SECRET_BYTES];
        ed.copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + SECRET_BYTES]);
        let mut x = [0u8; SECRET_BYTES];
        x.copy_from_slice(&bytes[MAGIC.len() + SECRET_BYTES..]);
        let keypair = Keypair::ed25519_from_bytes(ed)
            .map_err(|e| corrupt(format!("bad Ed25519 key: {e}")))?;
        Ok(Self {
            keypair,
            box_keys: BoxKeypair::from_secret(x),
        })
    }

    /// Writes the identity to `<data_dir>/identity.key` (mode 0600), creating
    /// the data dir (mode 0700) if needed. Never overwrites an existing file.
    pub fn create(&self, data_dir: &Path) -> Result<PathBuf, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let io = |action, source| IdentityError::Io {
            action,
            path: path.clone(),
            source,
        };
        if !data_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|e| io("create the data dir for", e))?;
        }
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IdentityError::Exists { path });
            }
            Err(e) => return Err(io("create", e)),
        };
        let ed = self
            .keypair
            .clone()
            .try_into_ed25519()
            .map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                problem: format!("not an Ed25519 key: {e}"),
            })?;
        let mut bytes = Vec::with_capacity(FILE_BYTES);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(ed.secret().as_ref());
        bytes.extend_from_slice(self.box_keys.secret());
        file.write_all(&bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        // Make the new directory entry durable too.
        if let Ok(dir) = fs::File::open(data_dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(a.box_keys().public(), b.box_keys().public());
    }

    #[test]
    fn an_existing_identity_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Identity::load_or_create(dir.path()).unwrap();
        let err = Identity::generate().create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        let (b, _) = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
    }

    #[test]
    fn an_exposed_key_stops_start_up_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by other users"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_corrupt_key_stops_start_up_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(b"garbage").unwrap();
        drop(f);
        let err = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid peercomm identity"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
    }
}
