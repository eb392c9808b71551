#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glare_udp::fuzz::turn_client(data));
