//! weir's own HTTP/1.1 server path, in the making (issue: Performance II). What is here so
//! far is its codec, built like the worker side's: the request-head parser (`head`), strict
//! about framing, reading into slices of the connection's buffer; the response-head encoder
//! (`encode`), writing straight into the connection's write buffer; and the per-second `Date`
//! (`date`). The connection driver that will serve through them (pipelining, one write per
//! response, buffers released while idle, per-connection timers) comes next; until then hyper
//! serves every connection.

pub mod date;
pub mod encode;
pub mod head;
#[cfg(test)]
mod head_fuzz;

pub use encode::{encode_response_head, put_chunk_size, ResponseFraming};
pub use head::{parse_request_head, HeadError, RequestFraming, RequestHead};
