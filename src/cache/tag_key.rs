//! Which tag: upstream name, repository and tag. Names a tag in the tag store and in the bucket.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TagKey {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
}
