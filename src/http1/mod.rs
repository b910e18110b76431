//! HTTP/1.1 framing shared by weir's server side (its own HTTP/1.x driver) and its worker side
//! (its client to workers): the message and body decoder (`decode`: response heads, and
//! bodies framed by length, chunks or the connection's close), a client's request body as the
//! request path sees it (`body`), and the hand-off of a connection that switched protocols
//! (`upgrade`). Where a framing line ends is `values::lines`'s one rule. It imports nothing of
//! the crate above `values`, so both sides can use it without depending on each other.

mod body;
pub mod decode;
#[cfg(test)]
mod decode_fuzz;
mod upgrade;

pub use body::{BodyError, RequestBody};
pub use decode::{
    chunked_alone, parse_head, BodyDecoder, DecodeError, Decoded, Framing, ResponseHead,
};
pub use upgrade::{Io, PendingUpgrade, Upgraded};
