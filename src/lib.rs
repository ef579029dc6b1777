//! archway: a platform-resolving pull-through proxy for container registries.
#![forbid(unsafe_code)]
// No index or slice that can panic, outside tests: request paths must not.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod accept;
pub mod access_log;
pub mod access_rule;
pub mod admin;
pub mod admin_pins;
pub mod admin_status;
pub mod admin_warm;
pub mod api;
pub mod body;
pub mod byte_ranges;
pub mod cache;
pub mod client_auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod conversion;
pub mod digest;
pub mod error;
pub mod explain;
pub mod fd_limit;
pub mod fleet;
pub mod foreign;
pub mod image_index;
pub mod image_ref;
pub mod json_log;
pub mod key_file;
pub mod layer_plan;
pub mod manifest;
pub mod media_type;
pub mod metrics;
pub mod outcome;
pub mod parent_choice;
pub mod pin_set;
pub mod pins_client;
pub mod platform;
pub mod proxy;
pub mod record_key;
pub mod reference;
pub mod route_policy;
pub mod sendfile;
pub mod server;
pub mod stall;
pub mod status;
pub mod tls;
pub mod unzstd;
pub mod upstream;
pub mod upstream_choice;
pub mod via;
pub mod warm;

pub use server::Archway;

/// What the fuzz targets in `fuzz/` need of private modules. Not an API: it may change at any
/// time.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::upstream::auth::{
        expiry_margin, parse_token_response, select_challenge, token_url, Challenge, TokenResponse,
    };
}
