#![no_main]
//! cargo-fuzz target `data_decoder`: see `gannet_fuzz::entries::data_decoder`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::data_decoder(data));
