//! A real S3-protocol server for the storage tests: `moto_server` (PyPI `moto[server]`, pinned in
//! `scripts/test`, installed under /opt/archway-moto), on loopback, and curl's SigV4 signing
//! (`--aws-sigv4`) as an independent S3 client to set it up and look into the bucket.

use crate::e2e::procs::{self, command, run_ok, Daemon};
use crate::e2e::tools::{find_tool, port_open, temp_dir};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where `scripts/test` installs it; `ARCHWAY_MOTO_SERVER` or PATH otherwise.
pub const MOTO_SERVER: &str = "/opt/archway-moto/bin/moto_server";
/// Any keys do for moto; they only have to be the same everywhere.
pub const ACCESS_KEY: &str = "archway-test";
pub const SECRET_KEY: &str = "archway-test-secret";
pub const REGION: &str = "us-east-1";

/// The moto_server to run. With the e2e tier required, a missing one is a failure.
pub fn moto_server() -> PathBuf {
    let found = std::env::var_os("ARCHWAY_MOTO_SERVER")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| find_tool(MOTO_SERVER))
        .or_else(|| find_tool("moto_server"));
    found.unwrap_or_else(|| {
        panic!(
            "the e2e tier is required but moto_server is missing: scripts/test installs it \
             (python3 -m venv /opt/archway-moto && /opt/archway-moto/bin/pip install \
             'moto[server]==5.2.5')"
        )
    })
}

/// curl, which signs S3 requests itself (`--aws-sigv4`).
pub fn curl() -> PathBuf {
    find_tool("curl").unwrap_or_else(|| {
        panic!("the e2e tier is required but curl is missing: scripts/test installs it")
    })
}

pub struct Moto {
    daemon: Daemon,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let server = moto_server();
        let (daemon, port, ()) = procs::start_on_free_port(
            |port| {
                let dir = temp_dir("moto").keep();
                let mut cmd = command(&server);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env_remove("AWS_CA_BUNDLE")
                    .current_dir(&dir);
                let log = dir.join("moto.log");
                (
                    Daemon::spawn_owning("moto_server", &cmd, &log, Some(&dir)),
                    (),
                )
            },
            port_open,
        );
        Moto { daemon, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A signed S3 request by curl: `-X method`, extra `args`, to `/<path>`; the status.
    pub fn request(&self, method: &str, path: &str, args: &[&str]) -> u16 {
        self.request_into(method, path, args, "/dev/null")
    }

    /// Like [`Moto::request`], with the response body written to the file `out`.
    fn request_into(&self, method: &str, path: &str, args: &[&str], out: &str) -> u16 {
        let url = format!("{}/{path}", self.url());
        let mut cmd = command(curl());
        cmd.args(["-s", "-o", out, "-w", "%{http_code}", "-X", method])
            .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
            .args(args)
            .arg(&url);
        let out = run_ok(&mut cmd, Duration::from_secs(30));
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {method} {url} printed {:?}", out.stdout))
    }

    pub fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", bucket, &[]);
        assert_eq!(status, 200, "moto: create bucket {bucket}");
    }

    /// Proves that the server refuses a second conditional create (`If-None-Match: *` on an
    /// existing key) with 412: fill leases (a later step) rely on it, so a server that does not
    /// is a loud failure here, not a surprise there.
    pub fn prove_conditional_create(&self, bucket: &str) {
        let key = format!("{bucket}/archway-e2e/conditional-create-probe");
        let put = |body: &str| {
            self.request(
                "PUT",
                &key,
                &[
                    "-H",
                    "If-None-Match: *",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    body,
                ],
            )
        };
        assert_eq!(put("first"), 200, "moto: the first conditional create");
        let second = put("second");
        assert_eq!(
            second, 412,
            "moto_server answered {second} to a second PUT with If-None-Match: * on an existing \
             key; S3 answers 412 Precondition Failed. This server cannot back fill leases: use \
             moto[server]==5.2.5 (scripts/test)"
        );
        assert_eq!(self.request("DELETE", &key, &[]), 204);
    }

    /// The status of a HEAD of `<bucket>/<key>`.
    pub fn head(&self, bucket: &str, key: &str) -> u16 {
        self.request("HEAD", &format!("{bucket}/{key}"), &["-I"])
    }

    /// Stops the server; nothing answers on its port afterwards.
    pub fn stop(&mut self) {
        self.daemon.stop(Duration::from_secs(10));
        assert!(!port_open(self.port), "moto still answers after its stop");
    }

    /// The keys under `prefix` in `bucket` (ListObjectsV2; one page, up to 1000 keys).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = self.signed_get(&format!("{bucket}?list-type=2&prefix={prefix}"));
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// The keys of the open multipart uploads under `prefix` (ListMultipartUploads).
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = self.signed_get(&format!("{bucket}?uploads&prefix={prefix}"));
        listing
            .split("<Upload>")
            .skip(1)
            .filter_map(|s| s.split("<Key>").nth(1)?.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// A signed GET of `/<path_query>` by curl; its body (a failure status panics).
    fn signed_get(&self, path_query: &str) -> String {
        let url = format!("{}/{path_query}", self.url());
        let mut cmd = command(curl());
        cmd.args([
            "-s",
            "--fail",
            "--aws-sigv4",
            &format!("aws:amz:{REGION}:s3"),
        ])
        .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
        .arg(&url);
        run_ok(&mut cmd, Duration::from_secs(30)).stdout
    }

    /// The bytes of `<bucket>/<key>`, or None when the GET does not answer 200.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let dir = temp_dir("s3get");
        let file = dir.path().join("object");
        let file_arg = file.display().to_string();
        let status = self.request_into("GET", &format!("{bucket}/{key}"), &[], &file_arg);
        (status == 200).then(|| std::fs::read(&file).expect("the object curl wrote"))
    }

    #[allow(dead_code)]
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// The `[storage]` section for an archway on `moto`'s `bucket`.
pub fn storage_toml(moto: &Moto, bucket: &str, extra: &str) -> String {
    format!(
        "[storage]\ns3_bucket = \"{bucket}\"\ns3_prefix = \"e2e/\"\ns3_endpoint = \"{}\"\n\
         s3_region = \"{REGION}\"\ns3_path_style = true\ns3_access_key_id = \"{ACCESS_KEY}\"\n\
         s3_secret_access_key = \"{SECRET_KEY}\"\ns3_timeout = \"3s\"\n{extra}",
        moto.url()
    )
}

#[allow(dead_code)]
fn _assert_command_is_std(_: Command) {}
