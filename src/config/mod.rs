//! Configuration: the TOML model, loading with one-line errors, and semantic validation.
//!
//! A config is loaded once at start and held behind `ArcSwap` in [`crate::state`], so a reload
//! swaps a fully validated snapshot in one step.

pub mod changes;
mod model;
mod validate;

pub use crate::values::{parse_duration, parse_socket_addr, Dur};
pub use model::*;
pub use validate::ConfigError;

use std::path::Path;

/// Read, parse and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        line: None,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, &path.display().to_string())
}

/// Parse and validate config text; `origin` names it in errors (a path, or `"<inline>"`).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let config = validate::deserialize(text, origin)?;
    validate::check(&config, origin)?;
    Ok(config)
}
