#![no_main]
//! cargo-fuzz target `smtp_session`: see `gannet_fuzz::entries::smtp_session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::smtp_session(data));
