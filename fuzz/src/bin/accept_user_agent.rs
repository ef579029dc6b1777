//! AFL++ target `accept_user_agent`: see `archway_fuzz::accept_user_agent`.
fn main() {
    afl::fuzz!(|data: &[u8]| archway_fuzz::accept_user_agent(data));
}
