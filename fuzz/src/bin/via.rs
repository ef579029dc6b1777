//! AFL++ target `via`: see `archway_fuzz::via`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::via(data));
}
