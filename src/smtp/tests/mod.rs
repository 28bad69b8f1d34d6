//! Tests for the SMTP server.
