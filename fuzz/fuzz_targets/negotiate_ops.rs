//! An arbitrary sequence of operations and deliveries against a negotiating pair
//! (model engines), checked against the simulator's invariants.
//!
//! The body lives in `glare_negotiate::fuzz` (feature `_fuzz`) so `cargo test` keeps it
//! compiling; glare-negotiate never reads a clock, so the (arbitrary) epoch of the
//! virtual time comes from here.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    glare_negotiate::fuzz::negotiate_ops(data, std::time::Instant::now())
});
