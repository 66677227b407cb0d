//! A request-response codec for single length-prefixed frames.
//!
//! A frame is an unsigned LEB128 varint length followed by that many bytes.
//! The length is checked against `MAX_FRAME_BYTES` before anything is
//! allocated, so a peer cannot make us reserve memory by announcing a large
//! frame.

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use peercomm_wire::{self as frame, limits::MAX_FRAME_BYTES};

use crate::stats::{bump, Stats};

/// Frames in, frames out: requests and responses are raw frame payloads.
///
/// libp2p drops a request that fails to read without telling the
/// behaviour, so the codec itself counts such requests (when given the
/// node's counters).
#[derive(Debug, Clone, Default)]
pub struct FrameCodec {
    stats: Option<Arc<Stats>>,
}

impl FrameCodec {
    /// A codec that counts unreadable inbound requests in `stats`.
    pub(crate) fn counting(stats: Arc<Stats>) -> Self {
        Self { stats: Some(stats) }
    }

    fn count_failure(&self, error: &io::Error) {
        let Some(stats) = &self.stats else { return };
        match error.kind() {
            io::ErrorKind::InvalidData if error.to_string().contains("exceeds") => {
                bump(&stats.rejected_too_large)
            }
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                bump(&stats.rejected_malformed)
            }
            _ => bump(&stats.inbound_stream_failures),
        }
    }
}

/// Reads one frame, refusing one longer than `MAX_FRAME_BYTES`.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 10];
    let mut used = 0;
    let len = loop {
        if used == prefix.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame length varint too long",
            ));
        }
        io.read_exact(&mut prefix[used..used + 1]).await?;
        used += 1;
        match frame::decode_frame_len(&prefix[..used]) {
            Ok(Some((len, _))) => break len,
            Ok(None) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    };
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", payload.len()),
        ));
    }
    let framed = frame::encode_frame(payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    io.write_all(&framed).await?;
    io.close().await
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let result = read_frame(io).await;
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_frame_round_trips() {
        let mut buf = Vec::new();
        block_on(write_frame(&mut Cursor::new(&mut buf), b"hello")).unwrap();
        let got = block_on(read_frame(&mut Cursor::new(buf))).unwrap();
        assert_eq!(got, b"hello");
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut bytes = Vec::new();
        // varint for MAX_FRAME_BYTES + 1 followed by nothing
        let mut n = MAX_FRAME_BYTES as u64 + 1;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                bytes.push(b);
                break;
            }
            bytes.push(b | 0x80);
        }
        let err = block_on(read_frame(&mut Cursor::new(bytes))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let mut bytes = frame::encode_frame(b"hello world").unwrap();
        bytes.truncate(5);
        assert!(block_on(read_frame(&mut Cursor::new(bytes))).is_err());
    }

    #[test]
    fn an_endless_varint_is_refused() {
        let bytes = vec![0xffu8; 64];
        assert!(block_on(read_frame(&mut Cursor::new(bytes))).is_err());
    }
}
