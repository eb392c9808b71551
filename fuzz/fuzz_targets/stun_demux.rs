#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glare_udp::fuzz::stun_demux(data));
