//! The one error type of the request path and the one place it becomes an HTTP status.

use std::fmt;

use http::StatusCode;

/// Why a request could not be proxied. Each variant knows its status and whether the failure
/// is the client's, a worker's or weir's own.
#[derive(Debug)]
pub enum ProxyError {
    /// No route matches the host and path.
    NoRoute,
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
    /// The request is malformed in a way that would be unsafe to forward.
    BadRequest(&'static str),
    /// TCP connect to the worker failed or timed out.
    Connect(std::io::Error),
    /// The worker connection failed before a response arrived.
    Upstream(std::io::Error),
    /// The worker answered in a way weir cannot pass on.
    BadWorkerResponse(&'static str),
    /// The launch the request waited for failed, and no other worker can take it.
    NoCapacity {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// The worker sent no response headers within `upstream.response_timeout`.
    ResponseTimeout,
}

/// Who is at fault, for logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong.
    Client,
    /// The worker failed.
    Worker,
    /// weir's own configuration or state.
    Proxy,
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. }
            | ProxyError::NoCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::BadWorkerResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute | ProxyError::BadRequest(_) => Fault::Client,
            ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. }
            | ProxyError::NoCapacity { .. } => Fault::Proxy,
            ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadWorkerResponse(_)
            | ProxyError::ResponseTimeout => Fault::Worker,
        }
    }

    /// Seconds the client should wait before retrying, for a `Retry-After` header.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::QueueFull { retry_after }
            | ProxyError::QueueTimeout { retry_after }
            | ProxyError::NoCapacity { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The short body sent to the client: enough to tell weir's errors from the app's, nothing
    /// about internals.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "weir: no route for this host and path\n",
            ProxyError::QueueFull { .. } => "weir: too many requests waiting; retry later\n",
            ProxyError::QueueTimeout { .. } => "weir: no worker was free in time; retry later\n",
            ProxyError::NoCapacity { .. } => "weir: no worker could be started; retry later\n",
            ProxyError::BadRequest(why) => why,
            ProxyError::Connect(_) => "weir: could not connect to a worker\n",
            ProxyError::Upstream(_) => "weir: the worker failed before responding\n",
            ProxyError::BadWorkerResponse(why) => why,
            ProxyError::ResponseTimeout => "weir: the worker did not respond in time\n",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoRoute => f.write_str("no route"),
            ProxyError::QueueFull { .. } => f.write_str("queue full"),
            ProxyError::QueueTimeout { .. } => f.write_str("timed out waiting in the queue"),
            ProxyError::NoCapacity { .. } => f.write_str("the worker launch it waited for failed"),
            ProxyError::BadRequest(why) => write!(f, "bad request: {}", why.trim_end()),
            ProxyError::Connect(e) => write!(f, "connect to worker failed: {e}"),
            ProxyError::Upstream(e) => write!(f, "worker connection failed: {e}"),
            ProxyError::BadWorkerResponse(why) => {
                write!(f, "bad worker response: {}", why.trim_end())
            }
            ProxyError::ResponseTimeout => f.write_str("worker response timed out"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ProxyError::ResponseTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProxyError::Connect(refused).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(ProxyError::BadRequest("x\n").fault(), Fault::Client);
    }
}
