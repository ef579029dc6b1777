//! The AWS shared credentials file (`~/.aws/credentials`, or `AWS_SHARED_CREDENTIALS_FILE`),
//! profile `AWS_PROFILE` or `default`: object_store reads the environment, web identity,
//! container and instance credentials, but not this file.

use std::path::PathBuf;

/// Static keys from one profile of the file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProfileKeys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl std::fmt::Debug for ProfileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProfileKeys(***)")
    }
}

/// The keys of `profile` in the INI text of a credentials file (pure). `None`: no such profile
/// or it lacks a key id or secret.
pub(crate) fn parse(text: &str, profile: &str) -> Option<ProfileKeys> {
    let mut in_profile = false;
    let mut id = None;
    let mut secret = None;
    let mut token = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    Some(ProfileKeys {
        access_key_id: id.filter(|v| !v.is_empty())?,
        secret_access_key: secret.filter(|v| !v.is_empty())?,
        session_token: token.filter(|v| !v.is_empty()),
    })
}

/// The file the AWS tools read, and the profile they use.
pub(crate) fn location() -> Option<(PathBuf, String)> {
    let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => PathBuf::from(f),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".aws/credentials"),
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    Some((file, profile))
}

/// Reads the profile's keys from the shared file, if it has them. Blocking (start-up only).
pub(crate) fn load() -> Option<ProfileKeys> {
    let (file, profile) = location()?;
    let text = std::fs::read_to_string(&file).ok()?;
    let keys = parse(&text, &profile);
    if keys.is_some() {
        tracing::info!(file = %file.display(), %profile, "S3 credentials from the shared credentials file");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secretdefault

[ci]
aws_access_key_id=AKIDCI
aws_secret_access_key=secretci
aws_session_token = tok
[incomplete]
aws_access_key_id = AKIDONLY
";

    #[test]
    fn profiles() {
        let d = parse(FILE, "default").unwrap();
        assert_eq!(
            (
                d.access_key_id.as_str(),
                d.secret_access_key.as_str(),
                d.session_token.as_deref()
            ),
            ("AKIDDEFAULT", "secretdefault", None)
        );
        let ci = parse(FILE, "ci").unwrap();
        assert_eq!(ci.access_key_id, "AKIDCI");
        assert_eq!(ci.session_token.as_deref(), Some("tok"));
        assert_eq!(parse(FILE, "incomplete"), None);
        assert_eq!(parse(FILE, "absent"), None);
        assert!(!format!("{d:?}").contains("secret"));
    }
}
