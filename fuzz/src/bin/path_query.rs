//! AFL++ target `path_query`: see `archway_fuzz::path_query`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::path_query(data));
}
