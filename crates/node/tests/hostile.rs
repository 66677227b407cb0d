//! A hostile peer on the message protocol: garbage, truncated, oversized,
//! badly signed and replayed envelopes are each dropped and counted, and a
//! valid message on the same connection afterwards is still delivered.

use std::io;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, noise, tcp, yamux, PeerId, StreamProtocol, Swarm};
use peercomm_node::identity::{Identity, IDENTITY_FILE};
use peercomm_node::msg::MSG_PROTOCOL;
use peercomm_node::{Clock, InboxQuery, MessageId, Priority};
use peercomm_sim::{SimNet, SimOptions, Topology};
use peercomm_wire::{pb, Draft, Kind};
use prost::Message as _;
use rand::SeedableRng;

/// Writes requests as raw bytes (the test frames them itself, or not) and
/// reads framed responses.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("the hostile peer serves nothing"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        io.take(1 << 20).read_to_end(&mut all).await?;
        match peercomm_wire::decode_frame(&all) {
            Ok(Some((payload, _))) => Ok(payload.to_vec()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad response frame",
            )),
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Ok(())
    }
}

fn hostile_swarm(keypair: Keypair) -> Result<Swarm<request_response::Behaviour<RawCodec>>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(MSG_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

fn framed(payload: &[u8]) -> Vec<u8> {
    // Frame by hand so oversized payloads can be framed too.
    let mut out = Vec::with_capacity(payload.len() + 10);
    let mut n = payload.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// What came back for one request.
#[derive(Debug)]
enum Outcome {
    Receipt,
    Reject(pb::RejectCode),
    /// The node closed the stream without an answer.
    NoAnswer,
}

async fn request(
    swarm: &mut Swarm<request_response::Behaviour<RawCodec>>,
    node: PeerId,
    bytes: Vec<u8>,
    connection: &mut Option<libp2p::swarm::ConnectionId>,
) -> Result<Outcome> {
    let id = swarm.behaviour_mut().send_request(&node, bytes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .context("no answer in time")?;
        match event {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                connection_id,
                ..
            }) if request_id == id => {
                if let Some(previous) = connection {
                    ensure!(*previous == connection_id, "the node changed connection");
                }
                *connection = Some(connection_id);
                let response = pb::MsgResponse::decode(response.as_slice())?;
                return Ok(match response.result {
                    Some(pb::msg_response::Result::Receipt(_)) => Outcome::Receipt,
                    Some(pb::msg_response::Result::Reject(r)) => {
                        Outcome::Reject(pb::RejectCode::try_from(r.code)?)
                    }
                    None => bail!("empty response"),
                });
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                connection_id,
                ..
            }) if request_id == id => {
                if let Some(previous) = connection {
                    ensure!(*previous == connection_id, "the node changed connection");
                }
                *connection = Some(connection_id);
                return Ok(Outcome::NoAnswer);
            }
            SwarmEvent::ConnectionClosed { .. } => bail!("the node closed the connection"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dropped_and_counted_and_the_connection_keeps_working() -> Result<()> {
    let net = SimNet::start(SimOptions::new(1, Topology::Isolated)).await?;
    let node = net.handle(0).clone();
    let node_id = node.peer_id();
    let node_identity = Identity::load(&net.data_dir(0).join(IDENTITY_FILE))?;
    let box_key = *node_identity.box_keys().public();

    let keypair = Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id();
    let mut swarm = hostile_swarm(keypair.clone())?;
    swarm.dial(net.addr(0))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(net.seed());
    let now = peercomm_node::SystemClock.now_ms();
    let seal = |id: MessageId, body: &[u8], rng: &mut rand::rngs::StdRng| {
        peercomm_wire::seal(
            &keypair,
            &Draft {
                id,
                recipient: node_id,
                created_ms: now,
                expires_ms: now + 3_600_000,
                priority: Priority::Interactive,
                kind: Kind::Chat,
                body,
            },
            &box_key,
            rng,
        )
    };
    let mut conn = None;
    let before = node.stats();

    // 1. Garbage inside a well-formed frame.
    let out = request(
        &mut swarm,
        node_id,
        framed(b"\xff\x00garbage\x13\x37"),
        &mut conn,
    )
    .await?;
    ensure!(
        matches!(out, Outcome::Reject(pb::RejectCode::RejectMalformed)),
        "garbage: {out:?}"
    );

    // 2. A truncated envelope, framed.
    let valid = seal(MessageId::random(&mut rng), b"truncated", &mut rng)?;
    let out = request(
        &mut swarm,
        node_id,
        framed(&valid[..valid.len() / 2]),
        &mut conn,
    )
    .await?;
    ensure!(
        matches!(out, Outcome::Reject(_)),
        "truncated envelope: {out:?}"
    );

    // 3. A truncated frame: the length says more than the stream carries.
    let mut cut = framed(&valid);
    cut.truncate(cut.len() - 10);
    let out = request(&mut swarm, node_id, cut, &mut conn).await?;
    ensure!(matches!(out, Outcome::NoAnswer), "truncated frame: {out:?}");

    // 4. Oversized: an envelope over the envelope limit within a frame, and
    //    a frame over the frame limit.
    let big = vec![0x0au8; peercomm_wire::MAX_ENVELOPE_BYTES + 1];
    let out = request(&mut swarm, node_id, framed(&big), &mut conn).await?;
    ensure!(
        matches!(out, Outcome::Reject(pb::RejectCode::RejectTooLarge)),
        "oversized envelope: {out:?}"
    );
    let huge = vec![0u8; peercomm_wire::MAX_FRAME_BYTES + 1];
    let out = request(&mut swarm, node_id, framed(&huge), &mut conn).await?;
    ensure!(matches!(out, Outcome::NoAnswer), "oversized frame: {out:?}");

    // 5. A bad signature.
    let mut env =
        pb::Envelope::decode(seal(MessageId::random(&mut rng), b"forged", &mut rng)?.as_slice())?;
    env.signature[0] ^= 0x01;
    let out = request(&mut swarm, node_id, framed(&env.encode_to_vec()), &mut conn).await?;
    ensure!(
        matches!(out, Outcome::Reject(pb::RejectCode::RejectBadSignature)),
        "bad signature: {out:?}"
    );

    // 6. A replay: the same valid envelope twice is stored once, receipted twice.
    let replayed_id = MessageId::random(&mut rng);
    let replayed = seal(replayed_id, b"said once", &mut rng)?;
    for _ in 0..2 {
        let out = request(&mut swarm, node_id, framed(&replayed), &mut conn).await?;
        ensure!(matches!(out, Outcome::Receipt), "replay: {out:?}");
    }

    // 7. A valid message afterwards, on the same connection.
    let final_id = MessageId::random(&mut rng);
    let out = request(
        &mut swarm,
        node_id,
        framed(&seal(final_id, b"still here", &mut rng)?),
        &mut conn,
    )
    .await?;
    ensure!(
        matches!(out, Outcome::Receipt),
        "valid after garbage: {out:?}"
    );

    let after = node.stats();
    ensure!(
        after.rejected_malformed >= before.rejected_malformed + 3,
        "{after:?}"
    );
    ensure!(
        after.rejected_too_large >= before.rejected_too_large + 2,
        "{after:?}"
    );
    ensure!(
        after.rejected_bad_signature == before.rejected_bad_signature + 1,
        "{after:?}"
    );
    ensure!(after.duplicates == before.duplicates + 1, "{after:?}");
    ensure!(after.received == before.received + 2, "{after:?}");

    let inbox = node
        .inbox(InboxQuery {
            peer: Some(me),
            ..Default::default()
        })
        .await?;
    let ids: Vec<MessageId> = inbox.iter().map(|m| MessageId::from(m.id)).collect();
    ensure!(ids == vec![replayed_id, final_id], "inbox: {ids:?}");
    ensure!(inbox[1].body == b"still here");
    net.shutdown().await;
    Ok(())
}
