//! CPU seconds of archway's zstd → tar conversion alone (bench/zstd's "conversion CPU" rows).
//!
//!     cargo run --release --example unzstd_cpu -- LAYER.zst [REPS]
//!
//! The layer is read into memory first, then handed to `unzstd::decompress` — the code a
//! conversion runs, on a blocking thread of its own — as a body in 256 KiB chunks, and the tar
//! is read back on the main thread: once only counted, once also hashed with SHA-256 (what
//! the blob fill does to check the tar against its `diff_id`). CPU time is per thread, from
//! /proc/self/task/*/schedstat (nanoseconds on CPU): the blocking thread is the decompression,
//! the main thread feeds the input and takes (and hashes) the output. Prints one line per run.

use archway::body::UpstreamBody;
use archway::unzstd::{self, Bounds};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const BLOCKING_NAME: &str = "unzstd-cpu";
const CHUNK: usize = 256 << 10;

/// Nanoseconds on CPU of each thread of this process, by thread id.
fn thread_cpu() -> Result<HashMap<u32, (String, u64)>, Box<dyn Error>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let Some(tid) = dir.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read: skip it.
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let ns = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (comm.trim().to_owned(), ns));
    }
    Ok(out)
}

fn main_thread_ns() -> Result<u64, Box<dyn Error>> {
    let sched = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(sched
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

struct Run {
    tar: u64,
    wall: f64,
    decompress_cpu: f64,
    main_cpu: f64,
    outcome: &'static str,
}

async fn one(input: &Bytes, hash: bool) -> Result<Run, Box<dyn Error>> {
    let chunks: Vec<Bytes> = (0..input.len())
        .step_by(CHUNK)
        .map(|at| input.slice(at..(at + CHUNK).min(input.len())))
        .collect();
    let body: UpstreamBody = StreamBody::new(futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
    ))
    .boxed_unsync();
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .acquire_owned()
        .await?;
    let ended: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let told = ended.clone();
    let report: unzstd::Report = Box::new(move |outcome, _zstd, _tar, _took| {
        if let Ok(mut e) = told.lock() {
            *e = Some(outcome);
        }
    });
    let bounds = Bounds {
        max_output: u64::MAX,
        max_ratio: u64::MAX,
    };
    let before = thread_cpu()?;
    let main0 = main_thread_ns()?;
    let started = Instant::now();
    let mut out = unzstd::decompress(body, bounds, permit, report);
    let mut hasher = Sha256::new();
    let mut tar = 0u64;
    while let Some(frame) = out.frame().await {
        if let Ok(data) = frame?.into_data() {
            tar += data.len() as u64;
            if hash {
                hasher.update(&data);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let main_cpu = (main_thread_ns()? - main0) as f64 / 1e9;
    std::hint::black_box(hasher.finalize());
    // The blocking thread reports after its last chunk is sent: wait for it to be done.
    for _ in 0..1000 {
        if ended.lock().map(|e| e.is_some()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let after = thread_cpu()?;
    let decompress_ns: u64 = after
        .iter()
        .filter(|(_, (name, _))| name == BLOCKING_NAME)
        .map(|(tid, (_, ns))| ns - before.get(tid).map(|b| b.1).unwrap_or(0))
        .sum();
    let outcome = ended.lock().ok().and_then(|e| *e).unwrap_or("unknown");
    Ok(Run {
        tar,
        wall,
        decompress_cpu: decompress_ns as f64 / 1e9,
        main_cpu,
        outcome,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: unzstd_cpu LAYER.zst [REPS]")?;
    let reps: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(3);
    let input = Bytes::from(std::fs::read(path)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .thread_name(BLOCKING_NAME)
        .build()?;
    let zstd = input.len() as f64;
    for rep in 1..=reps {
        for hash in [false, true] {
            let r = rt.block_on(one(&input, hash))?;
            let tar = r.tar as f64;
            println!(
                "rep {rep} {}: zstd {:.0} MB, tar {:.0} MB ({}), wall {:.2} s; decompression thread CPU {:.2} s = {:.3} s/GB of tar, {:.3} s/GB of zstd; main thread (feed, take{}) {:.2} s = {:.3} s/GB of tar",
                if hash { "hashed" } else { "counted" },
                zstd / 1e6,
                tar / 1e6,
                r.outcome,
                r.wall,
                r.decompress_cpu,
                r.decompress_cpu / (tar / 1e9),
                r.decompress_cpu / (zstd / 1e9),
                if hash { ", SHA-256" } else { "" },
                r.main_cpu,
                r.main_cpu / (tar / 1e9),
            );
        }
    }
    Ok(())
}
