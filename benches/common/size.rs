//! How large a bench's data set is: `var` when it is set, else `full` under `cargo bench`
//! (which passes `--bench`) and `quick` when the test suite runs each bench once, where the
//! full size would cost minutes of CI for nothing.

pub fn size(var: &str, full: u64, quick: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            full
        } else {
            quick
        })
}
