//! Test SMTP client (filled in with the session tests).
