//! The file's shared-cache keys: `[storage]`, `[fleet]` and the top-level `parent` keys, and
//! the secrets they read (inline, from a file or from the environment).

use super::error::{invalid, ConfigError};
use super::fleet_model::*;
use super::one_or_many::OneOrMany;
use super::secret::{Credentials, Secret};
use super::values::*;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    peer_url: Option<String>,
    /// Refused: a shared secret belongs in a file (a Kubernetes Secret), not in the config.
    secret: Option<toml::Value>,
    secret_file: Option<PathBuf>,
    lease_ttl: Option<String>,
    peer_timeout: Option<String>,
    sweep_interval: Option<String>,
    orphaned_upload_age: Option<String>,
    max_clock_skew: Option<String>,
}

impl RawFleet {
    pub(super) fn into_config(self) -> Result<FleetConfig, ConfigError> {
        if self.secret.is_some() {
            return Err(invalid(
                "fleet.secret",
                "is not taken inline; put the secret in a file and give fleet.secret_file",
            ));
        }
        let file = self
            .secret_file
            .ok_or_else(|| invalid("fleet.secret_file", "is required in [fleet]"))?;
        let secret = one_secret("fleet.secret", None, Some(file))?
            .ok_or_else(|| invalid("fleet.secret_file", "is required in [fleet]"))?;
        let mut f = FleetConfig::new(None, secret);
        if let Some(url) = self.peer_url {
            f.set_peer_url("fleet.peer_url", &url)?;
        }
        if let Some(v) = self.lease_ttl {
            f.lease_ttl = parse_duration("fleet.lease_ttl", &v)?;
        }
        if let Some(v) = self.peer_timeout {
            f.peer_timeout = parse_duration("fleet.peer_timeout", &v)?;
        }
        if let Some(v) = self.sweep_interval {
            f.sweep_interval = parse_duration("fleet.sweep_interval", &v)?;
        }
        if let Some(v) = self.orphaned_upload_age {
            f.orphaned_upload_age = parse_duration("fleet.orphaned_upload_age", &v)?;
        }
        if let Some(v) = self.max_clock_skew {
            f.max_clock_skew = parse_duration("fleet.max_clock_skew", &v)?;
        }
        Ok(f)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    s3_bucket: Option<String>,
    s3_prefix: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_path_style: Option<bool>,
    s3_access_key_id: Option<String>,
    s3_access_key_id_file: Option<PathBuf>,
    s3_secret_access_key: Option<String>,
    s3_secret_access_key_file: Option<PathBuf>,
    s3_timeout: Option<String>,
    s3_upload_timeout: Option<String>,
    s3_max_uploads: Option<u32>,
    s3_upload_queue: Option<u32>,
    s3_part_size: Option<String>,
    redirect: Option<bool>,
    redirect_expiry: Option<String>,
    redirect_memo: Option<String>,
    pin_sync_interval: Option<String>,
    backfill: Option<bool>,
}

impl RawStorage {
    pub(super) fn into_config(self) -> Result<StorageConfig, ConfigError> {
        let bucket = self
            .s3_bucket
            .ok_or_else(|| invalid("storage.s3_bucket", "is required in [storage]"))?;
        let mut s = StorageConfig::new(bucket);
        if let Some(p) = self.s3_prefix {
            s.s3_prefix = p;
        }
        if let Some(e) = self.s3_endpoint {
            let uri = parse_upstream_url("storage.s3_endpoint", &e)?;
            s.s3_endpoint = Some(uri.to_string().trim_end_matches('/').to_owned());
        }
        if let Some(r) = self.s3_region {
            s.s3_region = r;
        }
        if let Some(p) = self.s3_path_style {
            s.s3_path_style = p;
        }
        let key_id = one_secret(
            "storage.s3_access_key_id",
            self.s3_access_key_id,
            self.s3_access_key_id_file,
        )?;
        let secret = one_secret(
            "storage.s3_secret_access_key",
            self.s3_secret_access_key,
            self.s3_secret_access_key_file,
        )?;
        s.credentials = match (key_id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Keys {
                access_key_id,
                secret_access_key,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "storage.s3_secret_access_key",
                    "s3_access_key_id given without a secret access key",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "storage.s3_access_key_id",
                    "s3_secret_access_key given without an access key id",
                ))
            }
        };
        if let Some(v) = self.s3_timeout {
            s.s3_timeout = parse_duration("storage.s3_timeout", &v)?;
        }
        if let Some(v) = self.s3_upload_timeout {
            s.s3_upload_timeout = parse_duration("storage.s3_upload_timeout", &v)?;
        }
        if let Some(v) = self.s3_max_uploads {
            s.s3_max_uploads = v;
        }
        if let Some(v) = self.s3_upload_queue {
            s.s3_upload_queue = v;
        }
        if let Some(v) = self.s3_part_size {
            s.s3_part_size = parse_size("storage.s3_part_size", &v)?;
        }
        if let Some(v) = self.redirect {
            s.redirect = v;
        }
        if let Some(v) = self.redirect_expiry {
            s.redirect_expiry = parse_duration("storage.redirect_expiry", &v)?;
        }
        if let Some(v) = self.pin_sync_interval {
            s.pin_sync_interval = parse_duration("storage.pin_sync_interval", &v)?;
            if s.pin_sync_interval.is_zero() {
                return Err(invalid("storage.pin_sync_interval", "must be more than 0s"));
            }
        }
        if let Some(v) = self.redirect_memo {
            s.redirect_memo = parse_size("storage.redirect_memo", &v)?;
        }
        if let Some(v) = self.backfill {
            s.backfill = v;
        }
        Ok(s)
    }
}

/// A secret given inline or as a file (its first line), never both. The file's text never
/// appears in an error.
pub(super) fn one_secret(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(key, format!("give only one of {key}, {key}_file"))),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(f)) => {
            let text = crate::key_file::read_to_string(&format!("{key}_file"), &f)?;
            let value = text.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                return Err(invalid(format!("{key}_file"), "the file is empty"));
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// The top-level `parent` and `parent_*` keys, taken out of `RawConfig`.
#[derive(Debug, Default)]
pub(super) struct RawParent {
    pub(super) parent: Option<OneOrMany>,
    pub(super) parent_username: Option<String>,
    pub(super) parent_password: Option<String>,
    pub(super) parent_password_file: Option<PathBuf>,
    pub(super) parent_password_env: Option<String>,
    pub(super) parent_token: Option<String>,
    pub(super) parent_token_file: Option<PathBuf>,
    pub(super) parent_token_env: Option<String>,
    pub(super) parent_ca_file: Option<PathBuf>,
    pub(super) parent_down_for: Option<String>,
    pub(super) parent_connect_timeout: Option<String>,
    pub(super) parent_read_timeout: Option<String>,
    pub(super) parent_fallback: Option<String>,
}

impl RawParent {
    pub(super) fn into_config(self) -> Result<ParentConfig, ConfigError> {
        let mut p = ParentConfig::default();
        let urls = match self.parent {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        p.urls = parse_parent_urls("parent", &urls)?;
        let password = read_password(
            "parent_password",
            self.parent_password,
            self.parent_password_file,
            self.parent_password_env,
        )?;
        p.credentials = credentials(
            "parent_username",
            "parent_password",
            self.parent_username,
            password,
        )?;
        let token = read_password(
            "parent_token",
            self.parent_token,
            self.parent_token_file,
            self.parent_token_env,
        )?;
        if token.is_some() && p.credentials.is_some() {
            return Err(invalid(
                "parent_token",
                "give either parent_token (a bearer token of the parents' tokens_file) or parent_username and parent_password, not both",
            ));
        }
        if let Some(t) = token {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "parent_token",
                    "must be one token without whitespace",
                ));
            }
            p.token = Some(Secret::new(t));
        }
        p.ca_file = self.parent_ca_file;
        if let Some(v) = self.parent_down_for {
            p.down_for = parse_duration("parent_down_for", &v)?;
        }
        if let Some(v) = self.parent_connect_timeout {
            p.connect_timeout = parse_duration("parent_connect_timeout", &v)?;
        }
        if let Some(v) = self.parent_read_timeout {
            p.read_timeout = parse_duration("parent_read_timeout", &v)?;
        }
        if let Some(v) = self.parent_fallback {
            p.fallback = parse_parent_fallback("parent_fallback", &v)?;
        }
        Ok(p)
    }
}

/// At most one of `{key}`, `{key}_file` (its first line's end trimmed) and `{key}_env`.
pub(super) fn read_password(
    key: &str,
    password: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let sources = [password.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if sources > 1 {
        let short = key.rsplit('.').next().unwrap_or(key);
        return Err(invalid(
            key,
            format!("give only one of {short}, {short}_file, {short}_env"),
        ));
    }
    if let Some(p) = password {
        Ok(Some(p))
    } else if let Some(f) = file {
        let text = crate::key_file::read_to_string(&format!("{key}_file"), &f)?;
        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
    } else if let Some(var) = env {
        Ok(Some(std::env::var(&var).map_err(|_| {
            invalid(
                format!("{key}_env"),
                format!("environment variable {var} is not set"),
            )
        })?))
    } else {
        Ok(None)
    }
}

/// Both or neither of a username and a password.
pub(super) fn credentials(
    username_key: &str,
    password_key: &str,
    username: Option<String>,
    password: Option<String>,
) -> Result<Option<Credentials>, ConfigError> {
    match (username, password) {
        (Some(username), Some(p)) => Ok(Some(Credentials {
            username,
            password: Secret::new(p),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(password_key, "username given without a password")),
        (None, Some(_)) => Err(invalid(username_key, "password given without a username")),
    }
}
