//! Gannet's fuzz targets: the entry functions (`entries`) each cargo-fuzz target calls.
//! See `fuzz/README.md`.

pub mod entries;
