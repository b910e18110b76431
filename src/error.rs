//! The one failure type of the request path, and the one place it becomes an HTTP status, a
//! log line and a metric label.
//!
//! A [`ProxyError`] says what went wrong (its kind), where on the way it happened
//! ([`Stage`]), whether any request byte reached a worker, and what that allows
//! ([`RetryVerdict`]): the request path asks it one question ("may I try again, and where?")
//! instead of re-deriving the answer from flags at each layer.

use std::fmt;
use std::io;

use http::StatusCode;
use tracing::Level;

use crate::http1::BodyError;

/// Where on the request path a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The client: a request weir will not forward, no route for it, or a client that went away
    /// (or whose upload broke off) before its response.
    Client,
    /// Waiting for a worker slot: the queue was full, the wait timed out, or the launch it
    /// waited for failed.
    Queue,
    /// Connecting to the worker.
    Connect,
    /// On the worker connection, before the response head was complete.
    WorkerBeforeResponse,
    /// On the worker connection, while the response body was streaming to the client.
    WorkerMidResponse,
    /// The worker sent no response head within `upstream.response_timeout`, or no more of its
    /// response body within `upstream.read_timeout`.
    Timeout,
    /// weir's own state.
    Internal,
}

impl Stage {
    /// Every stage, in the order of [`Stage::index`] (one pre-registered metric series each).
    pub const ALL: [Stage; 7] = [
        Stage::Client,
        Stage::Queue,
        Stage::Connect,
        Stage::WorkerBeforeResponse,
        Stage::WorkerMidResponse,
        Stage::Timeout,
        Stage::Internal,
    ];

    /// The label in metrics (`stage`) and the access log (`error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Client => "client",
            Stage::Queue => "queue",
            Stage::Connect => "connect",
            Stage::WorkerBeforeResponse => "worker_before_response",
            Stage::WorkerMidResponse => "worker_mid_response",
            Stage::Timeout => "timeout",
            Stage::Internal => "internal",
        }
    }

    /// Position in [`Stage::ALL`], for indexing pre-registered series.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a failure allows: whether the request may be tried again, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryVerdict {
    /// Not again: the worker may have acted on it, or trying again cannot help.
    None,
    /// Again to the same worker on a new connection: a pooled keep-alive connection failed,
    /// which a worker closing an idle connection also causes, so it says nothing about the
    /// worker.
    FreshConnection,
    /// Again on another worker (within the pool's tries and retry budget).
    OtherWorker,
}

impl RetryVerdict {
    /// The verdict on a worker connection that failed before a response: the request can go
    /// again when no byte of it was sent (any method) or it is `replayable` (idempotent, its
    /// body held in memory); a `reused` pooled connection may just have gone stale, so the
    /// same worker gets one more try on a fresh one first.
    pub fn after_connection_failure(sent: bool, replayable: bool, reused: bool) -> Self {
        if sent && !replayable {
            RetryVerdict::None
        } else if reused {
            RetryVerdict::FreshConnection
        } else {
            RetryVerdict::OtherWorker
        }
    }
}

/// What went wrong.
#[derive(Debug)]
enum ErrorKind {
    /// No route matches the host and path.
    NoRoute,
    /// The request is malformed in a way that would be unsafe to forward.
    BadRequest(&'static str),
    /// The request's `Host` is missing, repeated, not `host[:port]`, or disagrees with the
    /// request target (RFC 9112 §3.2).
    BadHost(&'static str),
    /// The request's body has a transfer coding besides `chunked` (gzip, say), which weir
    /// would otherwise drop on the way and so hand the worker bytes it reads differently.
    UnsupportedCoding,
    /// The client went away, or its request body broke off, before its response.
    ClientGone,
    /// The client sent no more of its request body within `server.request_body_timeout`.
    ClientStalled,
    /// One HTTP/2 connection has too many streams whose bodies weir is still reading.
    TooManyBodies,
    /// The route's queue was full; the client should come back after `retry_after` seconds.
    QueueFull {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// No worker slot freed within the route's `queue.timeout`.
    QueueTimeout {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// The launch the request waited for failed, and no other worker can take it.
    NoCapacity {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// Connecting to, writing to or reading from the worker failed (or it closed the
    /// connection).
    Io(io::Error),
    /// The worker answered in a way weir cannot pass on.
    BadResponse(&'static str),
    /// No response head within `upstream.response_timeout`.
    TimedOut,
    /// No more of the response body within `upstream.read_timeout`.
    Stalled,
    /// A state weir should never be in.
    Internal(&'static str),
}

/// Why a request could not be proxied (or its response broke off), with what the request path
/// needs to decide what comes next. Small (32 bytes) and without allocation: it is built on
/// failures only, but the futures that may return it carry its size.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    stage: Stage,
    /// Some byte of the request reached the worker.
    sent: bool,
    retry: RetryVerdict,
    /// The worker is to blame for certain (it refused the connection, answered garbage, or
    /// broke a fresh connection): the failure counts toward its passive ejection.
    blames_worker: bool,
}

/// How a failure is reported: the response the client gets, the log line and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The status sent. For a failure after the head went out, the one it would have had:
    /// the access log and metrics record it for a worker's failure or a time limit (that
    /// response did not reach the client, whatever its head said), while a failure of the
    /// client's own keeps the status already sent.
    pub status: StatusCode,
    /// `Retry-After` seconds, when the client should come back later.
    pub retry_after: Option<u64>,
    /// The short body sent to the client: enough to tell weir's errors from the app's,
    /// nothing about internals.
    pub body: &'static str,
    /// Level of the log line.
    pub level: Level,
    /// Message of the log line (the error itself goes in a field).
    pub message: &'static str,
    /// The `stage` label of `weir_request_errors_total` and the access log's `error`.
    pub label: &'static str,
    /// Close the client connection after this answer (HTTP/1.1): the rest of the request
    /// is not coming, so the connection cannot carry another one.
    pub close: bool,
}

/// Status recorded for a client that went away before its response (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl ProxyError {
    fn new(kind: ErrorKind, stage: Stage) -> Self {
        ProxyError {
            kind,
            stage,
            sent: false,
            retry: RetryVerdict::None,
            blames_worker: false,
        }
    }

    /// No route matches the request.
    pub fn no_route() -> Self {
        ProxyError::new(ErrorKind::NoRoute, Stage::Client)
    }

    /// The request cannot be forwarded safely; `why` is the body the client gets.
    pub fn bad_request(why: &'static str) -> Self {
        ProxyError::new(ErrorKind::BadRequest(why), Stage::Client)
    }

    /// A transfer coding other than `chunked` alone: 501 (RFC 9112 §6.1).
    pub fn unsupported_coding() -> Self {
        ProxyError::new(ErrorKind::UnsupportedCoding, Stage::Client)
    }

    /// The request's `Host` cannot be trusted; `why` is the body the client gets. Logged at
    /// info, unlike other refusals: a bad Host is how request smuggling and cache poisoning
    /// through a proxy are tried, and an operator should see it.
    pub fn bad_host(why: &'static str) -> Self {
        ProxyError::new(ErrorKind::BadHost(why), Stage::Client)
    }

    /// The client's request body failed (`sent`: after some of the request reached a worker).
    /// A body that broke off is a client that went away; one that could not be decoded (a
    /// bad chunk) is a bad request; one that stopped coming has stalled.
    pub fn client_body(error: &ClientBodyError, sent: bool) -> Self {
        let malformed = match error {
            ClientBodyError::Http2(error) => std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<io::Error>())
                .is_some_and(|e| {
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                    )
                }),
            ClientBodyError::Http1(BodyError::Malformed) => true,
            ClientBodyError::Http1(BodyError::Stalled) => return ProxyError::client_stalled(sent),
            ClientBodyError::Http1(BodyError::Incomplete) => false,
            ClientBodyError::Spool(_) => {
                let mut failure =
                    ProxyError::internal("weir: reading the buffered request body back failed\n");
                failure.sent = sent;
                return failure;
            }
        };
        let mut failure = if malformed {
            ProxyError::bad_request("weir: the request body is malformed\n")
        } else {
            ProxyError::new(ErrorKind::ClientGone, Stage::Client)
        };
        failure.sent = sent;
        failure
    }

    /// The client stopped sending its request body for `server.request_body_timeout`
    /// (`sent`: after some of the request reached a worker): 408, and the worker slot frees.
    pub fn client_stalled(sent: bool) -> Self {
        ProxyError {
            sent,
            ..ProxyError::new(ErrorKind::ClientStalled, Stage::Client)
        }
    }

    /// An HTTP/2 stream whose client took no response bytes for `server.send_timeout` was
    /// cut (recorded by the response itself; this only tells hyper to reset the stream).
    pub fn client_not_reading() -> Self {
        ProxyError::new(ErrorKind::ClientGone, Stage::Client)
    }

    /// The connection already has as many request bodies being read as it may.
    pub fn too_many_bodies() -> Self {
        ProxyError::new(ErrorKind::TooManyBodies, Stage::Client)
    }

    /// The route's queue was full.
    pub fn queue_full(retry_after: u64) -> Self {
        ProxyError::new(ErrorKind::QueueFull { retry_after }, Stage::Queue)
    }

    /// No slot freed within the queue timeout.
    pub fn queue_timeout(retry_after: u64) -> Self {
        ProxyError::new(ErrorKind::QueueTimeout { retry_after }, Stage::Queue)
    }

    /// The launch the request waited for failed.
    pub fn no_capacity(retry_after: u64) -> Self {
        ProxyError::new(ErrorKind::NoCapacity { retry_after }, Stage::Queue)
    }

    /// No connection to the worker: its fault, and nothing was sent, so any request may go to
    /// another worker.
    pub fn connect(error: io::Error) -> Self {
        ProxyError {
            retry: RetryVerdict::OtherWorker,
            blames_worker: true,
            ..ProxyError::new(ErrorKind::Io(error), Stage::Connect)
        }
    }

    /// The worker connection failed before a response head; see
    /// [`RetryVerdict::after_connection_failure`]. Only a fresh connection failing is held
    /// against the worker.
    pub fn connection_failed(error: io::Error, sent: bool, replayable: bool, reused: bool) -> Self {
        ProxyError {
            sent,
            retry: RetryVerdict::after_connection_failure(sent, replayable, reused),
            blames_worker: !reused,
            ..ProxyError::new(ErrorKind::Io(error), Stage::WorkerBeforeResponse)
        }
    }

    /// The worker's response head cannot be passed on (`why` is the client's body): it
    /// certainly misbehaved, and another try would likely see the same.
    pub fn bad_response(why: &'static str, sent: bool) -> Self {
        ProxyError {
            sent,
            blames_worker: true,
            ..ProxyError::new(ErrorKind::BadResponse(why), Stage::WorkerBeforeResponse)
        }
    }

    /// No response head in time. Not held against the worker: slow is not dead.
    pub fn timed_out(sent: bool) -> Self {
        ProxyError {
            sent,
            ..ProxyError::new(ErrorKind::TimedOut, Stage::Timeout)
        }
    }

    /// The worker sent nothing more of its response body within `upstream.read_timeout`. Not
    /// held against the worker (slow is not dead), and never tried again.
    pub fn read_timed_out() -> Self {
        ProxyError {
            sent: true,
            ..ProxyError::new(ErrorKind::Stalled, Stage::Timeout)
        }
    }

    /// The worker connection failed while the response body streamed.
    pub fn mid_response(error: io::Error) -> Self {
        ProxyError {
            sent: true,
            ..ProxyError::new(ErrorKind::Io(error), Stage::WorkerMidResponse)
        }
    }

    /// The worker's response body cannot be decoded.
    pub fn bad_body(why: &'static str) -> Self {
        ProxyError {
            sent: true,
            ..ProxyError::new(ErrorKind::BadResponse(why), Stage::WorkerMidResponse)
        }
    }

    /// weir reached a state it should never be in; `why` is the client's body.
    pub fn internal(why: &'static str) -> Self {
        ProxyError::new(ErrorKind::Internal(why), Stage::Internal)
    }

    /// Where it failed.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether any byte of the request reached a worker.
    pub fn sent(&self) -> bool {
        self.sent
    }

    /// May the request be tried again, and where.
    pub fn retry(&self) -> RetryVerdict {
        self.retry
    }

    /// Whether the failure counts toward the worker's passive ejection.
    pub fn blames_worker(&self) -> bool {
        self.blames_worker
    }

    /// The gRPC status a gRPC client gets for this failure (it cannot read an HTTP status):
    /// UNAVAILABLE (14) for a worker that could not be reached or failed, RESOURCE_EXHAUSTED
    /// (8) for a full queue, DEADLINE_EXCEEDED (4) for any time limit, UNIMPLEMENTED (12)
    /// for no route, CANCELLED (1) for a client that went away, INTERNAL (13) for the rest.
    pub fn grpc_status(&self) -> u8 {
        match &self.kind {
            ErrorKind::NoRoute => 12,
            ErrorKind::ClientGone | ErrorKind::ClientStalled => 1,
            ErrorKind::QueueFull { .. } | ErrorKind::TooManyBodies => 8,
            ErrorKind::QueueTimeout { .. } | ErrorKind::TimedOut | ErrorKind::Stalled => 4,
            ErrorKind::NoCapacity { .. } | ErrorKind::Io(_) => 14,
            ErrorKind::BadRequest(_)
            | ErrorKind::BadHost(_)
            | ErrorKind::UnsupportedCoding
            | ErrorKind::BadResponse(_)
            | ErrorKind::Internal(_) => 13,
        }
    }

    /// The one mapping from a failure to what the client, the log and the metrics see.
    pub fn report(&self) -> Report {
        let (status, retry_after, body) = match &self.kind {
            ErrorKind::NoRoute => (
                StatusCode::NOT_FOUND,
                None,
                "weir: no route for this host and path\n",
            ),
            ErrorKind::BadRequest(why) | ErrorKind::BadHost(why) => {
                (StatusCode::BAD_REQUEST, None, *why)
            }
            ErrorKind::UnsupportedCoding => (
                StatusCode::NOT_IMPLEMENTED,
                None,
                "weir: only the chunked transfer coding is supported\n",
            ),
            ErrorKind::ClientGone => (
                client_closed_request(),
                None,
                "weir: the request ended before it was complete\n",
            ),
            ErrorKind::ClientStalled => (
                StatusCode::REQUEST_TIMEOUT,
                None,
                "weir: the request body did not arrive in time\n",
            ),
            ErrorKind::TooManyBodies => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(1),
                "weir: too many request bodies in progress on this connection\n",
            ),
            ErrorKind::QueueFull { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                "weir: too many requests waiting; retry later\n",
            ),
            ErrorKind::QueueTimeout { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                "weir: no worker was free in time; retry later\n",
            ),
            ErrorKind::NoCapacity { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                "weir: no worker could be started; retry later\n",
            ),
            ErrorKind::Io(_) => (
                StatusCode::BAD_GATEWAY,
                None,
                match self.stage {
                    Stage::Connect => "weir: could not connect to a worker\n",
                    Stage::WorkerMidResponse => "weir: the worker broke off its response\n",
                    _ => "weir: the worker failed before responding\n",
                },
            ),
            ErrorKind::BadResponse(why) => (StatusCode::BAD_GATEWAY, None, *why),
            ErrorKind::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                None,
                "weir: the worker did not respond in time\n",
            ),
            ErrorKind::Stalled => (
                StatusCode::GATEWAY_TIMEOUT,
                None,
                "weir: the worker stalled mid-response\n",
            ),
            ErrorKind::Internal(why) => (StatusCode::INTERNAL_SERVER_ERROR, None, *why),
        };
        let (level, message) = match self.stage {
            // Clients leave all the time; refusals are the client's business.
            Stage::Client if matches!(self.kind, ErrorKind::ClientGone) => {
                (Level::DEBUG, "client went away")
            }
            Stage::Client if matches!(self.kind, ErrorKind::ClientStalled) => {
                (Level::WARN, "request body stalled")
            }
            Stage::Client if matches!(self.kind, ErrorKind::BadHost(_)) => {
                (Level::INFO, "request refused: bad Host")
            }
            Stage::Client => (Level::DEBUG, "request refused"),
            Stage::Queue | Stage::Connect | Stage::WorkerBeforeResponse | Stage::Timeout => {
                (Level::WARN, "request failed")
            }
            Stage::WorkerMidResponse => (Level::WARN, "response broke off"),
            Stage::Internal => (Level::ERROR, "request failed"),
        };
        Report {
            status,
            retry_after,
            body,
            level,
            message,
            label: self.stage.as_str(),
            close: matches!(self.kind, ErrorKind::ClientStalled),
        }
    }
}

/// 499, which `http` has no constant for.
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::NoRoute => f.write_str("no route"),
            ErrorKind::BadRequest(why) => write!(f, "bad request: {}", why.trim_end()),
            ErrorKind::BadHost(why) => write!(f, "bad Host: {}", why.trim_end()),
            ErrorKind::UnsupportedCoding => write!(f, "transfer coding other than chunked"),
            ErrorKind::ClientGone => f.write_str("the client went away before its response"),
            ErrorKind::ClientStalled => {
                f.write_str("the request body stalled (request_body_timeout or min_data_rate)")
            }
            ErrorKind::TooManyBodies => {
                f.write_str("too many request bodies being read on one connection")
            }
            ErrorKind::QueueFull { .. } => f.write_str("queue full"),
            ErrorKind::QueueTimeout { .. } => f.write_str("timed out waiting in the queue"),
            ErrorKind::NoCapacity { .. } => f.write_str("the worker launch it waited for failed"),
            ErrorKind::Io(e) => match self.stage {
                Stage::Connect => write!(f, "connect to worker failed: {e}"),
                Stage::WorkerMidResponse => write!(f, "worker connection failed mid-body: {e}"),
                _ => write!(f, "worker connection failed: {e}"),
            },
            ErrorKind::BadResponse(why) => write!(f, "bad worker response: {}", why.trim_end()),
            ErrorKind::TimedOut => f.write_str("worker response timed out"),
            ErrorKind::Stalled => f.write_str(
                "the worker sent no more of its response body within upstream.read_timeout",
            ),
            ErrorKind::Internal(why) => write!(f, "internal error: {}", why.trim_end()),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a client's body broke off.
#[derive(Debug)]
pub enum ClientBodyError {
    /// hyper's reading of an HTTP/2 body.
    Http2(hyper::Error),
    /// weir's own HTTP/1.x driver.
    Http1(BodyError),
    /// Reading back what weir buffered in a temporary file.
    Spool(std::io::Error),
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Http2(e) => e.fmt(f),
            ClientBodyError::Http1(e) => e.fmt(f),
            ClientBodyError::Spool(e) => write!(f, "reading the buffered body back failed: {e}"),
        }
    }
}

impl std::error::Error for ClientBodyError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn each_failure_maps_to_its_status_level_and_label() {
        let cases = [
            (ProxyError::no_route(), 404, Level::DEBUG, "client"),
            (ProxyError::bad_request("x\n"), 400, Level::DEBUG, "client"),
            (ProxyError::bad_host("x\n"), 400, Level::INFO, "client"),
            (ProxyError::queue_full(1), 503, Level::WARN, "queue"),
            (ProxyError::queue_timeout(1), 503, Level::WARN, "queue"),
            (ProxyError::no_capacity(1), 503, Level::WARN, "queue"),
            (ProxyError::connect(refused()), 502, Level::WARN, "connect"),
            (
                ProxyError::connection_failed(refused(), true, false, false),
                502,
                Level::WARN,
                "worker_before_response",
            ),
            (
                ProxyError::bad_response("weir: the worker x\n", true),
                502,
                Level::WARN,
                "worker_before_response",
            ),
            (ProxyError::timed_out(true), 504, Level::WARN, "timeout"),
            (ProxyError::read_timed_out(), 504, Level::WARN, "timeout"),
            (
                ProxyError::mid_response(refused()),
                502,
                Level::WARN,
                "worker_mid_response",
            ),
            (
                ProxyError::bad_body("weir: bad chunk\n"),
                502,
                Level::WARN,
                "worker_mid_response",
            ),
            (ProxyError::internal("x\n"), 500, Level::ERROR, "internal"),
        ];
        for (error, status, level, label) in cases {
            let report = error.report();
            assert_eq!(report.status.as_u16(), status, "{error}");
            assert_eq!(report.level, level, "{error}");
            assert_eq!(report.label, label, "{error}");
            assert!(report.body.starts_with("weir:") || report.body == "x\n");
        }
        let gone = ProxyError::new(ErrorKind::ClientGone, Stage::Client).report();
        assert_eq!(gone.status.as_u16(), CLIENT_CLOSED_REQUEST);
        assert_eq!(
            (gone.level, gone.message),
            (Level::DEBUG, "client went away")
        );
    }

    #[test]
    fn stages_index_their_series() {
        for (i, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(stage.index(), i, "{}", stage.as_str());
        }
    }

    #[test]
    fn queue_refusals_tell_the_client_when_to_come_back() {
        assert_eq!(ProxyError::queue_full(3).report().retry_after, Some(3));
        assert_eq!(ProxyError::no_capacity(2).report().retry_after, Some(2));
        assert_eq!(ProxyError::timed_out(true).report().retry_after, None);
    }

    #[test]
    fn verdicts_follow_what_reached_the_worker() {
        use RetryVerdict::*;
        // Never sent: any method may go again; a pooled connection first gets a fresh one.
        assert_eq!(
            RetryVerdict::after_connection_failure(false, false, false),
            OtherWorker
        );
        assert_eq!(
            RetryVerdict::after_connection_failure(false, false, true),
            FreshConnection
        );
        // Sent: only a replayable request.
        assert_eq!(
            RetryVerdict::after_connection_failure(true, false, true),
            None
        );
        assert_eq!(
            RetryVerdict::after_connection_failure(true, true, true),
            FreshConnection
        );
        assert_eq!(
            RetryVerdict::after_connection_failure(true, true, false),
            OtherWorker
        );
        // A refused connection sent nothing.
        let connect = ProxyError::connect(refused());
        assert_eq!((connect.retry(), connect.sent()), (OtherWorker, false));
        // Garbage, a timeout, a broken body or the client's failure: never again.
        for error in [
            ProxyError::bad_response("x\n", true),
            ProxyError::timed_out(true),
            ProxyError::read_timed_out(),
            ProxyError::mid_response(refused()),
            ProxyError::no_route(),
            ProxyError::queue_full(1),
        ] {
            assert_eq!(error.retry(), None, "{error}");
        }
    }

    #[test]
    fn only_certain_worker_faults_count_toward_ejection() {
        assert!(ProxyError::connect(refused()).blames_worker());
        assert!(ProxyError::bad_response("x\n", true).blames_worker());
        assert!(ProxyError::connection_failed(refused(), true, true, false).blames_worker());
        // A pooled connection may just have gone stale; slow is not dead.
        assert!(!ProxyError::connection_failed(refused(), true, true, true).blames_worker());
        assert!(!ProxyError::timed_out(true).blames_worker());
        assert!(!ProxyError::read_timed_out().blames_worker());
    }
}
