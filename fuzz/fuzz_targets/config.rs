#![no_main]
//! cargo-fuzz target `config`: see `gannet_fuzz::entries::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::config(data));
