//! The framing of the libp2p rival: raw bytes behind a `u32` length, in a request-response
//! codec.

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;

use super::MAX_FRAME;

/// A request-response codec for raw bytes: each request and response is a `u32` big-endian
/// length followed by that many bytes, read into one buffer. It is the smallest framing
/// that carries arbitrary payloads; the codecs libp2p ships (CBOR, JSON) serialise typed
/// values and would add encoding work no other system in the comparison does.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytesCodec;

#[async_trait]
impl request_response::Codec for RawBytesCodec {
    type Protocol = StreamProtocol;
    type Request = Bytes;
    type Response = Bytes;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Bytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Bytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response).await
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Bytes> {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is above the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame above the {MAX_FRAME}-byte limit"),
            )
        })?;
    // Two writes, one packet: QUIC stream writes are only buffered here and the connection
    // task sends them together.
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_frames() {
        let runtime = crate::runtime::build().expect("runtime");
        runtime.block_on(async {
            for len in [0usize, 1, 64, 70_000] {
                let mut wire = Vec::new();
                let body = vec![7u8; len];
                write_frame(&mut wire, &body).await.expect("write");
                assert_eq!(wire.len(), 4 + len);
                let read = read_frame(&mut wire.as_slice()).await.expect("read");
                assert_eq!(read.as_ref(), body.as_slice());
            }
            let too_long = (MAX_FRAME as u32 + 1).to_be_bytes();
            let err = read_frame(&mut too_long.as_slice())
                .await
                .expect_err("limit");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }
}
