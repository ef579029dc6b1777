//! Foreign (non-distributable) layers: Windows base layers that manifests list with `urls` on
//! Microsoft's hosts instead of in the registry. archway remembers them from the manifests it
//! serves (`scan`, `memo`) and, when upstream cannot serve such a blob, fetches it from the first
//! url that the upstream's `foreign_layer_hosts` allow (`hosts`; the fetch itself is
//! `Upstream::get_foreign`). Manifests are never changed.

mod hosts;
mod memo;
mod scan;

pub use hosts::{allowed, HostPattern, HostPatternError, DEFAULT_FOREIGN_LAYER_HOSTS};
pub use memo::ForeignMemo;
pub use scan::{foreign_layers, is_foreign_media_type, ForeignLayer};
