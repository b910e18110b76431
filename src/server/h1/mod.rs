//! weir's own HTTP/1.1 server path, in the making (issue: Performance II), built like the
//! worker side: the request-head parser (`head`), strict about framing, reading into slices
//! of the connection's buffer; the response-head encoder (`encode`), writing straight into the
//! connection's write buffer; the per-second `Date` (`date`); and the connection driver
//! (`conn`): pipelined requests in order, bodies fed from the read buffer with backpressure,
//! one write per response where the body is ready, buffers given back while idle, one head
//! timer per connection. Not wired into the listeners yet: hyper serves every connection until
//! the proxy takes this driver's requests (its body type and upgrades) next.

pub mod conn;
pub mod date;
pub mod encode;
pub mod head;
#[cfg(test)]
mod head_fuzz;

pub use encode::{encode_response_head, put_chunk_size, ResponseFraming};
pub use head::{parse_request_head, HeadError, RequestFraming, RequestHead};
