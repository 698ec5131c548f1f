//! One TCP connection to a broker, pipelined: many requests in flight at once
//! from any number of tasks, answered in any order.
//!
//! Two detached tasks own the socket's two directions:
//!
//! - the **writer** takes whatever frames callers have encoded into a shared
//!   pending buffer and writes them with one `write_all`. Callers encode
//!   synchronously (no allocation once the buffer is warm), and frames queued
//!   while a write is in progress go out together in the next one, so a busy
//!   connection makes one syscall per burst rather than one per request.
//! - the **reader** reads in large chunks, cuts complete frames out of its
//!   buffer (the payload `Bytes` share the chunk's allocation) and completes
//!   the call registered under each response's request id.
//!
//! Both borrow the stream's `RefCell` only inside a single `poll_read` or
//! `poll_write`, never across an `.await`; glommio keeps separate readiness
//! sources for the two directions, so they do not disturb each other.
//!
//! Bounds: at most `max_in_flight_requests` calls are registered or queued
//! at once (a semaphore), so the pending buffer holds at most that many
//! frames; an incoming frame is checked against `max_frame_bytes` before any
//! memory is reserved for it. When the connection fails or the last handle is
//! dropped, every pending call completes with the reason (`Closed` for a
//! clean close, or the broker's own reason when it sent a notice before
//! closing: refused at admission, evicted while idle) — no caller is left
//! waiting.

use std::cell::RefCell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::tls::ClientTls;
use crate::runtime::stream::Stream;
use glommio::sync::Semaphore;
use rustc_hash::FxHashMap;

use super::error::ClientError;
use crate::protocol::wire::{self, FrameKind, Request, Response, FRAME_PREFIX_BYTES};

/// How much the reader asks the socket for at once. Large enough that a
/// burst of small responses costs one syscall, small enough to stay in cache.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// The writer keeps its buffer between writes up to this size; a larger one
/// (after a burst of big produce requests) is shrunk back so an idle
/// connection does not pin megabytes.
const WRITE_BUFFER_RETAIN_BYTES: usize = 1 << 20;

/// Limits and deadlines of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub connect_timeout: Duration,
    /// How long a call waits for its response before failing with
    /// [`ClientError::Timeout`] (calls that long-poll add their wait).
    pub request_timeout: Duration,
    /// Largest frame accepted from (and sent to) the broker.
    pub max_frame_bytes: usize,
    /// Calls registered or queued at once; further calls wait for a slot.
    pub max_in_flight_requests: usize,
    /// TLS to the broker (`None`: plain TCP). The handshake counts against
    /// `connect_timeout`.
    pub tls: Option<ClientTls>,
    /// Log in before the first request (`None`: no login). The login
    /// counts against `request_timeout`, step by step.
    pub sasl: Option<super::SaslCredentials>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: 64 << 20,
            max_in_flight_requests: 1024,
            tls: None,
            sasl: None,
        }
    }
}

/// A pipelined connection. Cheap to clone; the socket closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Connection {
    handle: Rc<Handle>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.handle.shared.peer)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects with default limits and the given connect timeout.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, ClientError> {
        Connection::connect_with(addr, ConnectionOptions { connect_timeout: timeout, ..ConnectionOptions::default() })
            .await
    }

    /// Connects, sets TCP_NODELAY (requests are small and latency matters
    /// more than packet count) and starts the reader and writer tasks.
    /// Must run inside a glommio executor.
    pub async fn connect_with(addr: SocketAddr, options: ConnectionOptions) -> Result<Connection, ClientError> {
        if options.max_in_flight_requests == 0 || options.max_frame_bytes < wire::FRAME_HEAD_BYTES {
            return Err(ClientError::InvalidArgument(format!("connection limits out of range: {options:?}")));
        }
        let connecting = if options.connect_timeout.is_zero() {
            TcpStream::connect(addr).await
        } else {
            TcpStream::connect_timeout(addr, options.connect_timeout).await
        };
        let stream = connecting.map_err(|error| match io::Error::from(error) {
            timed_out if timed_out.kind() == io::ErrorKind::TimedOut => ClientError::Timeout,
            other => ClientError::Io(other),
        })?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let stream = match &options.tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::TlsClient(Box::new(tls.connect(stream, options.connect_timeout).await?)),
        };
        let in_flight = Semaphore::new(options.max_in_flight_requests as u64);
        let shared = Rc::new(Shared {
            peer: addr,
            stream: RefCell::new(stream),
            state: RefCell::new(State::new()),
            in_flight,
            options,
        });
        glommio::spawn_local(read_loop(shared.clone())).detach();
        glommio::spawn_local(write_loop(shared.clone())).detach();
        let connection = Connection { handle: Rc::new(Handle { shared }) };
        if let Some(credentials) = connection.options().sasl.clone() {
            connection.login(&credentials).await?;
        }
        Ok(connection)
    }

    /// Logs in with SASL: SCRAM takes two round trips, PLAIN one; a broker
    /// that asks for more is not following the mechanism.
    async fn login(&self, credentials: &super::SaslCredentials) -> Result<(), ClientError> {
        let (mut login, mut token) = super::sasl::ClientLogin::start(credentials)?;
        for _ in 0..4 {
            let (response, _) = self.call(&super::sasl::request(credentials, token), &[]).await?;
            let answer = super::sasl::answer(response)?;
            let (next, running) =
                if answer.token.is_empty() && answer.done { (Vec::new(), false) } else { login.step(&answer.token)? };
            if answer.done {
                return Ok(());
            }
            if !running && next.is_empty() {
                return Err(ClientError::UnexpectedResponse("the SASL exchange ended without a login".into()));
            }
            token = next;
        }
        Err(ClientError::UnexpectedResponse("the broker's SASL exchange did not end".into()))
    }

    /// Sends `request` with `payload` and waits for its response, up to the
    /// connection's `request_timeout`. `Response::Error` becomes
    /// [`ClientError::Broker`].
    pub async fn call(&self, request: &Request, payload: &[u8]) -> Result<(Response, Bytes), ClientError> {
        self.call_with_timeout(request, payload, self.handle.shared.options.request_timeout).await
    }

    /// Like [`call`](Self::call) with an explicit deadline, for requests the
    /// broker may legitimately hold (long-poll fetch, durable produce).
    pub async fn call_with_timeout(
        &self,
        request: &Request,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Bytes), ClientError> {
        let shared = &self.handle.shared;
        let exchange = async {
            let _slot = shared.in_flight.acquire_permit(1).await.map_err(|_| shared.close_reason())?;
            let (request_id, _) = shared.enqueue(request, payload, true)?;
            // Removes the registration if this future is dropped (timeout,
            // cancelled caller): a late response is then simply discarded.
            let _registered = Registration { shared, request_id };
            poll_fn(|cx| shared.poll_response(request_id, cx)).await
        };
        match with_timeout(timeout, exchange).await? {
            (Response::Error(error), _) => Err(ClientError::Broker { code: error.code, message: error.message }),
            answered => Ok(answered),
        }
    }

    /// Sends a request that gets no response (produce with acks = none).
    /// Returns once the frame has been handed to the socket, so a fast sender
    /// is slowed to the socket's pace instead of queueing without bound.
    pub async fn send_only(&self, request: &Request, payload: &[u8]) -> Result<(), ClientError> {
        let shared = &self.handle.shared;
        let send = async {
            let _slot = shared.in_flight.acquire_permit(1).await.map_err(|_| shared.close_reason())?;
            let (_, generation) = shared.enqueue(request, payload, false)?;
            poll_fn(|cx| shared.poll_written(generation, cx)).await
        };
        with_timeout(shared.options.request_timeout, send).await
    }

    /// Whether the connection has failed or been closed; a closed connection
    /// never recovers, make a new one.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.state.borrow().closed.is_some()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.handle.shared.peer
    }

    pub fn options(&self) -> &ConnectionOptions {
        &self.handle.shared.options
    }

    /// Closes the connection now; pending calls fail with
    /// [`ClientError::Closed`].
    pub fn close(&self) {
        self.handle.shared.close(ClientError::Closed);
    }
}

/// Runs `work`, failing with [`ClientError::Timeout`] after `timeout`.
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    futures_lite::future::or(work, async {
        glommio::timer::sleep(timeout).await;
        Err(ClientError::Timeout)
    })
    .await
}

/// Owned by the user-facing clones only (the tasks hold `Shared`), so its
/// drop means no caller is left: stop the tasks, which releases the socket.
struct Handle {
    shared: Rc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(ClientError::Closed);
    }
}

struct Shared {
    peer: SocketAddr,
    /// Borrowed only inside one `poll_read` / `poll_write`.
    stream: RefCell<Stream>,
    state: RefCell<State>,
    /// One unit per call registered or frame queued.
    in_flight: Semaphore,
    options: ConnectionOptions,
}

struct State {
    next_request_id: u32,
    calls: FxHashMap<u32, CallSlot>,
    /// Frames encoded by callers, not yet taken by the writer.
    pending: Vec<u8>,
    /// The write number the bytes in `pending` will go out in.
    pending_generation: u64,
    /// Every write numbered up to this one has completed.
    written_generation: u64,
    /// The writer task, parked waiting for frames or for a close.
    writer: Option<Waker>,
    /// The reader task, parked on the socket.
    reader: Option<Waker>,
    /// `send_only` callers waiting for their write to complete.
    write_waiters: Vec<Waker>,
    /// Why the connection closed; `None` while it is open.
    closed: Option<ClientError>,
}

enum CallSlot {
    Waiting(Option<Waker>),
    Done(Result<(Response, Bytes), ClientError>),
}

impl State {
    fn new() -> State {
        State {
            next_request_id: 0,
            calls: FxHashMap::default(),
            pending: Vec::new(),
            pending_generation: 1,
            written_generation: 0,
            writer: None,
            reader: None,
            write_waiters: Vec::new(),
            closed: None,
        }
    }

    /// The next request id not in use. Ids wrap after 2^32 calls; the
    /// semaphore bounds the calls in use far below that, so the loop ends.
    fn allocate_request_id(&mut self) -> u32 {
        loop {
            let id = self.next_request_id;
            self.next_request_id = self.next_request_id.wrapping_add(1);
            if !self.calls.contains_key(&id) {
                return id;
            }
        }
    }
}

impl Shared {
    fn close_reason(&self) -> ClientError {
        self.state.borrow().closed.clone().unwrap_or(ClientError::Closed)
    }

    /// Encodes a request frame into the pending buffer and wakes the writer.
    /// Returns the request id and the write number the frame goes out in.
    fn enqueue(&self, request: &Request, payload: &[u8], expect_response: bool) -> Result<(u32, u64), ClientError> {
        let max_frame_bytes = self.options.max_frame_bytes;
        if payload.len() > max_frame_bytes {
            return Err(frame_too_large(payload.len(), max_frame_bytes));
        }
        let mut state = self.state.borrow_mut();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let request_id = state.allocate_request_id();
        let start = state.pending.len();
        if let Err(error) = wire::encode_frame(&mut state.pending, FrameKind::Request, request_id, request, payload) {
            // encode_frame may have lost the frames queued before this one,
            // and their callers would never hear back: fail them all.
            drop(state);
            self.close(ClientError::Wire(error.clone()));
            return Err(ClientError::Wire(error));
        }
        let frame_bytes = state.pending.len() - start - FRAME_PREFIX_BYTES;
        if frame_bytes > max_frame_bytes {
            state.pending.truncate(start);
            return Err(frame_too_large(frame_bytes, max_frame_bytes));
        }
        if expect_response {
            state.calls.insert(request_id, CallSlot::Waiting(None));
        }
        let generation = state.pending_generation;
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok((request_id, generation))
    }

    fn poll_response(&self, request_id: u32, cx: &mut Context<'_>) -> Poll<Result<(Response, Bytes), ClientError>> {
        let mut state = self.state.borrow_mut();
        match state.calls.get_mut(&request_id) {
            Some(CallSlot::Waiting(waker)) => {
                if !waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Some(CallSlot::Done(_)) => match state.calls.remove(&request_id) {
                Some(CallSlot::Done(result)) => Poll::Ready(result),
                _ => Poll::Ready(Err(ClientError::Closed)),
            },
            // Registration is removed only by the caller itself or after the
            // result was taken, so this is a caller polling after completion.
            None => Poll::Ready(Err(ClientError::Closed)),
        }
    }

    fn poll_written(&self, generation: u64, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let mut state = self.state.borrow_mut();
        if state.written_generation >= generation {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = &state.closed {
            return Poll::Ready(Err(reason.clone()));
        }
        state.write_waiters.push(cx.waker().clone());
        Poll::Pending
    }

    /// Hands the writer everything pending (swapping buffers, so neither side
    /// copies), or `None` once the connection is closed.
    fn poll_take_pending(&self, out: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut state = self.state.borrow_mut();
        if state.closed.is_some() {
            return Poll::Ready(None);
        }
        if state.pending.is_empty() {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        std::mem::swap(out, &mut state.pending);
        let generation = state.pending_generation;
        state.pending_generation += 1;
        Poll::Ready(Some(generation))
    }

    /// Ready (with the reason) once the connection is closed. Used by the
    /// writer while it writes, when its waker slot is otherwise unused.
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let mut state = self.state.borrow_mut();
        match &state.closed {
            Some(reason) => Poll::Ready(Err(reason.clone())),
            None => {
                state.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn mark_written(&self, generation: u64) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.written_generation = generation;
            std::mem::take(&mut state.write_waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Reads into the spare space of `buf`; `Ok(0)` at end of stream or once
    /// the connection is closed from this side.
    fn poll_read_into(&self, buf: &mut ReadBuffer, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.state.borrow().closed.is_some() {
            return Poll::Ready(Ok(0));
        }
        let spare = buf.spare();
        let polled = Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, spare);
        match polled {
            Poll::Ready(Ok(read)) => {
                buf.filled += read;
                Poll::Ready(Ok(read))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                // Kept so that `close` can stop a reader parked on the socket.
                self.state.borrow_mut().reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Completes the call waiting for `request_id`; a response nobody waits
    /// for any more (the caller timed out or gave up) is dropped.
    fn deliver(&self, request_id: u32, result: Result<(Response, Bytes), ClientError>) {
        let waker = {
            let mut state = self.state.borrow_mut();
            match state.calls.get_mut(&request_id) {
                Some(slot @ CallSlot::Waiting(_)) => match std::mem::replace(slot, CallSlot::Done(result)) {
                    CallSlot::Waiting(waker) => waker,
                    CallSlot::Done(_) => None,
                },
                _ => {
                    tracing::debug!(peer = %self.peer, request_id, "dropping a response nobody waits for");
                    None
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Marks the connection closed and completes everything waiting on it
    /// with `reason`. Idempotent: the first reason wins.
    fn close(&self, reason: ClientError) {
        let mut wakers = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            if state.closed.is_some() {
                return;
            }
            for slot in state.calls.values_mut() {
                if let CallSlot::Waiting(waker) = std::mem::replace(slot, CallSlot::Done(Err(reason.clone()))) {
                    wakers.extend(waker);
                }
            }
            wakers.extend(state.writer.take());
            wakers.extend(state.reader.take());
            wakers.append(&mut state.write_waiters);
            state.pending = Vec::new();
            state.closed = Some(reason);
        }
        // Callers still waiting for a slot get an error instead of a slot.
        self.in_flight.close();
        wakers.into_iter().for_each(Waker::wake);
    }
}

fn frame_too_large(len: usize, max: usize) -> ClientError {
    ClientError::InvalidArgument(format!("request of {len} bytes exceeds the frame limit of {max} bytes"))
}

/// Removes a call's registration when the calling future ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    request_id: u32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.state.borrow_mut().calls.remove(&self.request_id);
    }
}

/// The stream's write half as seen by the writer task: borrows the stream
/// for the duration of one poll only.
struct WriteHalf<'a>(&'a RefCell<Stream>);

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

async fn write_loop(shared: Rc<Shared>) {
    let mut out = Vec::new();
    while let Some(generation) = poll_fn(|cx| shared.poll_take_pending(&mut out, cx)).await {
        // Raced against a close so that a write stuck on a peer that stopped
        // reading does not keep the task, and with it the socket, alive.
        let write = async { WriteHalf(&shared.stream).write_all(&out).await.map_err(ClientError::Io) };
        if let Err(error) = futures_lite::future::or(write, poll_fn(|cx| shared.poll_closed(cx))).await {
            shared.close(error);
            return;
        }
        out.clear();
        out.shrink_to(WRITE_BUFFER_RETAIN_BYTES);
        shared.mark_written(generation);
    }
}

async fn read_loop(shared: Rc<Shared>) {
    let reason = match read_frames(&shared).await {
        Ok(()) => ClientError::Closed,
        // The broker said why it closed the connection: every call on it
        // reports that, so it is not worth a warning of its own.
        Err(error @ ClientError::Broker { .. }) => {
            tracing::debug!(peer = %shared.peer, %error, "the broker closed the connection");
            error
        }
        Err(error) => {
            tracing::warn!(peer = %shared.peer, %error, "connection failed");
            error
        }
    };
    shared.close(reason);
}

/// Reads frames until end of stream (`Ok`) or a failure that leaves the
/// stream unusable (`Err`).
async fn read_frames(shared: &Shared) -> Result<(), ClientError> {
    let mut buf = ReadBuffer::new();
    loop {
        let wanted = loop {
            match buf.next_frame(shared.options.max_frame_bytes)? {
                NextFrame::Frame(frame) => deliver_frame(shared, frame)?,
                NextFrame::NeedBytes(total) => break total,
            }
        };
        buf.reserve_for(wanted);
        let read = poll_fn(|cx| shared.poll_read_into(&mut buf, cx)).await?;
        if read == 0 {
            return Ok(());
        }
    }
}

/// Decodes one response frame body and completes its call. A header that
/// does not decode fails only that call (a newer broker may send a response
/// this client does not know); a broken frame structure ends the connection.
fn deliver_frame(shared: &Shared, body: BytesMut) -> Result<(), ClientError> {
    let (head, header, payload) = wire::split_frame(body)?;
    match head.kind {
        FrameKind::Response => {}
        FrameKind::Request => return Err(ClientError::UnexpectedResponse("the broker sent a request frame".into())),
        // The broker says why it is closing the connection: that reason,
        // not "connection closed", is what every pending and later call
        // on this connection reports.
        FrameKind::Notice => {
            return Err(match wire::decode_header::<Response>(&header) {
                Ok(Response::Error(notice)) => ClientError::broker(notice.code, notice.message),
                Ok(other) => ClientError::UnexpectedResponse(format!("a notice carrying {other:?}")),
                Err(error) => ClientError::Wire(error),
            });
        }
    }
    let result = wire::decode_header::<Response>(&header).map(|response| (response, payload.freeze()));
    shared.deliver(head.request_id, result.map_err(ClientError::Wire));
    Ok(())
}

enum NextFrame {
    /// The body of one frame, after its length prefix.
    Frame(BytesMut),
    /// This many bytes must be buffered before the next frame is complete.
    NeedBytes(usize),
}

/// The reader's buffer: `buf[..filled]` holds received bytes; the rest is
/// initialized spare space to read into (kept initialized so reads need no
/// `unsafe` and no re-zeroing).
struct ReadBuffer {
    buf: BytesMut,
    filled: usize,
}

impl ReadBuffer {
    fn new() -> ReadBuffer {
        ReadBuffer { buf: BytesMut::new(), filled: 0 }
    }

    /// Cuts the next complete frame off the front, or says how many bytes it
    /// needs. The length is checked against the limit before the caller
    /// reserves anything for it.
    fn next_frame(&mut self, max_frame_bytes: usize) -> Result<NextFrame, ClientError> {
        if self.filled < FRAME_PREFIX_BYTES {
            return Ok(NextFrame::NeedBytes(FRAME_PREFIX_BYTES));
        }
        // Invariant: filled <= buf.len(), so the prefix is in bounds.
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..FRAME_PREFIX_BYTES]);
        // A TLS record (an alert, or a handshake) where a frame should be:
        // the broker speaks TLS and this connection does not.
        if matches!(prefix, [0x15 | 0x16, 0x03, 0x00..=0x04, _]) && self.filled >= FRAME_PREFIX_BYTES {
            let message = "the broker answered with TLS: connect with TLS (ClientOptions::tls, --tls-ca)";
            return Err(ClientError::Wire(wire::WireError::Header(message.into())));
        }
        let total = FRAME_PREFIX_BYTES + wire::frame_len(prefix, max_frame_bytes)?;
        if self.filled < total {
            return Ok(NextFrame::NeedBytes(total));
        }
        let mut frame = self.buf.split_to(total);
        self.filled -= total;
        frame.advance(FRAME_PREFIX_BYTES);
        Ok(NextFrame::Frame(frame))
    }

    /// Makes room for at least `total` buffered bytes and a reasonable read.
    fn reserve_for(&mut self, total: usize) {
        let wanted = total.max(self.filled + READ_CHUNK_BYTES);
        if self.buf.len() >= wanted {
            return;
        }
        // Only the received bytes are worth keeping when the buffer moves.
        self.buf.truncate(self.filled);
        self.buf.reserve(wanted - self.filled);
        let capacity = self.buf.capacity();
        self.buf.resize(capacity, 0);
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_broker::{self, executor};
    use crate::protocol::wire::{ErrorCode, ErrorResponse};
    use futures_lite::AsyncReadExt;
    use glommio::net::TcpListener;

    fn ping_frame(request_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_frame(&mut out, FrameKind::Response, request_id, &Response::Pong, b"").unwrap();
        out
    }

    /// Reads one request frame off a raw server-side stream.
    async fn read_request(stream: &mut TcpStream) -> (u32, Request) {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await.unwrap();
        let len = wire::frame_len(prefix, 1 << 20).unwrap();
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        let (head, header, _) = wire::split_frame(BytesMut::from(&body[..])).unwrap();
        (head.request_id, wire::decode_header(&header).unwrap())
    }

    #[test]
    fn responses_complete_out_of_order_and_a_close_fails_the_rest() {
        executor().run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = glommio::spawn_local(async move {
                let mut stream = listener.accept().await.unwrap();
                let mut ids = Vec::new();
                for _ in 0..3 {
                    let (id, request) = read_request(&mut stream).await;
                    assert_eq!(request, Request::Ping);
                    ids.push(id);
                }
                // Answer the third, then the first; never the second.
                stream.write_all(&ping_frame(ids[2])).await.unwrap();
                stream.write_all(&ping_frame(ids[0])).await.unwrap();
                ids
            });
            let connection = Connection::connect(addr, Duration::from_secs(5)).await.unwrap();
            let calls: Vec<_> = (0..3)
                .map(|_| {
                    let connection = connection.clone();
                    glommio::spawn_local(async move { connection.call(&Request::Ping, b"").await })
                })
                .collect();
            let ids = server.await;
            assert_eq!(ids.len(), 3);
            let mut results = Vec::new();
            for call in calls {
                results.push(call.await);
            }
            let answered = results.iter().filter(|result| matches!(result, Ok((Response::Pong, _)))).count();
            let closed = results.iter().filter(|result| matches!(result, Err(ClientError::Closed))).count();
            assert_eq!((answered, closed), (2, 1), "{results:?}");
            assert!(connection.is_closed());
            assert!(matches!(connection.call(&Request::Ping, b"").await, Err(ClientError::Closed)));
        });
    }

    #[test]
    fn broker_errors_timeouts_and_oversized_frames_are_reported() {
        executor().run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = glommio::spawn_local(async move {
                let mut stream = listener.accept().await.unwrap();
                let (first, _) = read_request(&mut stream).await;
                let error = Response::Error(ErrorResponse { code: ErrorCode::SHUTTING_DOWN, message: "bye".into() });
                let mut out = Vec::new();
                wire::encode_frame(&mut out, FrameKind::Response, first, &error, b"").unwrap();
                stream.write_all(&out).await.unwrap();
                // The second request times out on the client; then a frame
                // larger than the client's limit ends the connection.
                let _ = read_request(&mut stream).await;
                let _ = read_request(&mut stream).await;
                stream.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
                stream
            });
            let options = ConnectionOptions {
                request_timeout: Duration::from_millis(200),
                max_frame_bytes: 1 << 16,
                ..ConnectionOptions::default()
            };
            let connection = Connection::connect_with(addr, options).await.unwrap();
            match connection.call(&Request::Ping, b"").await {
                Err(ClientError::Broker { code, message }) => {
                    assert_eq!((code, message.as_str()), (ErrorCode::SHUTTING_DOWN, "bye"))
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(connection.call(&Request::Ping, b"").await, Err(ClientError::Timeout)));
            let pending = connection.call_with_timeout(&Request::Ping, b"", Duration::from_secs(30)).await;
            assert!(matches!(pending, Err(ClientError::Wire(wire::WireError::FrameTooLarge { .. }))), "{pending:?}");
            assert!(connection.is_closed());
            drop(server.await);
        });
    }

    #[test]
    fn send_only_completes_once_written_and_large_payloads_round_trip() {
        executor().run(async {
            let broker = fake_broker::FakeBroker::start(&[("t", 1)]);
            let options = ConnectionOptions { max_frame_bytes: 1 << 20, ..ConnectionOptions::default() };
            let connection = Connection::connect_with(broker.addr(), options).await.unwrap();
            connection.send_only(&Request::Ping, b"").await.unwrap();
            // A payload several read chunks long exercises frame reassembly.
            let payload = vec![7u8; 3 * READ_CHUNK_BYTES + 5];
            let request = Request::Metadata(wire::MetadataRequest { topics: None });
            let (response, echoed) = connection.call(&request, &payload).await.unwrap();
            assert!(matches!(response, Response::Metadata(_)));
            assert_eq!(echoed.len(), payload.len());
            assert!(echoed.iter().all(|byte| *byte == 7));
            let too_big = vec![0u8; (1 << 20) + 1];
            assert!(matches!(connection.call(&Request::Ping, &too_big).await, Err(ClientError::InvalidArgument(_))));
            assert!(!connection.is_closed());
        });
    }

    #[test]
    fn frames_are_cut_from_a_byte_stream() {
        let mut stream = Vec::new();
        stream.extend(ping_frame(1));
        stream.extend(ping_frame(2));
        let mut buf = ReadBuffer::new();
        buf.reserve_for(stream.len());
        buf.spare()[..stream.len() - 1].copy_from_slice(&stream[..stream.len() - 1]);
        buf.filled = stream.len() - 1;
        let NextFrame::Frame(first) = buf.next_frame(1 << 20).unwrap() else { panic!("first frame incomplete") };
        assert_eq!(wire::split_frame(first).unwrap().0.request_id, 1);
        let NextFrame::NeedBytes(total) = buf.next_frame(1 << 20).unwrap() else { panic!("second frame is partial") };
        assert_eq!(total, stream.len() / 2);
        let mut oversized = ReadBuffer::new();
        oversized.reserve_for(4);
        oversized.spare()[..4].copy_from_slice(&(1u32 << 30).to_be_bytes());
        oversized.filled = 4;
        assert!(matches!(oversized.next_frame(1 << 20), Err(ClientError::Wire(_))));
    }
}
