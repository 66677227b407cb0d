//! peercomm sim.
