//! Who may be served a cached object (pure). A mirror must serve nobody content they could not
//! have pulled themselves:
//!
//! - what archway fetched from an upstream whose `visibility` is `public` (by default: one
//!   without credentials, so the fetch was anonymous) is [`Access::Public`]: anyone could have
//!   fetched it from there;
//! - what it fetched with credentials is [`Access::Private`]: served only under the (upstream,
//!   repository) it was fetched under, or under another one once that upstream has confirmed it
//!   there (a HEAD with that route's own credentials) — then that route is granted too.
//!
//! An object with no record at all (a cache written before records existed, an object read back
//! from the bucket with no record a replica can believe) is confirmed like a private one: the
//! absence of a record never makes anything public.

use std::fmt;

/// An upstream's `visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// What is fetched from it is served only where it was fetched or is confirmed.
    Private,
    /// What is fetched from it is served to any client (anyone could fetch it anonymously, or
    /// the operator says so: a Docker Hub account used only for its rate limit).
    Public,
}

impl Visibility {
    /// The default: private when archway holds credentials for the upstream.
    pub fn default_for(has_credentials: bool) -> Self {
        if has_credentials {
            Visibility::Private
        } else {
            Visibility::Public
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(Visibility::Private),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

/// One (upstream, repository) an object may be served under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub upstream: Box<str>,
    pub repository: Box<str>,
}

impl Grant {
    pub fn new(upstream: &str, repository: &str) -> Self {
        Grant {
            upstream: upstream.into(),
            repository: repository.into(),
        }
    }

    fn is(&self, upstream: &str, repository: &str) -> bool {
        &*self.upstream == upstream && &*self.repository == repository
    }
}

/// Who may be served one cached object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// The routes it was fetched or confirmed under, oldest first, at most [`MAX_GRANTS`].
    Private(Vec<Grant>),
}

/// Routes remembered per private object; past that the oldest is forgotten (and confirmed
/// again with a HEAD when it is next asked for): a record stays small whatever clients name.
pub const MAX_GRANTS: usize = 32;

/// Where a request stands against an object's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The record allows this route: serve what is cached.
    Serve,
    /// Ask this route's upstream first (HEAD, with the route's credentials); serve only on 200.
    Confirm,
    /// Nothing is cached or known of it: fetch it under this route, which records it.
    Fetch,
}

impl Access {
    /// What a fetch from `upstream` (of that visibility) under `repository` records.
    pub fn fetched(visibility: Visibility, upstream: &str, repository: &str) -> Access {
        match visibility {
            Visibility::Public => Access::Public,
            Visibility::Private => Access::Private(vec![Grant::new(upstream, repository)]),
        }
    }

    pub fn allows(&self, upstream: &str, repository: &str) -> bool {
        match self {
            Access::Public => true,
            Access::Private(grants) => grants.iter().any(|g| g.is(upstream, repository)),
        }
    }

    /// The record after `upstream` confirmed the object under `repository`: public if that
    /// upstream is, else with that route granted (the oldest dropped past [`MAX_GRANTS`]).
    pub fn confirmed(
        existing: Option<&Access>,
        visibility: Visibility,
        upstream: &str,
        repository: &str,
    ) -> Access {
        match (existing, visibility) {
            (_, Visibility::Public) | (Some(Access::Public), _) => Access::Public,
            (None, Visibility::Private) => Access::fetched(visibility, upstream, repository),
            (Some(Access::Private(grants)), Visibility::Private) => {
                let mut grants: Vec<Grant> = grants
                    .iter()
                    .filter(|g| !g.is(upstream, repository))
                    .cloned()
                    .collect();
                grants.push(Grant::new(upstream, repository));
                let excess = grants.len().saturating_sub(MAX_GRANTS);
                grants.drain(..excess);
                Access::Private(grants)
            }
        }
    }

    /// The record as stored (an extended attribute of the cached file, a sealed bucket
    /// object): `public`, or `private` and one `upstream<TAB>repository` line per grant.
    /// Upstream names and repository names hold neither tabs nor newlines.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Access::Public => b"public".to_vec(),
            Access::Private(grants) => {
                let mut out = b"private".to_vec();
                for g in grants {
                    out.push(b'\n');
                    out.extend_from_slice(g.upstream.as_bytes());
                    out.push(b'\t');
                    out.extend_from_slice(g.repository.as_bytes());
                }
                out
            }
        }
    }

    /// `None`: not a record (then nothing is known, which is confirmed like private).
    pub fn decode(raw: &[u8]) -> Option<Access> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut lines = text.split('\n');
        match lines.next()? {
            "public" if lines.next().is_none() => Some(Access::Public),
            "private" => {
                let mut grants = Vec::new();
                for line in lines {
                    let (upstream, repository) = line.split_once('\t')?;
                    if upstream.is_empty() || repository.is_empty() || repository.contains('\t') {
                        return None;
                    }
                    grants.push(Grant::new(upstream, repository));
                }
                if grants.is_empty() || grants.len() > MAX_GRANTS {
                    return None;
                }
                Some(Access::Private(grants))
            }
            _ => None,
        }
    }

    /// Bytes it holds in memory, roughly (for the memo's budget).
    pub fn weight(&self) -> usize {
        match self {
            Access::Public => 16,
            Access::Private(grants) => {
                32 + grants
                    .iter()
                    .map(|g| 48 + g.upstream.len() + g.repository.len())
                    .sum::<usize>()
            }
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Private(g) => write!(f, "private to {} route(s)", g.len()),
        }
    }
}

/// What to do with a request for an object under (`upstream`, `repository`), given its record
/// (`known`) and whether a copy may be cached anywhere archway would serve it from
/// (`may_be_cached`: a file in the cache, a download in flight, or a bucket behind it).
pub fn admit(
    known: Option<&Access>,
    may_be_cached: bool,
    upstream: &str,
    repository: &str,
) -> Admission {
    match known {
        Some(a) if a.allows(upstream, repository) => Admission::Serve,
        Some(_) => Admission::Confirm,
        None if may_be_cached => Admission::Confirm,
        None => Admission::Fetch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(routes: &[(&str, &str)]) -> Access {
        Access::Private(routes.iter().map(|(u, r)| Grant::new(u, r)).collect())
    }

    #[test]
    fn admission_table() {
        let hub_public = Access::Public;
        let corp_app = private(&[("corp", "team/app")]);
        #[rustfmt::skip]
        let cases: &[(Option<&Access>, bool, &str, &str, Admission)] = &[
            // Public content: anyone, under any name.
            (Some(&hub_public), true, "docker.io", "library/alpine", Admission::Serve),
            (Some(&hub_public), true, "corp", "other", Admission::Serve),
            // Private content: only its route; any other route asks its own upstream.
            (Some(&corp_app), true, "corp", "team/app", Admission::Serve),
            (Some(&corp_app), true, "corp", "team/other", Admission::Confirm),
            (Some(&corp_app), true, "docker.io", "library/anything", Admission::Confirm),
            (Some(&corp_app), true, "corp", "team/app/x", Admission::Confirm),
            // Unknown: confirmed if a copy may exist anywhere, else fetched under this route.
            (None, true, "docker.io", "library/alpine", Admission::Confirm),
            (None, false, "docker.io", "library/alpine", Admission::Fetch),
        ];
        for (known, cached, u, r, want) in cases {
            assert_eq!(admit(*known, *cached, u, r), *want, "{known:?} {u} {r}");
        }
    }

    #[test]
    fn fetching_and_confirming() {
        assert_eq!(
            Access::fetched(Visibility::Public, "docker.io", "library/alpine"),
            Access::Public
        );
        let corp = Access::fetched(Visibility::Private, "corp", "team/app");
        assert_eq!(corp, private(&[("corp", "team/app")]));
        // A public upstream that has it makes it public for everyone.
        assert_eq!(
            Access::confirmed(Some(&corp), Visibility::Public, "docker.io", "library/x"),
            Access::Public
        );
        // A private route is added once, most recent last.
        let both = Access::confirmed(Some(&corp), Visibility::Private, "corp", "team/b");
        assert_eq!(both, private(&[("corp", "team/app"), ("corp", "team/b")]));
        let again = Access::confirmed(Some(&both), Visibility::Private, "corp", "team/app");
        assert_eq!(again, private(&[("corp", "team/b"), ("corp", "team/app")]));
        // Public stays public.
        assert_eq!(
            Access::confirmed(Some(&Access::Public), Visibility::Private, "corp", "x"),
            Access::Public
        );
        // Bounded: the oldest route is forgotten.
        let mut a = corp.clone();
        for i in 0..100 {
            a = Access::confirmed(Some(&a), Visibility::Private, "corp", &format!("r{i}"));
        }
        let Access::Private(grants) = &a else {
            panic!("still private")
        };
        assert_eq!(grants.len(), MAX_GRANTS);
        assert!(a.allows("corp", "r99"));
        assert!(!a.allows("corp", "team/app"));
    }

    #[test]
    fn records_round_trip_and_junk_is_no_record() {
        for a in [
            Access::Public,
            private(&[("corp", "team/app")]),
            private(&[("corp", "a"), ("registry.example:5000", "b/c/d")]),
        ] {
            assert_eq!(Access::decode(&a.encode()), Some(a.clone()));
        }
        for junk in [
            &b""[..],
            b"publicx",
            b"public\ncorp\tx",
            b"private",
            b"private\n",
            b"private\ncorp",
            b"private\n\tx",
            b"private\ncorp\t",
            b"private\ncorp\ta\tb",
            b"\xff",
        ] {
            assert_eq!(Access::decode(junk), None, "{junk:?}");
        }
        let many: Vec<(String, String)> = (0..=MAX_GRANTS)
            .map(|i| ("u".to_owned(), format!("r{i}")))
            .collect();
        let too_many = Access::Private(many.iter().map(|(u, r)| Grant::new(u, r)).collect());
        assert_eq!(Access::decode(&too_many.encode()), None);
    }

    #[test]
    fn visibility_defaults_to_private_with_credentials() {
        assert_eq!(Visibility::default_for(true), Visibility::Private);
        assert_eq!(Visibility::default_for(false), Visibility::Public);
        assert_eq!(Visibility::parse("public"), Some(Visibility::Public));
        assert_eq!(Visibility::parse("Private"), None);
    }
}
