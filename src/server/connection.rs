//! Accepting connections and serving one: admission, framing, limits,
//! pipelining.
//!
//! Each connection has a reader (this task) and a writer task sharing the
//! socket. The reader takes frames off the wire, checking every length
//! before allocating, and hands each request to a task of its own, so many
//! requests are in flight per connection and responses go out as they
//! complete, tagged with their request id. The writer coalesces queued
//! responses into few writes.
//!
//! Bounds: bytes of requests in flight per connection and per shard (see
//! `budget.rs`: reserved as a frame's bytes arrive, held until its response
//! is written; when a budget is spent the reader stops reading the socket,
//! which slows the producer down through TCP), requests in flight per
//! connection, connections per shard and per client address (see
//! `admission.rs`: a full shard evicts its longest-idle connection before
//! it refuses anyone, and a refused client is told why in a notice frame),
//! an idle deadline between frames and a deadline for each frame once
//! started (a byte-a-second client is cut off).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Gate, Semaphore, StaticPermit};
use glommio::TaskQueueHandle;
use tracing::Instrument;

use crate::protocol::chunks::Chunks;
use crate::protocol::types::AckLevel;
use crate::protocol::wire::{
    self, decode_header, encode_frame_head, ErrorCode, ErrorResponse, FrameKind, Request, Response, WireError,
    FRAME_HEAD_BYTES, FRAME_PREFIX_BYTES,
};
use crate::runtime::notify::Notify;
use crate::runtime::stream::Stream;
use crate::shard::{Counters, Shard};

use super::admission::{Admission, ConnectionTable, Presence};
use super::budget::{Arrival, ByteBudget, Hold};
use super::kafka::{self, KafkaEndpoints};
use super::limits::Limits;
use super::login::{KafkaGate, LoginGate};
use super::sasl::AuthSetup;
use super::warn_limit::WarnLimit;
use super::{dispatch, Stopping};

/// Requests in flight on one connection (pipelining depth).
const REQUESTS_IN_FLIGHT_MAX: u64 = 1024;
/// The writer takes queued responses for one vectored write until they
/// hold this many pieces (a head, or a piece of fetch data)...
const WRITE_PIECES_MAX: usize = 512;
/// ...or this many bytes.
const WRITE_BYTES_MAX: usize = 4 << 20;
/// A frame's body is read in pieces, and the budgets are charged for each
/// piece once it has arrived. The first piece is at most this large, and so
/// is the memory touched ahead of the bytes for a client that announces a
/// frame and stalls; a frame up to this size (most requests) takes one read.
/// It is also the size above which a frame still arriving counts as large
/// (see `budget.rs`).
const FRAME_READ_BYTES_FIRST: usize = 256 << 10;
/// Later pieces grow with what has arrived (doubling), up to this: a large
/// frame that streams in takes few reads, and what is touched ahead is never
/// more than what has already arrived and been charged.
const FRAME_READ_BYTES_MAX: usize = 1 << 20;
/// Refused connections being told why at once; beyond this a refused
/// connection is closed without a word, so a flood costs nothing to refuse.
const REFUSALS_IN_FLIGHT_MAX: u64 = 64;
/// How long a refused client is given to read its notice before the socket
/// is closed (closing at once could reset the connection and lose it).
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Why a connection stops reading (logged at debug level when it closes).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Closed {
    #[error("waiting for a frame: {0}")]
    Idle(io::Error),
    #[error("the peer closed the connection inside a {len}-byte frame")]
    MidFrame { len: usize },
    #[error("reading a {len}-byte frame: {source}")]
    Read { len: usize, source: io::Error },
    #[error("a {len}-byte frame did not arrive within {timeout:?}")]
    FrameDeadline { len: usize, timeout: Duration },
    #[error("stopped while waiting for budget")]
    Stopped,
    #[error("the Kafka API is off")]
    KafkaOff,
    /// A native frame length that cannot be framed (answered, then closed).
    #[error("{0}")]
    Unframeable(WireError),
    /// A Kafka frame that cannot be parsed or framed: a Kafka broker
    /// cannot shape an answer either, so the connection closes.
    #[error("{0}")]
    KafkaMalformed(String),
    #[error("a request before the SASL login: {0}")]
    LoginRequired(String),
    #[error("the SASL login failed")]
    LoginFailed,
}

/// Which protocol a listener speaks. Both use the same framing (a 4-byte
/// length), admission and byte budgets; they differ in what a frame holds
/// and in response order (Kafka answers in request order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Native,
    Kafka,
}

/// The per-shard part of the server: accept loops share it.
pub(crate) struct Server {
    shard: Rc<Shard>,
    limits: Limits,
    stopping: Rc<Stopping>,
    gate: Rc<Gate>,
    queue: TaskQueueHandle,
    shard_budget: Rc<ByteBudget>,
    connections: RefCell<ConnectionTable>,
    /// Client errors logged as warnings, a few per window.
    warnings: WarnLimit,
    /// Evict signals of admitted connections, by table id.
    evictions: RefCell<rustc_hash::FxHashMap<u64, Rc<Stopping>>>,
    refusals: Rc<Semaphore>,
    /// Where Kafka clients reach the broker (when the Kafka API is on).
    kafka: Option<KafkaEndpoints>,
    tls: TlsSetup,
    auth: Rc<AuthSetup>,
}

/// Which listeners take TLS, and how.
pub(crate) struct TlsSetup {
    /// `None`: no certificate configured, every listener is plain.
    pub acceptor: Option<futures_rustls::TlsAcceptor>,
    pub native: bool,
    pub kafka: bool,
}

impl TlsSetup {
    fn for_protocol(&self, protocol: Protocol) -> Option<&futures_rustls::TlsAcceptor> {
        let wanted = match protocol {
            Protocol::Native => self.native,
            Protocol::Kafka => self.kafka,
        };
        self.acceptor.as_ref().filter(|_| wanted)
    }
}

impl Server {
    pub(crate) fn new(
        shard: Rc<Shard>,
        limits: Limits,
        stopping: Rc<Stopping>,
        gate: Rc<Gate>,
        queue: TaskQueueHandle,
        kafka: Option<KafkaEndpoints>,
        (tls, auth): (TlsSetup, AuthSetup),
    ) -> Server {
        let counters = shard.counters();
        counters.inflight_bytes_max.set(limits.inflight_bytes_per_shard as u64);
        let shard_budget =
            ByteBudget::with_gauge(limits.inflight_bytes_per_shard as u64, Rc::clone(&counters.inflight_bytes));
        Server {
            shard,
            limits,
            stopping,
            gate,
            queue,
            shard_budget,
            connections: RefCell::new(ConnectionTable::default()),
            warnings: WarnLimit::new(Instant::now()),
            evictions: RefCell::new(rustc_hash::FxHashMap::default()),
            refusals: Rc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX)),
            kafka,
            tls,
            auth: Rc::new(auth),
        }
    }

    /// Accepts until the shard stops, admitting or refusing each connection.
    pub(crate) async fn accept_loop(self: Rc<Self>, listener: TcpListener, protocol: Protocol) {
        loop {
            let accepted = future::or(async { Some(listener.accept().await) }, async {
                self.stopping.wait().await;
                None
            })
            .await;
            let stream = match accepted {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(peer) = stream.peer_addr() else { continue };
            let now = Instant::now();
            let admission = self.connections.borrow().admit(peer.ip(), now, self.limits.admission(), self.shard.id().0);
            match admission {
                Admission::Refuse(reason) => {
                    self.refuse(stream, reason, protocol);
                    continue;
                }
                Admission::EvictThenAdmit(id) => self.evict(id),
                Admission::Admit => {}
            }
            if !self.admit(stream, peer.ip(), now, protocol) {
                return;
            }
        }
    }

    /// Starts serving an admitted connection; false once the shard stops.
    fn admit(self: &Rc<Self>, stream: TcpStream, ip: IpAddr, now: Instant, protocol: Protocol) -> bool {
        let counters = self.shard.counters();
        Counters::add(&counters.connections_accepted, 1);
        // Counted here, not when the task first runs, so a burst of
        // accepts cannot overshoot the limit.
        Counters::add(&counters.connections_open, 1);
        let requests = Rc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        let presence = Rc::new(Presence::new(ip, now, Rc::clone(&requests)));
        let id = self.connections.borrow_mut().insert(Rc::clone(&presence));
        let evicted = Rc::new(Stopping::default());
        self.evictions.borrow_mut().insert(id, Rc::clone(&evicted));
        let server = Rc::clone(self);
        let peer = stream.peer_addr().map_or_else(|_| ip.to_string(), |peer| peer.to_string());
        let span = tracing::info_span!("conn", conn = id, %peer);
        let serve = async move {
            Rc::clone(&server).serve(stream, requests, presence, &evicted, protocol).await;
            server.connections.borrow_mut().remove(id);
            server.evictions.borrow_mut().remove(&id);
        }
        .instrument(span);
        match self.gate.spawn_into(serve, self.queue) {
            Ok(task) => {
                drop(task.detach());
                true
            }
            Err(_) => false,
        }
    }

    /// Closes an idle connection to make room: it leaves the table now, and
    /// its task tells the client why and closes.
    fn evict(&self, id: u64) {
        self.connections.borrow_mut().remove(id);
        if let Some(evicted) = self.evictions.borrow_mut().remove(&id) {
            Counters::add(&self.shard.counters().connections_evicted, 1);
            evicted.stop();
        }
    }

    /// Tells a client it is not admitted, then closes its connection. At
    /// most `REFUSALS_IN_FLIGHT_MAX` at a time get the notice; the rest of
    /// a flood is closed at once.
    fn refuse(&self, stream: TcpStream, reason: String, protocol: Protocol) {
        Counters::add(&self.shard.counters().connections_refused, 1);
        tracing::debug!(%reason, "refusing a connection");
        // Kafka has no way to say why, and a TLS client cannot read a
        // plain notice: the connection just closes.
        if protocol == Protocol::Kafka || self.tls.for_protocol(protocol).is_some() {
            return;
        }
        let Ok(permit) = self.refusals.try_acquire_static_permit(1) else { return };
        let notice = notice_frame(ErrorCode::CONNECTION_REFUSED, reason);
        let task = async move {
            let mut stream = stream;
            let _ = glommio::timer::timeout(REFUSAL_LINGER, async {
                stream.write_all(&notice).await?;
                stream.flush().await?;
                stream.shutdown(std::net::Shutdown::Write).await?;
                // Wait for the client to close, so the notice is not lost
                // to a reset; what it sends meanwhile is discarded.
                let mut discard = [0u8; 4096];
                while stream.read(&mut discard).await? > 0 {}
                Ok(())
            })
            .await;
            drop(permit);
        };
        match glommio::spawn_local_into(task, self.queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => tracing::error!(%error, "could not start a refusal task"),
        }
    }

    async fn serve(
        self: Rc<Self>,
        stream: TcpStream,
        requests: Rc<Semaphore>,
        presence: Rc<Presence>,
        evicted: &Stopping,
        protocol: Protocol,
    ) {
        let counters = self.shard.counters();
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay");
        }
        // The handshake must finish within the frame deadline: a client that
        // starts one and stalls holds its connection slot no longer than a
        // client that starts a frame and stalls.
        // With mutual TLS, who the client certificate names.
        let mut certificate_user = None;
        let stream = match self.tls.for_protocol(protocol) {
            None => Stream::Plain(stream),
            Some(acceptor) => {
                let handshake =
                    glommio::timer::timeout(self.limits.frame_timeout, async { Ok(acceptor.accept(stream).await) })
                        .await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let peer_certificates = tls.get_ref().1.peer_certificates();
                        certificate_user =
                            peer_certificates.and_then(|chain| chain.first()).and_then(super::tls::certificate_user);
                        Stream::Tls(Box::new(tls))
                    }
                    Ok(Err(error)) => {
                        Counters::add(&counters.tls_handshake_failures, 1);
                        tracing::debug!(%error, "TLS handshake failed");
                        counters.connections_open.set(counters.connections_open.get() - 1);
                        return;
                    }
                    Err(_) => {
                        Counters::add(&counters.tls_handshake_failures, 1);
                        tracing::debug!(timeout = ?self.limits.frame_timeout, "TLS handshake did not finish in time");
                        counters.connections_open.set(counters.connections_open.get() - 1);
                        return;
                    }
                }
            }
        };
        let required = match protocol {
            Protocol::Native => self.auth.native,
            Protocol::Kafka => self.auth.kafka,
        };
        let tls = matches!(stream, Stream::Tls(_));
        let login = LoginGate::new(required, tls, Rc::clone(&self.auth), presence.ip, certificate_user);
        let connection = Rc::new(Connection {
            login,
            stream: SharedStream(RefCell::new(stream)),
            queue: RefCell::new(VecDeque::new()),
            queued: Notify::default(),
            closing: Cell::new(false),
            dead: Stopping::default(),
            write_timeout: self.limits.request_timeout,
            requests,
            budget: ByteBudget::new(self.limits.inflight_bytes_per_connection as u64),
            presence,
            protocol,
            order: ResponseOrder::default(),
            counters: self.shard.shared_counters(),
        });
        let writer = glommio::spawn_local(Rc::clone(&connection).write_loop());
        match self.read_loop(&connection, evicted).await {
            Ok(()) if evicted.is_stopped() && protocol == Protocol::Native => {
                let reason = format!(
                    "closed to make room: idle for over {} ms while shard {} was full",
                    self.limits.evict_idle_after.as_millis(),
                    self.shard.id()
                );
                connection.notice(ErrorCode::CONNECTION_REFUSED, reason);
            }
            Ok(()) => {}
            Err(reason) => tracing::debug!(%reason, "closing connection"),
        }
        // Let requests in flight finish and their responses go out, unless
        // the peer has stopped taking them.
        future::or(
            async {
                let _ = connection.requests.acquire(REQUESTS_IN_FLIGHT_MAX).await;
            },
            connection.dead.wait(),
        )
        .await;
        connection.closing.set(true);
        connection.queued.notify_all();
        writer.await;
        counters.connections_open.set(counters.connections_open.get() - 1);
    }

    /// Reads frames until the peer closes, a deadline passes, the input is
    /// beyond repair, the connection is evicted, or the shard stops.
    async fn read_loop(self: &Rc<Self>, connection: &Rc<Connection>, evicted: &Stopping) -> Result<(), Closed> {
        loop {
            let mut prefix = [0u8; FRAME_PREFIX_BYTES];
            let idle = self.limits.idle_timeout;
            let read = future::or(
                async { Some(deadline(idle, connection.stream.read_exact_into(&mut prefix)).await) },
                async {
                    future::or(future::or(self.stopping.wait(), connection.dead.wait()), evicted.wait()).await;
                    None
                },
            )
            .await;
            match read {
                None => return Ok(()),
                Some(Err(error)) => return Err(Closed::Idle(error)),
                Some(Ok(())) => {}
            }
            // The request's first bytes are here: its time in the broker starts.
            let arrived = Instant::now();
            connection.presence.touch(arrived);
            let len = match wire::frame_len(prefix, self.limits.max_frame_bytes) {
                Ok(len) => len,
                Err(error) if connection.protocol == Protocol::Kafka => {
                    return Err(Closed::KafkaMalformed(error.to_string()))
                }
                Err(error) => return self.refuse_frame(connection, error).await,
            };
            let (body, permits) = self.read_frame(connection, len).await?;
            match connection.protocol {
                Protocol::Native => self.start_request(connection, body, permits, arrived).await?,
                Protocol::Kafka => self.start_kafka_request(connection, body, permits, arrived)?,
            }
        }
    }

    /// Reads the `len`-byte body of a frame, charging the connection's and
    /// the shard's budgets for each piece once it has arrived (see
    /// `budget.rs`). A frame larger than the connection budget is charged
    /// to it up to the whole budget.
    async fn read_frame(&self, connection: &Connection, len: usize) -> Result<(BytesMut, Permits), Closed> {
        let started = Instant::now();
        let closed = |_| Closed::Stopped;
        let request = self
            .until_stopped(connection, async { connection.requests.acquire_static_permit(1).await.map_err(closed) })
            .await?;
        // Nothing is read while a budget is spent: this is what pushes a
        // producer that is faster than the broker back.
        self.until_stopped(connection, async {
            connection.budget.wait_for_room().await;
            self.shard_budget.wait_for_room().await;
            Ok(())
        })
        .await?;
        let mut permits = Permits {
            _request: request,
            connection_bytes: connection.budget.hold(),
            shard_bytes: self.shard_budget.hold(),
        };
        // Capacity is address space, not memory: pages are touched only as
        // pieces are zeroed and read below.
        let mut body = BytesMut::with_capacity(len);
        let mut filled = 0;
        let mut arrival: Option<Arrival> = None;
        let connection_bytes_max = connection.budget.capacity();
        while filled < len {
            if filled == body.len() {
                let piece = filled.clamp(FRAME_READ_BYTES_FIRST, FRAME_READ_BYTES_MAX).min(len - filled);
                body.resize(filled + piece, 0);
            }
            let left = self.limits.frame_timeout.saturating_sub(started.elapsed());
            let read = match glommio::timer::timeout(left, async {
                Ok(connection.stream.read_some(&mut body[filled..]).await)
            })
            .await
            {
                Ok(Ok(0)) => Err(Closed::MidFrame { len }),
                Ok(Ok(read)) => Ok(read),
                Ok(Err(source)) => Err(Closed::Read { len, source }),
                Err(_) => Err(Closed::FrameDeadline { len, timeout: self.limits.frame_timeout }),
            }?;
            filled += read;
            // A large frame that is still arriving counts against the half of
            // the shard budget such frames share (see `budget.rs`).
            if len > FRAME_READ_BYTES_FIRST && filled < len && arrival.is_none() {
                arrival = Some(self.shard_budget.arrival());
            }
            let own = (read as u64).min(connection_bytes_max.saturating_sub(permits.connection_bytes.bytes()));
            self.until_stopped(connection, async {
                connection.budget.grow(&mut permits.connection_bytes, own, None).await;
                self.shard_budget.grow(&mut permits.shard_bytes, read as u64, arrival.as_ref()).await;
                Ok(())
            })
            .await?;
        }
        debug_assert_eq!(body.len(), len);
        // Complete: the frame leaves the line of arriving frames here, its
        // bytes stay held by `permits` until its response is written.
        drop(arrival);
        Ok((body, permits))
    }

    /// Waits, holding only the request's budget, until `fetch` would find
    /// data (or its wait is over), then holds what its response may carry:
    /// a long-poll never holds bytes producers on the same connection need.
    /// Half of each budget at most, so one fetch can never block on its own
    /// request's reservation. A fetch whose partitions are all here has done its only wait by then; one that spans shards keeps what is left of its wait for the owners.
    async fn reserve_response(
        &self,
        connection: &Connection,
        fetch: &mut wire::FetchRequest,
    ) -> Result<ResponsePermits, Closed> {
        let wait = Duration::from_millis(u64::from(fetch.max_wait_ms.min(dispatch::inner_deadline_ms(&self.limits))));
        let started = Instant::now();
        // A fetch waits once: here when this shard owns every partition
        // (it then reads at once), else on the owners.
        fetch.max_wait_ms = if self.shard.wait_fetchable(fetch, wait).await {
            0
        } else {
            u32::try_from(wait.saturating_sub(started.elapsed()).as_millis()).unwrap_or(0)
        };
        let bytes = (fetch.max_bytes as usize).min(dispatch::fetch_bytes_max(&self.limits)) as u64;
        let mut permits =
            ResponsePermits { _connection_bytes: connection.budget.hold(), _shard_bytes: self.shard_budget.hold() };
        self.until_stopped(connection, async {
            let own = bytes.min(connection.budget.capacity() / 2);
            connection.budget.grow(&mut permits._connection_bytes, own, None).await;
            let shared = bytes.min(self.shard_budget.capacity() / 2);
            self.shard_budget.grow(&mut permits._shard_bytes, shared, None).await;
            Ok(())
        })
        .await?;
        Ok(permits)
    }

    /// Runs `acquire` until it is done, or gives up when the shard stops or
    /// the peer stops taking responses.
    async fn until_stopped<T>(
        &self,
        connection: &Connection,
        acquire: impl std::future::Future<Output = Result<T, Closed>>,
    ) -> Result<T, Closed> {
        let interrupted = async {
            future::or(self.stopping.wait(), connection.dead.wait()).await;
            Err(Closed::Stopped)
        };
        future::or(acquire, interrupted).await
    }

    /// Parses a frame and runs it in a task of its own. A fetch takes its
    /// response's budget in that task (see `reserve_response`), so the
    /// reader never stops reading frames to wait for it.
    async fn start_request(
        self: &Rc<Self>,
        connection: &Rc<Connection>,
        body: BytesMut,
        permits: Permits,
        arrived: Instant,
    ) -> Result<(), Closed> {
        let request_id = wire::peek_request_id(&body).unwrap_or(0);
        let parsed = wire::split_frame(body).and_then(|(head, header, payload)| {
            if head.kind != FrameKind::Request {
                return Err(WireError::Header("only request frames may be sent to the broker".into()));
            }
            Ok((decode_header::<Request>(&header)?, payload))
        });
        let (request, payload) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                // The framing is intact (the length was valid), so the
                // connection carries on after the error response.
                Counters::add(&self.shard.counters().errors, 1);
                let code = match error {
                    WireError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
                    _ => ErrorCode::INVALID_REQUEST,
                };
                self.shard.counters().record_request("malformed", code);
                self.warn_client_error(&error, "a client sent a malformed request");
                let response = Response::Error(ErrorResponse { code, message: error.to_string() });
                connection.respond(request_id, &response, Chunks::new(), Some((permits, None)));
                return Ok(());
            }
        };
        if !connection.login.is_open() {
            return self.native_login(connection, request_id, request, permits).await;
        }
        let access = connection.login.access();
        // Produce with acks none promises no response, not even a timeout.
        let silent = matches!(&request, Request::Produce(produce) if produce.acks == AckLevel::None);
        // A produce request is timed until its answer is written.
        let timed = matches!(&request, Request::Produce(_)).then_some(arrived);
        let (server, connection) = (Rc::clone(self), Rc::clone(connection));
        let task = async move {
            let mut request = request;
            let response_permits = match &mut request {
                Request::Fetch(fetch) => match server.reserve_response(&connection, fetch).await {
                    Ok(permits) => Some(permits),
                    // Stopping, or the peer is gone: nobody to answer.
                    Err(_) => return,
                },
                _ => None,
            };
            let held = (permits, response_permits);
            let limits = &server.limits;
            let handled = glommio::timer::timeout(limits.request_timeout, async {
                Ok(dispatch::handle(&server.shard, request, payload, limits, &access).await)
            })
            .await;
            match handled {
                Ok(Some((response, data))) => connection.respond_timed(request_id, &response, data, Some(held), timed),
                Ok(None) => drop(held),
                Err(_) if silent => drop(held),
                Err(_) => {
                    let response = Response::Error(ErrorResponse {
                        code: ErrorCode::TIMEOUT,
                        message: "request timed out".into(),
                    });
                    connection.respond_timed(request_id, &response, Chunks::new(), Some(held), timed);
                }
            }
        };
        match glommio::spawn_local_into(task.in_current_span(), self.queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => tracing::error!(%error, "could not start a request task"),
        }
        Ok(())
    }

    /// A native request on a connection that has not logged in: a step of
    /// the login, or refused (and the connection closed). A failed login
    /// is answered after the failure delay, then the connection closes.
    async fn native_login(
        &self,
        connection: &Rc<Connection>,
        request_id: u32,
        request: Request,
        permits: Permits,
    ) -> Result<(), Closed> {
        let Request::SaslAuthenticate(step) = request else {
            let message = "this listener requires a SASL login first (SaslAuthenticate)".to_string();
            let response = Response::Error(ErrorResponse { code: ErrorCode::AUTHENTICATION_REQUIRED, message });
            connection.respond(request_id, &response, Chunks::new(), Some((permits, None)));
            return Err(Closed::LoginRequired(request.kind().into()));
        };
        let (response, failed) = connection.login.native(&self.shard, &step);
        if failed {
            glommio::timer::sleep(connection.login.failure_delay()).await;
        }
        connection.respond(request_id, &Response::SaslAuthenticate(response), Chunks::new(), Some((permits, None)));
        if failed {
            return Err(Closed::LoginFailed);
        }
        Ok(())
    }

    /// A Kafka request on a connection that has not logged in: served
    /// (ApiVersions), answered here (the SASL steps), or the connection
    /// closes. `Ok(Some(permits))`: serve it as usual.
    fn kafka_login(
        &self,
        connection: &Rc<Connection>,
        parsed: &kafka::Parsed,
        permits: Permits,
    ) -> Result<Option<Permits>, Closed> {
        let (response, failed) = match connection.login.kafka(&self.shard, parsed) {
            KafkaGate::Serve => return Ok(Some(permits)),
            KafkaGate::Close(reason) => return Err(Closed::LoginRequired(reason)),
            KafkaGate::Answer { response, failed } => (response, failed),
        };
        let seq = connection.order.begin();
        let frame = match kafka::answer(parsed, *response) {
            kafka::Outcome::Respond(frame) => Some((frame, (permits, None))),
            _ => None,
        };
        if !failed {
            connection.finish(seq, frame);
            return Ok(None);
        }
        // Answered after the delay; the read loop ends now, and the
        // connection closes once the answer is written.
        let (delay, connection) = (connection.login.failure_delay(), Rc::clone(connection));
        let task = async move {
            glommio::timer::sleep(delay).await;
            connection.finish(seq, frame);
        };
        match glommio::spawn_local_into(task.in_current_span(), self.queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => tracing::error!(%error, "could not start a login failure task"),
        }
        Err(Closed::LoginFailed)
    }

    /// Parses a Kafka frame and serves it in a task of its own; its
    /// response takes its place in request order.
    fn start_kafka_request(
        self: &Rc<Self>,
        connection: &Rc<Connection>,
        body: BytesMut,
        permits: Permits,
        arrived: Instant,
    ) -> Result<(), Closed> {
        let Some(endpoints) = self.kafka.clone() else {
            return Err(Closed::KafkaOff);
        };
        let parsed = match kafka::parse(body.freeze()) {
            Ok(parsed) => parsed,
            Err(error) => {
                let reason = error.to_string();
                self.shard.counters().record_request("kafka_malformed", ErrorCode::INVALID_REQUEST);
                self.warn_client_error(&WireError::Header(reason.clone()), "a Kafka client sent a malformed request");
                return Err(Closed::KafkaMalformed(reason));
            }
        };
        let permits = if connection.login.is_open() {
            permits
        } else {
            match self.kafka_login(connection, &parsed, permits)? {
                Some(permits) => permits,
                None => return Ok(()),
            }
        };
        let access = connection.login.access();
        let seq = connection.order.begin();
        let kind = kafka_kind(parsed.api_key);
        let timed = (parsed.api_key == kafka_protocol::messages::ApiKey::Produce).then_some(arrived);
        let (server, connection) = (Rc::clone(self), Rc::clone(connection));
        let mut fetch = kafka::fetch_to_reserve(&parsed, &self.limits);
        let ticket = fetch.as_ref().map(|_| connection.order.fetch_ticket());
        let task = async move {
            // A fetch waits for data and holds its response's bytes first,
            // as a native fetch does (see `reserve_response`), in its turn.
            let (response_permits, fetch_wait_ms) = match (&mut fetch, ticket) {
                (Some(fetch), Some(ticket)) => {
                    let ticket = FetchTicket { order: &connection.order, ticket };
                    let reserved = server
                        .until_stopped(&connection, async {
                            ticket.turn().await;
                            Ok(())
                        })
                        .await;
                    let reserved = match reserved {
                        Ok(()) => server.reserve_response(&connection, fetch).await,
                        Err(reason) => Err(reason),
                    };
                    drop(ticket);
                    match reserved {
                        Ok(held) => (Some(held), Some(fetch.max_wait_ms)),
                        Err(_) => {
                            // Stopping, or the peer is gone: nobody to answer.
                            connection.finish(seq, None);
                            return;
                        }
                    }
                }
                _ => (None, None),
            };
            let mut permits = permits;
            let limits = &server.limits;
            let handled = glommio::timer::timeout(limits.request_timeout, async {
                Ok(kafka::handle(&server.shard, &endpoints, limits, parsed, fetch_wait_ms, &access).await)
            })
            .await;
            let outcome = handled.unwrap_or_else(|_| kafka::Outcome::Close("request timed out".into()));
            let code = match &outcome {
                kafka::Outcome::Close(_) => ErrorCode::INVALID_REQUEST,
                _ => ErrorCode::NONE,
            };
            server.shard.counters().record_request(kind, code);
            // Served: the request's bytes are in the log or gone; what stays
            // held until the response is written is the response's size (a
            // fetch's records are held by its own reservation).
            let response_bytes = match &outcome {
                kafka::Outcome::Respond(frame) => frame.len() as u64,
                _ => 0,
            };
            permits.connection_bytes.shrink_to(response_bytes);
            permits.shard_bytes.shrink_to(response_bytes);
            let held = (permits, response_permits);
            match outcome {
                kafka::Outcome::Respond(frame) => connection.finish_timed(seq, Some((frame, held)), timed),
                kafka::Outcome::Silent => connection.finish(seq, None),
                kafka::Outcome::Close(reason) => {
                    server.warn_client_error(&WireError::Header(reason), "a Kafka request could not be served");
                    connection.finish(seq, None);
                    connection.dead.stop();
                }
            }
        };
        match glommio::spawn_local_into(task.in_current_span(), self.queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => tracing::error!(%error, "could not start a request task"),
        }
        Ok(())
    }

    /// Answers a frame whose length is unacceptable, then closes: the bytes
    /// that follow cannot be framed any more.
    async fn refuse_frame(&self, connection: &Rc<Connection>, error: WireError) -> Result<(), Closed> {
        Counters::add(&self.shard.counters().errors, 1);
        self.shard.counters().record_request("malformed", ErrorCode::FRAME_TOO_LARGE);
        self.warn_client_error(&error, "a client sent an unframeable length; closing its connection");
        if let WireError::FrameTooLarge { .. } = error {
            // The head that follows the length names the request to answer.
            let mut head = [0u8; FRAME_HEAD_BYTES];
            let read = deadline(self.limits.frame_timeout, connection.stream.read_exact_into(&mut head)).await;
            let request_id = read.ok().and_then(|()| wire::peek_request_id(&head)).unwrap_or(0);
            let response =
                Response::Error(ErrorResponse { code: ErrorCode::FRAME_TOO_LARGE, message: error.to_string() });
            connection.respond(request_id, &response, Chunks::new(), None);
        }
        Err(Closed::Unframeable(error))
    }
}

impl Server {
    /// Logs a client's error as a warning, at most a few per window (see
    /// `warn_limit.rs`); the connection's span names the client.
    fn warn_client_error(&self, error: &WireError, what: &str) {
        if let Some(suppressed) = self.warnings.allow(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(%error, suppressed, "{what} (and {suppressed} client errors were not logged)");
            } else {
                tracing::warn!(%error, "{what}");
            }
        }
    }
}

/// A Kafka request's kind for metrics (`kafka_produce`, ...).
fn kafka_kind(api_key: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey;
    match api_key {
        ApiKey::Produce => "kafka_produce",
        ApiKey::Fetch => "kafka_fetch",
        ApiKey::ListOffsets => "kafka_list_offsets",
        ApiKey::Metadata => "kafka_metadata",
        ApiKey::OffsetCommit => "kafka_offset_commit",
        ApiKey::OffsetFetch => "kafka_offset_fetch",
        ApiKey::FindCoordinator => "kafka_find_coordinator",
        ApiKey::JoinGroup => "kafka_join_group",
        ApiKey::Heartbeat => "kafka_heartbeat",
        ApiKey::LeaveGroup => "kafka_leave_group",
        ApiKey::SyncGroup => "kafka_sync_group",
        ApiKey::DescribeGroups => "kafka_describe_groups",
        ApiKey::ListGroups => "kafka_list_groups",
        ApiKey::ApiVersions => "kafka_api_versions",
        ApiKey::CreateTopics => "kafka_create_topics",
        ApiKey::DeleteTopics => "kafka_delete_topics",
        ApiKey::InitProducerId => "kafka_init_producer_id",
        ApiKey::DescribeConfigs => "kafka_describe_configs",
        ApiKey::AlterConfigs => "kafka_alter_configs",
        ApiKey::IncrementalAlterConfigs => "kafka_incremental_alter_configs",
        ApiKey::DeleteRecords => "kafka_delete_records",
        _ => "kafka_other",
    }
}

/// Runs `io` with a deadline.
async fn deadline<T>(limit: Duration, io: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    match glommio::timer::timeout(limit, async { Ok(io.await) }).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no progress within {limit:?}"))),
    }
}

/// A notice frame: an error tied to no request, sent before closing.
fn notice_frame(code: ErrorCode, message: String) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64 + message.len());
    let notice = Response::Error(ErrorResponse { code, message });
    if let Err(error) = encode_frame_head(&mut frame, FrameKind::Notice, 0, &notice, 0) {
        tracing::error!(%error, "encoding a notice");
    }
    frame
}

/// What a request holds until its response has been written: its request
/// slot and the bytes of its frame.
struct Permits {
    _request: StaticPermit,
    connection_bytes: Hold,
    shard_bytes: Hold,
}

/// The budget a large response (a fetch) holds on top of its request's.
struct ResponsePermits {
    _connection_bytes: Hold,
    _shard_bytes: Hold,
}

type Held = (Permits, Option<ResponsePermits>);

/// The state a connection's reader, request tasks and writer share.
struct Connection {
    /// Whether the client must log in, and who it is once it has.
    login: LoginGate,
    stream: SharedStream,
    /// Encoded responses waiting for the writer, with what they hold.
    queue: RefCell<VecDeque<Queued>>,
    queued: Notify,
    closing: Cell<bool>,
    /// Set when the peer stopped taking responses (a write failed or made no
    /// progress within the deadline): everything waiting on it gives up.
    dead: Stopping,
    write_timeout: Duration,
    requests: Rc<Semaphore>,
    budget: Rc<ByteBudget>,
    /// What admission sees of this connection (last activity).
    presence: Rc<Presence>,
    protocol: Protocol,
    /// Kafka answers in request order.
    order: ResponseOrder,
    /// The shard's counters: the writer times produce requests.
    counters: Rc<Counters>,
}

/// Puts Kafka responses back in request order: each request takes a
/// number as it is read; a finished response waits until every earlier
/// one has gone to the writer. Bounded by the requests in flight.
///
/// Ordered responses change what budgets may wait for. A response that is
/// done but queued behind an earlier one cannot free what it holds until
/// that one is written, so an earlier request must never wait for budget
/// a later one holds: a served Kafka request keeps only its response's
/// bytes (see `start_kafka_request`), and fetches reserve their response
/// bytes one after another, in request order (`fetch_turn`).
#[derive(Default)]
struct ResponseOrder {
    next: Cell<u64>,
    next_to_write: Cell<u64>,
    done: RefCell<std::collections::BTreeMap<u64, Option<Queued>>>,
    /// The next fetch ticket to hand out, and the ticket whose turn it is
    /// to reserve.
    fetch_tickets: Cell<u64>,
    fetch_turn: Cell<u64>,
    fetch_turn_moved: Notify,
}

impl ResponseOrder {
    fn begin(&self) -> u64 {
        let seq = self.next.get();
        self.next.set(seq + 1);
        seq
    }

    /// A fetch's place in the line of reservations, taken as it is read.
    fn fetch_ticket(&self) -> u64 {
        let ticket = self.fetch_tickets.get();
        self.fetch_tickets.set(ticket + 1);
        ticket
    }
}

/// A fetch's turn to reserve its response bytes; passes the turn on when
/// dropped (reserved, or given up).
struct FetchTicket<'a> {
    order: &'a ResponseOrder,
    ticket: u64,
}

impl FetchTicket<'_> {
    async fn turn(&self) {
        loop {
            let moved = self.order.fetch_turn_moved.notified();
            if self.order.fetch_turn.get() == self.ticket {
                return;
            }
            moved.await;
        }
    }
}

impl Drop for FetchTicket<'_> {
    fn drop(&mut self) {
        // Only the ticket whose turn it is can be dropped before the
        // connection's end: tasks wait for their turn before anything else.
        if self.order.fetch_turn.get() == self.ticket {
            self.order.fetch_turn.set(self.ticket + 1);
            self.order.fetch_turn_moved.notify_all();
        }
    }
}

impl Connection {
    /// Encodes a response and queues it for the writer.
    fn respond(&self, request_id: u32, response: &Response, data: Chunks, permits: Option<Held>) {
        self.respond_timed(request_id, response, data, permits, None);
    }

    /// [`respond`](Self::respond), and once the answer is written, records
    /// the produce request's time since `arrived` (its first bytes read).
    fn respond_timed(
        &self,
        request_id: u32,
        response: &Response,
        data: Chunks,
        permits: Option<Held>,
        arrived: Option<Instant>,
    ) {
        if self.dead.is_stopped() {
            return;
        }
        let mut head = Vec::with_capacity(256);
        if let Err(error) = encode_frame_head(&mut head, FrameKind::Response, request_id, response, data.len()) {
            tracing::error!(%error, "encoding a response");
            return;
        }
        self.queue.borrow_mut().push_back(Queued { head, data, _held: permits, arrived });
        self.queued.notify_all();
    }

    /// Hands request `seq`'s response (or none: acks 0, or a request that
    /// closes the connection) to the writer once every earlier one is
    /// there.
    fn finish(&self, seq: u64, response: Option<(Vec<u8>, Held)>) {
        self.finish_timed(seq, response, None);
    }

    /// [`finish`](Self::finish), timing a produce request as
    /// [`respond_timed`](Self::respond_timed) does.
    fn finish_timed(&self, seq: u64, response: Option<(Vec<u8>, Held)>, arrived: Option<Instant>) {
        let queued = response.map(|(head, held)| Queued { head, data: Chunks::new(), _held: Some(held), arrived });
        let mut done = self.order.done.borrow_mut();
        done.insert(seq, queued);
        let mut queue = self.queue.borrow_mut();
        while let Some(entry) = done.remove(&self.order.next_to_write.get()) {
            self.order.next_to_write.set(self.order.next_to_write.get() + 1);
            if let Some(queued) = entry {
                if !self.dead.is_stopped() {
                    queue.push_back(queued);
                }
            }
        }
        drop((queue, done));
        self.queued.notify_all();
    }

    /// Queues a notice (why the connection is about to close).
    fn notice(&self, code: ErrorCode, message: String) {
        if self.dead.is_stopped() {
            return;
        }
        let head = notice_frame(code, message);
        self.queue.borrow_mut().push_back(Queued { head, data: Chunks::new(), _held: None, arrived: None });
        self.queued.notify_all();
    }

    /// Writes queued responses until the connection closes and the queue
    /// is empty. What is queued goes out together in one vectored write:
    /// heads and headers, and fetch data as the pieces the logs' caches
    /// hold (on a plain socket copied by nobody but the kernel; TLS copies
    /// as it encrypts).
    async fn write_loop(self: Rc<Self>) {
        let mut taken: Vec<Queued> = Vec::new();
        loop {
            let wait = self.queued.notified();
            {
                let mut queue = self.queue.borrow_mut();
                let (mut pieces, mut bytes) = (0, 0);
                while pieces < WRITE_PIECES_MAX && bytes < WRITE_BYTES_MAX {
                    let Some(queued) = queue.pop_front() else { break };
                    pieces += 1 + queued.data.pieces().len();
                    bytes += queued.head.len() + queued.data.len();
                    taken.push(queued);
                }
            }
            if taken.is_empty() {
                if self.closing.get() {
                    return;
                }
                wait.await;
                continue;
            }
            let mut slices = Vec::with_capacity(taken.iter().map(|queued| 1 + queued.data.pieces().len()).sum());
            for queued in &taken {
                slices.push(IoSlice::new(&queued.head));
                slices.extend(queued.data.pieces().map(|piece| IoSlice::new(piece)));
            }
            let result = self.stream.write_all_vectored(&mut slices, self.write_timeout).await;
            // The bytes are on their way: the requests no longer count.
            drop(slices);
            if result.is_ok() {
                // The clock is read only for writes that carried a produce answer.
                let mut written = None;
                for arrived in taken.iter().filter_map(|queued| queued.arrived) {
                    let written = *written.get_or_insert_with(Instant::now);
                    self.counters.record_produce_request(written.saturating_duration_since(arrived));
                }
            }
            taken.clear();
            self.presence.touch(Instant::now());
            if let Err(error) = result {
                // A peer that does not read its responses must not hold
                // budget or requests forever: everything waiting gives up.
                tracing::debug!(%error, "writing responses; dropping the connection");
                self.dead.stop();
                self.queue.borrow_mut().clear();
                return;
            }
        }
    }
}

/// A response waiting for the writer: its frame head and header, its
/// payload, and the budget it holds until written (none for a notice).
struct Queued {
    head: Vec<u8>,
    data: Chunks,
    _held: Option<Held>,
    /// A produce request's first bytes read, timed until this is written.
    arrived: Option<Instant>,
}

/// The socket, shared by a connection's reader and writer. Borrowed only
/// inside each poll, never across an `.await`.
struct SharedStream(RefCell<Stream>);

impl SharedStream {
    async fn read_exact_into(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut reader = self;
        reader.read_exact(buf).await
    }

    /// Reads what has arrived (at least one byte, at most `buf.len()`);
    /// 0 at the end of the stream.
    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut reader = self;
        reader.read(buf).await
    }

    /// Writes every byte of `slices`, in as few writes as the socket
    /// allows; fails if one write makes no progress within `limit` (a peer
    /// that reads slowly but reads is not cut off however much is queued).
    async fn write_all_vectored(&self, mut slices: &mut [IoSlice<'_>], limit: Duration) -> io::Result<()> {
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let write = future::poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, slices));
            let written = deadline(limit, write).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, written);
        }
        let mut writer = self;
        deadline(limit, writer.flush()).await
    }
}

impl AsyncRead for &SharedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for &SharedStream {
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
