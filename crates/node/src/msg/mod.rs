//! The stream protocols of a node: `/peercomm/msg/1.0.0` (one envelope in,
//! one receipt or reject out), `/peercomm/msg-batch/1.0.0` (several
//! envelopes in, their answers out in the same order) and
//! `/peercomm/record/1.0.0` (signed peer records exchanged after
//! connecting). Both carry length-prefixed frames;
//! the frames' contents are the protobuf messages of `peercomm-wire`.

mod codec;

pub use codec::FrameCodec;

use libp2p::StreamProtocol;

/// Direct envelope delivery and receipts.
pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/msg/1.0.0");
/// Several envelopes to one peer in one request, their answers together.
pub const MSG_BATCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/msg-batch/1.0.0");
/// Signed peer record exchange.
pub const RECORD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peercomm/record/1.0.0");
