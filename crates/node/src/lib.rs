//! peercomm node.
