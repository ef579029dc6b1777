use super::*;
use crate::cache::bucket::{now_ms, Bucket, LeaseRecord, NoObserver};
use crate::record_key::RecordKey;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::PutMode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const MS: Duration = Duration::from_millis(1);

/// The decision, claim by claim: (the claim, milliseconds since the turn began, what to do).
#[test]
fn decisions_claim_by_claim() {
    let t0 = Instant::now();
    let join2 = OnLive::Join { rounds: 2 };
    let wait = OnLive::Wait {
        first: 25 * MS,
        most: 100 * MS,
        within: 1000 * MS,
    };
    let live = |o: &str| Claim::<u8>::Live { owner: o.into() };
    type Row = (Claim<u8>, u64, Next<u8>);
    let cases: Vec<(&str, OnLive, Vec<Row>)> = vec![
        (
            "a failed claim: upstream without the lease",
            wait,
            vec![(Claim::Failed, 0, Next::FetchUnleased(Unleased::LeaseError))],
        ),
        (
            "a free lease: look once, then fetch holding it",
            join2,
            vec![(Claim::Taken(7), 0, Next::LookThenFetch(7))],
        ),
        (
            "an expired lease: taken over",
            wait,
            vec![(Claim::TakenOver(7), 0, Next::FetchTakenOver(7))],
        ),
        (
            "join: one owner per round, the last round gives up",
            join2,
            vec![
                (
                    live("a"),
                    0,
                    Next::Join {
                        owner: "a".into(),
                        then: AfterJoin::ClaimAgain,
                    },
                ),
                (
                    live("b"),
                    5,
                    Next::Join {
                        owner: "b".into(),
                        then: AfterJoin::GiveUp,
                    },
                ),
            ],
        ),
        (
            "join: a failed owner refused at the next claim is taken over",
            join2,
            vec![
                (
                    live("a"),
                    0,
                    Next::Join {
                        owner: "a".into(),
                        then: AfterJoin::ClaimAgain,
                    },
                ),
                (Claim::TakenOver(3), 5, Next::FetchTakenOver(3)),
            ],
        ),
        (
            "wait: pauses double up to the most, cut at the deadline, then upstream",
            wait,
            vec![
                (live("a"), 0, Next::Wait(25 * MS)),
                (live("a"), 30, Next::Wait(50 * MS)),
                (live("a"), 90, Next::Wait(100 * MS)),
                (live("a"), 200, Next::Wait(100 * MS)),
                (live("a"), 960, Next::Wait(40 * MS)),
                (live("a"), 1000, Next::FetchUnleased(Unleased::GaveUp)),
            ],
        ),
        (
            "wait: the owner let go meanwhile, the lease is this replica's",
            wait,
            vec![
                (live("a"), 0, Next::Wait(25 * MS)),
                (Claim::Taken(1), 30, Next::LookThenFetch(1)),
            ],
        ),
    ];
    for (what, on_live, rows) in cases {
        let mut turn = Turn::new(on_live, t0);
        for (i, (claim, at, want)) in rows.into_iter().enumerate() {
            let got = turn.decide(claim, t0 + Duration::from_millis(at));
            assert_eq!(got, want, "{what}, claim {i}");
        }
    }
}

fn bucket(sealed: bool) -> Arc<Bucket> {
    let b = Bucket::over(
        Arc::new(InMemory::new()),
        "p/",
        Duration::from_secs(5),
        5 << 20,
        Arc::new(NoObserver),
    );
    Arc::new(if sealed {
        b.with_records(
            RecordKey::derive(b"s", "bucket records"),
            crate::clock::Clock::system(),
            Duration::from_secs(5),
        )
    } else {
        b
    })
}

fn why<T>(t: &Taken<T>) -> (Why, bool) {
    match t {
        Taken::Fetch(lease, why) => (*why, lease.is_some()),
        Taken::Ready(_, why) => (*why, true),
    }
}

/// The one loop, driven against leases in the in-memory object store: each way a turn ends.
#[tokio::test]
async fn the_loop_on_the_in_memory_store() {
    let b = bucket(true);
    let ttl = Duration::from_secs(30);
    let key = |n: &str| Path::from(format!("p/leases/{n}"));
    let wait = |within: Duration| OnLive::Wait {
        first: 10 * MS,
        most: 50 * MS,
        within,
    };
    let answer = |n: &str| Path::from(format!("p/answers/{n}"));
    let look = |n: &'static str| {
        let b = b.clone();
        move || {
            let b = b.clone();
            async move {
                b.get_record(&answer(n), 1024, "tag")
                    .await
                    .ok()
                    .flatten()
                    .map(|_| n)
            }
        }
    };
    let claim = |n: &'static str, me: &'static str| {
        let b = b.clone();
        move || {
            let b = b.clone();
            async move { b.claim(key(n), me, ttl).await }
        }
    };
    let no_join = |_: String| async { None::<&str> };

    // A free lease, nothing in the bucket: this replica fetches holding it, and holds it.
    let t = take(
        wait(ttl),
        &"free",
        claim("free", "http://me:1"),
        look("free"),
        no_join,
    )
    .await;
    assert_eq!(why(&t), (Why::Owned, true));
    match b.claim(key("free"), "http://other:1", ttl).await.unwrap() {
        LeaseState::Live { owner } => assert_eq!(owner, "http://me:1"),
        other => panic!("the lease is not held: {other:?}"),
    }
    drop(t);

    // A free lease, but the answer is already there: found, no upstream.
    let sealed = b.seal(&answer("there"), b"x").unwrap();
    b.put(&answer("there"), sealed, None).await.unwrap();
    let t = take(
        wait(ttl),
        &"there",
        claim("there", "http://me:1"),
        look("there"),
        no_join,
    )
    .await;
    assert_eq!(why(&t), (Why::FoundAfterClaim, true));

    // Another replica's live lease: wait, and find its answer once it is written.
    let owner = b.claim(key("late"), "http://owner:1", ttl).await.unwrap();
    let writer = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(60 * MS).await;
        let sealed = writer.seal(&answer("late"), b"x").unwrap();
        writer.put(&answer("late"), sealed, None).await.unwrap();
    });
    let t = take(
        wait(ttl),
        &"late",
        claim("late", "http://me:1"),
        look("late"),
        no_join,
    )
    .await;
    assert_eq!(why(&t), (Why::FoundAfterWait, true));

    // An owner that never answers: upstream without the lease, after `within`.
    let started = Instant::now();
    let t = take(
        wait(150 * MS),
        &"late",
        claim("late", "http://me:1"),
        look("never"),
        no_join,
    )
    .await;
    assert_eq!(why(&t), (Why::Unleased(Unleased::GaveUp), false));
    assert!(started.elapsed() >= 150 * MS, "{:?}", started.elapsed());
    drop(owner);

    // Join: the owner's fetch is what the turn gives.
    let _owner = b.claim(key("join"), "http://owner:1", ttl).await.unwrap();
    let join_ok =
        |o: String| async move { Some(if o == "http://owner:1" { "joined" } else { "?" }) };
    let t = take(
        OnLive::Join { rounds: 4 },
        &"join",
        claim("join", "http://me:1"),
        look("join"),
        join_ok,
    )
    .await;
    assert!(matches!(t, Taken::Ready("joined", Why::Joined)));

    // Join, the owner fails: refused at the next claim, its lease is taken over.
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let joins = AtomicUsize::new(0);
    let checked = {
        let b = b.clone();
        let failed = failed.clone();
        move || {
            let (b, failed) = (b.clone(), failed.clone());
            async move {
                let refuse = move |o: &str| {
                    let f = failed.lock().unwrap();
                    f.iter().any(|x| x == o).then(|| "failed here".to_owned())
                };
                b.claim_checked(key("join"), "http://me:1", ttl, &refuse)
                    .await
            }
        }
    };
    let join_fails = |o: String| {
        joins.fetch_add(1, Ordering::Relaxed);
        failed.lock().unwrap().push(o);
        async { None::<&str> }
    };
    let t = take(
        OnLive::Join { rounds: 4 },
        &"join",
        checked,
        look("join"),
        join_fails,
    )
    .await;
    assert_eq!(why(&t), (Why::TakenOver, true));
    assert_eq!(joins.load(Ordering::Relaxed), 1);

    // Join, every round a live owner that fails: upstream without the lease after the rounds.
    let _owner = b.claim(key("stuck"), "http://owner:1", ttl).await.unwrap();
    joins.store(0, Ordering::Relaxed);
    let t = take(
        OnLive::Join { rounds: 3 },
        &"stuck",
        claim("stuck", "http://me:1"),
        look("stuck"),
        join_fails,
    )
    .await;
    assert_eq!(why(&t), (Why::Unleased(Unleased::GaveUp), false));
    assert_eq!(joins.load(Ordering::Relaxed), 3);

    // An expired lease (its owner stopped renewing): taken over.
    let dead = LeaseRecord::new("http://dead:1", now_ms() - 120_000, 30_000);
    let sealed = b.seal(&key("dead"), &dead.to_json()).unwrap();
    b.put_conditional(&key("dead"), sealed, PutMode::Create)
        .await
        .unwrap();
    let t = take(
        wait(ttl),
        &"dead",
        claim("dead", "http://me:1"),
        look("dead"),
        no_join,
    )
    .await;
    assert_eq!(why(&t), (Why::TakenOver, true));

    // A bucket that fails the claim (here: no record key to seal the lease with).
    let unsealed = bucket(false);
    let failing = || {
        let b = unsealed.clone();
        async move { b.claim(key("x"), "http://me:1", ttl).await }
    };
    let t = take(wait(ttl), &"x", failing, look("x"), no_join).await;
    assert_eq!(why(&t), (Why::Unleased(Unleased::LeaseError), false));
}
