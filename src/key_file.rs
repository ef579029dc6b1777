//! Reading a file that a config key names (password, secret, CA, certificate, htpasswd…): one
//! wording for every such key, naming the key and the path, the `io::Error` kept as the source.

use std::io;
use std::path::{Path, PathBuf};

/// `` `auth.htpasswd_file`: cannot read /etc/archway/htpasswd: file not found ``.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: cannot read {}: {}", path.display(), reason(source))]
pub struct KeyFileError {
    pub key: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The same few words for the same fault, whatever produced the error (`std::fs` says "No such
/// file or directory (os error 2)", `ErrorKind`'s Display "entity not found").
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "file not found".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        io::ErrorKind::InvalidData => "not UTF-8 text".into(),
        kind => kind.to_string(),
    }
}

fn error(key: &str, path: &Path, source: io::Error) -> KeyFileError {
    KeyFileError {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    }
}

/// The bytes of the file `key` names.
pub fn read(key: &str, path: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(path).map_err(|e| error(key, path, e))
}

/// The text of the file `key` names.
pub fn read_to_string(key: &str, path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|e| error(key, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_the_same_and_name_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = read("fleet.secret_file", &missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`fleet.secret_file`: cannot read {}: file not found",
                missing.display()
            )
        );
        assert_eq!(
            std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .map(io::Error::kind),
            Some(io::ErrorKind::NotFound)
        );
        let err = read_to_string("tls.cert_file", dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("`tls.cert_file`: cannot read "),
            "{err}"
        );
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        let err = read_to_string("auth.tokens_file", &binary).unwrap_err();
        assert!(err.to_string().ends_with(": not UTF-8 text"), "{err}");
    }
}
