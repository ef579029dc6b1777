//! archway: a platform-resolving pull-through proxy for container registries.
#![forbid(unsafe_code)]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod api;
pub mod body;
pub mod cache;
pub mod client_auth;
pub mod config;
pub mod conversion;
pub mod digest;
pub mod error;
pub mod explain;
pub mod image_index;
pub mod image_ref;
pub mod media_type;
pub mod metrics;
pub mod platform;
pub mod proxy;
pub mod reference;
pub mod rewrite;
pub mod route;
pub mod routing;
pub mod server;
pub mod tls;

pub use server::Archway;
pub mod upstream;
