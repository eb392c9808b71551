//! Criterion benches of glare; see the `benches/` targets.
