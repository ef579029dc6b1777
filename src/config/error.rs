//! Config-time failures: what could not be read, parsed, or used, naming the key.

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself: named by its flag, in the words of every other file read.
    #[error(transparent)]
    Read(crate::key_file::KeyFileError),
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A file a key names could not be read.
    #[error("config key {0}")]
    File(#[from] crate::key_file::KeyFileError),
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
