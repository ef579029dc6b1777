//! How one upstream or parent has been answering, as the status page shows it. Pure: times are
//! milliseconds since the Unix epoch, given by the caller.

/// A stale answer served this recently, with no success since, is "covering" for its upstream.
pub const STALE_COVER_MS: u64 = 5 * 60 * 1000;

/// Error wordings are cut to this many characters (they come from upstream's status line or a
/// connection error, which archway words itself; the cut keeps the page and memory small).
pub const MAX_WORDING: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<(u64, String)>,
    /// The last `ratelimit-remaining` upstream sent, and when.
    pub ratelimit: Option<(i64, u64)>,
    /// When a stale tag answer was last served for this upstream.
    pub last_stale_ms: Option<u64>,
    /// The last exchange failed (times alone cannot tell two in the same millisecond apart).
    pub failing: bool,
}

/// What the page says of an upstream or parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not asked anything since archway started.
    Unused,
    /// Its last exchange succeeded.
    Up,
    /// Its last exchange failed.
    Failing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unused => "not used yet",
            State::Up => "up",
            State::Failing => "failing",
        }
    }
}

impl Health {
    pub fn ok(&mut self, now_ms: u64) {
        self.last_ok_ms = Some(now_ms);
        self.failing = false;
    }

    pub fn failed(&mut self, now_ms: u64, wording: &str) {
        self.last_error = Some((now_ms, bounded(wording)));
        self.failing = true;
    }

    pub fn state(&self) -> State {
        if self.failing {
            State::Failing
        } else if self.last_ok_ms.is_some() {
            State::Up
        } else {
            State::Unused
        }
    }

    /// Stale answers cover for this upstream now: one was served in the last
    /// [`STALE_COVER_MS`], and nothing succeeded since.
    pub fn stale_covering(&self, now_ms: u64) -> bool {
        self.last_stale_ms.is_some_and(|s| {
            now_ms.saturating_sub(s) <= STALE_COVER_MS && self.last_ok_ms.is_none_or(|ok| ok <= s)
        })
    }
}

/// `wording` with control characters replaced and cut to [`MAX_WORDING`] characters.
fn bounded(wording: &str) -> String {
    let mut out: String = wording
        .chars()
        .take(MAX_WORDING)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if wording.chars().count() > MAX_WORDING {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_last_exchange() {
        let mut h = Health::default();
        assert_eq!(h.state(), State::Unused);
        h.ok(10);
        assert_eq!(h.state(), State::Up);
        h.failed(20, "HTTP 503 Service Unavailable");
        assert_eq!(h.state(), State::Failing);
        h.ok(30);
        assert_eq!(h.state(), State::Up);
        assert_eq!(
            h.last_error,
            Some((20, "HTTP 503 Service Unavailable".into()))
        );
    }

    #[test]
    fn stale_covers_until_a_success_or_five_minutes() {
        let mut h = Health::default();
        assert!(!h.stale_covering(0));
        h.ok(1_000);
        h.failed(2_000, "timed out");
        h.last_stale_ms = Some(2_001);
        assert!(h.stale_covering(3_000));
        // A failure and a success in the same millisecond: the last one counts.
        let mut same = Health::default();
        same.failed(5, "x");
        same.ok(5);
        assert_eq!(same.state(), State::Up);
        assert!(h.stale_covering(2_001 + STALE_COVER_MS));
        assert!(!h.stale_covering(2_002 + STALE_COVER_MS));
        h.ok(4_000);
        assert!(!h.stale_covering(4_001));
    }

    #[test]
    fn wordings_are_bounded_and_on_one_line() {
        let mut h = Health::default();
        h.failed(1, &format!("a\nb{}", "x".repeat(1000)));
        let (_, w) = h.last_error.unwrap();
        assert!(w.starts_with("a b"));
        assert_eq!(w.chars().count(), MAX_WORDING + 1);
    }
}
