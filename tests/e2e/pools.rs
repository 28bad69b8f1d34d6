//! Traffic classes and IP pools (issue 4).
