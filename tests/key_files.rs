//! Every key that names a file reads a missing one in the same words, naming the key and the
//! path: the config's own keys, and the files read when serving starts (`tls`, `auth`). Here, not
//! in `config`'s unit tests, because it holds three modules to one wording.

use archway::config::{AuthConfig, Config};

#[test]
fn a_missing_file_reads_the_same_for_every_key_naming_the_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let m = missing.display();
    let storage = "[storage]\ns3_bucket = \"b\"\n";
    for (key, toml) in [
        (
            "upstream[0].password_file",
            format!("[[upstream]]\nname = \"r\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\nusername = \"u\"\npassword_file = \"{m}\"\n"),
        ),
        ("parent_password_file", format!("parent = \"http://127.0.0.1:9\"\nparent_username = \"u\"\nparent_password_file = \"{m}\"\n")),
        ("fleet.secret_file", format!("{storage}[fleet]\nsecret_file = \"{m}\"\n")),
        ("storage.s3_access_key_id_file", format!("[storage]\ns3_bucket = \"b\"\ns3_access_key_id_file = \"{m}\"\n")),
    ] {
        let err = Config::from_toml(&toml).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("config key `{key}`: cannot read {m}: file not found"),
            "{toml}"
        );
    }
    // The config file itself, named by its flag.
    let err = Config::from_file(&missing).unwrap_err().to_string();
    assert_eq!(err, format!("`--config`: cannot read {m}: file not found"));
    // Read when serving starts: the same words.
    let err = archway::tls::load_certified_key(&missing, &missing, &archway::tls::provider())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!("`tls.cert_file`: cannot read {m}: file not found")
    );
    let auth = AuthConfig {
        htpasswd_file: Some(missing.clone()),
        ..AuthConfig::default()
    };
    let err = archway::client_auth::ClientAuth::load(&auth)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!("`auth.htpasswd_file`: cannot read {m}: file not found")
    );
}
