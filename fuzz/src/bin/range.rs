//! AFL++ target `range`: see `archway_fuzz::range`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::range(data));
}
