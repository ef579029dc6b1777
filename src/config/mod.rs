//! Configuration: the TOML shape from the design, embedded defaults, and validation that names
//! the offending key.
//!
//! - `model`: the config types, defaults and cross-key checks (`fleet_model`: `[storage]`,
//!   `[fleet]` and `parent`);
//! - `file`: the TOML file and how its values become config (`file_fleet`: its `[storage]`,
//!   `[fleet]` and `parent` keys);
//! - `keys`: every key once (name, default, doc): the reference and the defaults' constants;
//! - `values`: one value at a time (addresses, sizes, durations);
//! - `error`: config-time failures.

mod error;
mod file;
mod file_fleet;
mod fleet_model;
pub mod keys;
mod model;
mod one_or_many;
mod secret;
mod values;

pub use error::ConfigError;
pub use fleet_model::*;
pub use model::*;
pub use values::{
    parse_admin_listen, parse_duration, parse_listen, parse_parent_urls, parse_size,
    url_has_user_info,
};

#[cfg(test)]
mod tests;
