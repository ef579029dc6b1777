//! AFL++ target `zstd_layer`: see `archway_fuzz::zstd_layer`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::zstd_layer(data));
}
