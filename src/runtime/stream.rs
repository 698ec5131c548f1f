//! A socket a connection reads and writes: plain TCP or TLS over it, on
//! either side, behind one `AsyncRead + AsyncWrite`.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, MsgFlags};

/// Buffers one `sendmsg` takes at most (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// A connection's socket: plain TCP, or TLS over it once the handshake is
/// done (the broker's side or a client's).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => plain_write_vectored(stream, cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
            Stream::TlsClient(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::TlsClient(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_close(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Stream::TlsClient(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// Writes as much of `bufs` as the socket takes now, with one non-blocking
/// `sendmsg`: glommio 0.9.0's `TcpStream` would write only the first buffer.
/// Its own `poll_write` sends the same way (a non-blocking send first);
/// when the socket is full, that `poll_write` of the first buffer registers
/// the wake-up for when it has room, or writes if room appeared meanwhile.
fn plain_write_vectored(stream: &mut TcpStream, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
    let bufs = &bufs[..bufs.len().min(IOV_MAX)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        match sendmsg::<()>(stream.as_raw_fd(), bufs, &[], flags, None) {
            Ok(written) => return Poll::Ready(Ok(written)),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &buf[..]);
                return Pin::new(stream).poll_write(cx, first);
            }
            Err(errno) => return Poll::Ready(Err(io::Error::from(errno))),
        }
    }
}
