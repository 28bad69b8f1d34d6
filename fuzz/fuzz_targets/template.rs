#![no_main]
//! cargo-fuzz target `template`: see `gannet_fuzz::entries::template`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::template(data));
