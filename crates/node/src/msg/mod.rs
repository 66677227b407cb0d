//! The stream protocols of a node: `/peercomm/msg/1.0.0` (one envelope in,
//! one receipt or reject out) and `/peercomm/record/1.0.0` (signed peer
//! records exchanged after connecting). Both carry length-prefixed frames;
//! the frames' contents are the protobuf messages of `peercomm-wire`.

mod codec;

pub use codec::FrameCodec;

use libp2p::StreamProtocol;

/// Direct envelope delivery and receipts.
pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/msg/1.0.0");
/// Signed peer record exchange.
pub const RECORD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/record/1.0.0");
