//! AFL++ target `config`: see `archway_fuzz::config`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::config(data));
}
