//! AFL++ target `platform`: see `archway_fuzz::platform`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::platform(data));
}
