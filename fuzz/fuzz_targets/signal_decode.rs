#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glare_proto::fuzz::signal_decode(data));
