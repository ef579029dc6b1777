//! The admin listener's status page (`GET /`, `/status`): what an operator asks first — is the
//! mirror healthy, what does it save, what does it hold, which upstream fails — without PromQL.
//!
//! - `board`: what the metrics do not keep (last success and error, the hour's traffic and
//!   pulls, the fleet's replicas), fed by the metrics' own hooks.
//! - `snapshot`: one pass over the running proxy, secrets left out.
//! - `page`: the HTML (pure).

pub mod board;
pub mod health;
pub mod page;
pub mod snapshot;
pub mod top_images;
pub mod traffic;

pub use board::{Board, Role};
