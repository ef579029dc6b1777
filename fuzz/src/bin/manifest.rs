//! AFL++ target `manifest`: see `archway_fuzz::manifest`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::manifest(data));
}
