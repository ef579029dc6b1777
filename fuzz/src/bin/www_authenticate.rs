//! AFL++ target `www_authenticate`: see `archway_fuzz::www_authenticate`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::www_authenticate(data));
}
