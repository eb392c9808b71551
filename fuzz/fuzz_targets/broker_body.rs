#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glare_proto::fuzz::broker_body(data));
