//! The connection gate: the limits Pingora's HTTP session cannot enforce by itself, applied
//! around the client's socket.
//!
//! Pingora's HTTP/1 reader times out each read, not the request head as a whole, and it has no
//! callback when a connection closes. So the public listeners run [`Gate`] in front of the proxy:
//! it sees every connection from accept to close, which makes it the place to
//! - count open connections per client address (`max_connections_per_ip`; idle and slow ones
//!   count, which is what a slowloris attack relies on);
//! - give the whole request head one deadline (`header_timeout`), from accept for the first
//!   request and from its first byte for later ones;
//! - require a minimum upload rate for request bodies (`min_upload_rate`, after `body_timeout`
//!   of grace), counting only the time onair waited on the client, never the time the origin
//!   held the upload back.
//!
//! The proxy tells the stream which part of a request it is in through [`Watch`]: the head is
//! parsed (`head_done`), the body is in (`body_done`), the answer is finished (`request_done`).
//! HTTP/2 connections are counted but not clocked: their frames are not HTTP/1 heads.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Protect;
use crate::metrics::METRICS;
use crate::snapshot::Live;

/// Where the current request of a connection is, as the proxy last said.
const HEAD: u8 = 0;
const BODY: u8 = 1;
const RESPONDING: u8 = 2;
const IDLE: u8 = 3;

/// The proxy's side of a connection's clocks: shared between the stream and the requests on it.
#[derive(Debug)]
pub struct Watch {
    phase: AtomicU8,
    /// The body follows only once the origin says 100 Continue: its upload clock starts with
    /// its first byte, not with the head.
    await_first_byte: std::sync::atomic::AtomicBool,
    /// Bumped for each request head, so a new body starts a new upload clock even when the
    /// stream never saw the phases in between (a pipelined request).
    requests: AtomicU32,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            phase: AtomicU8::new(HEAD),
            await_first_byte: std::sync::atomic::AtomicBool::new(false),
            requests: AtomicU32::new(0),
        }
    }

    /// The request head has been parsed; `body` when a request body follows, `expect_continue`
    /// when the client waits for 100 Continue before sending it.
    pub fn head_done(&self, body: bool, expect_continue: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.await_first_byte
            .store(expect_continue, Ordering::Relaxed);
        let phase = if body { BODY } else { RESPONDING };
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// The request body has been read to its end.
    pub fn body_done(&self) {
        self.phase.store(RESPONDING, Ordering::Relaxed);
    }

    /// The answer is finished; the connection waits for the next request (keep-alive idle time
    /// is Pingora's `keepalive_timeout`, not ours).
    pub fn request_done(&self) {
        self.phase.store(IDLE, Ordering::Relaxed);
    }
}

/// The watch of the connection a request arrived on, when it came through the gate over
/// HTTP/1.
pub fn watch(session: &Session) -> Option<&Watch> {
    let stream = session.as_downstream().stream()?;
    let guarded = stream.as_any().downcast_ref::<Guarded<Stream>>()?;
    Some(&guarded.watch)
}

/// The clocks of one connection, fixed when it opens (a reload applies to new connections).
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// None: the head is not clocked (HTTP/2).
    pub header_timeout: Option<Duration>,
    pub body_timeout: Duration,
    /// Bytes per second; 0: no minimum.
    pub min_upload_rate: u64,
    /// How long a write may wait for the client to take bytes; None: forever (HTTP/2, whose
    /// sessions have Pingora's write timeout).
    pub send_timeout: Option<Duration>,
    /// HTTP/2: the head clock runs only until this many bytes have come (the connection
    /// preface and the first SETTINGS frame); after that the connection is unclocked, since its
    /// frames are not HTTP/1 heads the proxy could report on.
    pub until_bytes: Option<u64>,
}

impl Clocks {
    pub fn from_config(protect: &Protect) -> Clocks {
        Clocks {
            header_timeout: Some(protect.header_timeout),
            body_timeout: protect.body_timeout,
            min_upload_rate: protect.min_upload_rate,
            send_timeout: Some(protect.send_timeout),
            until_bytes: None,
        }
    }

    /// An HTTP/2 connection: `header_timeout` for its preface, nothing after.
    pub fn h2(protect: &Protect) -> Clocks {
        Clocks {
            header_timeout: Some(protect.header_timeout),
            until_bytes: Some(H2_PREFACE_AND_SETTINGS),
            ..Clocks::unclocked()
        }
    }

    fn unclocked() -> Clocks {
        Clocks {
            header_timeout: None,
            body_timeout: Duration::ZERO,
            min_upload_rate: 0,
            send_timeout: None,
            until_bytes: None,
        }
    }
}

/// The HTTP/2 client preface (24 bytes) and a SETTINGS frame header (9).
const H2_PREFACE_AND_SETTINGS: u64 = 33;

/// Why a connection was cut; the metric label.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Header,
    Upload,
    Send,
}

impl Cut {
    fn error(self) -> io::Error {
        let text = match self {
            Cut::Header => "request head not complete within protect.header_timeout",
            Cut::Upload => "request body slower than protect.min_upload_rate",
            Cut::Send => "client took no bytes of the answer within protect.send_timeout",
        };
        io::Error::new(io::ErrorKind::TimedOut, text)
    }

    fn label(self) -> &'static str {
        match self {
            Cut::Header => "header",
            Cut::Upload => "upload",
            Cut::Send => "send",
        }
    }
}

/// A client stream under the gate's clocks. Everything but reading is passed straight through.
pub struct Guarded<S> {
    inner: S,
    watch: Watch,
    clocks: Clocks,
    /// When the current head started: accept for the first request, the first wait after its
    /// first byte for later ones (set lazily, so a head read in one go costs no clock read).
    head_since: Option<Instant>,
    /// The upload clock of the current body: time spent waiting on the client, bytes received.
    upload: Upload,
    timer: Option<Pin<Box<Sleep>>>,
    /// Since when a write has waited for the client to take bytes.
    write_since: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
    cut: Option<Cut>,
    /// The client's address as a PROXY protocol header gave it, replacing the socket's.
    socket_digest: Option<Arc<SocketDigest>>,
}

#[derive(Debug, Default)]
struct Upload {
    request: u32,
    waited: Duration,
    received: u64,
    pending_since: Option<Instant>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, clocks: Clocks) -> Guarded<S> {
        Guarded {
            inner,
            watch: Watch::new(),
            clocks,
            head_since: Some(Instant::now()),
            upload: Upload::default(),
            timer: None,
            write_since: None,
            write_timer: None,
            cut: None,
            socket_digest: None,
        }
    }

    /// Starts the first head's clock at `accepted` (before a PROXY protocol header was read).
    pub fn accepted_at(mut self, accepted: Instant) -> Guarded<S> {
        self.head_since = Some(accepted);
        self
    }

    /// Replaces the socket's peer address (what Pingora and the proxy see as the client).
    pub fn with_socket_digest(mut self, digest: Arc<SocketDigest>) -> Guarded<S> {
        self.socket_digest = Some(digest);
        self
    }

    /// The proxy's handle on this connection's phases.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    fn phase(&self) -> u8 {
        self.watch.phase.load(Ordering::Relaxed)
    }

    /// Bytes arrived.
    fn on_bytes(&mut self, n: usize) {
        if let Some(left) = self.clocks.until_bytes {
            let left = left.saturating_sub(n as u64);
            self.clocks.until_bytes = Some(left);
            if left == 0 {
                self.clocks = Clocks::unclocked();
            }
            return;
        }
        match self.phase() {
            IDLE if n > 0 => {
                self.watch.phase.store(HEAD, Ordering::Relaxed);
                self.head_since = None;
            }
            BODY if self.clocks.min_upload_rate > 0 => {
                self.sync_upload();
                if let Some(since) = self.upload.pending_since.take() {
                    self.upload.waited += since.elapsed();
                }
                self.upload.received += n as u64;
            }
            _ => {}
        }
    }

    /// A new request's body starts a new upload clock.
    fn sync_upload(&mut self) {
        let request = self.watch.requests.load(Ordering::Relaxed);
        if self.upload.request != request {
            self.upload = Upload {
                request,
                ..Upload::default()
            };
        }
    }

    /// The moment the current wait for the client must end, if one applies.
    fn deadline(&mut self) -> Option<(Instant, Cut)> {
        match self.phase() {
            HEAD => {
                let timeout = self.clocks.header_timeout?;
                let since = *self.head_since.get_or_insert_with(Instant::now);
                Some((since + timeout, Cut::Header))
            }
            BODY if self.clocks.min_upload_rate > 0 => {
                self.sync_upload();
                if self.upload.received == 0 && self.watch.await_first_byte.load(Ordering::Relaxed)
                {
                    return None;
                }
                let since = *self.upload.pending_since.get_or_insert_with(Instant::now);
                let earned = Duration::from_secs_f64(
                    self.upload.received as f64 / self.clocks.min_upload_rate as f64,
                );
                let allowed = self.clocks.body_timeout + earned;
                Some((
                    since + allowed.saturating_sub(self.upload.waited),
                    Cut::Upload,
                ))
            }
            _ => None,
        }
    }

    /// Waits for the client until `at`; past it, the read fails and Pingora closes the
    /// connection.
    fn wait_until(&mut self, cx: &mut Context<'_>, at: Instant, cut: Cut) -> Poll<io::Result<()>> {
        match poll_timer(&mut self.timer, cx, at) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(self.cut_now(cut))),
        }
    }

    /// Cuts the connection: every later read or write fails, and Pingora closes it.
    fn cut_now(&mut self, cut: Cut) -> io::Error {
        self.cut = Some(cut);
        METRICS.slow_client(cut.label());
        tracing::debug!(reason = cut.label(), "client connection cut");
        cut.error()
    }

    /// A write under the send clock: a write that waits for the client longer than
    /// `send_timeout` cuts the connection; any progress restarts the clock.
    fn clocked_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if let Some(cut) = self.cut {
            return Poll::Ready(Err(cut.error()));
        }
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.write_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(limit) = self.clocks.send_timeout else {
                    return Poll::Pending;
                };
                let since = *self.write_since.get_or_insert_with(Instant::now);
                match poll_timer(&mut self.write_timer, cx, since + limit) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Err(self.cut_now(Cut::Send))),
                }
            }
        }
    }
}

/// Polls a lazily made timer set to `at`.
fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
    let timer = match timer {
        Some(timer) => {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            timer
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    timer.as_mut().poll(cx)
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(cut) = this.cut {
            return Poll::Ready(Err(cut.error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_bytes(buf.filled().len() - before);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline() {
                None => Poll::Pending,
                Some((at, cut)) => this.wait_until(cx, at, cut),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.clocked_write(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.clocked_write(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clocked_write(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("phase", &self.phase())
            .field("clocks", &self.clocks)
            .finish_non_exhaustive()
    }
}

// Pingora's view of the connection: all of it is the inner stream's, except the peer address
// a PROXY protocol header replaced.
#[async_trait]
impl Shutdown for Guarded<Stream> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded<Stream> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded<Stream> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded<Stream> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded<Stream> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded<Stream> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket_digest
            .clone()
            .or_else(|| self.inner.get_socket_digest())
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded<Stream> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Open connections per client address (IPv6 per /64), for `max_connections_per_ip`.
#[derive(Debug, Default)]
pub struct ConnTable {
    shards: [Mutex<HashMap<u128, u32>>; 16],
}

/// One open connection in the table; closing it (dropping this) gives the slot back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnTable>,
    key: u128,
}

impl ConnTable {
    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u32>> {
        // The low bits vary most for IPv4 (mapped into the low 32 bits); the /64 prefix for
        // IPv6 has its variety in the high half.
        let mix = (key as u64) ^ ((key >> 64) as u64);
        &self.shards[(mix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize]
    }

    /// Takes a slot for a connection from `ip`, unless it already has `max` open.
    pub fn open(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Slot> {
        let key = super::client::limit_key(ip);
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let count = shard.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: self.clone(),
            key,
        })
    }

    /// Open connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let key = super::client::limit_key(ip);
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(&key).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self
            .table
            .shard(self.key)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Entries live only while connections do: the table is bounded by open sockets.
                shard.remove(&self.key);
            }
        }
    }
}

/// The public listeners' application: the gate, then the proxy.
pub struct Gate<A> {
    app: Arc<A>,
    live: Arc<Live>,
    table: Arc<ConnTable>,
    /// Listeners whose connections start with a PROXY protocol header.
    proxied: Vec<std::net::SocketAddr>,
    /// The node rate limiter, for clients a PROXY header names (the accept saw the balancer).
    limiter: Arc<super::rate::RateLimiter>,
    /// HTTPS listeners and the TLS acceptor for them: the gate does the handshake itself, after
    /// the connection cap and under the head deadline.
    https: Vec<std::net::SocketAddr>,
    acceptor: Option<pingora::listeners::tls::Acceptor>,
}

/// What the gate is configured with besides the proxy.
pub struct GateListeners {
    pub proxied: Vec<std::net::SocketAddr>,
    pub https: Vec<std::net::SocketAddr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl<A> Gate<A> {
    pub fn new(
        app: A,
        live: Arc<Live>,
        listeners: GateListeners,
        limiter: Arc<super::rate::RateLimiter>,
    ) -> Gate<A> {
        Gate {
            app: Arc::new(app),
            live,
            table: Arc::default(),
            proxied: listeners.proxied,
            limiter,
            https: listeners.https,
            acceptor: listeners
                .tls
                .map(pingora::listeners::tls::Acceptor::from_server_config),
        }
    }

    /// Whether `stream` arrived on a PROXY protocol listener.
    fn expects_header(&self, stream: &Stream) -> bool {
        on_listener(stream, &self.proxied)
    }
}

/// Whether `stream` arrived on one of `listeners` (an unspecified listener address matches any
/// local address on its port).
fn on_listener(stream: &Stream, listeners: &[std::net::SocketAddr]) -> bool {
    if listeners.is_empty() {
        return false;
    }
    let Some(local) = stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
    else {
        return false;
    };
    listeners
        .iter()
        .any(|l| l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip()))
}

/// The stream and its client after a PROXY protocol header (if the listener expects one);
/// None: the connection is to be closed. Only a trusted proxy may say who the client is:
/// from anyone else the header would be a forged address.
async fn take_proxy_header(
    stream: Stream,
    protect: &Protect,
    deadline: Instant,
) -> Option<(Stream, Option<Arc<SocketDigest>>)> {
    let digest = stream.get_socket_digest();
    let from_balancer = digest
        .as_ref()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .is_some_and(|ip| protect.trusted_proxies.iter().any(|c| c.contains(ip)));
    if !from_balancer {
        METRICS.connection_refused("proxy_protocol");
        tracing::debug!("PROXY protocol listener: the peer is not in protect.trusted_proxies");
        return None;
    }
    let local = digest.and_then(|d| d.local_addr().cloned());
    let id = stream.id();
    let limit = deadline.saturating_duration_since(Instant::now());
    match super::proxy_protocol::accept(stream, limit).await {
        Ok((stream, super::proxy_protocol::Source::Client(addr))) => {
            let digest = SocketDigest::from_raw_fd(id);
            let _ = digest
                .peer_addr
                .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(addr)));
            let _ = digest.local_addr.set(local);
            Some((stream, Some(Arc::new(digest))))
        }
        Ok((stream, super::proxy_protocol::Source::Local)) => Some((stream, None)),
        Err(why) => {
            METRICS.connection_refused("proxy_protocol");
            tracing::debug!(why, "connection closed: PROXY protocol");
            None
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Gate<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let snapshot = self.live.current();
        let protect = &snapshot.config.protect;
        let (stream, client_digest) = if self.expects_header(&stream) {
            take_proxy_header(stream, protect, accepted + protect.header_timeout).await?
        } else {
            (stream, None)
        };
        let socket = stream.get_socket_digest();
        let peer = client_digest
            .as_ref()
            .or(socket.as_ref())
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // The accept filter saw only the balancer: the client behind it is checked here.
        if let (Some(_), Some(ip)) = (&client_digest, peer) {
            if super::acl::denied(ip, protect) {
                METRICS.connection_refused("deny");
                return None;
            }
            let told_off = protect.rate.is_some()
                && self
                    .limiter
                    .told_off(super::client::limit_key(ip), std::time::Instant::now());
            if told_off {
                METRICS.connection_refused("rate");
                return None;
            }
        }
        // Load balancers carry many clients on their connections, and allow-listed monitoring
        // is trusted: neither is capped.
        let capped =
            protect.max_connections_per_ip > 0 && peer.is_some_and(|ip| !exempt(ip, protect));
        let _slot = match peer {
            Some(ip) if capped => match self.table.open(ip, protect.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    METRICS.connection_refused("per_ip");
                    return None;
                }
            },
            _ => None,
        };
        let _open = METRICS.connection_open();
        let deadline = accepted + protect.header_timeout;
        let stream: Stream = match &self.acceptor {
            Some(acceptor) if on_listener(&stream, &self.https) => {
                // The handshake reads through an unclocked wrapper that carries the PROXY
                // header's client address (the TLS stream asks it for the socket digest).
                let mut raw = Guarded::new(stream, Clocks::unclocked());
                if let Some(digest) = &client_digest {
                    raw = raw.with_socket_digest(digest.clone());
                }
                match tokio::time::timeout_at(deadline, acceptor.tls_handshake(raw)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        let reason = crate::tls::store::failure_reason(&e.to_string());
                        METRICS.tls_handshake_failed(reason);
                        tracing::debug!(reason, "TLS handshake failed: {e}");
                        return None;
                    }
                    Err(_) => {
                        METRICS.tls_handshake_failed("timeout");
                        return None;
                    }
                }
            }
            _ => stream,
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let clocks = if h2 {
            Clocks::h2(protect)
        } else {
            Clocks::from_config(protect)
        };
        if protect.send_buffer > 0 {
            // Bounds what a slow reader pins in kernel memory: with autotuning, each could hold
            // megabytes of unsent answer, also for a while after it is cut.
            let _ = pingora::protocols::l4::ext::set_snd_buf(stream.id(), protect.send_buffer);
        }
        drop(snapshot);
        let mut guarded = Guarded::new(stream, clocks).accepted_at(accepted);
        if let Some(digest) = client_digest {
            guarded = guarded.with_socket_digest(digest);
        }
        let mut stream: Stream = Box::new(guarded);
        // Pingora's HTTP app keeps a connection for its whole keep-alive life and hands back
        // nothing; loop anyway in case it ever returns a stream for reuse.
        while let Some(reused) = self.app.process_new(stream, shutdown).await {
            stream = reused;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Peers the connection cap does not apply to.
fn exempt(ip: IpAddr, protect: &Protect) -> bool {
    protect.forwards_for_others(ip) || protect.allow.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn clocks() -> Clocks {
        Clocks {
            header_timeout: Some(Duration::from_secs(10)),
            body_timeout: Duration::from_secs(5),
            min_upload_rate: 100,
            send_timeout: Some(Duration::from_secs(30)),
            until_bytes: None,
        }
    }

    /// Reads from the guarded side until it errors or `limit` passes (paused time).
    async fn read_until_cut(g: &mut Guarded<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        let mut total = 0;
        loop {
            let n = g.read(&mut buf).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_at_the_deadline_from_accept() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, clocks());
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"X").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            client
        });
        let err = read_until_cut(&mut g).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_parsed_head_stops_the_clock_and_idle_waits_are_free() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, clocks());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.unwrap(), 18);
        g.watch().head_done(false, false);
        g.watch().request_done();
        // Idle for a minute: the keep-alive timeout is Pingora's, not the head clock.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"GET /2").await.unwrap();
            tokio::time::sleep(Duration::from_secs(9)).await;
            client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let start = Instant::now();
        assert_eq!(g.read(&mut buf).await.unwrap(), 6);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // The second head's clock starts with its first byte: 9 s later is still in time.
        assert_eq!(g.read(&mut buf).await.unwrap(), 13);
        assert_eq!(start.elapsed(), Duration::from_secs(69));
        let _client = writer.await.unwrap();
        // And it runs out 10 s after that first byte.
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_below_the_minimum_rate_is_cut_after_its_grace() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, clocks());
        g.watch().head_done(true, false);
        // 10 bytes every 2 s is 5 B/s, under 100 B/s: allowed waiting is 5 s + 0.1 s per
        // 10 bytes, so the cut comes after about 3 sends.
        let sender = tokio::spawn(async move {
            loop {
                if client.write_all(&[b'a'; 10]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let start = Instant::now();
        let err = read_until_cut(&mut g).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(
            took > Duration::from_secs(5) && took < Duration::from_secs(8),
            "{took:?}"
        );
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_at_the_rate_is_never_cut_and_backpressure_is_not_counted() {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let mut g = Guarded::new(server, clocks());
        g.watch().head_done(true, false);
        let sender = tokio::spawn(async move {
            // 200 B/s for 30 s: twice the minimum.
            for _ in 0..30 {
                client.write_all(&[b'a'; 200]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let mut buf = [0u8; 256];
        let mut got = 0;
        while got < 6000 {
            got += g.read(&mut buf).await.unwrap();
            if got == 1000 {
                // The origin holds the upload back for a minute: not the client's fault.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
        let _client = sender.await.unwrap();
        g.watch().body_done();
        // The body is in: waiting for the answer is not an upload.
        let start = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(120), g.read(&mut buf)).await;
        assert!(waited.is_err(), "still waiting, not cut");
        assert_eq!(start.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_cut_at_send_timeout_and_progress_resets_it() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, clocks());
        // A reader taking 16 bytes every 20 s: slow, but never 30 s without progress.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if client.read(&mut buf).await.is_err() {
                    break;
                }
            }
            client
        });
        let start = Instant::now();
        let err = loop {
            if let Err(e) = g.write_all(&[b'x'; 16]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Five reads at 20 s intervals kept it going; after the last, 30 s of nothing.
        assert_eq!(start.elapsed(), Duration::from_secs(130));
        let _client = reader.await.unwrap();
        assert!(g.write(b"more").await.is_err(), "a cut stream stays cut");
    }

    #[tokio::test(start_paused = true)]
    async fn with_100_continue_the_upload_clock_starts_at_the_first_byte() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, clocks());
        g.watch().head_done(true, true);
        // The origin takes a minute to say 100 Continue; then the body comes at once.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(&[b'a'; 500]).await.unwrap();
            client
        });
        let mut buf = [0u8; 1024];
        assert_eq!(g.read(&mut buf).await.unwrap(), 500);
        let _client = sender.await.unwrap();
        // From the first byte on, the clock runs: 5 s grace + 5 s earned by 500 bytes.
        let start = Instant::now();
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_gets_the_head_clock_for_its_preface_only() {
        let protect = Protect {
            header_timeout: Duration::from_secs(10),
            ..Protect::default()
        };
        // Silent after the handshake: cut at header_timeout.
        let (_client, server) = tokio::io::duplex(1024);
        let mut silent = Guarded::new(server, Clocks::h2(&protect));
        let mut buf = [0u8; 64];
        let start = Instant::now();
        assert!(silent.read(&mut buf).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // The preface and SETTINGS in time: then idle as long as it likes.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut live = Guarded::new(server, Clocks::h2(&protect));
        client.write_all(&[0u8; 33]).await.unwrap();
        let mut got = 0;
        while got < 33 {
            got += live.read(&mut buf).await.unwrap();
        }
        let waited = tokio::time::timeout(Duration::from_secs(3600), live.read(&mut buf)).await;
        assert!(waited.is_err(), "not cut after the preface");
    }

    #[tokio::test(start_paused = true)]
    async fn unclocked_connections_wait_forever() {
        let (_client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, Clocks::unclocked());
        let mut buf = [0u8; 8];
        let waited = tokio::time::timeout(Duration::from_secs(3600), g.read(&mut buf)).await;
        assert!(waited.is_err());
    }

    #[test]
    fn the_table_caps_each_address_and_forgets_closed_ones() {
        let table = Arc::new(ConnTable::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        let slots: Vec<Slot> = (0..3).filter_map(|_| table.open(a, 3)).collect();
        assert_eq!(slots.len(), 3);
        assert!(table.open(a, 3).is_none());
        let _b = table.open(b, 1).unwrap();
        assert!(table.open(b_neighbour, 1).is_none(), "one /64, one count");
        drop(slots);
        assert_eq!(table.count(a), 0);
        assert!(table
            .shard(super::super::client::limit_key(a))
            .lock()
            .unwrap()
            .is_empty());
        assert!(table.open(a, 3).is_some());
    }
}
