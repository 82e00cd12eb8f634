//! The HTTP listener: an accept loop handing each connection to hyper's HTTP/1 server with the
//! router as its service, bounded so that no client (or thousands of them) can hold the server.
//!
//! - A request head must arrive whole within [`HEADER_READ_TIMEOUT`], counted from the accept
//!   for a new connection and from the first byte of each later request on a kept-alive one.
//! - A connection with no request in flight is closed after [`IDLE_TIMEOUT`].
//! - A request body must arrive whole within [`BODY_READ_TIMEOUT`] of its head.
//! - At most [`Limits::max_connections`] are open (see [`connection_cap`]). At the cap a new
//!   connection is still served: the open connection that has gone longest without a request in
//!   flight (idle, or still sending its head) is closed for it. A connection with a request in
//!   flight (a log follow stream, a deploy trigger) is never closed for a newcomer; when every
//!   open connection has one, the newcomer is closed instead.
//! - Accept errors (`EMFILE` above all) never end the loop: it closes the longest-idle connection
//!   to free a descriptor and retries after a short pause.
//!
//! - With TLS ([`ServerTls`]), the handshake happens on the connection's own task and counts
//!   against its first head's timeout (timed from the accept), so a client that connects and
//!   says nothing holds a slot no longer over TLS than without it; until its handshake is done
//!   a connection is quiet, and the first to be shed at the cap.
//!
//! A request is in flight from the moment its head is parsed until its response body has been
//! handed to the socket (the body is dropped), which is what lets a follow stream count as busy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::tls::ServerTls;

/// How long a client has to send a whole request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay open with no request in flight and no new request begun.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to send a whole request body once its head has arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Open files always kept for the rest of the server (see [`connection_cap`]).
pub const MIN_RESERVE: u64 = 256;
/// Open files kept per registered app, whose deploys may all run at once.
pub const RESERVE_PER_APP: u64 = 16;
/// The cap never goes above this, however high the open-file limit: an admin API and its
/// webhooks need tens of connections, and each open one costs memory (10 to 20 KiB).
pub const MAX_CONNECTIONS: usize = 1024;

/// How often timeouts are checked; a timeout fires up to this much late.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The pause after an accept error that is not about one connection (EMFILE, ENOBUFS, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After this many connections have closed since the most open, free memory goes back to the OS.
const TRIM_AFTER_CLOSED: usize = 64;
/// Warnings about the cap or accept errors are written at most this often.
const NOTE_EVERY: Duration = Duration::from_secs(10);

/// The bounds the listener enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The default timeouts and a cap sized for `open_files` (the soft RLIMIT_NOFILE) and a
    /// registry of `apps` apps.
    pub fn for_open_files(open_files: u64, apps: usize) -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_connections: connection_cap(open_files, apps),
        }
    }
}

/// How many connections may be open under an open-file limit of `open_files` with `apps` apps.
///
/// The reserve is what the rest of the server may hold at once: per running deploy the pipes
/// of the command it runs (git, docker, ssh: three each, their own files are in their processes),
/// SQLite's two connections (database, WAL and shared-memory files each), the state lock, the
/// runtime's epoll and wake-up descriptors, stdio and the listener. That is a few dozen with a
/// handful of apps; the reserve is `max(256, 64 + 16 × apps)`, several times that. Connections
/// get the rest, but never less than a quarter of the limit (so a huge registry under a tiny
/// limit still leaves the API reachable) and never more than [`MAX_CONNECTIONS`].
pub fn connection_cap(open_files: u64, apps: usize) -> usize {
    let reserve = MIN_RESERVE.max(64 + RESERVE_PER_APP * apps as u64);
    let cap = open_files.saturating_sub(reserve).max(open_files / 4);
    cap.clamp(1, MAX_CONNECTIONS as u64) as usize
}

/// The process's open-file limit, before and after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard one, as servers do: the soft default (often 1024)
/// is there for programs that use `select(2)`, which this one does not.
pub fn raise_open_file_limit() -> io::Result<OpenFiles> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(OpenFiles { before, soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// The soft RLIMIT_NOFILE now.
pub fn open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Serves `router` on `listener` (over TLS when `tls` is given) within `limits` until `shutdown`
/// resolves; then stops accepting (the listening socket is closed), closes the connections with
/// no request in flight, lets the others finish their request (hyper closes them after it), and
/// returns once none is left. Dropping the returned future closes every connection still open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let table = Arc::new(Table::new(limits.max_connections));
    let stopping = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut listener = Some(listener);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notes = Notes::default();
    let mut peak = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown, if listener.is_some() => {
                listener = None;
                stopping.cancel();
            }
            accepted = accept(listener.as_ref()), if listener.is_some() => match accepted {
                Ok(stream) => match table.admit() {
                    Admission::Admitted { id, conn, shed } => {
                        if shed {
                            notes.shed += 1;
                        }
                        let guard = Registered { table: table.clone(), id };
                        let served = Served { router: router.clone(), conn, stopping: stopping.clone(), limits, _registered: guard };
                        tasks.spawn(serve_connection(stream, tls.clone(), served));
                    }
                    Admission::Full => notes.refused += 1,
                },
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors: an idle connection is the one thing here that can
                    // give one back, to the next accept or to a deploy's next command.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) && table.shed_one() {
                        notes.shed += 1;
                    }
                    notes.accept_error(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next() => {}
            _ = sweep.tick() => {
                table.sweep(&limits);
                notes.flush(limits.max_connections);
                // Counted by their tasks, not the table: a connection's memory is freed when its
                // task has ended, which is after it left the table.
                let open = tasks.len();
                peak = peak.max(open);
                if peak - open >= TRIM_AFTER_CLOSED {
                    give_back_memory();
                    peak = open;
                }
            }
        }
        if listener.is_none() && tasks.is_empty() {
            return;
        }
    }
}

/// glibc keeps what thousands of closed connections freed in its per-thread arenas, so a flood
/// would leave the server's resident memory at its peak for good; handing it back once many
/// connections have closed lets it fall back.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Errors about one connection (the peer gave up before the accept): nothing to wait for.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Rate-limited warnings, so a flood or a persistent EMFILE fills no disk.
#[derive(Default)]
struct Notes {
    shed: u64,
    refused: u64,
    accept_errors: u64,
    last: Option<Instant>,
}

impl Notes {
    fn accept_error(&mut self, e: &io::Error) {
        self.accept_errors += 1;
        if self.due() {
            tracing::error!(
                "cannot accept connections: {e}; retrying every {} ms ({} such errors since the last note)",
                ACCEPT_BACKOFF.as_millis(),
                self.accept_errors
            );
            self.accept_errors = 0;
        }
    }

    fn flush(&mut self, cap: usize) {
        if (self.shed > 0 || self.refused > 0) && self.due() {
            tracing::warn!(
                shed = self.shed,
                refused = self.refused,
                "at the cap of {cap} connections: closed the ones idle longest for new ones \
                 (refused new ones when every connection had a request in flight)"
            );
            self.shed = 0;
            self.refused = 0;
        }
    }

    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < NOTE_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// What the accept loop and the timeouts know of one connection, updated by its own task.
struct Conn {
    /// Requests whose response body has not been dropped yet (more than one only if pipelined).
    in_flight: AtomicUsize,
    /// When it last had no request in flight: its accept, or the end of its last response.
    quiet_since: AtomicU64,
    /// When the head it is receiving began ([`NONE`] while nothing of one has arrived).
    head_started: AtomicU64,
    /// Cancelled to close it at once.
    close: CancellationToken,
    epoch: Instant,
}

const NONE: u64 = u64::MAX;

impl Conn {
    fn now(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    fn activity(&self) -> Activity {
        let head = self.head_started.load(Ordering::Relaxed);
        Activity {
            busy: self.in_flight.load(Ordering::Relaxed) > 0,
            quiet_since: self.quiet_since.load(Ordering::Relaxed),
            head_started: (head != NONE).then_some(head),
        }
    }

    /// Bytes came in: if no request is in flight, they begin a head and its timeout.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(NONE, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// A connection's state as the pure decisions below see it (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Activity {
    busy: bool,
    quiet_since: u64,
    head_started: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderRead,
    Idle,
}

/// Whether a connection has outstayed its timeout at `now`.
fn expiry(a: Activity, now: u64, limits: &Limits) -> Option<Expiry> {
    if a.busy {
        return None;
    }
    match a.head_started {
        Some(t) if now.saturating_sub(t) >= limits.header_read_timeout.as_millis() as u64 => Some(Expiry::HeaderRead),
        Some(_) => None,
        None if now.saturating_sub(a.quiet_since) >= limits.idle_timeout.as_millis() as u64 => Some(Expiry::Idle),
        None => None,
    }
}

/// The connection to close for a newcomer: of those with no request in flight, the one quiet
/// the longest (ties: the older connection). None if every one has a request in flight.
fn to_shed(conns: impl IntoIterator<Item = (u64, Activity)>) -> Option<u64> {
    conns.into_iter().filter(|(_, a)| !a.busy).min_by_key(|(id, a)| (a.quiet_since, *id)).map(|(id, _)| id)
}

/// The open connections.
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    cap: usize,
    epoch: Instant,
}

enum Admission {
    Admitted { id: u64, conn: Arc<Conn>, shed: bool },
    Full,
}

impl Table {
    fn new(cap: usize) -> Table {
        Table { conns: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0), cap, epoch: Instant::now() }
    }

    fn admit(&self) -> Admission {
        let mut conns = self.conns.lock().expect("the connection table is never poisoned");
        let mut shed = false;
        if conns.len() >= self.cap {
            match to_shed(conns.iter().map(|(id, c)| (*id, c.activity()))) {
                Some(victim) => {
                    if let Some(c) = conns.remove(&victim) {
                        c.close.cancel();
                    }
                    shed = true;
                }
                None => return Admission::Full,
            }
        }
        let now = Instant::now().duration_since(self.epoch).as_millis() as u64;
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(now),
            // A new connection's first head is timed from the accept, bytes or not.
            head_started: AtomicU64::new(now),
            close: CancellationToken::new(),
            epoch: self.epoch,
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, conn.clone());
        Admission::Admitted { id, conn, shed }
    }

    /// Closes the connection idle longest, if any; true if one was.
    fn shed_one(&self) -> bool {
        let mut conns = self.conns.lock().expect("the connection table is never poisoned");
        let Some(victim) = to_shed(conns.iter().map(|(id, c)| (*id, c.activity()))) else { return false };
        if let Some(c) = conns.remove(&victim) {
            c.close.cancel();
        }
        true
    }

    /// Closes the connections that outstayed their timeout.
    fn sweep(&self, limits: &Limits) {
        let now = Instant::now().duration_since(self.epoch).as_millis() as u64;
        let mut conns = self.conns.lock().expect("the connection table is never poisoned");
        conns.retain(|id, c| match expiry(c.activity(), now, limits) {
            Some(why) => {
                tracing::debug!(connection = id, ?why, "closing a connection that outstayed its timeout");
                c.close.cancel();
                false
            }
            None => true,
        });
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("the connection table is never poisoned").remove(&id);
    }
}

/// Takes a connection out of the table when its task ends, however it ends.
struct Registered {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// What one connection's task serves it with.
struct Served {
    router: Router,
    conn: Arc<Conn>,
    stopping: CancellationToken,
    limits: Limits,
    _registered: Registered,
}

async fn serve_connection(stream: TcpStream, tls: Option<ServerTls>, served: Served) {
    // Answers are small and often streamed line by line: send each as soon as it is written.
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_http(stream, served).await;
    };
    // The sweep closes a connection whose first head has not come within the header timeout of
    // the accept, handshake included; the timeout here bounds the handshake on its own too.
    let handshake = tokio::time::timeout(served.limits.header_read_timeout, tls.accept(stream));
    let session = tokio::select! {
        s = handshake => s.ok().flatten(),
        _ = served.conn.close.cancelled() => None,
        _ = served.stopping.cancelled() => None,
    };
    if let Some(session) = session {
        serve_http(session, served).await;
    }
}

async fn serve_http<S>(stream: S, served: Served)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served { router, conn, stopping, limits, _registered } = served;
    let io = TokioIo::new(Watched { stream, conn: conn.clone() });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::begin(conn.clone());
            let req = req.map(|body| Body::new(TimedBody::new(body, limits.body_read_timeout)));
            let answer = router.clone().oneshot(req);
            async move {
                let resp = answer.await.unwrap_or_else(|e: Infallible| match e {});
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, _in_flight: in_flight }))
            }
        })
    };
    let http = hyper::server::conn::http1::Builder::new().header_read_timeout(None).serve_connection(io, service);
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection ended: {e}");
            }
            return;
        }
        _ = conn.close.cancelled() => return,
        _ = stopping.cancelled() => {}
    }
    if conn.in_flight.load(Ordering::Relaxed) == 0 {
        return;
    }
    // Let the request in flight end (a follow stream ends with the server's shutdown token),
    // then hyper closes the connection instead of reading another request.
    http.as_mut().graceful_shutdown();
    tokio::select! {
        _ = http => {}
        _ = conn.close.cancelled() => {}
    }
}

/// The socket (or the TLS session over it), noting when bytes of a request arrive (to time
/// request heads).
struct Watched<S> {
    stream: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_arrived();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One request in flight on a connection; when the last one ends, the connection is quiet.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        if c.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Bytes of a pipelined next request already read stay uncounted: that head is then
            // bounded by the idle timeout instead of the header one.
            c.head_started.store(NONE, Ordering::Relaxed);
            c.quiet_since.store(c.now(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request in flight until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails if it has not arrived whole within the body timeout of its head.
struct TimedBody {
    body: Incoming,
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration) -> TimedBody {
        // Most requests have no body: no timer for them.
        let deadline = (!body.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        TimedBody { body, deadline, timeout }
    }
}

/// The error a request body that came too slowly ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s of its head", .0.as_secs())]
pub struct BodyReadTimeout(Duration);

impl BodyReadTimeout {
    /// Whether `e` (a body error, wrapped any number of times) is this timeout.
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<BodyReadTimeout>())
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let late = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    Poll::Ready(Some(Err(BodyReadTimeout(this.timeout).into())))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(since: u64) -> Activity {
        Activity { busy: false, quiet_since: since, head_started: None }
    }

    #[test]
    fn the_cap_keeps_a_reserve_for_the_pipeline_under_the_common_1024_limit() {
        assert_eq!(connection_cap(1024, 0), 768);
        assert_eq!(connection_cap(1024, 12), 768, "a dozen apps fit in the minimum reserve");
        assert_eq!(connection_cap(1024, 30), 1024 - (64 + 16 * 30));
    }

    #[test]
    fn the_cap_never_exceeds_the_maximum_nor_falls_below_a_quarter_of_the_limit() {
        assert_eq!(connection_cap(1_048_576, 3), MAX_CONNECTIONS);
        assert_eq!(connection_cap(1024, 1000), 256, "a huge registry still leaves the API a quarter");
        assert_eq!(connection_cap(256, 0), 64);
        assert_eq!(connection_cap(2, 0), 1, "there is always room for one connection");
    }

    #[test]
    fn the_connection_quiet_longest_is_shed_first() {
        let conns = [(1, quiet(300)), (2, quiet(100)), (3, quiet(200))];
        assert_eq!(to_shed(conns), Some(2));
    }

    #[test]
    fn a_connection_sending_its_head_is_shed_like_an_idle_one() {
        let sending = Activity { busy: false, quiet_since: 50, head_started: Some(60) };
        assert_eq!(to_shed([(1, quiet(100)), (2, sending)]), Some(2));
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_never_shed() {
        let busy = Activity { busy: true, quiet_since: 0, head_started: None };
        assert_eq!(to_shed([(1, busy), (2, quiet(500))]), Some(2));
        assert_eq!(to_shed([(1, busy), (2, busy)]), None, "all busy: the newcomer is the one refused");
    }

    #[test]
    fn equally_quiet_connections_shed_the_older_first() {
        assert_eq!(to_shed([(7, quiet(100)), (3, quiet(100))]), Some(3));
    }

    #[test]
    fn a_head_must_arrive_within_the_header_timeout_of_its_first_byte() {
        let l = Limits::for_open_files(1024, 0);
        let h = HEADER_READ_TIMEOUT.as_millis() as u64;
        let sending = Activity { busy: false, quiet_since: 0, head_started: Some(10_000) };
        assert_eq!(expiry(sending, 10_000 + h - 1, &l), None);
        assert_eq!(expiry(sending, 10_000 + h, &l), Some(Expiry::HeaderRead));
    }

    #[test]
    fn a_quiet_connection_is_closed_after_the_idle_timeout() {
        let l = Limits::for_open_files(1024, 0);
        let i = IDLE_TIMEOUT.as_millis() as u64;
        assert_eq!(expiry(quiet(1000), 1000 + i - 1, &l), None);
        assert_eq!(expiry(quiet(1000), 1000 + i, &l), Some(Expiry::Idle));
    }

    #[test]
    fn a_request_in_flight_has_no_timeout_here() {
        let l = Limits::for_open_files(1024, 0);
        let busy = Activity { busy: true, quiet_since: 0, head_started: Some(0) };
        assert_eq!(expiry(busy, u64::MAX / 2, &l), None);
    }

    #[test]
    fn a_body_timeout_is_recognised_however_deeply_it_is_wrapped() {
        let inner: axum::BoxError = BodyReadTimeout(BODY_READ_TIMEOUT).into();
        let wrapped = axum::Error::new(axum::Error::new(inner));
        assert!(BodyReadTimeout::caused(&wrapped));
        assert!(!BodyReadTimeout::caused(&axum::Error::new(io::Error::other("length limit exceeded"))));
    }

    #[test]
    fn raising_the_open_file_limit_reaches_the_hard_limit() {
        let files = raise_open_file_limit().expect("getrlimit/setrlimit");
        assert_eq!(files.soft, files.hard);
        assert!(files.soft >= files.before);
        assert_eq!(open_file_limit().unwrap(), files.soft);
    }
}
