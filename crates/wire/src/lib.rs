//! peercomm wire.
