use super::*;
use std::sync::Arc;
use tokio::sync::Semaphore;

fn body_of(chunks: Vec<io::Result<Bytes>>) -> UpstreamBody {
    let frames = futures_util::stream::iter(chunks.into_iter().map(|c| c.map(Frame::data)));
    StreamBody::new(frames).boxed_unsync()
}

fn split(bytes: &[u8], at: usize) -> Vec<io::Result<Bytes>> {
    bytes
        .chunks(at.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

const WIDE: Bounds = Bounds {
    max_output: 1 << 40,
    max_ratio: 100,
};

async fn through(input: Vec<io::Result<Bytes>>, bounds: Bounds) -> Result<Vec<u8>, String> {
    let permits = Arc::new(Semaphore::new(1));
    let permit = permits.clone().acquire_owned().await.unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let report: Report = Box::new(move |outcome, zstd, tar, _took| {
        let _ = tx.send((outcome, zstd, tar));
    });
    let mut body = decompress(body_of(input), bounds, permit, report);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(&f.into_data().unwrap()),
            Err(e) => return Err(e.to_string()),
        }
    }
    // The report says how it ended: converted, with every byte made.
    let (outcome, _zstd, tar) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("a report");
    assert_eq!((outcome, tar), ("converted", out.len() as u64));
    // The permit is back once the decompression is over.
    let _again = tokio::time::timeout(std::time::Duration::from_secs(5), permits.acquire())
        .await
        .expect("the permit is released");
    Ok(out)
}

/// Something tar-like: text, runs and pseudo-random bytes.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4096 < 2048 {
                b"usr/lib/x86_64-linux-gnu/"[i % 25]
            } else {
                x as u8
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_stream_decompresses_to_its_tar() {
    let tar = sample(3 << 20);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    for at in [13, 64 << 10, z.len()] {
        let out = through(split(&z, at), WIDE).await.unwrap();
        assert!(out == tar, "chunks of {at}");
    }
    // zstd:chunked layers are many frames, with skippable frames between: one tar out.
    let mut chunked = Vec::new();
    for part in tar.chunks(1 << 20) {
        chunked.extend(zstd::encode_all(part, 1).unwrap());
        // A skippable frame (magic 0x184D2A50, 4-byte length, payload).
        chunked.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    }
    assert!(through(split(&chunked, 5000), WIDE).await.unwrap() == tar);
    // Empty tar in, nothing out.
    let empty = zstd::encode_all(&b""[..], 3).unwrap();
    assert_eq!(through(split(&empty, 10), WIDE).await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_whole_zstd_stream_is_an_error() {
    let tar = sample(1 << 20);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let gzip_magic = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3];
    let cases: Vec<(&str, Vec<io::Result<Bytes>>, &str)> = vec![
        ("gzip", split(&gzip_magic, 10), "not a valid zstd stream"),
        (
            "cut off",
            split(&z[..z.len() / 2], 4096),
            "not a valid zstd stream",
        ),
        (
            "a plain tar",
            split(&tar[..4096], 4096),
            "not a valid zstd stream",
        ),
        (
            "the input breaks",
            vec![
                Ok(Bytes::copy_from_slice(&z[..1000])),
                Err(io::Error::other("upstream reset")),
            ],
            "upstream reset",
        ),
    ];
    for (what, input, want) in cases {
        let e = through(input, WIDE).await.unwrap_err();
        assert!(e.contains(want), "{what}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_its_bounds_stops() {
    let tar = sample(4 << 20);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let small = Bounds {
        max_output: 1 << 20,
        max_ratio: 100,
    };
    let e = through(split(&z, 64 << 10), small).await.unwrap_err();
    assert!(e.contains("more than 1048576 bytes"), "{e}");

    // 256 MiB of zeros is a few KiB of zstd: a bomb past the grace.
    let zeros = vec![0u8; 256 << 20];
    let bomb = zstd::encode_all(&zeros[..], 1).unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let e = through(split(&bomb, 64 << 10), WIDE).await.unwrap_err();
    assert!(e.contains("decompression bomb"), "{e}");
    // The same bytes under a ratio that allows them pass.
    let lax = Bounds {
        max_output: 1 << 40,
        max_ratio: u64::MAX,
    };
    assert_eq!(
        through(split(&bomb, 64 << 10), lax).await.unwrap().len(),
        256 << 20
    );
}
