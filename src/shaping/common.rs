//! Two small helpers the shaping modules share, kept here so that none of those modules has to
//! import another just for them: reading a duration from the shaping file, and a map lookup
//! that allocates the key only on insert. Depends on nothing else in `shaping`.

use std::collections::HashMap;
use std::time::Duration;

/// A duration as the shaping file writes it (`"30s"`, `"10m"`, `"1h"`), with an error message
/// that shows what was expected.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?}: {e} (expected e.g. \"30s\", \"10m\", \"1h\")")
    })
}

/// The value under `key`, inserted first if missing; allocates the key only on insert.
pub(super) fn get_or_insert<'m, V>(
    map: &'m mut HashMap<String, V>,
    key: &str,
    make: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), make());
    }
    map.get_mut(key).expect("key is present: inserted above")
}
