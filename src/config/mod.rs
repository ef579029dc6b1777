//! Configuration: the TOML shape from the design, embedded defaults, and validation that names
//! the offending key.
//!
//! - `model`: the config types, defaults and cross-key checks;
//! - `file`: the TOML file and how its values become config;
//! - `values`: one value at a time (addresses, sizes, durations);
//! - `error`: config-time failures.

mod error;
mod file;
mod model;
mod values;

pub use error::ConfigError;
pub use model::*;
pub use values::{parse_admin_listen, parse_duration, parse_listen, parse_parent_urls, parse_size};

#[cfg(test)]
mod tests;
