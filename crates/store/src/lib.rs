//! peercomm store.
