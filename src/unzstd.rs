//! A zstd layer's stream decompressed, as a body, within bounds: the tar a client that cannot
//! read zstd gets instead. libzstd runs on a blocking thread (a conversion is CPU work, kept off
//! the request workers), holding one of `conversion.max_concurrent` permits the whole time.
//!
//! The output stops with an error frame — which fails the fill that reads it, so nothing is kept
//! or served complete — when the input is not zstd or is cut off, when the output passes
//! `max_output` bytes, or when it passes `max_ratio` times the input read so far (a
//! decompression bomb: past the first [`RATIO_GRACE`] bytes). The window a frame may ask for is
//! capped at 2^[`WINDOW_LOG_MAX`] bytes (libzstd's own default limit), so a frame cannot make
//! archway allocate more.

use crate::body::UpstreamBody;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::io::{self, Read};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// libzstd's default limit for decompression: 128 MiB of window.
pub const WINDOW_LOG_MAX: u32 = 27;
/// Output below this is never judged by its ratio: small layers of zeros compress very well.
pub const RATIO_GRACE: u64 = 64 << 20;
/// Bytes handed on at a time.
const CHUNK: usize = 256 << 10;

/// How far one decompression may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most bytes of output.
    pub max_output: u64,
    /// Most output bytes per input byte (past [`RATIO_GRACE`]).
    pub max_ratio: u64,
}

/// Why a decompression stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnzstdError {
    #[error("the layer decompresses to more than {max} bytes (conversion.max_output)")]
    TooLarge { max: u64 },
    #[error("the layer decompresses to over {ratio} times its size (conversion.max_ratio): a decompression bomb")]
    Bomb { ratio: u64 },
    #[error("not a valid zstd stream: {0}")]
    Invalid(String),
    #[error("the zstd layer could not be read: {0}")]
    Input(String),
}

impl From<UnzstdError> for io::Error {
    fn from(e: UnzstdError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// How one decompression ended: `converted`, `failed` or `abandoned` (nobody read on), the
/// zstd bytes read, the tar bytes made, and the time it took.
pub type Report = Box<dyn FnOnce(&'static str, u64, u64, std::time::Duration) + Send>;

/// `input` (zstd) decompressed. `permit` is held until the decompression ends; then `report`
/// is told how it went.
pub fn decompress(
    input: UpstreamBody,
    bounds: Bounds,
    permit: OwnedSemaphorePermit,
    report: Report,
) -> UpstreamBody {
    let (in_tx, in_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let (out_tx, out_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    // The input, read on the runtime (a body is async) and handed to the blocking thread.
    tokio::spawn(async move {
        let mut input = input;
        while let Some(frame) = input.frame().await {
            let chunk = match frame {
                Ok(f) => match f.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue,
                },
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if in_tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = std::time::Instant::now();
        let input = Counted::new(ChannelReader::new(in_rx));
        let read_in = input.read_count();
        let mut made = 0;
        let mut send = |chunk: Vec<u8>| out_tx.blocking_send(Ok(Bytes::from(chunk))).is_ok();
        let outcome = match run(input, &read_in, bounds, &mut send, &mut made) {
            Ok(true) => "converted",
            Ok(false) => "abandoned",
            Err(e) => {
                let _ = out_tx.blocking_send(Err(e.into()));
                "failed"
            }
        };
        report(outcome, read_in.get(), made, started.elapsed());
    });
    let frames = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// `input` decompressed whole, within `bounds` (the same decoder and checks as [`decompress`],
/// without a runtime: for the fuzzer and tools).
pub fn decompress_slice(input: &[u8], bounds: Bounds) -> Result<Vec<u8>, UnzstdError> {
    let input = Counted::new(input);
    let read_in = input.read_count();
    let mut out = Vec::new();
    let mut total = 0;
    let mut keep = |chunk: Vec<u8>| {
        out.extend_from_slice(&chunk);
        true
    };
    run(input, &read_in, bounds, &mut keep, &mut total)?;
    Ok(out)
}

/// Decompresses `input` (whose bytes read so far `read_in` counts) to `out` within `bounds`,
/// counting the bytes made in `total`. `true`: the whole stream; `false`: `out` refused more
/// (nobody reads any more).
fn run<R: Read>(
    input: R,
    read_in: &ReadCount,
    bounds: Bounds,
    out: &mut dyn FnMut(Vec<u8>) -> bool,
    total: &mut u64,
) -> Result<bool, UnzstdError> {
    let mut decoder =
        zstd::stream::read::Decoder::new(input).map_err(|e| UnzstdError::Invalid(e.to_string()))?;
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(|e| UnzstdError::Invalid(e.to_string()))?;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::Other
                    && e.get_ref().is_some_and(|r| r.is::<InputError>()) =>
            {
                return Err(UnzstdError::Input(e.to_string()))
            }
            Err(e) => return Err(UnzstdError::Invalid(e.to_string())),
        };
        *total += n as u64;
        if *total > bounds.max_output {
            return Err(UnzstdError::TooLarge {
                max: bounds.max_output,
            });
        }
        let consumed = read_in.get().max(1);
        if *total > RATIO_GRACE && *total / consumed > bounds.max_ratio {
            return Err(UnzstdError::Bomb {
                ratio: bounds.max_ratio,
            });
        }
        buf.truncate(n);
        if !out(buf) {
            // Nobody reads any more (the fill was abandoned): stop spending CPU on it.
            return Ok(false);
        }
    }
}

/// The input failed (not the zstd stream): kept apart from decoding errors in messages.
#[derive(Debug)]
struct InputError(String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// A `Read` counting what it has handed out (for the ratio check).
struct Counted<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Counted<R> {
    fn new(inner: R) -> Self {
        Counted {
            inner,
            count: Default::default(),
        }
    }

    fn read_count(&self) -> ReadCount {
        ReadCount(self.count.clone())
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// A blocking `Read` over chunks sent from the runtime.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

#[derive(Clone)]
struct ReadCount(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ReadCount {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    return Err(io::Error::other(InputError(e.to_string())));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(&chunk);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
