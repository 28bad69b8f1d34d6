#![no_main]
//! cargo-fuzz target `spool_record`: see `gannet_fuzz::entries::spool_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz::entries::spool_record(data));
