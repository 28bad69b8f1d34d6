//! The `gannet` command: parses the command line, loads config, and calls the library.

fn main() {}
