//! weir's own HTTP/1.1 server path, built like the worker side: the request-head parser
//! (`head`), strict about framing, reading into slices of the connection's buffer; the
//! response-head encoder (`encode`), writing straight into the connection's write buffer; the
//! per-second `Date` (`date`); and the connection driver (`conn`): pipelined requests in
//! order, bodies fed from the read buffer with backpressure, one write per response where the
//! body is ready, no buffers held while idle, one head timer per connection, and the hand-off
//! of a switched connection to its tunnel. Every HTTP/1.x client connection is served here;
//! HTTP/2 stays on hyper.

pub mod conn;
pub mod date;
pub mod encode;
pub mod head;
#[cfg(test)]
mod head_fuzz;

pub use encode::{encode_response_head, put_chunk_size, Persistence, ResponseFraming};
pub use head::{parse_request_head, HeadError, RequestFraming, RequestHead};
