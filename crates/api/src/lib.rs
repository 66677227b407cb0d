//! peercomm api.
