//! AFL++ target `image_index`: see `archway_fuzz::image_index`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::image_index(data));
}
