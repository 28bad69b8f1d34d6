#![no_main]
//! cargo-fuzz target `bounce_report`: see `gannet_fuzz::entries::bounce_report`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::bounce_report(data));
