//! The least a relay that checks a blob's digest before its last byte can cost: no cache, no
//! async runtime, one blocking thread per connection. It exists to measure a floor for
//! bench/cold_floor, not to serve anybody (no limits, no timeouts, loopback only).
//!
//!   verifying-relay LISTEN UPSTREAM MODE
//!
//! MODE:
//! - `copy`: `read`/`write` through one reused 256 KiB buffer, no digest (what nginx does);
//! - `splice`: upstream socket → pipe → client socket with `splice(2)`, no digest;
//! - `copyhash`: `copy`, and each chunk hashed while it is still in the core's cache, the last
//!   byte held until the digest matches the one in the path;
//! - `splicehash`: `splice`, with `tee(2)` into a second pipe that a hashing thread reads into a
//!   reused 64 KiB buffer; the last byte held until the digest matches.
#![forbid(unsafe_code)]

use rustix::pipe::{fcntl_setpipe_size, pipe, splice, tee, SpliceFlags};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Copy,
    Splice,
    CopyHash,
    SpliceHash,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = match args.get(3).map(String::as_str) {
        Some("copy") => Mode::Copy,
        Some("splice") => Mode::Splice,
        Some("copyhash") => Mode::CopyHash,
        Some("splicehash") => Mode::SpliceHash,
        _ => {
            eprintln!("usage: verifying-relay LISTEN UPSTREAM copy|splice|copyhash|splicehash");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&args[1]).unwrap_or_else(|e| {
        eprintln!("verifying-relay: cannot listen on {}: {e}", args[1]);
        std::process::exit(1);
    });
    for client in listener.incoming().flatten() {
        let upstream = args[2].clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(client, &upstream, mode) {
                eprintln!("verifying-relay: {e}");
            }
        });
    }
}

/// Reads up to the end of an HTTP head; returns the head and any body bytes read with it.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
    }
}

/// Each GET of the client's connection, one at a time, over a fresh upstream connection.
fn serve(mut client: TcpStream, upstream: &str, mode: Mode) -> io::Result<()> {
    while let Some((head, _)) = read_head(&mut client)? {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut up = TcpStream::connect(upstream)?;
        write!(
            up,
            "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
        )?;
        let Some((answer, rest)) = read_head(&mut up)? else {
            return Err(io::Error::other("upstream closed before its head"));
        };
        let answer = answer.to_ascii_lowercase();
        let status = answer.split_whitespace().nth(1).unwrap_or("502").to_owned();
        let len = answer
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(len), "200") = (len, status.as_str()) else {
            write!(
                client,
                "HTTP/1.1 {status} Upstream\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        };
        // Only a blob's body has a digest to check (`/v2/` answers `{}`).
        let want = path.split_once("/blobs/sha256:").map(|(_, d)| d.to_owned());
        let hash = matches!(mode, Mode::CopyHash | Mode::SpliceHash);
        write!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
        )?;
        let body = Body {
            rest,
            len,
            want: want.as_deref().filter(|_| hash),
        };
        match mode {
            Mode::Copy | Mode::CopyHash => copy(&mut up, &mut client, body)?,
            Mode::Splice | Mode::SpliceHash => spliced(&up, &mut client, body)?,
        }
    }
    Ok(())
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(digest: String, want: &str) -> io::Result<()> {
    if digest == want {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "digest mismatch: sha256:{digest}, not sha256:{want}; last byte withheld"
        )))
    }
}

/// One answer's body: the bytes read with the head, the whole length, and the digest to check
/// (if any) before the last byte.
struct Body<'a> {
    rest: Vec<u8>,
    len: u64,
    want: Option<&'a str>,
}

fn copy(up: &mut TcpStream, client: &mut TcpStream, body: Body) -> io::Result<()> {
    let Body { rest, len, want } = body;
    let hash = want.is_some();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; rest.len().max(256 * 1024)];
    let mut left = len.saturating_sub(rest.len() as u64);
    let mut chunk_len = rest.len();
    buf[..chunk_len].copy_from_slice(&rest);
    loop {
        let chunk = &buf[..chunk_len];
        if hash {
            hasher.update(chunk);
        }
        if left == 0 {
            // The last chunk: everything but its last byte, then that byte once checked.
            let keep = usize::from(hash && !chunk.is_empty());
            client.write_all(&chunk[..chunk.len() - keep])?;
            if let Some(want) = want {
                check(hex(&hasher.finalize()), want)?;
            }
            return client.write_all(&chunk[chunk.len() - keep..]);
        }
        client.write_all(chunk)?;
        let n = up.read(&mut buf[..(left as usize).min(256 * 1024)])?;
        if n == 0 {
            return Err(io::Error::other("upstream body truncated"));
        }
        left -= n as u64;
        chunk_len = n;
    }
}

fn spliced(up: &TcpStream, client: &mut TcpStream, body: Body) -> io::Result<()> {
    let Body { rest, len, want } = body;
    let hash = want.is_some();
    let (to_client_r, to_client_w) = pipe()?;
    let (to_hash_r, to_hash_w) = pipe()?;
    let _ = fcntl_setpipe_size(&to_client_w, 1 << 20);
    let _ = fcntl_setpipe_size(&to_hash_w, 1 << 20);
    let hasher = hash.then(|| {
        let first = rest.clone();
        std::thread::spawn(move || -> io::Result<String> {
            let mut hasher = Sha256::new();
            hasher.update(&first);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len.saturating_sub(first.len() as u64);
            while left > 0 {
                let n = rustix::io::read(&to_hash_r, &mut buf)?;
                if n == 0 {
                    return Err(io::Error::other("hash pipe closed early"));
                }
                left -= n as u64;
                hasher.update(&buf[..n]);
            }
            Ok(hex(&hasher.finalize()))
        })
    });
    // The bytes read with the head: all of them when they are the whole body, then the held byte.
    let mut sent = rest.len() as u64;
    let held_in_rest = hash && sent == len && sent > 0;
    client.write_all(&rest[..rest.len() - usize::from(held_in_rest)])?;
    let mut left = len - sent;
    let mut in_pipe: u64 = 0; // only ever the held last byte between rounds
    while left > 0 {
        let n = splice(
            up.as_fd(),
            None,
            &to_client_w,
            None,
            (left as usize).min(1 << 20),
            SpliceFlags::MOVE,
        )?;
        if n == 0 {
            return Err(io::Error::other("upstream body truncated"));
        }
        left -= n as u64;
        let mut round = n as u64;
        while round > 0 {
            // `tee` copies from the pipe's start without consuming, so whatever it copied is
            // sent on before the next `tee`; a partial `tee` never copies a byte twice.
            let step = if hash {
                tee(
                    &to_client_r,
                    &to_hash_w,
                    round as usize,
                    SpliceFlags::empty(),
                )? as u64
            } else {
                round
            };
            round -= step;
            // Hold the blob's last byte in the pipe until the digest is known.
            let mut out = step - u64::from(hash && sent + step == len);
            in_pipe += step - out;
            while out > 0 {
                let m = splice(
                    &to_client_r,
                    None,
                    client.as_fd(),
                    None,
                    out as usize,
                    SpliceFlags::MOVE,
                )? as u64;
                out -= m;
                sent += m;
            }
        }
    }
    if let Some(hasher) = hasher {
        let digest = hasher
            .join()
            .map_err(|_| io::Error::other("hash thread panicked"))??;
        check(digest, want.unwrap_or_default())?;
    }
    if held_in_rest {
        client.write_all(&rest[rest.len() - 1..])?;
    }
    while in_pipe > 0 {
        in_pipe -= splice(
            &to_client_r,
            None,
            client.as_fd(),
            None,
            in_pipe as usize,
            SpliceFlags::MOVE,
        )? as u64;
    }
    Ok(())
}
