//! Small value types of the config file with their parsers and tests: durations, byte sizes,
//! CIDR networks, host patterns (and the `host[:port]` check of a client's `Host`), status
//! lists, cron schedules, request paths, the `Connection` field's options and where a framing
//! line ends. The config deserialises straight into them (each reads its text through
//! `TryFrom<String>`), so a value is parsed once, when the file is read, and whatever holds a
//! config holds checked values. They sit at the bottom of the crate and import nothing from it,
//! so the config model, the request path and the scaler can all use them without depending on
//! each other.

mod address;
mod cidr;
pub mod clock;
pub mod connection;
mod cron;
mod duration;
pub mod field_spans;
mod header_rules;
mod host;
pub mod lines;
pub mod path;
mod size;
mod status;
mod target;
mod url;

pub use address::{parse_socket_addr, Address};
pub use cidr::Cidr;
pub use cron::{unix_minutes_now, CivilMinute, Cron};
pub use duration::{parse as parse_duration, Dur};
pub use header_rules::HeaderRules;
pub use host::{HostName, HostPattern, HostPort, HostRule};
pub use path::RequestPath;
pub use size::ByteSize;
pub use status::StatusRanges;
pub use target::WorkerTarget;
pub use url::WebUrl;
