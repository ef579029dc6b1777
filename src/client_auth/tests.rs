//! Tests of client authentication (`ClientAuth` and its parts).

use super::failures::{BudgetRef, ClientKey};
use super::*;
use base64::Engine as _;

// Made by glibc crypt(3) (`$2b$`) as `htpasswd -B` would; `$2y$` is Apache's name for the
// same algorithm.
const PW_HASH: &str = "$2b$04$jmLuZGx8L2btHncMpEKag.ahtTeB4GeauyaIH6sFkicIc2fjtOGFq"; // "pw"
const HUNTER2: &str = "$2b$04$FTuqmjsl9I7tgoI3xcLDOu7nbreZIOKnXRPkrD2rd5Ka3eivBISIm";
// From the bcrypt crate's interop tests: "password".
const PASSWORD_2A: &str = "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU96";

fn limits(slots: usize) -> AuthLimits {
    AuthLimits {
        bcrypt_slots: slots,
        failure_burst: 1000,
        failure_refill: Duration::from_secs(3600),
        tracked_clients: 100,
    }
}

fn from(i: u8) -> Option<IpAddr> {
    Some(IpAddr::from([10, 0, 0, i]))
}

/// Polls a future once, as a connection does before its client goes away.
fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// Waits (bounded) until no bcrypt check runs any more.
async fn until_idle(auth: &ClientAuth) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while auth.running_checks() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "bcrypt checks never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn basic(user: &str, password: &str) -> HeaderValue {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
}

#[test]
fn htpasswd_accepts_bcrypt_variants() {
    let y = PW_HASH.replacen("$2b$", "$2y$", 1);
    let text = format!("# users\nalice:{y}\n\nbob:{HUNTER2}\r\ncarol:{PASSWORD_2A}\n  \n# end\n");
    let h = parse_htpasswd(&text).unwrap();
    assert_eq!(h.len(), 3);
    assert!(h.contains("alice") && h.contains("bob") && h.contains("carol"));
    assert!(!h.contains("dave"));
    assert!(!format!("{h:?}").contains("$2"), "Debug hides the hashes");
}

#[test]
fn htpasswd_refuses_other_hashes_naming_the_line() {
    let cases = [
        ("alice:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.", 1, "$apr1$"),
        ("# c\nalice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", 2, "{SHA}"),
        ("\n\nalice:$6$abc$IdWKNKTJEb8LxY7CGg8YBX", 3, "SHA-crypt"),
        ("alice:$1$abc$x", 1, "MD5-crypt"),
        ("alice:plaintext", 1, "plain-text"),
        ("alice:$2y$04$short", 1, "malformed bcrypt"),
        ("no-colon-here", 1, "not `user:hash`"),
        (":$2y$04$x", 1, "user name is empty"),
    ];
    for (text, line, want) in cases {
        let err = parse_htpasswd(text).unwrap_err();
        assert_eq!(err.line, line, "{text:?}");
        assert!(err.to_string().contains(want), "{text:?}: {err}");
        assert!(err.to_string().starts_with(&format!("line {line}: ")));
    }
    let dup = format!("alice:{PW_HASH}\nalice:{HUNTER2}\n");
    let err = parse_htpasswd(&dup).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.to_string().contains("already on line 1"), "{err}");
    // Errors never quote the secret part.
    let err = parse_htpasswd("alice:hunter2").unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn tokens_file() {
    let t = parse_tokens("# CI\nabc123\n\n  def-456  \r\n#xyz\n").unwrap();
    assert_eq!(t.len(), 2);
    assert!(t.contains("abc123") && t.contains("def-456"));
    assert!(!t.contains("xyz") && !t.contains("abc12") && !t.contains(""));
    assert!(!format!("{t:?}").contains("abc123"));
    // Three fields: a token with whitespace in it, never taken as one.
    let err = parse_tokens("ok\nbad token here\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(!err.to_string().contains("token here"));
    // `name token`: the name is for an upstream's `clients`, the token is what is sent.
    let t = parse_tokens("ci tok-1\ntok-2\n").unwrap();
    assert_eq!(t.find("tok-1"), Some(Some(Arc::from("ci"))));
    assert_eq!(t.find("tok-2"), Some(None));
    assert_eq!(t.find("ci"), None);
    assert!(!format!("{t:?}").contains("tok-1"));
}

#[test]
fn authorization_headers() {
    let alice = basic("alice", "pw");
    let cases: [(&[u8], Option<Presented>); 9] = [
        (
            alice.as_bytes(),
            Some(Presented::Basic {
                user: "alice".into(),
                password: "pw".into(),
            }),
        ),
        // A password may contain colons; the user name may not.
        (
            b"basic YWxpY2U6YTpiOmM=",
            Some(Presented::Basic {
                user: "alice".into(),
                password: "a:b:c".into(),
            }),
        ),
        (b"Bearer tok-1", Some(Presented::Bearer("tok-1".into()))),
        (b"BEARER  tok-1 ", Some(Presented::Bearer("tok-1".into()))),
        (b"Basic !!!", None),
        (b"Basic YWxpY2U=", None), // "alice": no colon
        (b"Digest username=alice", None),
        (b"Bearer", None),
        (b"", None),
    ];
    for (header, want) in cases {
        assert_eq!(
            parse_authorization(header),
            want,
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
    let p = parse_authorization(basic("alice", "s3cret").as_bytes()).unwrap();
    assert!(!format!("{p:?}").contains("s3cret"));
}

#[tokio::test]
async fn check_users_and_tokens() {
    let h = parse_htpasswd(&format!("alice:{PW_HASH}\nbob:{HUNTER2}\n")).unwrap();
    let t = parse_tokens("tok-1\n").unwrap();
    let auth = ClientAuth::new(h, t);
    assert_eq!(auth.check(None, None).await, Err(Denied::Missing));
    assert_eq!(
        auth.check(Some(&HeaderValue::from_static("Digest x")), None)
            .await,
        Err(Denied::Malformed)
    );
    assert_eq!(auth.check(Some(&basic("alice", "pw")), None).await, Ok(()));
    assert_eq!(
        auth.check(Some(&basic("bob", "hunter2")), None).await,
        Ok(())
    );
    assert_eq!(
        auth.check(Some(&basic("alice", "hunter2")), None).await,
        Err(Denied::Rejected)
    );
    assert_eq!(
        auth.check(Some(&basic("mallory", "pw")), None).await,
        Err(Denied::Rejected)
    );
    assert_eq!(
        auth.check(Some(&HeaderValue::from_static("Bearer tok-1")), None)
            .await,
        Ok(())
    );
    assert_eq!(
        auth.check(Some(&HeaderValue::from_static("Bearer tok-2")), None)
            .await,
        Err(Denied::Rejected)
    );
    // A token is not a password and a password is not a token.
    assert_eq!(
        auth.check(Some(&basic("alice", "tok-1")), None).await,
        Err(Denied::Rejected)
    );
    assert_eq!(
        auth.check(Some(&HeaderValue::from_static("Bearer pw")), None)
            .await,
        Err(Denied::Rejected)
    );
    // Only the two good passwords were remembered; asking again still works.
    assert_eq!(auth.verified_count(), 2);
    assert_eq!(auth.check(Some(&basic("alice", "pw")), None).await, Ok(()));
    assert_eq!(
        auth.check(Some(&basic("alice", "pw2")), None).await,
        Err(Denied::Rejected)
    );
    assert_eq!(auth.verified_count(), 2);
}

/// Issue 17, item 2: a request reset right after its check started used to free the slot
/// while bcrypt ran on, so resets could start any number of checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_check_keeps_its_slot_until_bcrypt_ends() {
    let h = parse_htpasswd(&format!("alice:{PW_HASH}\n")).unwrap();
    let auth = ClientAuth::with_limits(h, Tokens::default(), limits(2));
    let hold = auth.gate.write().unwrap();
    for i in 0..8 {
        let header = basic("alice", "wrong");
        let check = std::pin::pin!(auth.check(Some(&header), from(i)));
        assert!(poll_once(check).is_pending());
        // Dropped here: the client reset the stream.
    }
    assert_eq!(auth.running_checks(), 2, "no more than the slots run");
    assert_eq!(auth.bcrypt_runs(), 2, "the others never started");
    drop(hold);
    until_idle(&auth).await;
    assert_eq!(auth.bcrypt_runs(), 2);
    // Their slots came back when their work ended.
    assert_eq!(auth.check(Some(&basic("alice", "pw")), None).await, Ok(()));
    assert_eq!(
        auth.check(Some(&basic("alice", "pw2")), None).await,
        Err(Denied::Rejected)
    );
    assert_eq!(auth.bcrypt_runs(), 4);
}

/// Issue 17, item 3: 16 connections of wrong passwords from one address took both slots
/// and a login from elsewhere queued behind all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_runs_one_check_at_a_time() {
    let h = parse_htpasswd(&format!("alice:{PW_HASH}\n")).unwrap();
    let auth = ClientAuth::with_limits(h, Tokens::default(), limits(2));
    let hold = auth.gate.write().unwrap();
    let wrong = basic("alice", "wrong");
    let mut flood: Vec<_> = (0..16)
        .map(|_| Box::pin(auth.check(Some(&wrong), from(1))))
        .collect();
    for check in &mut flood {
        assert!(poll_once(check.as_mut()).is_pending());
    }
    assert_eq!(
        auth.running_checks(),
        1,
        "one check from 10.0.0.1 at a time"
    );
    let good = basic("alice", "pw");
    let mut login = Box::pin(auth.check(Some(&good), from(2)));
    assert!(poll_once(login.as_mut()).is_pending());
    assert_eq!(
        auth.running_checks(),
        2,
        "10.0.0.2's login started at once, not behind the flood"
    );
    drop(hold);
    assert_eq!(login.await, Ok(()));
    for check in flood {
        assert_eq!(check.await, Err(Denied::Rejected));
    }
    assert_eq!(auth.bcrypt_runs(), 17);
}

#[tokio::test]
async fn past_its_burst_an_address_gets_429_without_bcrypt() {
    let h = parse_htpasswd(&format!("alice:{PW_HASH}\nbob:{HUNTER2}\n")).unwrap();
    let auth = ClientAuth::with_limits(
        h,
        Tokens::default(),
        AuthLimits {
            failure_burst: 3,
            failure_refill: Duration::from_secs(600),
            ..limits(2)
        },
    );
    let check = |user: &str, password: &str, i: u8| {
        let header = basic(user, password);
        let auth = &auth;
        async move { auth.check(Some(&header), from(i)).await }
    };
    assert_eq!(check("alice", "pw", 9).await, Ok(()));
    for _ in 0..3 {
        assert_eq!(check("alice", "wrong", 1).await, Err(Denied::Rejected));
    }
    assert_eq!(auth.bcrypt_runs(), 4);
    let Err(Denied::Throttled { retry_after }) = check("alice", "wrong", 1).await else {
        panic!("the fourth wrong password from 10.0.0.1 is not throttled");
    };
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    assert!(matches!(
        check("bob", "hunter2", 1).await,
        Err(Denied::Throttled { .. })
    ));
    assert_eq!(auth.bcrypt_runs(), 4, "no bcrypt for a throttled address");
    // A remembered password still passes at once from there; other addresses have their own
    // budget.
    assert_eq!(check("alice", "pw", 1).await, Ok(()));
    assert_eq!(auth.bcrypt_runs(), 4);
    assert_eq!(check("alice", "wrong", 2).await, Err(Denied::Rejected));
    assert_eq!(auth.bcrypt_runs(), 5);
    // A good password does not spend the budget.
    assert_eq!(check("alice", "wrong", 3).await, Err(Denied::Rejected));
    assert_eq!(check("alice", "wrong", 3).await, Err(Denied::Rejected));
    assert_eq!(check("bob", "hunter2", 3).await, Ok(()));
    assert_eq!(check("alice", "wrong", 3).await, Err(Denied::Rejected));
    assert!(matches!(
        check("alice", "wrong", 3).await,
        Err(Denied::Throttled { .. })
    ));
    // Tokens are not passwords: no budget, no bcrypt.
    assert_eq!(
        auth.check(Some(&HeaderValue::from_static("Bearer x")), from(1))
            .await,
        Err(Denied::Rejected)
    );
}

/// Issue 17, item 3 of the red team: an unknown user was refused in 0.19 ms, a known one
/// with a wrong password in 50 ms.
#[tokio::test]
async fn unknown_users_cost_what_known_users_cost() {
    let h = parse_htpasswd(&format!("alice:{PW_HASH}\nbob:{HUNTER2}\n")).unwrap();
    let auth = ClientAuth::with_limits(
        h,
        Tokens::default(),
        AuthLimits {
            failure_burst: 3,
            ..limits(2)
        },
    );
    let check = |user: &str, i: u8| {
        let header = basic(user, "wrong");
        let auth = &auth;
        async move { auth.check(Some(&header), from(i)).await }
    };
    assert_eq!(check("mallory", 1).await, Err(Denied::Rejected));
    assert_eq!(
        auth.bcrypt_runs(),
        1,
        "one bcrypt check for an unknown user"
    );
    assert_eq!(check("alice", 1).await, Err(Denied::Rejected));
    assert_eq!(auth.bcrypt_runs(), 2, "and one for a known one");
    // The same budget: the third failure from 10.0.0.1 is its last.
    assert_eq!(check("mallory", 1).await, Err(Denied::Rejected));
    assert!(matches!(
        check("alice", 1).await,
        Err(Denied::Throttled { .. })
    ));
    assert!(matches!(
        check("mallory", 1).await,
        Err(Denied::Throttled { .. })
    ));
    assert_eq!(auth.bcrypt_runs(), 3);
    // Even the dummy hash's own password gets no one in.
    assert_eq!(
        auth.check(Some(&basic("mallory", DUMMY_PASSWORD)), from(2))
            .await,
        Err(Denied::Rejected)
    );

    // The dummy has the cost most users have.
    let cost = |h: &str| h.parse::<bcrypt::HashParts>().unwrap().get_cost();
    assert_eq!(auth.dummy_hash.as_deref().map(cost), Some(4));
    let five = bcrypt::hash("x", 5).unwrap();
    let mixed = parse_htpasswd(&format!(
        "a:{PW_HASH}\nb:{five}\nc:{five}\nd:{HUNTER2}\ne:{five}\n"
    ))
    .unwrap();
    assert_eq!(mixed.usual_cost(), Some(5));
    assert_eq!(mixed.dummy_hash().as_deref().map(cost), Some(5));
    assert_eq!(Htpasswd::default().dummy_hash(), None);

    // Timed, at a cost where it shows.
    let hash = bcrypt::hash("pw", 8).unwrap();
    let auth = ClientAuth::with_limits(
        parse_htpasswd(&format!("alice:{hash}\n")).unwrap(),
        Tokens::default(),
        limits(2),
    );
    let known = median_refusal(&auth, "alice").await;
    let unknown = median_refusal(&auth, "mallory").await;
    println!(
        "refused at bcrypt cost 8 (median of 9): known user {known:?}, unknown user {unknown:?}"
    );
    assert!(unknown * 2 > known, "unknown {unknown:?}, known {known:?}");
}

async fn median_refusal(auth: &ClientAuth, user: &str) -> Duration {
    let mut took = Vec::new();
    for _ in 0..9 {
        let header = basic(user, "wrong");
        let started = std::time::Instant::now();
        let r = auth.check(Some(&header), from(1)).await;
        took.push(started.elapsed());
        assert_eq!(r, Err(Denied::Rejected));
    }
    took.sort();
    took[4]
}

#[test]
fn budgets_refill_and_stay_bounded() {
    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let budgets = |tracked_clients| {
        Failures::new(
            AuthLimits {
                failure_burst: 2,
                failure_refill: Duration::from_secs(10),
                tracked_clients,
                ..limits(2)
            },
            t0,
        )
    };
    let f = budgets(10);
    let (a, _) = f.budget(from(1), t0);
    f.spend(a, t0);
    f.spend(a, t0);
    assert_eq!(f.allowance(a, t0), Err(10));
    assert_eq!(f.allowance(a, secs(4)), Err(6));
    assert_eq!(f.allowance(a, secs(10)), Ok(()));
    f.give_back(a, secs(10));
    f.give_back(a, secs(10));
    assert_eq!(f.allowance(a, secs(10)), Ok(()), "never past the burst");

    // One IPv6 /64 is one client; an IPv4-mapped address is the IPv4 one.
    let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        f.budget(v6("2001:db8:0:1::7"), t0).0,
        f.budget(v6("2001:db8:0:1:ffff::1"), t0).0
    );
    assert_ne!(
        f.budget(v6("2001:db8:0:1::7"), t0).0,
        f.budget(v6("2001:db8:0:2::7"), t0).0
    );
    assert_eq!(f.budget(v6("::ffff:10.0.0.1"), t0).0, a);
    assert_eq!(f.tracked(), 3);

    // Full of recent failures: a third address shares the overflow budget...
    let f = budgets(2);
    let mut turns = Vec::new();
    for i in 1..=2 {
        let (b, turn) = f.budget(from(i), t0);
        f.spend(b, t0);
        turns.push(turn);
    }
    let (c, _) = f.budget(from(3), t0);
    assert_eq!(c, BudgetRef::Overflow);
    assert_eq!(f.budget(from(4), t0).0, BudgetRef::Overflow);
    f.spend(c, t0);
    f.spend(c, t0);
    assert!(f.allowance(BudgetRef::Overflow, t0).is_err());
    // ... until one has refilled and nobody holds its turn: then it is forgotten and makes
    // room (at the next sweep).
    assert_eq!(
        f.budget(from(3), secs(30)).0,
        BudgetRef::Overflow,
        "refilled, but their turns are held"
    );
    turns.pop();
    assert_eq!(
        f.budget(from(3), secs(30)).0,
        BudgetRef::Overflow,
        "swept a second ago"
    );
    assert_eq!(
        f.budget(from(3), secs(31)).0,
        BudgetRef::Client(ClientKey::V4([10, 0, 0, 3]))
    );
    assert_eq!(f.tracked(), 2);
}

#[test]
fn load_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("htpasswd");
    std::fs::write(
        &h,
        format!("alice:{PW_HASH}\nbob:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.\n"),
    )
    .unwrap();
    let cfg = AuthConfig {
        htpasswd_file: Some(h.clone()),
        ..AuthConfig::default()
    };
    let err = ClientAuth::load(&cfg).unwrap_err().to_string();
    assert!(err.contains(&format!("{}: line 2:", h.display())), "{err}");
    let empty = dir.path().join("tokens");
    std::fs::write(&empty, "# none yet\n").unwrap();
    let cfg = AuthConfig {
        tokens_file: Some(empty.clone()),
        ..AuthConfig::default()
    };
    let err = ClientAuth::load(&cfg).unwrap_err().to_string();
    assert!(err.contains("holds no tokens"), "{err}");
    let cfg = AuthConfig {
        htpasswd_file: Some(dir.path().join("missing")),
        ..AuthConfig::default()
    };
    let err = ClientAuth::load(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("missing"),
        "{err}"
    );
}
